"""The blending kernel: threads over blocks of large patches, whole-batch adds of small ones.

Every path is checked against the brute-force reference (float32 accumulation,
so to float32 rounding) or against the plain per-window path.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xarray as xr
from reference import builtin_weights, reference

import xpatch  # noqa: F401
from xpatch._blend import BLOCK_BYTES, THREAD_BYTES, Blender


def _ref(a, axes, size, step, border="squeeze", weights="gaussian", f=None):
    f = f or (lambda p, starts: p * 2.0)
    return reference(a, axes, size, step, border, builtin_weights(weights), f)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blender_equals_one_multiply_add(threads):
    rng = np.random.default_rng(0)
    # 3 x 100 x 1200 float32: 1.4 MB, cut into blocks along the second axis
    target = rng.random((3, 100, 1200), dtype=np.float32)
    part = rng.random((3, 100, 1200), dtype=np.float32)
    w0 = rng.random((1, 100, 1), dtype=np.float32)
    w1 = rng.random((1, 1, 1200), dtype=np.float32)
    expected = target + part * (w0 * w1)
    Blender(threads)(target, part, [w0, w1])
    np.testing.assert_allclose(target, expected, rtol=1e-6)


def test_blender_threads_share_a_large_patch():
    """A patch above the threshold is blended on more than one thread."""
    seen = set()
    second = threading.Event()

    class Spy(np.ndarray):  # records the thread of each block's multiply
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            seen.add(threading.get_ident())
            if len(seen) > 1:
                second.set()
            else:  # hold the first thread until another one takes a block
                second.wait(timeout=10)
            inputs = tuple(np.asarray(x) for x in inputs)
            return getattr(ufunc, method)(*inputs, **kwargs)

    n = THREAD_BYTES // 4 // 64 + 64
    target = np.zeros((n, 64), dtype=np.float32)
    part = np.ones((n, 64), dtype=np.float32).view(Spy)
    Blender(2)(target, part, [np.full((n, 1), 0.5, dtype=np.float32)])
    assert (target == 0.5).all()
    assert len(seen) == 2
    assert target.nbytes > BLOCK_BYTES


def test_blender_error_in_a_thread_reaches_the_caller():
    target = np.zeros((THREAD_BYTES // 4 // 8 + 64, 8), dtype=np.float32)
    part = np.ones_like(target)
    bad = np.ones((3, 8), dtype=np.float32)  # does not broadcast against the blocks
    with pytest.raises(ValueError):
        Blender(2)(target, part, [bad])


@pytest.mark.parametrize("weights", ["gaussian", "mean", "hann"])
@pytest.mark.parametrize("border", ["squeeze", "edge", "pad"])
def test_large_3d_patches_over_threads_match_reference(weights, border):
    """96^3-ish float32 patches (several MB each): block split and threads."""
    rng = np.random.default_rng(1)
    a = rng.random((2, 100, 90, 110), dtype=np.float32)
    da = xr.DataArray(a, dims=("band", "z", "y", "x"))
    out = da.patch.apply(
        lambda p: p * 2.0, z=64, y=60, x=72, step=40, border=border, weights=weights
    )
    ref = _ref(a.astype(np.float64), [1, 2, 3], [64, 60, 72], [40, 40, 40], border, weights)
    np.testing.assert_allclose(out.values, ref, rtol=2e-6, atol=2e-6)


def test_large_patches_with_chunks_match_reference():
    rng = np.random.default_rng(2)
    a = rng.random((160, 150, 140), dtype=np.float32)
    da = xr.DataArray(a, dims=("z", "y", "x"))
    kw = dict(z=96, y=96, x=96, step=32, weights="gaussian")
    out = da.patch.apply(lambda p: p * 2.0, chunks=100, **kw)
    ref = _ref(a.astype(np.float64), [0, 1, 2], [96] * 3, [32] * 3)
    np.testing.assert_allclose(out.values, ref, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("layout", ["yx", "cyx", "ycx"])
@pytest.mark.parametrize("border", ["squeeze", "adaptive", "pad", "crop"])
def test_whole_batch_add_equals_per_window_add(layout, border):
    """Small patches are added a batch at a time; the result is the per-window one."""
    rng = np.random.default_rng(3)
    shape = {"y": 70, "x": 83, "c": 3}
    dims = tuple({"yx": "yx", "cyx": "cyx", "ycx": "ycx"}[layout])
    da = xr.DataArray(rng.random([shape[d] for d in dims], dtype=np.float32), dims=dims)
    kw = dict(y=16, x=12, step={"y": 5, "x": 7}, border=border, weights="gaussian")
    one = da.patch.apply(lambda p: p * 3 - 1, **kw)
    batched = da.patch.apply(lambda b: b * 3 - 1, batch_size=37, **kw)
    np.testing.assert_allclose(batched.values, one.values, rtol=1e-6, atol=1e-6)


def test_whole_batch_add_changes_non_spatial_dims():
    """A batched model that turns 1 band into 4 classes: strided adds with a class dim."""
    rng = np.random.default_rng(4)
    da = xr.DataArray(rng.random((64, 64), dtype=np.float32), dims=("y", "x"))

    def model(b):
        return xr.concat([b * k for k in range(4)], dim="class").transpose("patch", "class", ...)

    kw = dict(y=8, x=8, step=3, weights="hann")
    out = da.patch.apply(model, batch_size=50, **kw)
    ref = _ref(
        da.values.astype(np.float64), [0, 1], [8, 8], [3, 3], "squeeze", "hann", lambda p, s: p
    )
    assert out.dims == ("class", "y", "x")
    for k in range(4):
        np.testing.assert_allclose(out.isel({"class": k}).values, k * ref, rtol=1e-5, atol=1e-6)


def test_model_that_reuses_its_output_buffer_is_safe():
    """A result the model keeps is blended (on several threads) before func is called again."""
    rng = np.random.default_rng(5)
    a = rng.random((130, 120, 110), dtype=np.float32)
    da = xr.DataArray(a, dims=("z", "y", "x"))
    buffer = np.empty((96, 96, 96), dtype=np.float32)

    def model(p):  # writes every answer into the same array
        np.multiply(p.values, 2.0, out=buffer)
        return buffer

    out = da.patch.apply(model, z=96, y=96, x=96, step=24, output_dims=("z", "y", "x"))
    ref = _ref(a.astype(np.float64), [0, 1, 2], [96] * 3, [24] * 3)
    np.testing.assert_allclose(out.values, ref, rtol=2e-6, atol=2e-6)


def test_thread_count_from_the_environment(monkeypatch):
    from xpatch._blend import default_threads

    monkeypatch.setenv("XPATCH_NUM_THREADS", "3")
    assert default_threads() == 3
    assert Blender().threads == 3
    monkeypatch.setenv("XPATCH_NUM_THREADS", "many")
    with pytest.raises(ValueError, match=r"XPATCH_NUM_THREADS.*'many'"):
        default_threads()
    monkeypatch.delenv("XPATCH_NUM_THREADS")
    assert 1 <= default_threads() <= 8


@pytest.mark.parametrize("dims", [("y", "x"), ("c", "y", "x"), ("y", "c", "x"), ("x", "c", "y")])
def test_batches_of_patches_equal_the_stacked_patches(dims):
    """A batch is gathered in one call from a strided view; it equals the patches stacked."""
    rng = np.random.default_rng(6)
    sizes = {"y": 23, "x": 31, "c": 2}
    da = xr.DataArray(rng.random([sizes[d] for d in dims]), dims=dims)
    kw = dict(y=7, x=5, step={"y": 4, "x": 3})
    seen = []

    def model(b):
        seen.append(b)
        return b

    da.patch.apply(model, batch_size=9, **kw)
    singles = list(da.patch.sample(**kw))
    stacked = np.concatenate([b.values for b in seen])
    assert all(b.dims == ("patch", *dims) for b in seen)
    np.testing.assert_array_equal(stacked, np.stack([p.values for p in singles]))
    assert all(b.values.flags.c_contiguous for b in seen)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_, np.float64, np.complex64])
def test_whole_batch_add_keeps_the_dtype_rules(dtype):
    rng = np.random.default_rng(7)
    da = xr.DataArray((rng.random((40, 36)) * 200).astype(dtype), dims=("y", "x"))
    kw = dict(y=6, x=6, step=4, weights="gaussian")
    one = da.patch.apply(lambda p: p, **kw)
    batched = da.patch.apply(lambda b: b, batch_size=20, **kw)
    assert batched.dtype == one.dtype
    np.testing.assert_allclose(batched.values, one.values, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_each_result_is_released_before_func_is_called_again(batch_size):
    """Small results (blended on the calling thread) are freed before func runs again."""
    import weakref

    da = xr.DataArray(np.random.default_rng(8).random((30, 30)), dims=("y", "x"))
    previous: list[weakref.ref] = []

    def model(p):
        assert all(ref() is None for ref in previous)
        out = p.values * 2.0
        previous.append(weakref.ref(out))
        return out

    kw = dict(y=8, x=8, step=4, output_dims=(("patch",) if batch_size else ()) + ("y", "x"))
    da.patch.apply(model, batch_size=batch_size, **kw)
    assert len(previous) > 2


# --- background blending of results nothing else holds ---------------------------------------
def test_sole_owner_only_for_memory_nothing_else_can_reach():
    """Called where one local name is the only reference the caller knows of."""
    import weakref

    from xpatch._blend import sole_owner

    def fresh():
        data = np.zeros(8)
        return sole_owner(data)

    def fresh_view():
        data = np.zeros(8)[2:]
        return sole_owner(data)

    def another_name():
        data = np.zeros(8)
        keep = data  # noqa: F841
        return sole_owner(data)

    def owner_kept():
        owner = np.zeros(8)
        data = owner[2:]
        return sole_owner(data)

    def weakly_watched():
        data = np.zeros(8)
        watch = weakref.ref(data)  # noqa: F841
        return sole_owner(data)

    def foreign_memory():
        data = np.frombuffer(bytearray(64))
        return sole_owner(data)

    def subclass():
        data = np.ma.zeros(8)
        return sole_owner(data)

    assert fresh() and fresh_view()
    assert not any(f() for f in (another_name, owner_kept, weakly_watched, foreign_memory))
    assert not subclass()


def _big_grid():
    """2-D float32 patches of 768 x 768 (2.25 MiB: above the threading threshold)."""
    da = xr.DataArray(
        np.random.default_rng(9).random((1400, 1300), dtype=np.float32), dims=("y", "x")
    )
    return da, dict(y=768, x=768, step=384, weights="gaussian")


def test_a_result_only_the_aggregator_holds_is_blended_in_the_background():
    da, kw = _big_grid()
    agg = da.patch.aggregator(**kw)
    windows = list(agg.grid)
    assert windows[0].shape == (768, 768) and 768 * 768 * 4 >= THREAD_BYTES
    agg.add_result([da[windows[0].slices].values * 2], windows[0])  # first: sets the layout
    agg.add_result([da[windows[1].slices].values * 2], windows[1])
    assert agg._blend._pending is not None  # still being blended while the caller goes on
    held = da[windows[2].slices].values * 2
    agg.add_result([held], windows[2])  # the caller keeps it: blended before the call returns
    assert agg._blend._pending is None
    for w in windows[3:]:
        agg.add_result([da[w.slices].values * 2], w)
    expected = da.patch.apply(lambda p: p * 2, **kw)
    np.testing.assert_allclose(agg.result().values, expected.values, rtol=1e-6)
    assert agg._blend._pending is None


def test_apply_hands_fresh_results_over_for_the_background(monkeypatch):
    """apply keeps no reference to a result it hands to the aggregator: every fresh
    large result after the first (which fixes the layout) is blended in the background."""
    from xpatch import _blend

    flags = []
    blend = _blend.Blender.__call__

    def recording(self, target, part, weights, background=False):
        flags.append(background)
        return blend(self, target, part, weights, background)

    monkeypatch.setattr(_blend.Blender, "__call__", recording)
    da, kw = _big_grid()
    da.patch.apply(lambda p: p.values * 2, output_dims=("y", "x"), **kw)
    assert len(flags) > 2 and not flags[0] and all(flags[1:])


def _reused_buffer():
    buffer = np.empty((768, 768), dtype=np.float32)

    def model(p):  # every answer in the same array
        np.multiply(p.values, 2.0, out=buffer)
        return buffer

    return model


def _reused_view():
    buffer = np.empty((2, 768, 768), dtype=np.float32)

    def model(p):  # a view of a buffer the model keeps
        np.multiply(p.values, 2.0, out=buffer[1])
        return buffer[1]

    return model


def _reused_while_alive():
    import weakref

    cache: list[weakref.ref] = []

    def model(p):  # reuses its last answer if the caller still holds it
        out = cache[0]() if cache else None
        if out is None:
            out = np.empty((768, 768), dtype=np.float32)
            cache[:] = [weakref.ref(out)]
        np.multiply(p.values, 2.0, out=out)
        return out

    return model


def _kept_dataarray():
    kept: list[xr.DataArray] = []

    def model(p):  # keeps its answer and overwrites it through xarray on the next call
        if kept:
            kept[0].values[...] = p.values * 2.0
            return kept[0]
        kept.append(p * 2.0)
        return kept[0]

    return model


def _the_input():
    return lambda p: p  # a view of the source


@pytest.mark.parametrize(
    "make", [_reused_buffer, _reused_view, _reused_while_alive, _kept_dataarray, _the_input]
)
def test_models_that_keep_their_answers_are_blended_before_the_next_call(make):
    """Only results nothing else can reach are blended while func runs: no other is torn."""
    da, kw = _big_grid()
    scale = 1.0 if make is _the_input else 2.0
    out = da.patch.apply(make(), **kw)
    expected = da.patch.apply(lambda p: p * scale, **kw)
    np.testing.assert_allclose(out.values, expected.values, rtol=1e-6)
    np.testing.assert_allclose(out.values, da.values * scale, rtol=1e-5)


def test_background_blending_holds_at_most_one_more_result():
    """Memory: the output, the result being blended and the one func is making."""
    import tracemalloc

    da, kw = _big_grid()
    result_bytes = 768 * 768 * 4
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = da.patch.apply(lambda p: p.values * 2, output_dims=("y", "x"), **kw)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < out.nbytes + 2 * result_bytes + 4 * BLOCK_BYTES + (1 << 20)


def test_object_results_are_never_blended_in_the_background():
    """The elements of an object array are objects the model may keep and change."""

    class Cell:  # a number the model keeps and refills for every patch
        __slots__ = ("v",)

        def __init__(self, v):
            self.v = v

        def __mul__(self, w):
            return self.v * w

        __rmul__ = __mul__

    cells = np.empty((768, 768), dtype=object)
    flat = [Cell(0.0) for _ in range(cells.size)]
    cells.ravel()[:] = flat

    def model(p):
        v = float(p.values.mean())
        for c in flat:
            c.v = v
        return cells.copy()  # a fresh object array, holding the same cells

    da = xr.DataArray(
        np.ones((768, 1536), np.float32) * np.arange(1536, dtype=np.float32), dims=("y", "x")
    )
    out = da.patch.apply(model, y=768, x=768, step=384, weights="mean")
    np.testing.assert_allclose(np.unique(out.values), [383.5, 575.5, 959.5, 1151.5])


def test_custom_weights_are_copied_when_given():
    """Changing the weight array after the call does not reach a run in progress."""
    da, _ = _big_grid()
    w = np.ones((768, 768))
    calls = {"n": 0}

    def model(p):
        calls["n"] += 1
        w[...] = 1.0 + calls["n"]  # any weighted average of ones is one
        return p * 0 + 1

    out = da.patch.apply(model, y=768, x=768, step=384, weights=w)
    np.testing.assert_allclose(out.values, 1.0, rtol=1e-6)


def _opposite_inf_case():
    """inf where a window answering +inf meets one answering -inf: inf - inf while
    blending (a weight of 0 no longer gives ``inf * 0``: a zero weight masks the result).
    """
    a = np.random.default_rng(11).random((1400, 1300), dtype=np.float32)
    a[500, 100] = np.inf  # in the first two rows of windows (0:768 and 316:1084)
    da = xr.DataArray(a, dims=("y", "x"), coords={"y": np.arange(1400)})

    def signed(p):  # the first row of windows answers p, the others -p
        return p * (1.0 if int(p.y[0]) == 0 else -1.0)

    return da, dict(y=768, x=768, step=382, weights="mean"), signed


def test_floating_point_errors_of_helper_threads_follow_the_callers_errstate():
    import warnings

    da, kw, signed = _opposite_inf_case()
    with pytest.warns(RuntimeWarning, match="invalid value encountered while blending"):
        da.patch.apply(signed, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(invalid="ignore"):
            da.patch.apply(signed, **kw)
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError, match="invalid value"):
        da.patch.apply(signed, **kw)


def test_warning_filters_inside_func_do_not_catch_the_background_blend():
    """A model escalating warnings inside its call does not fail on xpatch's own."""
    import warnings

    da, kw, signed = _opposite_inf_case()

    def model(p):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return signed(p)

    with pytest.warns(RuntimeWarning, match="while blending"):
        da.patch.apply(model, **kw)


def test_func_error_is_the_one_raised_after_a_background_blend():
    da, kw = _big_grid()
    calls = {"n": 0}

    def model(p):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyError("model failed")
        return p * 2

    with pytest.raises(KeyError, match="model failed"):
        da.patch.apply(model, **kw)


def test_no_background_blending_under_a_tracer():
    """A debugger may hold frame locals: the reference counts prove nothing then."""
    import sys

    from xpatch._blend import sole_owner

    def fresh():
        data = np.zeros(8)
        return sole_owner(data)

    previous = sys.gettrace()
    sys.settrace(lambda frame, event, arg: None)
    try:
        assert not fresh()
    finally:
        sys.settrace(previous)
    assert fresh() or previous is not None


def _labeled(ny: int, nx: int, seed: int) -> xr.DataArray:
    """A labeled (c, y, x) array: a non-spatial dim with labels, a scalar coord, attrs."""
    return xr.DataArray(
        np.random.default_rng(seed).random((2, ny, nx)),
        dims=("c", "y", "x"),
        coords={"c": ["a", "b"], "y": np.arange(ny) * 2.0, "x": np.arange(nx), "t": 5},
        name="v",
        attrs={"units": "K"},
    )


def test_fast_patches_are_identical_to_isel_for_any_window():
    """Coords cached per grid position never leak to a window of another grid."""
    from xpatch._sampling import Sampler
    from xpatch.grid import Window

    da = _labeled(30, 20, seed=11)
    grid = da.patch.grid(y=8, x=6, step=4)
    sampler = Sampler(da, grid)
    assert sampler._fast is not None
    other = da.patch.grid(y=8, x=6, step=3)  # same positions, other slices
    hand = Window(dims=("y", "x"), slices=(slice(5, 13), slice(1, 7)), index=0)
    swapped = Window(dims=("x", "y"), slices=(slice(1, 7), slice(5, 13)), index=0)
    fewer = Window(dims=("y",), slices=(slice(5, 13),), index=0)
    for w in [*grid, *other, hand, swapped, fewer, *grid]:
        xr.testing.assert_identical(sampler(w), da.isel(dict(w)))


def test_fast_patches_are_identical_to_isel_in_any_order_in_3d():
    """The labels of all axes but the last are kept per row: any order still matches."""
    from xpatch._sampling import Sampler

    rng = np.random.default_rng(3)
    da = xr.DataArray(
        rng.random((9, 2, 11, 10)),
        dims=("z", "c", "y", "x"),
        coords={
            "z": np.arange(9) * 0.5,
            "x": ("x", np.arange(10), {"units": "m"}),
            "lat": (("y", "x"), rng.random((11, 10))),
            "when": ("z", np.arange(9).astype("datetime64[D]")),  # not an index
            "c": ["red", "nir"],
        },
    )  # no coordinate along y; a 2-D one across y and x
    da = da.assign_coords(z=np.arange(9).astype("datetime64[h]"))  # a datetime index
    da.x.encoding = {"dtype": "int16"}
    grid = da.patch.grid(z=4, y=5, x=4, step=3)
    sampler = Sampler(da, grid)
    assert sampler._fast is not None
    windows = list(grid)
    for i in [*rng.permutation(len(windows)), *range(len(windows))]:
        patch, expected = sampler(windows[i]), da.isel(dict(windows[i]))
        xr.testing.assert_identical(patch, expected)
        assert patch.x.encoding == expected.x.encoding
        assert set(patch.xindexes) == set(expected.xindexes)


def test_gathered_batch_is_identical_to_the_stacked_patches():
    """The directly built batch: same data, coords, indexes, name and attrs as stacking."""
    from xpatch._sampling import Sampler, stack

    da = _labeled(40, 30, seed=12)
    grid = da.patch.grid(y=8, x=6, step=4)
    sampler = Sampler(da, grid)
    windows = list(grid)[3:20]
    batch = sampler.batch(windows, "patch")
    xr.testing.assert_identical(batch, stack([sampler(w) for w in windows], windows, "patch"))
    assert list(batch.indexes) == ["c", "patch"]


def _small_batched():
    """Batches of 256 patches of 32 x 32 float32 (1 MiB): big enough for the background."""
    da = xr.DataArray(
        np.random.default_rng(13).random((600, 700), dtype=np.float32), dims=("y", "x")
    )
    return da, dict(y=32, x=32, step=16, batch_size=256, weights="gaussian")


def _batch_buffer_model():
    buffers: dict[tuple[int, ...], np.ndarray] = {}

    def model(b):  # one reused answer per batch shape
        out = buffers.setdefault(b.shape, np.empty(b.shape, dtype=np.float32))
        np.multiply(b.values, 2.0, out=out)
        return b.copy(data=out)

    return model


def _batch_kept_model():
    kept: list[xr.DataArray] = []

    def model(b):  # keeps every answer (for inspection, say) and scribbles on the last
        if kept:
            kept[-1].values[...] = -1.0
        kept.append(b * 2.0)
        return kept[-1]

    return model


def _batch_fresh_model():
    return lambda b: b * 2.0


@pytest.mark.parametrize("make", [_batch_buffer_model, _batch_kept_model, _batch_fresh_model])
def test_batched_models_that_keep_their_answers_are_safe(make):
    da, kw = _small_batched()
    out = da.patch.apply(make(), **kw)
    expected = da.patch.apply(
        lambda p: p * 2.0, **{k: v for k, v in kw.items() if k != "batch_size"}
    )
    np.testing.assert_allclose(out.values, expected.values, rtol=1e-5)


def test_a_fresh_batch_is_added_in_the_background():
    from xpatch._apply import batched_variables

    da, _ = _small_batched()
    agg = da.patch.aggregator(y=32, x=32, step=16, weights="gaussian")
    windows = list(agg.grid)
    assert len(windows) > 3 * 256

    def batch(group):
        data = np.stack([da.values[w.slices] * 2.0 for w in group]).astype(np.float32)
        arr = xr.DataArray(data, dims=("patch", "y", "x"))
        return [batched_variables(arr, len(group), "patch", None, None, "a batch")]

    agg.add_batch(windows[:256], batch(windows[:256]), "patch")
    assert agg._blend._pending is not None  # the caller may go on with the next batch
    kept = batch(windows[256:512])
    held = kept[0]  # the caller keeps it: added before the call returns
    agg.add_batch(windows[256:512], kept, "patch")
    assert agg._blend._pending is None
    del held
    for i in range(512, len(windows), 256):
        agg.add_batch(windows[i : i + 256], batch(windows[i : i + 256]), "patch")
    expected = da.patch.apply(lambda p: p * 2.0, y=32, x=32, step=16, weights="gaussian")
    np.testing.assert_allclose(agg.result().values, expected.values, rtol=1e-5)


def test_no_helper_threads_inside_a_dask_task():
    """Inside a task of dask's scheduler, xpatch uses the one thread it was given."""
    import dask.array as dsa

    from xpatch._blend import default_threads

    seen = []

    def probe(block):
        seen.append(default_threads())
        return block

    dsa.ones(8, chunks=2).map_blocks(probe, meta=np.ones(0)).compute(scheduler="threads")
    assert seen and set(seen) == {1}


def test_threadpoolctl_limit_is_respected():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from xpatch._blend import default_threads

    with threadpoolctl.threadpool_limits(1):
        assert default_threads() == 1

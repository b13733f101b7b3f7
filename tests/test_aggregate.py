"""Tests of the Aggregator: hand-written loops, location by coordinates, partial
results, custom weights and chunked aggregation with ``on_chunk``.

Results are checked against a naive reference that accumulates
``sum_p w_p * f(patch_p)`` and ``sum_p w_p`` over full-size arrays (after
``numpy.pad`` for the pad border) and divides. Grid positions follow the formulas
of the design, the 1-D kernels come from ``scipy.signal.windows``.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import builtin_weights, ref_for
from reference import reference as _reference
from strategies import array_cases

import xpatch
from xpatch import AggregationError, IncompleteError, ResultError, WeightsError

BORDERS = ("squeeze", "edge", "adaptive", "crop", "pad")
WEIGHTS = ("mean", "gaussian", "hann")
MAX_PATCHES = 64


def cases(borders=BORDERS, max_patches=MAX_PATCHES):
    return array_cases(borders=borders, max_patches=max_patches)


# --- reference ------------------------------------------------------------------
def reference(a, *args, **kwargs):
    """The shared brute-force blend, computed in float64."""
    return _reference(np.asarray(a, dtype=np.float64), *args, **kwargs)


def func(p):
    """Differs from patch to patch: doubles, adds the mean and the start coords."""
    spatial = [d for d in p.dims if d != "band"]
    return p * 2 + float(p.mean()) + sum(float(p[d][0]) for d in spatial)


def func_np(x, starts):
    return x * 2 + x.mean() + sum(starts)


def make_array(case, seed=0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    coords = {d: np.arange(n) for d, n in zip(case["dims"], case["shape"]) if d != "band"}
    return xr.DataArray(
        rng.random(case["shape"]) * 4 - 1, dims=case["dims"], coords=coords, name="img"
    )


def grid_kwargs(case):
    return dict(step=case["step"], border=case["border"], **case["size"])


def image(ny=9, nx=11, nband=2, seed=1):
    rng = np.random.default_rng(seed)
    return xr.DataArray(
        rng.random((nband, ny, nx)),
        dims=("band", "y", "x"),
        coords={"y": np.arange(ny), "x": np.arange(nx), "band": list("abcdefgh"[:nband])},
        name="img",
    )


# --- adding with a window, or located by coordinates --------------------------------
@settings(deadline=None)
@given(case=cases(), weights=st.sampled_from(WEIGHTS), by_coords=st.booleans())
def test_hand_written_loop_matches_reference(case, weights, by_coords):
    da = make_array(case)
    kw = grid_kwargs(case)
    agg = da.patch.aggregator(weights=weights, **kw)
    assert len(agg.grid) == case["n_patches"]
    for window, patch in zip(agg.grid, da.patch.sample(**kw)):
        if by_coords:
            agg.add(func(patch))
        else:
            agg.add(func(patch), window)
    assert agg.n_added == case["n_patches"]
    out = agg.result()
    assert out.dims == da.dims and out.name == "img"
    np.testing.assert_allclose(
        out.values, ref_for(case, da, builtin_weights(weights), func_np), rtol=1e-9, atol=1e-9
    )
    xr.testing.assert_allclose(out, da.patch.apply(func, weights=weights, **kw))


def _gather_tiny(mp: pytest.MonkeyPatch) -> None:
    """Gather results of tiny arrays too, a few at a time (several runs, leftovers)."""
    from xpatch import _gather as aggregate

    mp.setattr(aggregate, "STAGE_MIN", 2)
    mp.setattr(aggregate, "STAGE_SHARE", 1)
    mp.setattr(aggregate, "STAGE_WINDOWS", 5)


@pytest.mark.parametrize("gather", [False, True], ids=["default", "gathered"])
@settings(deadline=None)
@given(case=cases(), weights=st.sampled_from(WEIGHTS), data=st.data())
def test_any_order_of_adding_gives_the_same_result(gather, case, weights, data):
    """Also with small results gathered and added a few at a time (forced on tiny arrays)."""
    da = make_array(case)
    kw = grid_kwargs(case)
    patches = list(da.patch.sample(**kw))
    order = data.draw(st.permutations(range(len(patches))))
    with pytest.MonkeyPatch.context() as mp:
        if gather:
            _gather_tiny(mp)
        agg = da.patch.aggregator(weights=weights, **kw)
        for i in order:
            agg.add(func(patches[i]))
        results = [agg.result(), da.patch.apply(func, weights=weights, **kw)]
    expected = ref_for(case, da, builtin_weights(weights), func_np)
    for out in results:
        np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-9)


# --- small results gathered and added together ------------------------------------
def _many_small(dims=("y", "x"), shape=(512, 512)):
    rng = np.random.default_rng(5)
    coords = {d: np.arange(n) * 0.5 for d, n in zip(dims, shape) if d != "band"}
    return xr.DataArray(rng.random(shape, dtype=np.float32), dims=dims, coords=coords)


@pytest.mark.parametrize("weights", ["mean", "gaussian"])
@pytest.mark.parametrize(
    "dims, shape", [(("y", "x"), (512, 512)), (("band", "y", "x"), (2, 384, 512))]
)
def test_many_small_patches_are_gathered_and_round_trip(weights, dims, shape):
    """1 KiB patches on a 1 MiB output: gathered by default, same result as one by one."""
    from xpatch import _gather as aggregate

    da = _many_small(dims, shape)
    kw = dict(y=16, x=16, step=8, weights=weights)
    agg = da.patch.aggregator(**kw)
    for window, patch in zip(agg.grid, da.patch.sample(y=16, x=16, step=8)):
        agg.add(patch.values.copy(), window)
    stage = agg._gathering
    assert stage is not None and stage.segments * stage.span >= aggregate.STAGE_MIN
    assert stage.span == agg.grid.shape["x"]  # whole grid rows per flush
    gathered = agg.result()
    assert float(abs(gathered - da).max()) < 1e-6  # identity round trip
    applied = da.patch.apply(lambda p: p.values.copy(), **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aggregate, "STAGE_WINDOWS", 0)  # one by one
        one_by_one = da.patch.apply(lambda p: p.values.copy(), **kw)
    for out in (gathered, applied):
        xr.testing.assert_allclose(out, one_by_one, rtol=1e-6, atol=1e-6)
        assert out.dtype == np.float32


def test_small_outputs_still_cache_weights_and_gather(monkeypatch):
    """A few hundred KiB of cached weights and gathering buffer are allowed next to any
    output: a 64 KiB output does not rebuild a weight per patch."""
    from xpatch._placement import Placement

    da = _many_small(shape=(128, 128))
    kw = dict(y=16, x=16, step=8, weights="gaussian")
    built = []
    keep = Placement._keep  # called once per weight built

    def counted(self, key, *args):
        built.append(key)
        return keep(self, key, *args)

    monkeypatch.setattr(Placement, "_keep", counted)
    agg = da.patch.aggregator(**kw)
    for window, patch in zip(agg.grid, da.patch.sample(y=16, x=16, step=8)):
        agg.add(patch.values.copy(), window)
    assert agg._gathering is not None
    assert len(built) == len(set(built)) < len(agg.grid) / 10  # once per distinct weight
    assert float(abs(agg.result() - da).max()) < 1e-6


def test_gathered_results_partial_twice_and_other_dtypes():
    """Gathered windows count as added at once: for partial results, twice-added errors
    and a result dtype that changes (those are added one by one, still correctly)."""
    from xpatch import _gather as aggregate

    da = _many_small()
    kw = dict(y=16, x=16, step=8, weights="gaussian")
    patches = list(da.patch.sample(y=16, x=16, step=8))
    reference_agg = da.patch.aggregator(**kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aggregate, "STAGE_WINDOWS", 0)
        for i in range(0, len(patches), 3):
            reference_agg.add(patches[i].values.astype(np.float64), reference_agg.grid[i])
        expected = reference_agg.result(partial=True)
    agg = da.patch.aggregator(**kw)
    for i in range(0, len(patches), 3):
        result = patches[i].values.copy()
        agg.add(result if i % 2 else result.astype(np.float64), agg.grid[i])
    assert agg.n_added == reference_agg.n_added
    with pytest.raises(AggregationError, match="already added"):
        agg.add(patches[3].values.copy(), agg.grid[3])
    partial = agg.result(partial=True)
    xr.testing.assert_allclose(partial, expected, rtol=1e-6, atol=1e-6)
    assert np.isnan(partial.values).any()


@pytest.mark.parametrize(
    "dims, shape, size, step, border",
    [
        (("x",), (4096,), 32, 16, "squeeze"),  # 1-D
        (("y", "x"), (256, 520), 16, 8, "squeeze"),  # windows tile each row
        (("y", "x"), (256, 520), 16, 12, "squeeze"),  # they do not: gaps, strided runs
        (("y", "x"), (250, 517), 16, 7, "squeeze"),  # uneven starts
        (("y", "x"), (250, 517), 16, 8, "pad"),  # pad windows are added one by one
        (("band", "y", "x"), (3, 128, 384), 16, 8, "squeeze"),  # a leading dim
        (("z", "y", "x"), (24, 48, 200), 8, 4, "squeeze"),  # 3-D
        (("y", "x"), (64, 300), 16, 2, "squeeze"),  # 8 colours
    ],
)
@pytest.mark.parametrize("pieces", [False, True], ids=["rows", "pieces"])
def test_gathered_runs_equal_one_by_one(dims, shape, size, step, border, pieces):
    """The gathering buffer, laid out as the output, for every kind of run: rows or
    pieces of rows, windows side by side or with gaps, leading dims, 1-D to 3-D."""
    from xpatch import _gather as aggregate

    da = _many_small(dims, shape)
    kw = dict(dict.fromkeys([d for d in dims if d != "band"], size), step=step)
    kw.update(border=border, weights="gaussian")
    agg = da.patch.aggregator(**kw)
    with pytest.MonkeyPatch.context() as mp:
        if pieces:  # a buffer shorter than a grid row
            mp.setattr(aggregate, "STAGE_WINDOWS", 20)
            mp.setattr(aggregate, "STAGE_MIN", 4)
        patches = da.patch.sample(**{k: v for k, v in kw.items() if k != "weights"})
        for window, patch in zip(agg.grid, patches):
            agg.add(patch.values * 2.0, window)
        stage = agg._gathering
        assert stage is not None
        assert (stage.span < agg.grid.shape["x"]) == pieces
        gathered = agg.result()
        mp.setattr(aggregate, "STAGE_WINDOWS", 0)
        one_by_one = da.patch.apply(lambda p: p.values * 2.0, **kw)
    assert gathered.dtype == one_by_one.dtype == np.float32
    xr.testing.assert_allclose(gathered, one_by_one, rtol=1e-6, atol=1e-6)


def test_a_buffer_too_small_for_every_colour_gathers_nothing():
    """Pieces of rows hold a whole number of colours: with fewer places than colours the
    results are added one by one (and correctly)."""
    from xpatch import _gather as aggregate

    da = _many_small(shape=(64, 300))
    kw = dict(y=16, x=16, step=2, weights="gaussian")  # 8 colours along x
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aggregate, "STAGE_WINDOWS", 5)
        mp.setattr(aggregate, "STAGE_MIN", 2)
        agg = da.patch.aggregator(**kw)
        for window, patch in zip(agg.grid, da.patch.sample(y=16, x=16, step=2)):
            agg.add(patch.values.copy(), window)
        assert agg._gathering is None
        assert float(abs(agg.result() - da).max()) < 1e-6


@pytest.mark.parametrize(
    "dtype, shape, size, step",
    [
        (np.uint8, (512, 512), 64, 32),  # a place holds float32: 4x the result's bytes
        (np.int16, (512, 512), 64, 32),
        (np.float32, (64, 1200), 16, 1),  # 16 colours, a row not a multiple of them
        (np.float32, (64, 1100), 16, 16),
    ],
)
def test_the_gathering_buffer_keeps_to_its_room(dtype, shape, size, step):
    """At most 1/32 of the output (or 256 KiB, at most 0.5 MiB), whatever the result's
    dtype and however a grid row divides into colours; results still right."""
    from xpatch import _gather as aggregate

    da = _many_small(shape=shape)
    kw = dict(y=size, x=size, step=step, weights="gaussian")
    agg = da.patch.aggregator(**kw)
    for window, patch in zip(agg.grid, da.patch.sample(y=size, x=size, step=step)):
        agg.add((patch.values * 100).astype(dtype), window)
    stage = agg._gathering
    assert stage is not None
    out_bytes = da.size * 4
    room = min(
        aggregate.STAGE_BYTES, max(out_bytes // aggregate.STAGE_SHARE, aggregate.SMALL_BYTES)
    )
    assert stage.array.nbytes <= room
    expected = (da * 100).astype(dtype).astype(np.float32)
    xr.testing.assert_allclose(agg.result(), expected, rtol=1e-5, atol=1e-4)


def test_a_row_of_tiling_windows_is_added_as_one_block():
    """With a step of half the patch size, each colour of a grid row is one run: a block
    of the output whose rows are as long as the run."""

    da = _many_small(shape=(64, 512))
    agg = da.patch.aggregator(y=16, x=16, step=8, weights="gaussian")
    windows = list(agg.grid)
    row = agg.grid.shape["x"]
    for window, patch in zip(windows[:row], da.patch.sample(y=16, x=16, step=8)):
        agg.add(patch.values.copy(), window)
    runs = agg._gathering._runs()
    assert len(runs) == 2  # one per colour
    for target, block, _, source in runs:
        assert source is block and target.shape == block.shape
        assert target.shape[0] == 16 and target.shape[1] >= 16 * (row // 2)


def test_a_failing_weighting_still_adds_every_gathered_window():
    """An underflow under np.errstate(under="raise") while a gathered run is weighted:
    the error is raised, and every gathered window is in the output all the same."""
    da = _many_small()
    kw = dict(y=16, x=16, step=8, weights="gaussian")
    agg = da.patch.aggregator(**kw)
    windows = list(agg.grid)
    tiny = {windows[40].index}  # subnormal values: their weighting underflows
    with np.errstate(under="raise"):
        with pytest.raises(FloatingPointError):
            for w in windows:
                agg.add(np.full((16, 16), 1e-44 if w.index in tiny else 1.0, np.float32), w)
            agg.result()
    for w in windows:  # whatever was not added yet when the error came
        if not agg._tally.added[w.index]:
            agg.add(np.full((16, 16), 1.0, np.float32), w)
    out = agg.result().values
    assert agg.n_added == len(windows)
    touched = np.zeros(da.shape, bool)
    touched[windows[40]["y"], windows[40]["x"]] = True
    np.testing.assert_allclose(out[~touched], 1.0, rtol=1e-6)  # every other window is in
    assert (out[touched] < 1.0).any()  # and the tiny one too


def test_small_object_results_are_added_one_by_one():
    """Object arrays are never gathered (the gathering buffer is numeric)."""
    da = _many_small()
    out = da.patch.apply(lambda p: p.values.astype(object), y=16, x=16, step=8, weights="mean")
    np.testing.assert_allclose(out.values, da.values, rtol=1e-6)


def test_a_failing_flush_still_adds_every_gathered_window():
    """inf - inf under np.errstate(invalid="raise"): the error is raised, and every
    gathered window is in the output all the same (none counted as added but lost)."""
    da = _many_small()
    kw = dict(y=16, x=16, step=8, weights="mean")
    agg = da.patch.aggregator(**kw)
    windows = list(agg.grid)
    bad = {windows[40].index: np.inf, windows[41].index: -np.inf}  # they overlap
    results = {w.index: np.full((16, 16), bad.get(w.index, 1.0), np.float32) for w in windows}
    with np.errstate(invalid="raise"):
        with pytest.raises(FloatingPointError):
            for w in windows:
                agg.add(results[w.index], w)
            agg.result()
    for w in windows:  # whatever was not added yet when the error came
        if not agg._tally.added[w.index]:
            agg.add(results[w.index], w)
    with np.errstate(invalid="ignore"):
        out = agg.result().values
    assert agg.n_added == len(windows)
    touched = np.zeros(da.shape, bool)
    for i in (40, 41):
        touched[windows[i]["y"], windows[i]["x"]] = True
    np.testing.assert_allclose(out[~touched], 1.0, rtol=1e-6)  # every other window is in
    assert np.isnan(out[touched]).any()


@pytest.mark.parametrize("pad_mode", ["constant", "edge", "reflect", "symmetric", "wrap"])
def test_locate_pad_border_patches_by_extrapolated_coords(pad_mode):
    da = image(8, 11)
    da = da.assign_coords(y=np.linspace(10.0, 6.5, 8), x=np.arange(11) * 0.5 - 2)
    kw = dict(y=4, x=4, step=3, border="pad", pad_mode=pad_mode)
    agg = da.patch.aggregator(weights="hann", **kw)
    grid = agg.grid
    assert grid.starts["y"][0] < 0 and grid.starts["x"][0] < 0
    patches = list(da.patch.sample(**kw))
    for patch in reversed(patches):  # order must not matter
        agg.add(patch * 3 + float(patch.mean()))
    expected = reference(
        da.values,
        [1, 2],
        [4, 4],
        [3, 3],
        "pad",
        builtin_weights("hann"),
        lambda x, s: x * 3 + x.mean(),
        pad_mode=pad_mode,
    )
    out = agg.result()
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)
    np.testing.assert_array_equal(out["y"].values, da["y"].values)
    np.testing.assert_array_equal(out["x"].values, da["x"].values)


def test_locate_by_datetime_and_descending_coords():
    da = image(8, 10).assign_coords(
        y=np.linspace(60.0, 52.0, 8), x=pd.date_range("2000-01-01", periods=10, freq="D")
    )
    for border in BORDERS:
        kw = dict(y=3, x=4, step=2, border=border)
        agg = da.patch.aggregator(weights="gaussian", **kw)
        for patch in da.patch.sample(**kw):
            agg.add(patch - 1)
        out = agg.result()
        expected = reference(
            da.values,
            [1, 2],
            [3, 4],
            [2, 2],
            border,
            builtin_weights("gaussian"),
            lambda x, s: x - 1,
        )
        np.testing.assert_allclose(out.values, expected, rtol=1e-12)


def test_locate_needs_coordinates():
    da = xr.DataArray(np.zeros((6, 6)), dims=("y", "x"))
    agg = da.patch.aggregator(y=3, x=3)
    with pytest.raises(AggregationError, match=r"'y'.*pass the window"):
        agg.add(xr.DataArray(np.zeros((3, 3)), dims=("y", "x")))
    with pytest.raises(AggregationError, match=r"ndarray.*pass the window"):
        agg.add(np.zeros((3, 3)))
    assert agg.n_added == 0


def test_locate_rejects_unknown_start():
    da = image(6, 6)
    agg = da.patch.aggregator(y=3, x=3)
    patch = da.isel(y=slice(1, 4), x=slice(0, 3))  # starts at y=1: no window there
    with pytest.raises(AggregationError, match=r"y=.*1.*not the start"):
        agg.add(patch)


def test_bare_array_results_with_window_and_output_dims():
    da = image(6, 8)
    agg = da.patch.aggregator(y=3, x=4, step=2, weights="mean", output_dims=("y", "x", "k"))
    for window in agg.grid:
        region = da.isel(window).values  # (band, y, x)
        agg.add(np.moveaxis(region, 0, -1) + window.index, window)
    out = agg.result()
    assert out.dims == ("y", "x", "k")
    grid = agg.grid
    idx = {
        (int(a), int(b)): i
        for i, (a, b) in enumerate(itertools.product(grid.starts["y"], grid.starts["x"]))
    }
    expected = reference(
        np.moveaxis(da.values, 0, -1),
        [0, 1],
        [3, 4],
        [2, 2],
        "squeeze",
        builtin_weights("mean"),
        lambda x, s: x + idx[s],
    )
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)


def test_aggregator_class_equals_accessor():
    da = image()
    grid = da.patch.grid(y=4, x=4, step=2, border="edge")
    direct = xpatch.Aggregator(da, grid, weights="hann")
    via = da.patch.aggregator(y=4, x=4, step=2, border="edge", weights="hann")
    for window, patch in zip(grid, da.patch.sample(y=4, x=4, step=2, border="edge")):
        direct.add(patch * 2, window)
        via.add(patch * 2)
    xr.testing.assert_identical(direct.result(), via.result())


def test_dataset_aggregator_by_coords():
    da = image()
    ds = xr.Dataset({"a": da, "b": da.isel(band=0, drop=True) * 10, "meta": ("band", [1, 2])})
    kw = dict(y=4, x=5, step=2, border="adaptive")
    agg = ds.patch.aggregator(weights="gaussian", **kw)
    for patch in ds.patch.sample(**kw):
        assert set(patch.data_vars) == {"a", "b"}
        agg.add(patch + 1)
    out = agg.result()
    assert isinstance(out, xr.Dataset) and set(out.data_vars) == {"a", "b"}
    np.testing.assert_allclose(out["a"].values, da.values + 1, rtol=1e-12)
    np.testing.assert_allclose(out["b"].values, da.isel(band=0).values * 10 + 1, rtol=1e-12)


# --- errors ------------------------------------------------------------------------
def test_window_added_twice():
    da = image()
    agg = da.patch.aggregator(y=3, x=4, step=2, weights="hann")
    patches = list(da.patch.sample(y=3, x=4, step=2))
    agg.add(patches[0] + 1, agg.grid[0])
    with pytest.raises(AggregationError, match=r"<Window 0: y=0:3, x=0:4>.*already added"):
        agg.add(patches[0] + 1, agg.grid[0])
    with pytest.raises(AggregationError, match=r"<Window 0: y=0:3, x=0:4>.*already added"):
        agg.add(patches[0] + 1)  # located by coords
    # the failed adds left nothing behind: the result is still right
    for patch in patches[1:]:
        agg.add(patch + 1)
    np.testing.assert_allclose(agg.result().values, da.values + 1, rtol=1e-12)


def test_window_of_another_grid():
    da = image()
    agg = da.patch.aggregator(y=3, x=4, step=2)
    other = da.patch.grid(y=3, x=4, step=3)
    with pytest.raises(AggregationError, match=r"<Window 1: .*not a window of this grid"):
        agg.add(np.zeros((2, 3, 4)), other[1])
    with pytest.raises(TypeError, match=r"window must be a Window.*dict"):
        agg.add(np.zeros((2, 3, 4)), {"y": slice(0, 3), "x": slice(0, 4)})


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda p: p.isel(x=slice(0, 3)), r".*spatial sizes.*'x': 3"),
        (lambda p: p.isel(y=0), r".*lacks the spatial dims \['y'\]"),
        (lambda p: np.asarray(p)[..., :3], r".*'x': 3"),
        (lambda p: np.asarray(p)[0], r".*shape \(3, 4\)"),
    ],
)
def test_result_of_wrong_shape(bad, match):
    da = image()
    agg = da.patch.aggregator(y=3, x=4, step=2, weights="mean")
    windows_ = list(agg.grid)
    patches = list(da.patch.sample(y=3, x=4, step=2))
    assert repr(windows_[6]) == "<Window 6: y=2:5, x=2:6>"
    with pytest.raises(ResultError, match=re.escape(repr(windows_[6])) + match):
        agg.add(bad(patches[6]), windows_[6])
    assert agg.n_added == 0
    for w, p in zip(windows_, patches):  # the window can still be added correctly
        agg.add(p, w)
    np.testing.assert_allclose(agg.result().values, da.values, rtol=1e-12)


def test_result_with_inconsistent_non_spatial_dims():
    da = image()
    agg = da.patch.aggregator(y=3, x=4, step=2)
    patches = list(da.patch.sample(y=3, x=4, step=2))
    agg.add(patches[0], agg.grid[0])
    with pytest.raises(ResultError, match=r"<Window 1: y=0:3, x=2:6>.*'band': 1"):
        agg.add(patches[1].isel(band=[0]), agg.grid[1])


def test_result_with_missing_windows():
    da = image(9, 11)
    agg = da.patch.aggregator(y=3, x=4, step=2, weights="gaussian")
    grid = agg.grid
    n = len(grid)
    with pytest.raises(IncompleteError, match=rf"{n} of {n} windows.*<Window 0: y=0:3, x=0:4>"):
        agg.result()
    patches = list(da.patch.sample(y=3, x=4, step=2))
    for i in [0, 1, 3, 4, 5, 7]:
        agg.add(patches[i])
    missing = [w for w in grid if w.index not in {0, 1, 3, 4, 5, 7}]
    first = ", ".join(map(repr, missing[:3]))
    with pytest.raises(IncompleteError, match=rf"{n - 6} of {n} windows") as info:
        agg.result()
    assert first in str(info.value)
    assert "partial=True" in str(info.value)
    assert isinstance(info.value, AggregationError) and isinstance(info.value, ValueError)
    assert "<Window 0:" not in str(info.value)


def test_result_twice_is_the_same():
    # Patchly's get_output returns raw weighted sums on a second call.
    da = image()
    agg = da.patch.aggregator(y=4, x=4, step=2, weights="gaussian")
    for patch in da.patch.sample(y=4, x=4, step=2):
        agg.add(patch)
    first = agg.result().copy(deep=True)
    second = agg.result()
    xr.testing.assert_identical(first, second)
    np.testing.assert_allclose(second.values, da.values, rtol=1e-12)


# --- partial results ------------------------------------------------------------------
@settings(deadline=None)
@given(case=cases(), weights=st.sampled_from(WEIGHTS), data=st.data())
def test_partial_result_normalises_over_added_windows(case, weights, data):
    da = make_array(case)
    kw = grid_kwargs(case)
    agg = da.patch.aggregator(weights=weights, **kw)
    patches = list(da.patch.sample(**kw))
    subset = data.draw(st.sets(st.integers(0, len(patches) - 1), min_size=1, max_size=len(patches)))
    for i in sorted(subset):
        agg.add(func(patches[i]))
    out = agg.result(partial=True)
    expected = ref_for(case, da, builtin_weights(weights), func_np, subset=subset)
    np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-9)
    assert out.dims == da.dims


def test_partial_result_fills_uncovered_with_nan():
    da = image(8, 8)
    agg = da.patch.aggregator(y=4, x=4, weights="mean")
    agg.add(da.isel(y=slice(0, 4), x=slice(0, 4)))
    out = agg.result(partial=True)
    np.testing.assert_allclose(out.values[:, :4, :4], da.values[:, :4, :4])
    assert np.isnan(out.values[:, 4:, :]).all() and np.isnan(out.values[:, :, 4:]).all()
    agg2 = da.patch.aggregator(y=4, x=4, weights="mean", fill_value=-1.0)
    agg2.add(da.isel(y=slice(4, 8), x=slice(4, 8)))
    out2 = agg2.result(partial=True)
    assert (out2.values[:, :4, :] == -1).all()
    np.testing.assert_allclose(out2.values[:, 4:, 4:], da.values[:, 4:, 4:])


@pytest.mark.parametrize("chunks", [None, 4])
def test_partial_result_is_a_preview_never_a_stale_final_result(chunks):
    # A partial result mid-loop must not freeze what the final result() returns:
    # adding the remaining windows either works or is refused, never silently lost.
    da = image(8, 8)
    agg = da.patch.aggregator(y=4, x=4, step=2, weights="gaussian", chunks=chunks)
    patches = list(da.patch.sample(y=4, x=4, step=2))
    for p in patches[:4]:
        agg.add(p)
    preview = agg.result(partial=True)
    assert preview.isnull().any()
    try:
        for p in patches[4:]:
            agg.add(p)
    except xpatch.PatchError:
        return  # refusing to add after a result is acceptable
    full = agg.result()
    assert not full.isnull().any()
    np.testing.assert_allclose(full.values, da.values, rtol=1e-12)


@pytest.mark.parametrize("chunks", [None, 4, {"x": 6}])
def test_partial_result_with_chunks(chunks):
    da = image(12, 12)
    agg = da.patch.aggregator(y=4, x=4, step=2, weights="hann", chunks=chunks)
    patches = list(da.patch.sample(y=4, x=4, step=2))
    subset = set(range(0, len(patches), 3))
    for i in sorted(subset):
        agg.add(func(patches[i]))
    expected = reference(
        da.values,
        [1, 2],
        [4, 4],
        [2, 2],
        "squeeze",
        builtin_weights("hann"),
        func_np,
        subset=subset,
    )
    np.testing.assert_allclose(agg.result(partial=True).values, expected, rtol=1e-12)


# --- custom weights ---------------------------------------------------------------------
@settings(deadline=None)
@given(
    case=cases(borders=("squeeze", "edge", "crop", "pad")),
    kind=st.sampled_from(["array", "dataarray", "callable"]),
    chunked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_custom_weights_match_reference(case, kind, chunked, seed):
    da = make_array(case)
    sp = case["spatial"]
    shape = tuple(case["size"][d] for d in sp)
    w_arr = np.random.default_rng(seed).random(shape) + 0.05
    if kind == "array":
        weights = w_arr
    elif kind == "dataarray":  # dims matched by name, not position
        weights = xr.DataArray(w_arr, dims=sp).transpose(*reversed(sp))
    else:

        def weights(size):
            assert dict(size) == dict(zip(sp, shape))
            return w_arr

    kw = grid_kwargs(case)
    chunks = {d: max(case["size"][d], 2) for d in sp} if chunked else None
    agg = da.patch.aggregator(weights=weights, chunks=chunks, **kw)
    for patch in da.patch.sample(**kw):
        agg.add(func(patch))
    expected = ref_for(case, da, lambda s: w_arr, func_np)
    np.testing.assert_allclose(agg.result().values, expected, rtol=1e-9, atol=1e-9)
    out = da.patch.apply(func, weights=weights, chunks=chunks, **kw)
    np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-9)


def test_custom_weights_callable_adaptive_gets_each_patch_size():
    da = image(11, 11)
    sizes_seen = []

    def weights(size):
        sizes_seen.append(dict(size))
        return np.add.outer(np.arange(size["y"]), np.arange(size["x"])) + 1.0

    agg = da.patch.aggregator(y=4, x=4, step=3, border="adaptive", weights=weights)
    for patch in da.patch.sample(y=4, x=4, step=3, border="adaptive"):
        agg.add(func(patch))
    expected = reference(
        da.values,
        [1, 2],
        [4, 4],
        [3, 3],
        "adaptive",
        lambda s: np.add.outer(np.arange(s[0]), np.arange(s[1])) + 1.0,
        func_np,
    )
    np.testing.assert_allclose(agg.result().values, expected, rtol=1e-12)
    assert {tuple(s.values()) for s in sizes_seen} == {(4, 4), (2, 4), (4, 2), (2, 2)}


def test_custom_weights_partial():
    da = image(10, 10)
    w = np.random.default_rng(3).random((4, 4)) + 0.1
    agg = da.patch.aggregator(y=4, x=4, step=2, weights=w)
    patches = list(da.patch.sample(y=4, x=4, step=2))
    subset = {0, 2, 3, 7, 11}
    for i in sorted(subset):
        agg.add(func(patches[i]))
    expected = reference(
        da.values, [1, 2], [4, 4], [2, 2], "squeeze", lambda s: w, func_np, subset=subset
    )
    np.testing.assert_allclose(agg.result(partial=True).values, expected, rtol=1e-12)


def test_custom_weights_errors():
    da = image()
    with pytest.raises(WeightsError, match=r"\{'y': 3, 'x': 4\}.*\(4, 3\)"):
        da.patch.aggregator(y=3, x=4, weights=np.ones((4, 3)))
    with pytest.raises(WeightsError, match=r"finite"):
        da.patch.aggregator(y=3, x=4, weights=np.full((3, 4), np.nan))
    with pytest.raises(WeightsError, match=r"spatial dims.*'band'"):
        da.patch.aggregator(y=3, x=4, weights=xr.DataArray(np.ones((3, 4)), dims=("band", "x")))


# --- chunks and on_chunk ---------------------------------------------------------------
@settings(deadline=None)
@given(case=cases(), weights=st.sampled_from(WEIGHTS), data=st.data())
def test_chunks_give_the_same_result(case, weights, data):
    da = make_array(case)
    kw = grid_kwargs(case)
    sp = case["spatial"]
    lengths = dict(zip(case["dims"], case["shape"]))
    # chunks may be smaller than the patch: a patch then feeds several chunks
    chunks = {d: data.draw(st.integers(1, lengths[d] + 2), label=d) for d in sp}
    calls = []

    def on_chunk(c):
        calls.append({d: (int(c[d][0]), int(c.sizes[d])) for d in sp})
        return c

    plain = da.patch.apply(func, weights=weights, **kw)
    chunked = da.patch.apply(func, weights=weights, chunks=chunks, on_chunk=on_chunk, **kw)
    xr.testing.assert_allclose(chunked, plain, rtol=1e-12, atol=1e-12)
    n_chunks = math.prod(math.ceil(lengths[d] / min(chunks[d], lengths[d])) for d in sp)
    assert len(calls) == n_chunks
    assert len({tuple(sorted(c.items())) for c in calls}) == n_chunks  # each chunk once
    assert sum(math.prod(n for _, n in c.values()) for c in calls) == math.prod(
        lengths[d] for d in sp
    )
    # the hand-written loop with chunks agrees too
    agg = da.patch.aggregator(weights=weights, chunks=chunks, **kw)
    for patch in da.patch.sample(**kw):
        agg.add(func(patch))
    xr.testing.assert_allclose(agg.result(), plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("chunks", [5, {"y": 7, "x": 5}])
def test_on_chunk_argmax_equals_unchunked_argmax(border, chunks):
    rng = np.random.default_rng(4)
    da = xr.DataArray(
        rng.random((3, 13, 12)),
        dims=("band", "y", "x"),
        coords={"y": np.arange(13), "x": np.arange(12)},
    )

    def scores(p):
        return (p * 2).rename(band="class").assign_coords({"class": ["a", "b", "c"]})

    kw = dict(y=5, x=4, step=3, border=border, weights="gaussian")
    plain = da.patch.apply(scores, **kw)
    counts = []

    def on_chunk(c):
        counts.append(1)
        assert c.dims == ("class", "y", "x")
        return c.argmax("class", skipna=False)

    labels = da.patch.apply(scores, chunks=chunks, on_chunk=on_chunk, **kw)
    assert labels.dims == ("y", "x")
    assert np.issubdtype(labels.dtype, np.integer)
    expected = plain.fillna(0).argmax("class").values
    if border == "crop":
        uncovered = plain.isnull().any("class").values
        assert uncovered.any()
        expected = np.where(uncovered, 0, expected)
    np.testing.assert_array_equal(labels.values, expected)
    c = {"y": 5, "x": 5} if chunks == 5 else chunks
    assert len(counts) == math.ceil(13 / c["y"]) * math.ceil(12 / c["x"])


def test_aggregator_on_chunk_runs_as_chunks_complete():
    da = image(8, 8)
    finished = []
    agg = da.patch.aggregator(
        y=4, x=4, step=2, weights="hann", chunks=4, on_chunk=lambda c: finished.append(1) or c
    )
    windows_ = list(agg.grid)
    patches = list(da.patch.sample(y=4, x=4, step=2))
    # chunk (0, 0) = y 0:4, x 0:4 is touched by the windows starting at 0 and 2 on each axis
    needed = [w for w in windows_ if w["y"].start < 4 and w["x"].start < 4]
    for w in needed:
        agg.add(patches[w.index], w)
    assert len(finished) == 1
    assert "1/4 chunks finished" in repr(agg)
    for w in windows_:
        if w not in needed:
            agg.add(patches[w.index], w)
    assert len(finished) == 4
    np.testing.assert_allclose(agg.result().values, da.values, rtol=1e-12)
    assert len(finished) == 4


def test_on_chunk_result_with_wrong_spatial_size():
    da = image(8, 8)
    with pytest.raises(ResultError, match=r"on_chunk.*y=0:4, x=0:4"):
        da.patch.apply(lambda p: p, y=4, x=4, chunks=4, on_chunk=lambda c: c.isel(x=slice(1)))


def test_on_chunk_not_callable():
    da = image(8, 8)
    with pytest.raises(TypeError, match=r"on_chunk must be callable"):
        da.patch.aggregator(y=4, x=4, on_chunk=3)

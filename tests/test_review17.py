"""Review 17: adversarial probes of the paths that make xpatch scale.

- the dask path (``parallel.py``, ``_tasks.py``) against the eager one on awkward
  geometry, with and without thin cut tasks (``THIN_BYTES``), and each patch computed
  once;
- ``out=`` on dask input (threaded scheduler and a process ``LocalCluster``): equal to
  eager, resume, refusal to overwrite;
- the eager out-of-core path under a small ``XPATCH_MEMORY_BUDGET``: spills,
  ``on_chunk`` once per chunk, resume after an exception;
- lazy file sources (``_reader.py``, rows and tiles): equal to in-memory, read-only
  patches, read errors naming the window.
"""

from __future__ import annotations

import threading

import dask
import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401  (registers the accessor)
from xpatch import parallel

BORDERS = ("squeeze", "edge", "adaptive", "crop", "pad")


# --- helpers ---------------------------------------------------------------------------
class Counter:
    """A func that counts the windows it sees, safely across threads."""

    def __init__(self, func):
        self.func = func
        self.windows = 0
        self._lock = threading.Lock()

    def __call__(self, patch):
        with self._lock:
            self.windows += patch.sizes.get("patch", 1)
        return self.func(patch)


def image(shape, dims, seed=0, dtype=np.float32, name="img"):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        data = rng.integers(0, 100, shape).astype(dtype)
    else:
        data = (rng.random(shape) * 4 - 1).astype(dtype)
    coords = {d: np.arange(n, dtype=np.float64) * 0.5 + 10 for d, n in zip(dims, shape)}
    if "band" in dims:
        coords["band"] = ["r", "g", "b", "n"][: shape[dims.index("band")]]
    return xr.DataArray(data, dims=dims, coords=coords, name=name, attrs={"units": "K"})


def assert_same(lazy, eager):
    if isinstance(eager, xr.Dataset):
        assert isinstance(lazy, xr.Dataset)
        assert set(lazy.data_vars) == set(eager.data_vars)
        for k in eager.data_vars:
            assert_same(lazy[k], eager[k])
        return
    assert isinstance(lazy, xr.DataArray)
    assert lazy.dims == eager.dims
    assert lazy.dtype == eager.dtype, (lazy.dtype, eager.dtype)
    assert lazy.name == eager.name
    np.testing.assert_allclose(lazy.values, eager.values, rtol=2e-5, atol=2e-6, equal_nan=True)
    assert set(lazy.coords) == set(eager.coords)
    for k in eager.coords:
        np.testing.assert_array_equal(lazy[k].values, eager[k].values)


@pytest.fixture(params=[False, True], ids=["light", "thin-tasks"])
def thin(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(parallel, "THIN_BYTES", 0)
    return request.param


def dask_vs_eager(da, func, in_chunks, expected_calls=None, **kw):
    """Eager apply, then the dask apply of ``da.chunk(in_chunks)`` computed threaded,
    counting ``func``'s windows; both results compared."""
    eager = da.patch.apply(func, **kw)
    counter = Counter(func)
    lazy = da.chunk(in_chunks).patch.apply(counter, **kw)
    built = counter.windows
    assert built <= 1  # at most the one dry call
    with dask.config.set(scheduler="threads", num_workers=2):
        computed = lazy.compute()
    assert_same(computed, eager)
    if expected_calls is not None:
        assert counter.windows - built == expected_calls
    return counter, built


def n_windows(da, **kw):
    apply_only = ("weights", "on_chunk", "batch_size", "chunks", "halo", "scale", "output_dims")
    kw = {k: v for k, v in kw.items() if k not in (*apply_only, "template")}
    grid = da.patch.grid(**kw)
    return len(grid) if grid.kept is None else int(grid.kept.sum())


# --- 1. dask == eager on awkward geometry -------------------------------------------------
@pytest.mark.parametrize("border", BORDERS)
def test_1d_blocks_smaller_than_step_and_overlap(border, thin):
    da = image((23,), ("x",))
    kw = {"x": 7, "step": 5, "border": border}
    if border == "pad":
        kw["pad_mode"] = "reflect"
    dask_vs_eager(
        da,
        lambda p: p * 2 + p.mean(),
        {"x": (2, 1, 3, 1, 4, 5, 7)},
        n_windows(da, **kw),
        chunks={"x": 2},
        **kw,
    )


@pytest.mark.parametrize("border", BORDERS)
def test_2d_irregular_input_chunks_and_other_output_chunks(border, thin):
    da = image((19, 17), ("y", "x"))
    kw = {"y": 6, "x": 5, "step": {"y": 4, "x": 2}, "border": border, "weights": "hann"}
    dask_vs_eager(
        da,
        lambda p: p - p.mean() + p**2,
        {"y": (1, 7, 2, 9), "x": (3, 3, 1, 10)},
        n_windows(da, **kw),
        chunks={"y": 3, "x": 4},
        **kw,
    )


@pytest.mark.parametrize("border", ["squeeze", "pad"])
def test_3d_blocks_of_one(border, thin):
    da = image((7, 6, 5), ("z", "y", "x"))
    kw = {"z": 3, "y": 4, "x": 3, "step": 2, "border": border}
    dask_vs_eager(da, lambda p: p * p.sum(), 1, n_windows(da, **kw), **kw)


def test_4d_with_a_non_spatial_dim_in_the_middle(thin):
    da = image((6, 3, 9, 8), ("z", "band", "y", "x"))
    kw = {"z": 4, "y": 5, "x": 4, "step": {"z": 2, "y": 3, "x": 3}, "border": "adaptive"}
    dask_vs_eager(
        da,
        lambda p: (p * p.mean("band")).rename(band="c"),
        {"z": (2, 4), "band": (1, 2), "y": (5, 4), "x": (3, 5)},
        n_windows(da, **kw),
        chunks={"z": 3, "y": 2, "x": 5},
        **kw,
    )


def test_dataset_of_variables_with_different_dims(thin):
    ds = xr.Dataset(
        {
            "a": image((13, 11), ("y", "x")),
            "b": image((2, 13, 11), ("band", "y", "x"), seed=1, dtype=np.float64),
            "c": image((11, 13), ("x", "y"), seed=2),  # spatial dims the other way round
            "row": image((11,), ("x",), seed=3),  # not every spatial dim: not in the patch
        }
    )

    def func(p):
        assert "row" not in p.data_vars
        return xr.Dataset({"s": p["a"] + p["c"], "t": p["b"] * p["a"].mean()})

    kw = {"y": 5, "x": 4, "step": 3, "border": "pad", "pad_mode": "symmetric"}
    eager = ds.patch.apply(func, **kw)
    counter = Counter(func)
    lazy = ds.chunk({"y": (2, 6, 5), "x": (4, 1, 6)}).patch.apply(counter, **kw)
    computed = lazy.compute(scheduler="threads")
    assert_same(computed, eager)
    assert counter.windows == n_windows(ds, **kw) + 1


@pytest.mark.parametrize("border", BORDERS)
def test_halo(border, thin):
    da = image((21, 18), ("y", "x"))
    kw = {"y": 6, "x": 5, "step": 4, "halo": 2, "border": border}
    dask_vs_eager(
        da, lambda p: p * 3 - p.mean(), {"y": (5, 3, 13), "x": 4}, n_windows(da, **kw), **kw
    )


@pytest.mark.parametrize("factor", [2, 0.5])
def test_scale(factor, thin):
    da = image((16, 12), ("y", "x"))
    kw = {"y": 4, "x": 4, "step": 2, "scale": factor}

    def func(p):
        if factor == 2:
            return p.interp(
                y=np.linspace(float(p.y[0]), float(p.y[-1]), 2 * p.sizes["y"]),
                x=np.linspace(float(p.x[0]), float(p.x[-1]), 2 * p.sizes["x"]),
            ).drop_vars(["y", "x"])
        return p.coarsen(y=2, x=2).mean().drop_vars(["y", "x"])

    # odd input blocks: 1/2 of them is no whole block, so chunks= is given (as the
    # refusal says) where the factor is 1/2
    out_chunks = {"chunks": 4} if factor == 0.5 else {}
    dask_vs_eager(da, func, {"y": (3, 5, 8), "x": 6}, n_windows(da, **kw), **out_chunks, **kw)


@pytest.mark.parametrize("border", ["squeeze", "crop", "pad"])
def test_mask(border, thin):
    da = image((20, 18), ("y", "x"))
    mask = xr.zeros_like(da, dtype=bool)
    mask[2:6, 3:5] = True
    mask[14:, 15:] = True
    kw = {"y": 5, "x": 4, "step": 3, "mask": mask, "border": border}
    dask_vs_eager(da, lambda p: p + 1, {"y": (4, 4, 12), "x": 3}, n_windows(da, **kw), **kw)


def test_mask_predicate(thin):
    da = image((20, 18), ("y", "x"))
    kw = {"y": 5, "x": 4, "step": 3, "mask": lambda p: bool(p.mean() > 0.8)}
    dask_vs_eager(da, lambda p: p + 1, {"y": (4, 4, 12), "x": 3}, **kw)


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_batches(batch_size, thin):
    da = image((2, 17, 15), ("band", "y", "x"))
    kw = {"y": 5, "x": 6, "step": 3, "batch_size": batch_size, "border": "adaptive"}
    dask_vs_eager(
        da, lambda b: b.sum("band") * 2, {"y": (3, 14), "x": (5, 5, 5)}, n_windows(da, **kw), **kw
    )


def test_on_chunk_changes_dtype_and_dims(thin):
    da = image((18, 16), ("y", "x"))

    def func(p):
        return xr.concat([p, -p, p**2], dim="class")

    kw = {
        "y": 6,
        "x": 5,
        "step": 3,
        "border": "crop",
        "on_chunk": lambda c: c.fillna(-9).argmax("class").astype("uint8"),
    }
    dask_vs_eager(da, func, {"y": (7, 11), "x": (2, 14)}, n_windows(da, **kw), **kw)


def test_several_outputs(thin):
    da = image((3, 15, 14), ("band", "y", "x"))

    def func(p):
        return {"mean": p.mean("band"), "scores": (p * 2).rename(band="c"), "raw": p.values[0]}

    kw = {"y": 5, "x": 6, "step": 4, "border": "edge", "output_dims": {"raw": ("y", "x")}}
    dask_vs_eager(da, func, {"y": (5, 10), "x": (1, 13), "band": 2}, n_windows(da, **kw), **kw)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, bool])
def test_integer_input(dtype, thin):
    da = image((14, 13), ("y", "x"), dtype=np.int16 if dtype is bool else dtype)
    if dtype is bool:
        da = da > 50
    kw = {"y": 5, "x": 5, "step": 3}
    dask_vs_eager(da, lambda p: p, {"y": 4, "x": (6, 7)}, n_windows(da, **kw), **kw)


@pytest.mark.parametrize("how", ["template", "output_dims"])
def test_no_dry_call_when_the_layout_is_told(how, thin):
    da = image((16, 14), ("y", "x"))
    kw = {"y": 5, "x": 4, "step": 3}
    if how == "template":
        kw["template"] = xr.DataArray(np.zeros((2, 1, 1), np.float32), dims=("c", "y", "x"))

        def func(p):
            return xr.concat([p, p * 2], "c")
    else:
        kw["output_dims"] = ("c", "y", "x")

        def func(p):
            return np.stack([p.values, p.values * 2])

    eager = da.patch.apply(func, **kw)
    counter = Counter(func)
    lazy = da.chunk({"y": 3, "x": 5}).patch.apply(counter, **kw)
    built = counter.windows
    computed = lazy.compute(scheduler="threads")
    assert_same(computed, eager)
    assert counter.windows == n_windows(da, **kw) + built
    if how == "template":
        assert built == 0


# --- 2. out= on dask input ------------------------------------------------------------------
OUT_KW = {"y": 8, "x": 8, "step": 6, "chunks": 12}


def _twice(p):
    return p * 2


def _thrice(p):
    return p * 3


def _scene():
    return image((40, 36), ("y", "x"), name="v")


def test_dask_out_threaded_equals_eager_and_refuses_to_overwrite(tmp_path):
    da = _scene()
    path = tmp_path / "o.zarr"
    with dask.config.set(scheduler="threads", num_workers=2):
        out = da.chunk(12).patch.apply(_twice, **OUT_KW, out=path)
    assert_same(out.compute(), da.patch.apply(_twice, **OUT_KW))
    from xpatch.store import StoreError

    with pytest.raises(StoreError, match="already holds"):
        da.chunk(12).patch.apply(_thrice, **OUT_KW, out=path)
    back = xr.open_zarr(path)["v"].load()  # untouched by the refusal
    assert_same(back, da.patch.apply(_twice, **OUT_KW))


def test_dask_out_resume_skips_the_finished_blocks(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from reference import failing_at

    da = _scene()
    path = tmp_path / "o.zarr"
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="killed"):
        da.chunk(12).patch.apply(failing_at(30, _twice), **OUT_KW, out=path)
    marks = sorted(m.name for m in (tmp_path / "o.zarr.xpatch-done").iterdir())
    assert 0 < len(marks) < 12
    chunk_files = {m: path / "v" / "c" / m.replace("_", "/") for m in marks}
    written = {m: f.stat().st_mtime_ns for m, f in chunk_files.items()}
    counter = Counter(_twice)
    with dask.config.set(scheduler="threads", num_workers=2):
        out = da.chunk(12).patch.apply(counter, **OUT_KW, out=path, resume=True)
    assert_same(out.compute(), da.patch.apply(_twice, **OUT_KW))
    # the finished blocks are not written again ...
    assert {m: f.stat().st_mtime_ns for m, f in chunk_files.items()} == written
    # ... but their groups are computed again where an unfinished block needs their
    # sums (whole groups: here every window; eager resume computes 30 of the 42)
    assert counter.windows <= n_windows(da, **OUT_KW) + 2  # + dry call, fingerprint check
    assert not (tmp_path / "o.zarr.xpatch-done").exists()


@pytest.mark.parametrize("how", ["overwrite", "store-deleted"])
def test_dask_out_afresh_after_an_interrupted_run_ignores_its_markers(tmp_path, how):
    """An interrupted dask run leaves markers of its finished blocks beside the store; a
    run that starts the store afresh (overwrite=True, or the store deleted by hand) must
    not take them for its own finished blocks."""
    import shutil
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from reference import failing_at

    da = _scene()
    path = tmp_path / "o.zarr"
    with dask.config.set(scheduler="sync"), pytest.raises(RuntimeError, match="killed"):
        da.chunk(12).patch.apply(failing_at(30, _twice), **OUT_KW, out=path)
    assert list((tmp_path / "o.zarr.xpatch-done").iterdir())
    if how == "store-deleted":
        shutil.rmtree(path)
    kw = {"overwrite": True} if how == "overwrite" else {}
    with dask.config.set(scheduler="threads", num_workers=2):
        out = da.chunk(12).patch.apply(_thrice, **OUT_KW, out=path, **kw)
    assert_same(out.compute(), da.patch.apply(_thrice, **OUT_KW))


@pytest.mark.parametrize("kind", ["boolean", "predicate"])
def test_dask_out_never_calls_func_on_a_window_the_mask_skips(tmp_path, kind):
    """A model that cannot take a patch of no data (all NaN) is kept away from it by a
    mask; the fingerprint of a fresh store must not call it on window 0 regardless."""
    a = _scene()
    a[:16, :16] = np.nan
    mask = a.notnull() if kind == "boolean" else (lambda p: bool(p.notnull().any()))

    def model(p):
        if p.isnull().all():
            raise ValueError("a patch of no data")
        return p * 2

    kw = {**OUT_KW, "mask": mask}
    eager = a.patch.apply(model, **kw, out=tmp_path / "eager.zarr")
    with dask.config.set(scheduler="threads", num_workers=2):
        out = a.chunk(12).patch.apply(model, **kw, out=tmp_path / "lazy.zarr")
    assert_same(out.compute(), eager.compute())
    with dask.config.set(scheduler="threads", num_workers=2):  # and its resume checks func
        again = a.chunk(12).patch.apply(model, **kw, out=tmp_path / "lazy.zarr", resume=True)
    assert_same(again.compute(), eager.compute())


# --- 3. eager, out of core: a small memory budget -------------------------------------------
def _volume(shape=(30, 26, 22)):
    return image(shape, ("z", "y", "x"), seed=4, name="vol")


def _classes(p):
    return xr.concat([p, 1 - p, p * p], dim="cls")


class ChunkCounter:
    """An on_chunk that records the chunks it sees (by their first coordinates)."""

    def __init__(self, reduce):
        self.reduce = reduce
        self.seen = []

    def __call__(self, chunk):
        self.seen.append(tuple(float(chunk[d][0]) for d in ("z", "y", "x") if d in chunk.dims))
        return self.reduce(chunk)


@pytest.fixture
def spills(monkeypatch, tmp_path):
    """A small budget, the scratch area under tmp_path, and counts of the chunks written
    to it and loaded back (no reference to the Spill objects is kept)."""
    import tempfile

    from xpatch import _accumulate

    stats = {"written": 0, "loaded": 0}

    class Counting(_accumulate.Spill):
        def _write(self, *args):
            stats["written"] += 1
            return super()._write(*args)

        def load(self, cpos):
            stats["loaded"] += 1
            return super().load(cpos)

    monkeypatch.setattr(_accumulate, "Spill", Counting)
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", "24KiB")  # a few 3-class chunks of 8^3
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return stats, scratch


@pytest.mark.parametrize(
    "kw",
    [
        {"weights": "gaussian"},
        {"weights": "hann", "border": "crop", "batch_size": 5},
        {"weights": np.random.default_rng(1).random((9, 10, 8)) + 0.1},
    ],
    ids=["gaussian", "crop-batched", "custom-weights"],
)
def test_spilled_out_of_core_run_equals_in_memory_and_sees_each_chunk_once(tmp_path, spills, kw):
    stats, scratch = spills
    da = _volume()
    geometry = {"z": 9, "y": 10, "x": 8, "step": {"z": 6, "y": 7, "x": 5}, **kw}
    reduce = lambda c: c.fillna(-1).argmax("cls").astype("int8")  # noqa: E731
    expected = da.patch.apply(_classes, **geometry, on_chunk=reduce)
    counter = ChunkCounter(reduce)
    out = da.patch.apply(_classes, **geometry, chunks=8, on_chunk=counter, out=tmp_path / "o.zarr")
    assert_same(out.compute(), expected)
    assert stats["written"] > 0  # chunks went to disk ...
    assert stats["loaded"] == stats["written"]  # ... and all came back
    assert len(counter.seen) == len(set(counter.seen)) == 4 * 4 * 3
    assert not [f for d in scratch.iterdir() for f in d.iterdir()]  # nothing left on disk


def test_spilled_run_of_several_outputs_equals_in_memory(spills):
    stats, _ = spills
    da = _volume()

    def func(p):
        return {"cls": _classes(p), "mean": (p.mean() + 0 * p).astype(np.float64)}

    kw = {"z": 9, "y": 10, "x": 8, "step": 5}
    expected = da.patch.apply(func, **kw)
    assert_same(da.patch.apply(func, **kw, chunks=7), expected)
    assert stats["written"] > 0


@pytest.mark.parametrize("mask", [False, True])
def test_spilled_run_resumed_after_an_exception_gives_the_uninterrupted_store(
    tmp_path, spills, mask
):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from reference import failing_at

    stats, scratch = spills
    da = _volume()
    kw = {"z": 9, "y": 10, "x": 8, "step": {"z": 6, "y": 7, "x": 5}, "chunks": 8}
    if mask:
        m = xr.zeros_like(da, dtype=bool)
        m[3:20, :, 4:] = True
        kw["mask"] = m
    reduce = lambda c: c.fillna(-1).argmax("cls").astype("int8")  # noqa: E731
    whole = da.patch.apply(_classes, **kw, on_chunk=reduce, out=tmp_path / "whole.zarr")
    first = ChunkCounter(reduce)
    with pytest.raises(RuntimeError, match="killed") as info:
        da.patch.apply(failing_at(60, _classes), **kw, on_chunk=first, out=tmp_path / "o.zarr")
    assert any("raised by func" in n for n in info.value.__notes__)
    assert stats["written"] > 0  # it had spilled before the failure
    # the run is over: its scratch area is gone, even while the error (and its
    # traceback, as a notebook keeps it) is alive
    assert not [f for d in scratch.iterdir() for f in d.iterdir()]
    second = ChunkCounter(reduce)
    resumed = da.patch.apply(_classes, **kw, on_chunk=second, out=tmp_path / "o.zarr", resume=True)
    assert_same(resumed.compute(), whole.compute())
    # every chunk went through on_chunk once over the two runs: the finished ones in
    # the first, the rest in the second
    assert 0 < len(first.seen) < 48
    assert sorted(first.seen + second.seen) == sorted(set(first.seen + second.seen))
    assert len(first.seen) + len(second.seen) == 48
    a = xr.open_zarr(tmp_path / "o.zarr")["vol"].values
    b = xr.open_zarr(tmp_path / "whole.zarr")["vol"].values
    np.testing.assert_array_equal(a, b)


# --- 4. lazy file sources: rows and tiles ---------------------------------------------------
def _long_volume(dtype=np.float32):
    """Long along z, so rows of stored chunks (read ahead) hold less than the array."""
    da = image((96, 14, 12), ("z", "y", "x"), seed=6, dtype=dtype, name="v")
    return da


@pytest.fixture
def readers(monkeypatch):
    """The readers apply makes (``ChunkReader.make`` recorded)."""
    from reference import recording_readers

    return recording_readers(monkeypatch)


def _used(made):
    return {type(r).__name__ for r in made if r is not None}


@pytest.fixture(params=["rows", "tiles"])
def file_reader(request, monkeypatch):
    """The budget that makes apply read rows (the default 1 GiB) or tiles (rows of 4 x
    14 x 12 float32 chunks exceed a quarter of 24 KiB)."""
    if request.param == "tiles":
        monkeypatch.setenv("XPATCH_MEMORY_BUDGET", "24KiB")
    return {"rows": "RowReader", "tiles": "TileReader"}[request.param]


@pytest.fixture(params=["zarr", "netcdf"])
def stored_volume(request, tmp_path):
    da = _long_volume()
    if request.param == "zarr":
        da.to_dataset().chunk({"z": 4, "y": 5, "x": 6}).to_zarr(tmp_path / "v.zarr")
        return da, lambda: xr.open_zarr(tmp_path / "v.zarr", chunks=None)["v"]
    pytest.importorskip("h5netcdf")
    path = tmp_path / "v.nc"
    da.to_netcdf(path, engine="h5netcdf", encoding={"v": {"chunksizes": (4, 5, 6)}})
    return da, lambda: xr.open_dataarray(path, engine="h5netcdf")


@pytest.mark.parametrize(
    "kw",
    [
        {"z": 6, "y": 7, "x": 5, "step": 4, "halo": 2},
        {"z": 6, "y": 7, "x": 5, "step": 4, "halo": {"y": 3}, "border": "pad", "pad_mode": "wrap"},
        {"z": 6, "y": 6, "x": 6, "step": 2, "scale": 0.5},
        {"z": 6, "y": 7, "x": 5, "step": 3, "border": "adaptive", "batch_size": 7},
        {"z": 6, "y": 7, "x": 5, "step": 3, "border": "crop", "chunks": 8, "weights": "mean"},
        {"z": 6, "y": 7, "x": 5, "step": 3, "mask": "some"},
    ],
    ids=["halo", "halo-pad-wrap", "scale", "adaptive-batched", "crop-chunks", "mask"],
)
def test_file_apply_equals_in_memory(stored_volume, file_reader, readers, kw):
    da, open_ = stored_volume
    if kw.get("mask") == "some":
        m = xr.zeros_like(da, dtype=bool)
        m[10:40, 3:9, :] = True
        m[70:, :, 8:] = True
        kw = {**kw, "mask": m}

    fresh = "batch_size" in kw or kw.get("border") == "pad"  # (copies: may be writable)

    def func(p):
        assert fresh or not p.values.flags.writeable
        out = p * 2 - p.mean()
        return out.coarsen(z=2, y=2, x=2).mean() if kw.get("scale") == 0.5 else out

    expected = da.patch.apply(func, **kw)
    with open_() as lazy:
        assert not lazy.variable._in_memory
        result = lazy.patch.apply(func, **kw)
    assert_same(result, expected)
    assert _used(readers) == {file_reader}


def test_file_dataset_of_variables_with_different_dims_and_chunks(tmp_path, file_reader, readers):
    ds = xr.Dataset(
        {
            "a": _long_volume(),
            "b": image((2, 96, 14, 12), ("band", "z", "y", "x"), seed=7, dtype=np.float64),
            "c": image((12, 96, 14), ("x", "z", "y"), seed=8),
        }
    )
    enc = {"a": {"chunks": (4, 5, 6)}, "b": {"chunks": (1, 3, 7, 12)}, "c": {"chunks": (5, 4, 14)}}
    ds.to_zarr(tmp_path / "d.zarr", encoding=enc)

    def func(p):
        return xr.Dataset({"s": p["a"] + p["c"], "t": p["b"] * p["a"].mean()})

    kw = {"z": 6, "y": 7, "x": 5, "step": 4, "border": "pad", "pad_mode": "reflect"}
    expected = ds.patch.apply(func, **kw)
    with xr.open_zarr(tmp_path / "d.zarr", chunks=None) as lazy:
        result = lazy.patch.apply(func, **kw)
    assert_same(result, expected)
    assert _used(readers) == {file_reader}


def test_file_cf_packed_integers_equal_in_memory(tmp_path, file_reader, readers):
    """Packed storage (int16 with scale_factor, a _FillValue): decoded like in memory."""
    da = _long_volume(np.float64)
    da[5:9, 2:4, :] = np.nan
    enc = {"v": {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -9999, "chunks": (4, 5, 6)}}
    da.to_dataset().to_zarr(tmp_path / "p.zarr", encoding=enc)
    kw = {"z": 6, "y": 7, "x": 5, "step": 4}
    with xr.open_zarr(tmp_path / "p.zarr", chunks=None) as lazy:
        expected = lazy["v"].load().patch.apply(lambda p: p.fillna(0) * 2, **kw)
    with xr.open_zarr(tmp_path / "p.zarr", chunks=None) as lazy:
        result = lazy["v"].patch.apply(lambda p: p.fillna(0) * 2, **kw)
    assert_same(result, expected)
    assert _used(readers) == {file_reader}


@pytest.mark.parametrize("threads", ["1", "3"])
def test_a_corrupt_stored_chunk_names_the_window(tmp_path, file_reader, monkeypatch, threads):
    monkeypatch.setenv("XPATCH_NUM_THREADS", threads)
    da = _long_volume()
    da.to_dataset().chunk({"z": 4, "y": 5, "x": 6}).to_zarr(tmp_path / "v.zarr")
    chunk = tmp_path / "v.zarr" / "v" / "c" / "10" / "1" / "1"
    chunk.write_bytes(b"not a compressed chunk at all")
    with (
        xr.open_zarr(tmp_path / "v.zarr", chunks=None) as lazy,
        pytest.raises(Exception) as info,
    ):
        lazy["v"].patch.apply(lambda p: p + 1, z=6, y=7, x=5, step=4)
    notes = getattr(info.value, "__notes__", [])
    assert any("reading the patch of <Window" in n for n in notes), (info.value, notes)


def test_file_patches_cannot_write_to_the_tiles(stored_volume, file_reader):
    """A func that writes to its patch is refused (read-only), and no later patch sees
    such a write."""
    da, open_ = stored_volume

    def vandal(p):
        try:
            p.values[...] = 0
        except ValueError:
            pass
        else:
            raise AssertionError("a patch read from a file was writable")
        return p * 1

    with open_() as lazy:
        result = lazy.patch.apply(vandal, z=6, y=7, x=5, step=3)
    assert_same(result, da.patch.apply(lambda p: p * 1, z=6, y=7, x=5, step=3))

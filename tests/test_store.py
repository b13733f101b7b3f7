"""Chunk-wise aggregation, ``on_chunk``, zarr output and resumable runs.

Everything runs for real: real zarr stores in ``tmp_path``, real functions that
count their own calls, and a real interrupted run (a subprocess killed with
SIGKILL while it writes) that is then resumed. Nothing inside xpatch is mocked;
only ``Aggregator._acc.buffers`` is read, to bound the memory a chunked loop holds.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import xarray as xr

import xpatch
from xpatch.store import StoreError, read_record

zarr = pytest.importorskip("zarr")

BORDERS = ("squeeze", "edge", "adaptive", "crop", "pad")
WEIGHTS = ("mean", "gaussian", "hann")

# xpatch writes unconsolidated metadata (the run record changes after every chunk),
# so a plain xr.open_zarr(path) warns that it fell back to reading it unconsolidated.
# The string coordinate of the test arrays has no zarr v3 dtype spec yet (zarr's warning).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated"),
    pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning"),
]


# --- helpers -----------------------------------------------------------------------
def labeled(shape, dims, seed=0, name="img"):
    """A float32 DataArray with non-trivial coordinates on every dim."""
    rng = np.random.default_rng(seed)
    coords = {}
    for i, (d, n) in enumerate(zip(dims, shape)):
        coords[d] = np.arange(n) * (0.5 + i) + 10 * i  # float and offset: not positions
    coords["label"] = (dims[-1], [f"c{i}" for i in range(shape[-1])])
    return xr.DataArray(
        rng.random(shape).astype("float32"), dims=dims, coords=coords, name=name, attrs={"u": 1}
    )


def nonlinear(p):
    """A pure, deterministic and non-linear per-patch function."""
    return np.tanh(3.0 * p) + p * p


CLASS_SCALE = xr.DataArray(np.arange(1, 6, dtype="float32"), dims="class")


def classes(p):
    """Five per-class scores: each a different non-linear function of the patch."""
    return np.sin(p * CLASS_SCALE * 2.0)


def argmax_u8(c):
    return c.argmax("class").astype("uint8")


def chunk_count(length, chunk):
    return math.ceil(length / min(chunk, length))


def read_done(path):
    """The record's bitmap of finished chunks, decoded; None while unreadable."""
    try:
        record = read_record(zarr.open_group(os.fspath(path), mode="r").attrs["xpatch"])
    except Exception:  # not created yet, or mid-creation
        return None
    grid = record["chunk_grid"]
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(record["done"]), dtype=np.uint8))
    return bits[: int(np.prod(grid))].astype(bool).reshape(grid)


class Counter:
    """A func wrapper counting its calls."""

    def __init__(self, func):
        self.func, self.calls = func, 0

    def __call__(self, p):
        self.calls += 1
        return self.func(p)


CASES_2D = dict(shape=(37, 45), dims=("y", "x"), size={"y": 10, "x": 12}, step={"y": 6, "x": 5})
CASES_3D = dict(
    shape=(13, 17, 19),
    dims=("z", "y", "x"),
    size={"z": 6, "y": 7, "x": 8},
    step={"z": 4, "y": 5, "x": 3},
)


# --- chunked == unchunked ------------------------------------------------------------
CHUNKED_CASES = [
    # 2-D: every border x every kernel; 37 = 14+14+9, 45 = 14*3+3: nothing divides
    *[pytest.param(CASES_2D, 14, b, w, id=f"2d-{b}-{w}") for b in BORDERS for w in WEIGHTS],
    # 2-D, chunks given for one dim only (x stays one chunk)
    *[pytest.param(CASES_2D, {"y": 11}, b, "gaussian", id=f"2d-mapping-{b}") for b in BORDERS],
    # 3-D: every border, with the kernels spread over them
    *[
        pytest.param(CASES_3D, {"z": 7, "y": 9, "x": 10}, b, w, id=f"3d-{b}-{w}")
        for b, w in zip(BORDERS, ("gaussian", "hann", "mean", "gaussian", "hann"))
    ],
    pytest.param(CASES_3D, 8, "squeeze", "mean", id="3d-int-mean"),
]


@pytest.mark.parametrize(("case", "chunks", "border", "weights"), CHUNKED_CASES)
def test_chunked_equals_unchunked(case, chunks, border, weights):
    da = labeled(case["shape"], case["dims"])
    kw = dict(step=case["step"], border=border, weights=weights, **case["size"])
    whole = da.patch.apply(nonlinear, **kw)
    func = Counter(nonlinear)
    chunked = da.patch.apply(func, chunks=chunks, **kw)
    assert func.calls == len(da.patch.grid(**case["size"], step=case["step"], border=border))
    assert chunked.dims == whole.dims
    assert chunked.dtype == whole.dtype == np.float32
    np.testing.assert_allclose(chunked.values, whole.values, rtol=2e-6, atol=2e-6)
    xr.testing.assert_identical(chunked.coords.to_dataset(), whole.coords.to_dataset())
    if border == "crop":
        assert np.isnan(chunked.values).any()  # the uncovered tail, in every variant
    else:
        assert not np.isnan(chunked.values).any()


@pytest.mark.parametrize("border", ["squeeze", "crop", "pad"])
@pytest.mark.parametrize("case", [CASES_2D, CASES_3D], ids=["2d", "3d"])
def test_on_chunk_argmax_equals_argmax_of_unchunked(case, border):
    da = labeled(case["shape"], case["dims"])
    kw = dict(step=case["step"], border=border, **case["size"])
    whole = da.patch.apply(classes, **kw)
    labels = da.patch.apply(classes, chunks=13, on_chunk=lambda c: argmax_u8(c.fillna(-9)), **kw)
    assert labels.dtype == np.uint8
    assert labels.dims == tuple(d for d in whole.dims if d != "class")
    expected = whole.fillna(-9).argmax("class").values
    top2 = np.sort(whole.fillna(-9).transpose("class", ...).values, axis=0)[-2:]
    uncovered = whole.isnull().all("class").values  # crop: labelled 0, the integer fill
    clear = (top2[1] - top2[0]) > 1e-4  # ignore near-ties, where float32 rounding may flip
    assert clear[~uncovered].mean() > 0.99
    np.testing.assert_array_equal(labels.values[clear], expected[clear])
    assert (labels.values[uncovered] == 0).all()


def test_on_chunk_called_once_per_chunk_with_its_region():
    # L=100, P=30, S=20 under crop covers 0..89: chunk y=90:100 has no patch at all.
    da = labeled((100, 45), ("y", "x"))
    seen = []

    def on_chunk(c):
        seen.append(c.copy())
        return c

    out = da.patch.apply(
        lambda p: p,
        y=30,
        x=15,
        step={"y": 20, "x": 10},
        border="crop",
        weights="gaussian",
        chunks=30,
        on_chunk=on_chunk,
    )
    assert len(seen) == chunk_count(100, 30) * chunk_count(45, 30) == 8
    starts = sorted(
        (int(np.searchsorted(da.y, c.y[0])), int(np.searchsorted(da.x, c.x[0]))) for c in seen
    )
    assert starts == [(y, x) for y in (0, 30, 60, 90) for x in (0, 30)]  # each chunk once
    for c in seen:
        iy = int(np.searchsorted(da.y, c.y[0]))
        ix = int(np.searchsorted(da.x, c.x[0]))
        region = da.isel(y=slice(iy, iy + 30), x=slice(ix, ix + 30))
        assert c.sizes == region.sizes
        assert c.dims == ("y", "x")
        # the identity, blended and normalised, gives the input back, with its coords
        xr.testing.assert_identical(c.coords.to_dataset(), region.coords.to_dataset())
        covered = c.y < da.y[90]
        np.testing.assert_allclose(
            c.where(covered, drop=True), region.where(covered, drop=True), rtol=1e-6
        )
        assert c.where(~covered, drop=True).isnull().all()
    np.testing.assert_allclose(out.values[:90], da.values[:90], rtol=1e-6)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_on_chunk_receives_normalised_values(weights):
    da = labeled((3, 31, 29), ("band", "y", "x"))
    got = {}

    def on_chunk(c):
        key = (int(np.searchsorted(da.y, c.y[0])), int(np.searchsorted(da.x, c.x[0])))
        got[key] = c
        return c.mean("band")

    out = da.patch.apply(
        lambda p: p, y=8, x=8, step=3, weights=weights, chunks=11, on_chunk=on_chunk
    )
    assert len(got) == 3 * 3
    for (iy, ix), c in got.items():
        region = da.isel(y=slice(iy, iy + 11), x=slice(ix, ix + 11))
        assert c.dims == region.dims  # non-spatial dims kept, by name
        np.testing.assert_allclose(c.values, region.values, rtol=1e-5)
        xr.testing.assert_identical(c.coords.to_dataset(), region.coords.to_dataset())
    assert out.dims == ("y", "x")
    np.testing.assert_allclose(out.values, da.mean("band").values, rtol=1e-5)


@pytest.mark.parametrize("zarr_out", [False, True], ids=["memory", "zarr"])
def test_on_chunk_on_an_array_without_coordinates(tmp_path, zarr_out):
    da = xr.DataArray(labeled((3, 40, 50), ("band", "y", "x")).values, dims=("band", "y", "x"))
    seen = []

    def on_chunk(c):
        seen.append(c.sizes)
        return c.mean("band")

    out = da.patch.apply(
        lambda p: p,
        y=10,
        x=10,
        step=5,
        chunks=20,
        on_chunk=on_chunk,
        out=tmp_path / "nocoords.zarr" if zarr_out else None,
    )
    assert len(seen) == 2 * 3
    assert out.dims == ("y", "x") and not out.coords
    np.testing.assert_allclose(out.values, da.mean("band").values, rtol=1e-5)


def test_on_chunk_fill_value_applies_to_its_integer_result():
    da = labeled((100, 45), ("y", "x"))
    kw = dict(y=30, x=15, step={"y": 20, "x": 10}, border="crop", chunks=30)
    # the uncovered tail is NaN in the chunk; on_chunk maps it to 7, xpatch then fills it
    to_int = lambda c: (c * 0 + 3).fillna(7).astype("int16")  # noqa: E731
    out = da.patch.apply(lambda p: p, on_chunk=to_int, **kw)
    assert out.dtype == np.int16
    assert (out.values[:90] == 3).all()
    assert (out.values[90:] == 0).all()  # default fill for an integer result
    out = da.patch.apply(lambda p: p, on_chunk=to_int, fill_value=-1, **kw)
    assert (out.values[90:] == -1).all()


# --- each patch computed once; chunks finish early; bounded buffers -------------------------
@pytest.mark.parametrize("batch_size", [None, 7])
def test_each_patch_computed_once(batch_size):
    da = labeled((40, 50), ("y", "x"))
    grid = da.patch.grid(y=12, x=12, step=4)
    seen = []

    def func(p):
        if batch_size is None:
            seen.append((float(p.y[0]), float(p.x[0])))
        else:  # a batch is labeled by the windows' flat indices
            seen.extend(p["patch"].values.tolist())
        return p * 2

    out = da.patch.apply(func, y=12, x=12, step=4, chunks=13, batch_size=batch_size)
    assert len(seen) == len(grid)  # patches spanning up to 4 chunks are computed once
    assert len(set(seen)) == len(grid)
    np.testing.assert_allclose(out.values, 2 * da.values, rtol=1e-6)


def test_chunks_complete_while_patches_are_still_being_computed():
    da = labeled((96, 96), ("y", "x"))
    n_windows = len(da.patch.grid(y=16, x=16, step=8))
    func = Counter(nonlinear)
    finished = []  # (chunk start y, chunk start x, func calls so far)

    def on_chunk(c):
        iy, ix = int(np.searchsorted(da.y, c.y[0])), int(np.searchsorted(da.x, c.x[0]))
        finished.append((iy, ix, func.calls))
        return c

    da.patch.apply(func, y=16, x=16, step=8, chunks=32, on_chunk=on_chunk)
    assert func.calls == n_windows
    assert len(finished) == 9
    # chunk (0, 0) is the first to finish, long before the last patch is computed
    assert finished[0][:2] == (0, 0)
    assert finished[0][2] < n_windows / 4
    # and the chunks finish spread over the run, not all at the end
    assert sum(calls < n_windows for *_, calls in finished) >= 6


def test_hand_written_loop_holds_at_most_a_row_of_chunks():
    da = labeled((100, 130), ("y", "x"))
    n_rows, n_cols = chunk_count(100, 20), chunk_count(130, 20)  # 5 x 7 chunks
    finished = []
    agg = da.patch.aggregator(
        y=16, x=16, step=8, chunks=20, on_chunk=lambda c: finished.append(1) or c
    )
    most = 0
    order = agg.layout.order()
    assert sorted(order.tolist()) == list(range(len(agg.grid)))
    for k, i in enumerate(order):
        window = agg.grid[int(i)]
        agg.add(nonlinear(da[window]), window)
        most = max(most, len(agg._acc.buffers))
        if k == len(order) // 2:
            assert len(finished) >= (n_rows * n_cols) // 3  # chunks are released as we go
    assert most <= n_cols + 2
    assert len(finished) == n_rows * n_cols
    out = agg.result()
    np.testing.assert_allclose(
        out.values, da.patch.apply(nonlinear, y=16, x=16, step=8).values, rtol=2e-6, atol=2e-6
    )


def test_planning_30k_patches_by_64_chunks_is_fast():
    template = xr.DataArray(np.zeros((2720, 2720), dtype="float32"), dims=("y", "x"))
    grid = template.patch.grid(y=32, x=32, step=16)
    assert len(grid) > 28_000
    t0 = time.perf_counter()
    agg = xpatch.Aggregator(template, grid, chunks=340)
    order = agg.layout.order()
    elapsed = time.perf_counter() - t0
    print(f"planning {len(grid)} patches x 64 chunks: {elapsed:.3f} s")
    assert agg.layout.shape == (8, 8)
    assert len(order) == len(grid) == len(np.unique(order))
    # windows come grouped by the first chunk they touch, row-major
    first = np.array(
        [(grid[int(i)]["y"].start // 340) * 8 + grid[int(i)]["x"].start // 340 for i in order[::97]]
    )
    assert (np.diff(first) >= 0).all()


# --- errors propagate at once, naming the window or chunk -----------------------------
def test_func_error_propagates_with_the_window():
    da = labeled((40, 40), ("y", "x"))
    calls = []

    def func(p):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("model failed")
        return p

    with pytest.raises(RuntimeError, match="model failed") as info:
        da.patch.apply(func, y=10, x=10, step=5, chunks=20)
    assert len(calls) == 5  # at once: no further patch was computed
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "<Window" in notes and "y=" in notes and "x=" in notes


def test_batched_func_error_names_the_batch():
    da = labeled((40, 40), ("y", "x"))

    def func(p):
        raise ZeroDivisionError("bad batch")

    with pytest.raises(ZeroDivisionError) as info:
        da.patch.apply(func, y=10, x=10, step=5, chunks=20, batch_size=4)
    assert "batch" in " ".join(info.value.__notes__)


def test_on_chunk_error_propagates_with_the_chunk():
    da = labeled((40, 40), ("y", "x"))
    func = Counter(lambda p: p)

    def on_chunk(c):
        if float(c.y[0]) > float(da.y[0]):
            raise KeyError("on_chunk failed")
        return c

    with pytest.raises(KeyError, match="on_chunk failed") as info:
        da.patch.apply(func, y=10, x=10, step=5, chunks=20, on_chunk=on_chunk)
    assert func.calls < len(da.patch.grid(y=10, x=10, step=5))  # at once
    notes = " ".join(info.value.__notes__)
    assert "chunk" in notes and "y=20:40" in notes and "x=0:20" in notes


# --- zarr output -----------------------------------------------------------------------------
def test_out_path_is_lazy_and_readable(tmp_path):
    da = labeled((50, 61), ("y", "x"))
    path = tmp_path / "pred.zarr"
    func = Counter(nonlinear)
    out = da.patch.apply(func, y=16, x=16, step=8, chunks=20, out=path)
    expected = da.patch.apply(nonlinear, y=16, x=16, step=8, chunks=20)
    assert func.calls == len(da.patch.grid(y=16, x=16, step=8))
    assert out.chunks is not None  # dask-backed: opened lazily from the store
    assert out.chunks == ((20, 20, 10), (20, 20, 20, 1))
    assert out.name == "img"
    xr.testing.assert_identical(out.compute(), expected)
    ds = xr.open_zarr(path)
    assert list(ds.data_vars) == ["img"]
    xr.testing.assert_equal(ds["img"].compute(), expected)
    xr.testing.assert_identical(ds["img"].coords.to_dataset(), da.coords.to_dataset())
    opened = xr.open_dataarray(path, engine="zarr")
    xr.testing.assert_equal(opened.compute(), expected)
    assert zarr.open_array(os.fspath(path), path="img", mode="r").chunks == (20, 20)


def test_out_path_zarr_chunks_follow_chunks_argument(tmp_path):
    da = labeled((3, 50, 61), ("band", "y", "x"))
    path = tmp_path / "pred.zarr"
    out = da.patch.apply(classes, y=16, x=16, step=8, chunks={"y": 25, "x": 17}, out=path)
    assert out.dims == ("band", "y", "x", "class")  # as func returns them
    stored = zarr.open_array(os.fspath(path), path="img", mode="r")
    assert stored.chunks == (3, 25, 17, 5)  # non-spatial dims whole, spatial = chunks
    np.testing.assert_allclose(
        out.values, da.patch.apply(classes, y=16, x=16, step=8).values, rtol=2e-6, atol=2e-6
    )


def test_out_path_with_on_chunk_labels(tmp_path):
    da = labeled((50, 61), ("y", "x"))
    path = tmp_path / "labels.zarr"
    out = da.patch.apply(classes, y=16, x=16, step=8, chunks=20, on_chunk=argmax_u8, out=path)
    assert out.dtype == np.uint8 and out.dims == ("y", "x")
    expected = da.patch.apply(classes, y=16, x=16, step=8, chunks=20, on_chunk=argmax_u8)
    xr.testing.assert_identical(out.compute(), expected)
    assert xr.open_dataarray(path, engine="zarr").dtype == np.uint8


def test_out_path_dataset_result(tmp_path):
    da = labeled((50, 61), ("y", "x"))
    ds = xr.Dataset({"a": da, "b": da * 3})

    def func(p):
        return xr.Dataset({"s": p.a + p.b, "d": np.tanh(p.a - p.b)})

    path = tmp_path / "ds.zarr"
    out = ds.patch.apply(func, y=16, x=16, step=8, chunks=20, out=path)
    expected = ds.patch.apply(func, y=16, x=16, step=8)
    assert isinstance(out, xr.Dataset) and set(out.data_vars) == {"s", "d"}
    xr.testing.assert_allclose(out.compute(), expected, rtol=2e-6, atol=2e-6)
    reopened = xr.open_zarr(path)
    assert set(reopened.data_vars) == {"s", "d"}
    xr.testing.assert_allclose(
        reopened.compute().drop_attrs(), expected.drop_attrs(), rtol=2e-6, atol=2e-6
    )


@pytest.mark.parametrize("array_dims", [("y", "x"), ("x", "y")])
def test_out_existing_zarr_array_values(tmp_path, array_dims):
    da = labeled((50, 61), ("y", "x"))
    shape = tuple(da.sizes[d] for d in array_dims)
    arr = zarr.create_array(
        store=os.fspath(tmp_path / "arr.zarr"),
        shape=shape,
        chunks=(10, 10),
        dtype="float32",
        dimension_names=list(array_dims),
    )
    out = da.patch.apply(nonlinear, y=16, x=16, step=8, chunks=20, out=arr)
    expected = da.patch.apply(nonlinear, y=16, x=16, step=8)
    assert out.chunks is not None
    np.testing.assert_allclose(
        out.transpose("y", "x").values, expected.values, rtol=2e-6, atol=2e-6
    )
    np.testing.assert_allclose(
        np.asarray(arr[...]), expected.transpose(*array_dims).values, rtol=2e-6, atol=2e-6
    )


def _yx_array(path, chunks, names=("y", "x")):
    """An existing float32 zarr array of shape (50, 61), with or without dim names."""
    return zarr.create_array(
        store=os.fspath(path),
        shape=(50, 61),
        chunks=chunks,
        dtype="float32",
        dimension_names=list(names) if names else None,
    )


def test_out_existing_zarr_array_keeps_coords(tmp_path):
    da = labeled((50, 61), ("y", "x"))
    arr = _yx_array(tmp_path / "arr.zarr", (20, 20))
    out = da.patch.apply(nonlinear, y=16, x=16, step=8, chunks=20, out=arr)
    # the contract: spatial coordinates are kept, whatever the output
    xr.testing.assert_identical(out.coords.to_dataset(), da.coords.to_dataset())


def test_out_existing_zarr_array_refused_when_unusable(tmp_path):
    da = labeled((50, 61), ("y", "x"))
    misaligned = _yx_array(tmp_path / "a.zarr", (15, 15))
    with pytest.raises(StoreError, match="multiple"):
        da.patch.apply(nonlinear, y=16, x=16, step=8, chunks=20, out=misaligned)
    nameless = _yx_array(tmp_path / "b.zarr", (10, 10), names=None)
    with pytest.raises(StoreError, match="dimension names"):
        da.patch.apply(nonlinear, y=16, x=16, step=8, chunks=20, out=nameless)
    assert issubclass(StoreError, ValueError)


# --- resume ----------------------------------------------------------------------------------
def _flaky_model(p):
    """Module-level (stable qualified name), fails on demand."""
    _FLAKY["calls"] += 1
    if _FLAKY["calls"] == _FLAKY["fail_at"]:
        raise RuntimeError("crashed mid-run")
    return nonlinear(p)


_FLAKY = {"calls": 0, "fail_at": -1}


@pytest.mark.parametrize(
    ("shape", "size", "step", "chunk", "dtype"),
    [
        ((64, 80), 16, 8, 32, "float32"),
        # 768 x 768 float64 parts (4.5 MiB): blended in the background while func runs
        ((1920, 1792), 768, 384, 1024, "float64"),
    ],
)
def test_failed_run_keeps_finished_chunks_and_resumes(tmp_path, shape, size, step, chunk, dtype):
    da = labeled(shape, ("y", "x")).astype(dtype)
    kw = dict(y=size, x=size, step=step, chunks=chunk)
    n_windows = len(da.patch.grid(y=size, x=size, step=step))
    reference = da.patch.apply(nonlinear, **kw)  # chunked in memory: same order, same sums
    path = tmp_path / "run.zarr"
    _FLAKY.update(calls=0, fail_at=int(n_windows * 0.7))
    with pytest.raises(RuntimeError, match="crashed mid-run"):
        da.patch.apply(_flaky_model, out=path, **kw)
    done = read_done(path)
    assert 0 < done.sum() < done.size
    stored = xr.open_dataarray(path, engine="zarr").values
    for cy, cx in zip(*np.nonzero(done)):
        block = np.s_[cy * chunk : (cy + 1) * chunk, cx * chunk : (cx + 1) * chunk]
        np.testing.assert_array_equal(stored[block], reference.values[block])
    _FLAKY.update(calls=0, fail_at=-1)
    out = da.patch.apply(_flaky_model, out=path, resume=True, **kw)
    # one call checks func against the record's fingerprint, the rest recompute
    assert 0 < _FLAKY["calls"] - 1 < n_windows
    xr.testing.assert_identical(out.compute(), reference)
    assert read_done(path).all()


def test_resume_completed_store_computes_nothing(tmp_path):
    da = labeled((40, 50), ("y", "x"))
    path = tmp_path / "done.zarr"
    _FLAKY.update(calls=0, fail_at=-1)
    first = da.patch.apply(_flaky_model, y=10, x=10, step=5, chunks=20, out=path).compute()
    assert _FLAKY["calls"] == len(da.patch.grid(y=10, x=10, step=5))
    _FLAKY.update(calls=0)
    again = da.patch.apply(_flaky_model, y=10, x=10, step=5, chunks=20, out=path, resume=True)
    assert _FLAKY["calls"] == 1  # only the window compared with the record's fingerprint
    xr.testing.assert_identical(again.compute(), first)


def test_resume_missing_store_starts_afresh(tmp_path):
    da = labeled((40, 50), ("y", "x"))
    func = Counter(nonlinear)
    out = da.patch.apply(
        func, y=10, x=10, step=5, chunks=20, out=tmp_path / "new.zarr", resume=True
    )
    assert func.calls == len(da.patch.grid(y=10, x=10, step=5))
    xr.testing.assert_allclose(
        out.compute(), da.patch.apply(nonlinear, y=10, x=10, step=5), rtol=2e-6, atol=2e-6
    )


@pytest.mark.parametrize(
    "change",
    [dict(step=4), dict(chunks=25), dict(weights="mean"), dict(func=np.cos)],
    ids=["step", "chunks", "weights", "func"],
)
def test_resume_refuses_a_store_from_another_configuration(tmp_path, change):
    da = labeled((40, 50), ("y", "x"))
    path = tmp_path / "other.zarr"
    base = dict(y=10, x=10, step=5, chunks=20, weights="gaussian")
    da.patch.apply(nonlinear, out=path, **base)
    func = change.pop("func", nonlinear)
    with pytest.raises(StoreError, match="different run configuration") as info:
        da.patch.apply(func, out=path, resume=True, **{**base, **change})
    assert isinstance(info.value, ValueError)
    assert read_done(path).all()  # the refused store is left untouched


def test_resume_refuses_a_store_not_written_by_xpatch(tmp_path):
    da = labeled((40, 50), ("y", "x"))
    path = tmp_path / "foreign.zarr"
    da.to_dataset().to_zarr(path, consolidated=False)
    with pytest.raises(StoreError, match="record"):
        da.patch.apply(nonlinear, y=10, x=10, step=5, chunks=20, out=path, resume=True)


SCRIPT = """
import sys, time
import numpy as np, xarray as xr
import xpatch

data, path, counter, resume, delay = sys.argv[1:6]

def model(p):
    with open(counter, "a") as f:
        f.write("call\\n")
    time.sleep(float(delay))
    return np.tanh(3.0 * p) + p * p

da = xr.open_dataarray(data).load()
out = da.patch.apply(model, y=16, x=16, step=8, chunks=32, out=path, resume=resume == "1")
out.load()
print("finished")
"""


def _launch(tmp_path, data, path, counter, resume, delay):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    args = [sys.executable, str(script), str(data), str(path), str(counter), resume, str(delay)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_run_resumes_without_recomputing_or_losing_chunks(tmp_path):
    da = labeled((96, 96), ("y", "x"), seed=3)
    data = tmp_path / "input.nc"
    da.to_netcdf(data)
    path, calls_1, calls_2 = tmp_path / "run.zarr", tmp_path / "c1", tmp_path / "c2"
    kw = dict(y=16, x=16, step=8, chunks=32)
    n_windows = len(da.patch.grid(y=16, x=16, step=8))  # 121 windows, 3x3 chunks
    uninterrupted = da.patch.apply(nonlinear, **kw)

    proc = _launch(tmp_path, data, path, calls_1, "0", 0.05)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk finished in time"
            done = read_done(path)
            if done is not None and 2 <= done.sum() < done.size:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # nothing lost: every chunk marked done holds exactly the uninterrupted values
    done = read_done(path)
    assert 2 <= done.sum() < done.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stored = xr.open_dataarray(path, engine="zarr").values
    for cy, cx in zip(*np.nonzero(done)):
        block = np.s_[cy * 32 : (cy + 1) * 32, cx * 32 : (cx + 1) * 32]
        np.testing.assert_array_equal(stored[block], uninterrupted.values[block])
    n_first = len(calls_1.read_text().splitlines())
    assert n_first < n_windows

    proc = _launch(tmp_path, data, path, calls_2, "1", 0.0)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()
    n_second = len(calls_2.read_text().splitlines())
    assert n_second < n_windows  # finished chunks were not recomputed
    assert n_first + n_second >= n_windows

    result = xr.open_dataarray(path, engine="zarr").compute()
    np.testing.assert_array_equal(result.values, uninterrupted.values)
    xr.testing.assert_allclose(result, da.patch.apply(nonlinear, y=16, x=16, step=8), rtol=1e-6)
    xr.testing.assert_identical(result.coords.to_dataset(), da.coords.to_dataset())
    assert read_done(path).all()

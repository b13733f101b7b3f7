"""Review of instance stitching (issue 19): defects found by trying the edges.

Each test here failed before its fix. The reference is always labelling the whole
array at once (``skimage.measure.label``), never xpatch against itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import same_partition

import xpatch  # noqa: F401  (registers .patch)
from xpatch.errors import ResultError

measure = pytest.importorskip("skimage.measure")
pytest.importorskip("dask.array")


def label(p):
    return measure.label(np.asarray(p) > 0.5)


@pytest.fixture(scope="module")
def image():
    """Squares of 3..9 elements, 3 apart, over a 60 x 56 image with coordinates."""
    img = np.zeros((60, 56), np.float32)
    rng = np.random.default_rng(19)
    for y in range(1, 56, 12):
        for x in range(1, 52, 12):
            h, w = rng.integers(3, 10, 2)
            img[y : y + h, x : x + w] = 1
    return xr.DataArray(
        img, dims=("y", "x"), coords={"y": np.arange(60) * 2.0, "x": np.arange(56) * 1.0}
    )


def recording(calls):
    def func(p):
        calls.append((float(p.y[0]), float(p.x[0])))
        return label(p)

    return func


# --- mask= : skipped windows are never computed, on every path ------------------------
@pytest.mark.parametrize("path", ["eager", "dask", "store"])
def test_mask_skips_windows_on_every_path(image, path, tmp_path):
    mask = xr.zeros_like(image, dtype=bool)
    mask[:30] = True  # windows wholly in y >= 30 (coords >= 60) are skipped
    calls: list = []
    src = image.chunk(20) if path == "dask" else image
    kw = {"out": str(tmp_path / "m.zarr")} if path == "store" else {}
    out = src.patch.apply(
        recording(calls), y=20, x=20, step=10, mask=mask, merge="instances", **kw
    ).compute()
    grid = image.patch.grid(y=20, x=20, step=10, mask=mask)
    assert len(calls) == grid.n_kept  # func never ran on a skipped window
    assert all(y < 60 for y, _ in calls)
    assert not out.values[40:].any()  # covered by skipped windows only: no objects
    # the objects of rows 0..23 (rows 1..21) are whole in kept windows
    assert same_partition(out.values[:24], label(image.values[:24]))
    assert out.values[:24].any()


def test_store_with_window_zero_masked_never_calls_func_there(image, tmp_path):
    mask = xr.zeros_like(image, dtype=bool)
    mask[30:] = True  # window 0 (y 0:20) is skipped
    calls: list = []
    image.patch.apply(
        recording(calls), y=20, x=20, step=10, mask=mask, merge="instances",
        out=str(tmp_path / "m.zarr"),
    )  # fmt: skip
    assert calls and min(y for y, _ in calls) >= 2 * 20  # first kept row of windows: y=20
    assert len(calls) == image.patch.grid(y=20, x=20, step=10, mask=mask).n_kept


# --- dtype of an empty result -----------------------------------------------------------
@pytest.mark.parametrize("path", ["eager", "chunks", "store"])
def test_no_objects_gives_uint8_zeros(image, path, tmp_path):
    kw = {
        "eager": {},
        "chunks": {"chunks": 16},
        "store": {"out": str(tmp_path / "e.zarr")},
    }[path]
    out = image.patch.apply(
        lambda p: np.zeros(p.shape, np.int64), y=20, x=20, step=10, merge="instances", **kw
    )
    assert out.dtype == np.uint8  # the smallest unsigned dtype that holds N = 0
    assert not out.values.any()


# --- labeled results: their coordinates are checked, as for blended results -------------
@pytest.mark.parametrize("lazy", [False, True])
def test_result_with_other_coordinates_is_refused(image, lazy):
    src = image.chunk(30) if lazy else image

    def shifted(p):
        return p.copy(data=label(p)).assign_coords(y=p.y + 1000)

    with pytest.raises(ResultError, match="along dim 'y'"):
        src.patch.apply(shifted, y=20, x=20, step=10, merge="instances").compute()


@pytest.mark.parametrize("lazy", [False, True])
def test_result_in_reverse_order_is_put_back(image, lazy):
    src = image.chunk(30) if lazy else image

    def flipped(p):
        return p.copy(data=label(p)).isel(y=slice(None, None, -1), x=slice(None, None, -1))

    out = src.patch.apply(flipped, y=20, x=20, step=10, merge="instances").compute()
    assert same_partition(out, label(image))


# --- the hand-written loop ------------------------------------------------------------
def test_aggregator_result_can_be_asked_twice(image):
    agg = image.patch.aggregator(y=20, x=20, step=10, merge="instances")
    for w in reversed(list(agg.grid)):  # out of order
        agg.add(label(image.isel(y=w.slices[0], x=w.slices[1])), w)
    first = agg.result()
    assert same_partition(first, label(image))
    xr.testing.assert_identical(agg.result(), first)


# --- refusals before func is first called ----------------------------------------------
def test_resume_without_out_is_refused_before_func(image):
    from xpatch.errors import PatchError

    def func(p):
        raise AssertionError("func must not run")

    with pytest.raises(PatchError, match="resume=True needs out="):
        image.patch.apply(func, y=20, x=20, step=10, merge="instances", resume=True)


# --- iou: the sizes in a shared region do not depend on chunks --------------------------
@pytest.mark.parametrize("chunks", [None, 22, 16, 10])
def test_iou_sizes_count_the_whole_shared_region_whatever_the_chunks(chunks):
    """Window 0 (x 0:40) sees an object over x 10:30, window 1 (x 8:48) one over 24:28.
    Over the shared region 8:40 their IoU is 4 / 20 = 0.2: two objects. A chunk edge
    at 22 leaves window 1 with no object in the first chunk; the part of window 0's
    object there (10:22) must still count in its size (else 4 / 8 = 0.5: merged)."""
    da = xr.DataArray(np.zeros(48), dims="x")
    agg = da.patch.aggregator(x=40, step=8, merge="instances", chunks=chunks)
    a, b = np.zeros(40, int), np.zeros(40, int)
    a[10:30], b[24 - 8 : 28 - 8] = 1, 1
    agg.add(a, agg.grid[0])
    agg.add(b, agg.grid[1])
    out = agg.result().values
    assert out[10] != out[25] and out[25] > 0 and out[10] > 0
    expected = np.zeros(48, int)
    expected[10:30], expected[24:28] = 1, 2  # b nearer to window 1's centre (27.5)
    np.testing.assert_array_equal(out, expected)


def test_aggregator_says_a_masked_window_is_skipped(image):
    from xpatch.errors import AggregationError

    mask = xr.zeros_like(image, dtype=bool)
    mask[:20] = True
    agg = image.patch.aggregator(y=20, x=20, step=10, mask=mask, merge="instances")
    skipped = agg.grid[int(np.flatnonzero(~agg.grid.kept)[0])]
    with pytest.raises(AggregationError, match="skipped by the mask"):
        agg.add(np.zeros(skipped.shape, int), skipped)


@pytest.mark.parametrize("path", ["eager", "dask", "store"])
def test_object_whole_in_a_kept_window_survives_a_skipped_neighbour(path, tmp_path):
    """Rows 33..36 lie in the kept window y 20:40, whole; their centre (34.5) is in
    the core of the skipped window y 30:50. A kept window saw the object whole, so
    it is in the result (blending keeps that window's values there too)."""
    img = np.zeros((60, 20), np.float32)
    img[33:37, 5:9] = 1
    img[3:6, 3:6] = 1
    da = xr.DataArray(img, dims=("y", "x"))
    mask = xr.zeros_like(da, dtype=bool)
    mask[:30] = True
    src = da.chunk(15) if path == "dask" else da
    kw = {"out": str(tmp_path / "o.zarr")} if path == "store" else {}
    out = src.patch.apply(label, y=20, x=20, step=10, mask=mask, merge="instances", **kw)
    assert same_partition(out.values, label(img))


# --- invariant: the numbering depends on neither chunks nor path, mask or not -----------
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    size=st.tuples(st.integers(8, 20), st.integers(8, 20)),
    frac=st.tuples(st.floats(0.4, 1.0), st.floats(0.4, 1.0)),
    chunks=st.integers(6, 25),
    masked=st.booleans(),
    iou=st.sampled_from([0.05, 0.5, 1.0]),
)
def test_numbering_independent_of_chunks_and_path(seed, size, frac, chunks, masked, iou):
    rng = np.random.default_rng(seed)
    img = (rng.random((40, 36)) < 0.35).astype(np.float32)  # objects of every size

    def noisy(p):  # windows disagree, so iou decides
        a = np.asarray(p).copy()
        r = np.random.default_rng(int(p.y[0]) * 100 + int(p.x[0]))
        a[r.random(a.shape) < 0.1] = 0
        return label(a)

    da = xr.DataArray(img, dims=("y", "x"), coords={"y": np.arange(40), "x": np.arange(36)})
    step = {"y": max(1, int(size[0] * frac[0])), "x": max(1, int(size[1] * frac[1]))}
    kw = dict(y=size[0], x=size[1], step=step, merge="instances", iou=iou)
    if masked:
        kw["mask"] = da.x < rng.integers(5, 36)
    ref = da.patch.apply(noisy, **kw).values
    n = int(ref.max())
    assert sorted(np.unique(ref)) == list(range(n + 1))
    np.testing.assert_array_equal(da.patch.apply(noisy, chunks=chunks, **kw).values, ref)
    np.testing.assert_array_equal(da.chunk(chunks).patch.apply(noisy, **kw).values, ref)


# --- chunk corners on the out-of-core and dask paths ------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("path", ["store", "dask"])
def test_object_on_a_chunk_corner_out_of_core_and_on_dask(ndim, path, tmp_path):
    """A ball centred on the corner shared by 4 / 8 chunks (and a bar along every
    axis through the border of the array), chunks smaller than the patch."""
    shape = (48,) * ndim
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    img = (sum((g - 23.5) ** 2 for g in grids) <= 5**2).astype(np.float32)
    img[(slice(0, 2),) * (ndim - 1) + (slice(None),)] = 1  # touches the array border
    da = xr.DataArray(img, dims=("z", "y", "x")[-ndim:])
    sizes = dict.fromkeys(da.dims, 32)
    if path == "dask":
        out = da.chunk(24).patch.apply(label, sizes, step=16, merge="instances")
    else:
        out = da.patch.apply(
            label, sizes, step=16, chunks=24, merge="instances", out=str(tmp_path / "c.zarr")
        )
    out = out.values
    assert same_partition(out, label(img))
    corner = out[(slice(20, 28),) * ndim]
    assert len(np.unique(corner[corner > 0])) == 1
    assert out.dtype == np.uint8 if path == "store" else out.max() == 2


def test_a_result_of_another_shape_says_what_to_return(image):
    with pytest.raises(ResultError, match=r"window has \(20, 20\).*return one label per element"):
        image.patch.apply(lambda p: label(p)[:-1], y=20, x=20, step=10, merge="instances")

"""Instance labels stitched across patches (``merge="instances"``, issue 19).

The reference is labelling the whole array at once: for objects smaller than the
overlap, stitching per-patch labels must give exactly the same partition (the same
objects, ids up to a permutation), eagerly, by chunks, out of core (with resume) and
on dask (also on a real ``distributed.LocalCluster``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reference import same_partition

import xpatch  # noqa: F401  (registers .patch)
from xpatch._instances import smallest_uint
from xpatch.errors import (
    AggregationError,
    DimensionError,
    IncompleteError,
    ResultError,
)
from xpatch.instances import InstanceAggregator
from xpatch.store import StoreError

measure = pytest.importorskip("skimage.measure")


def label(p):
    """The func of the issue: threshold, then connected components."""
    return measure.label(np.asarray(p) > 0.5)


def blobs(shape, n, diameters=(3, 40), seed=0, gap=2):
    """Up to ``n`` discs (2-D) or balls (3-D) of the given diameters, never closer than
    ``gap`` elements to each other, as a float image (1 inside)."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, dtype=np.float32)
    placed = 0
    for _ in range(n * 30):
        r = rng.uniform(*diameters) / 2
        c = np.array([rng.uniform(0, s) for s in shape])
        lo = np.maximum(np.floor(c - r - gap).astype(int), 0)
        hi = np.minimum(np.ceil(c + r + gap).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.ogrid[box]
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        if (img[box][d2 <= (r + gap) ** 2] > 0).any():
            continue
        ball = d2 <= r * r
        if not ball.any():
            continue
        img[box][ball] = 1
        placed += 1
        if placed == n:
            break
    return img


@pytest.fixture(scope="module")
def image2d():
    img = blobs((260, 230), 60, (3, 40), seed=1)
    return xr.DataArray(
        img, dims=("y", "x"), coords={"y": np.arange(260) * 0.5, "x": np.arange(230) * 0.5}
    )


@pytest.fixture(scope="module")
def volume3d():
    img = blobs((110, 100, 96), 40, (3, 26), seed=2)
    return xr.DataArray(img, dims=("z", "y", "x"))


def test_same_partition_helper():
    a = np.array([0, 1, 1, 2, 0])
    assert same_partition(a, np.array([0, 7, 7, 3, 0]))
    assert not same_partition(a, np.array([0, 7, 7, 7, 0]))  # two objects merged
    assert not same_partition(a, np.array([0, 7, 8, 3, 0]))  # one object split
    assert not same_partition(a, np.array([1, 7, 7, 3, 0]))  # background differs


# --- eager and chunked ----------------------------------------------------------------
@pytest.mark.parametrize("chunks", [None, 64, {"y": 100}])
@pytest.mark.parametrize("border", ["squeeze", "edge", "pad", "adaptive"])
def test_2d_matches_labelling_the_whole_image(image2d, chunks, border):
    truth = label(image2d)
    out = image2d.patch.apply(
        label, y=96, x=96, step=48, border=border, chunks=chunks, merge="instances"
    )
    assert out.dims == ("y", "x")
    assert same_partition(out, truth)
    n = int(truth.max())
    assert sorted(np.unique(out.values)) == list(range(n + 1))  # consecutive 1..N
    assert out.dtype == smallest_uint(n)
    xr.testing.assert_equal(out.y, image2d.y)


def test_result_does_not_depend_on_chunks(image2d):
    whole = image2d.patch.apply(label, y=96, x=96, step=48, merge="instances")
    chunked = image2d.patch.apply(label, y=96, x=96, step=48, merge="instances", chunks=40)
    np.testing.assert_array_equal(whole, chunked)  # same ids, not only the same partition


@pytest.mark.parametrize("chunks", [None, 40])
def test_3d_matches_labelling_the_whole_volume(volume3d, chunks):
    truth = label(volume3d)
    out = volume3d.patch.apply(label, z=64, y=64, x=64, step=34, chunks=chunks, merge="instances")
    assert int(truth.max()) > 20
    assert same_partition(out, truth)


@pytest.mark.parametrize("chunks", [None, 16])
def test_object_larger_than_the_overlap_is_joined_by_iou(chunks):
    img = np.zeros((60, 200), np.float32)
    img[20:25, 5:195] = 1  # a bar crossing every window along x
    img[40:44, 10:14] = 1
    da = xr.DataArray(img, dims=("y", "x"))
    out = da.patch.apply(label, y=60, x=40, step=30, chunks=chunks, merge="instances")
    assert same_partition(out, label(img))


def test_iou_decides_when_parts_that_disagree_are_one_object():
    """Every other window sees the bar one row thinner: its parts overlap their
    neighbours' with IoU 4/5 over the shared columns."""
    img = np.zeros((60, 200), np.float32)
    img[20:25, 5:195] = 1
    da = xr.DataArray(img, dims=("y", "x"), coords={"y": np.arange(60), "x": np.arange(200)})

    def uneven(p):
        lab = label(p)
        if int(p.x[0]) // 30 % 2:
            lab[20] = 0
        return lab

    joined = da.patch.apply(uneven, y=60, x=40, step=30, merge="instances", iou=0.75)
    split = da.patch.apply(uneven, y=60, x=40, step=30, merge="instances", iou=0.85)
    assert int(joined.max()) == 1
    assert int(split.max()) > 1


def test_cut_objects_come_from_the_window_that_sees_them_whole():
    """A model that is wrong near patch borders (drops objects touching them, as a
    network whose receptive field is cut would): the core rule never uses its
    border objects, so the result is still exact."""
    img = blobs((120, 120), 20, (3, 12), seed=5)

    def careful(p):
        lab = label(p)
        y, x = p.y.values, p.x.values
        cut = [lab[0] * (y[0] > 0), lab[-1] * (y[-1] < 119)]
        cut += [lab[:, 0] * (x[0] > 0), lab[:, -1] * (x[-1] < 119)]
        lab[np.isin(lab, np.unique(np.concatenate(cut))[1:])] = 0  # cut objects are lost
        return lab

    da = xr.DataArray(img, dims=("y", "x"), coords={"y": np.arange(120), "x": np.arange(120)})
    out = da.patch.apply(careful, y=48, x=48, step=28, merge="instances")
    assert same_partition(out, label(img))


@pytest.mark.parametrize("ndim", [2, 3])
def test_object_straddling_a_chunk_corner(ndim):
    """One object across the corner shared by 4 (2-D) or 8 (3-D) chunks, chunks
    smaller than the patch."""
    shape = (64,) * ndim
    img = blobs(shape, 12, (3, 8), seed=3)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum((g - 31.5) ** 2 for g in grids)
    img[d2 <= 11**2] = 0
    img[d2 <= 7**2] = 1  # centred on the corner of the chunks at 32
    da = xr.DataArray(img, dims=("z", "y", "x")[-ndim:])
    sizes = dict.fromkeys(da.dims, 40)
    out = da.patch.apply(label, sizes, step=24, chunks=32, merge="instances")
    assert same_partition(out, label(img))
    corner = out.values[(slice(26, 38),) * ndim]
    assert len(np.unique(corner[corner > 0])) == 1  # one id in all 2**ndim chunks


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(30, 90), st.integers(30, 90)),
    n=st.integers(0, 25),
    seed=st.integers(0, 2**16),
    step=st.integers(6, 20),
    extra=st.integers(13, 20),
    chunks=st.one_of(st.none(), st.integers(8, 50)),
    border=st.sampled_from(["squeeze", "edge", "pad", "adaptive", "crop"]),
)
@example(shape=(30, 80), n=9, seed=32617, step=13, extra=13, chunks=None, border="adaptive")
def test_any_blob_layout_and_grid_gives_the_whole_partition(
    shape, n, seed, step, extra, chunks, border
):
    img = blobs(shape, n, (3, 12), seed=seed)
    size = min(step + extra, *shape) if border != "pad" else step + extra
    step = min(step, size)
    if size - step < 12 and border != "pad":  # the overlap must exceed the largest object
        size = min(shape)
        step = max(1, min(step, size - 13))
        if size - step < 12:
            return
    da = xr.DataArray(img, dims=("y", "x"))
    out = da.patch.apply(
        label, y=size, x=size, step=step, border=border, chunks=chunks, merge="instances"
    )
    covered = np.ones(img.shape, dtype=bool)
    if border == "crop":  # the uncovered tail is background: objects there are cut
        g = da.patch.grid(y=size, x=size, step=step, border="crop")
        covered[int(g.axes[0].stops.max()) :, :] = False
        covered[:, int(g.axes[1].stops.max()) :] = False
    expected = label(img * covered)
    assert same_partition(out, expected)


# --- out of core -------------------------------------------------------------------------
def test_store_matches_and_resumes_after_an_interruption(volume3d, tmp_path):
    truth = label(volume3d)
    path = tmp_path / "labels.zarr"
    calls = []

    def dies(p):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt  # a killed run
        return label(p)

    kwargs = dict(z=64, y=64, x=64, step=34, chunks=40, merge="instances")
    with pytest.raises(KeyboardInterrupt):
        volume3d.patch.apply(dies, out=str(path), **kwargs)
    scratch = tmp_path / "labels.zarr.xpatch-instances"
    assert scratch.exists() and not path.exists()  # the store comes only in the second pass
    with pytest.raises(StoreError, match="resume=True"):
        volume3d.patch.apply(label, out=str(path), **kwargs)
    counted = []

    def counts(p):
        counted.append(1)
        return label(p)

    out = volume3d.patch.apply(counts, out=str(path), resume=True, **kwargs)
    n = len(volume3d.patch.grid(z=64, y=64, x=64, step=34))
    assert len(counted) + len(calls) - 1 < 2 * n  # finished chunks' windows are not redone
    assert isinstance(out.data, type(xr.open_zarr(path)["result"].data))  # lazy, from zarr
    assert same_partition(out.values, truth)
    np.testing.assert_array_equal(out, volume3d.patch.apply(label, **kwargs))
    assert not scratch.exists()
    assert xr.open_zarr(path)["result"].dtype == smallest_uint(int(truth.max()))
    with pytest.raises(StoreError, match="already holds"):
        volume3d.patch.apply(label, out=str(path), **kwargs)


def test_store_resume_refuses_another_func(image2d, tmp_path):
    path = str(tmp_path / "l.zarr")
    kwargs = dict(y=96, x=96, step=48, chunks=64, merge="instances")
    calls = []

    def dies(p):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("killed")
        return label(p)

    with pytest.raises(RuntimeError):
        image2d.patch.apply(dies, out=path, **kwargs)
    with pytest.raises(StoreError, match="another func"):
        other = lambda p: label(p) * (np.asarray(p) > 2)  # noqa: E731
        image2d.patch.apply(other, out=path, resume=True, **kwargs)
    with pytest.raises(StoreError, match="another configuration"):
        image2d.patch.apply(label, out=path, resume=True, **{**kwargs, "iou": 0.9})
    out = image2d.patch.apply(label, out=path, resume=True, **kwargs)
    assert same_partition(out.values, label(image2d))


def test_store_interrupted_in_the_relabel_pass_resumes(image2d, tmp_path, monkeypatch):
    from xpatch import store

    path = str(tmp_path / "l.zarr")
    kwargs = dict(y=96, x=96, step=48, chunks=64, merge="instances")
    real, writes = store.ZarrSink.write, []

    def write(self, *args, **kw):
        writes.append(1)
        if len(writes) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(store.ZarrSink, "write", write)
    with pytest.raises(KeyboardInterrupt):
        image2d.patch.apply(label, out=path, **kwargs)
    monkeypatch.setattr(store.ZarrSink, "write", real)
    out = image2d.patch.apply(label, out=path, resume=True, **kwargs)
    np.testing.assert_array_equal(out, image2d.patch.apply(label, **kwargs))


# --- dask ------------------------------------------------------------------------------
def test_dask_is_lazy_and_matches(volume3d):
    calls = []

    def counted(p):
        calls.append(1)
        return label(p)

    lazy = volume3d.chunk(40).patch.apply(counted, z=64, y=64, x=64, step=34, merge="instances")
    assert not calls  # building the graph calls nothing
    assert lazy.chunks == ((40, 40, 30), (40, 40, 20), (40, 40, 16))
    out = lazy.compute()
    assert len(calls) == len(volume3d.patch.grid(z=64, y=64, x=64, step=34))  # each once
    assert same_partition(out, label(volume3d))
    eager = volume3d.patch.apply(label, z=64, y=64, x=64, step=34, chunks=40, merge="instances")
    np.testing.assert_array_equal(out, eager)


def test_dask_on_a_local_cluster(image2d):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        lazy = image2d.chunk(64).patch.apply(label, y=96, x=96, step=48, merge="instances")
        out = lazy.compute()
    assert same_partition(out, label(image2d))


def test_dask_input_with_out(image2d, tmp_path):
    out = image2d.chunk(64).patch.apply(
        label, y=96, x=96, step=48, merge="instances", out=str(tmp_path / "d.zarr")
    )
    assert same_partition(out.values, label(image2d))


# --- aggregator, Dataset input --------------------------------------------------------
def test_aggregator_hand_written_loop(image2d):
    agg = image2d.patch.aggregator(y=96, x=96, step=48, chunks=50, merge="instances")
    assert isinstance(agg, InstanceAggregator)
    patches = list(image2d.patch.sample(y=96, x=96, step=48))
    for patch in patches[:-1]:
        agg.add(xr.DataArray(label(patch), dims=patch.dims, coords=patch.coords))  # located
    with pytest.raises(IncompleteError, match="1 of"):
        agg.result()
    agg.add(label(patches[-1]), agg.grid[len(agg.grid) - 1])
    with pytest.raises(AggregationError, match="twice"):
        agg.add(label(patches[0]), agg.grid[0])
    assert same_partition(agg.result(), label(image2d))


def test_aggregator_to_a_store(image2d, tmp_path):
    path = str(tmp_path / "a.zarr")
    agg = image2d.patch.aggregator(y=96, x=96, step=48, chunks=64, merge="instances", out=path)
    for w, patch in zip(agg.grid, image2d.patch.sample(y=96, x=96, step=48)):
        agg.add(label(patch), w)
    out = agg.result()
    assert same_partition(out.values, label(image2d))
    assert not os.path.exists(path + ".xpatch-instances")


def test_dataset_with_channels_in(image2d):
    ds = xr.Dataset({"nuclei": image2d, "other": image2d * 0}).expand_dims(c=2)
    out = ds.patch.apply(
        lambda p: label(p["nuclei"].isel(c=0)), y=96, x=96, step=48, merge="instances"
    )
    assert out.dims == ("y", "x")
    assert same_partition(out, label(image2d))


# --- errors, before func is called -----------------------------------------------------
def _never(p):
    raise AssertionError("func must not be called")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"merge": "instance"}, ResultError, "merge='instances'"),
        ({"merge": "instances", "iou": 0}, ResultError, r"iou must be a number in \(0, 1\]"),
        ({"merge": "instances", "iou": "half"}, TypeError, "iou"),
        ({"merge": "instances", "on_chunk": np.max}, ResultError, "on_chunk is not used"),
        ({"merge": "instances", "batch_size": 4}, ResultError, "batch_size"),
        ({"merge": "instances", "fill_value": 3}, ResultError, "fill_value"),
        ({"merge": "instances", "resume": "yes"}, TypeError, "resume"),
        ({"merge": "instances", "chunks": {"q": 3}}, DimensionError, "q"),
    ],
)
def test_bad_arguments_are_refused_before_func(image2d, kwargs, error, match):
    with pytest.raises(error, match=match):
        image2d.patch.apply(_never, y=96, x=96, step=48, **kwargs)


def test_store_refusals_before_func(image2d, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("data")
    with pytest.raises(StoreError, match="refusing to replace"):
        image2d.patch.apply(_never, y=96, x=96, step=48, merge="instances", out=str(taken))
    assert (taken / "precious.txt").read_text() == "data"
    import zarr

    with pytest.raises(StoreError, match="local path"):
        image2d.patch.apply(_never, y=96, x=96, merge="instances", out=zarr.storage.MemoryStore())


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [
        (lambda p: np.stack([label(p)] * 2), DimensionError, "non-spatial dims"),
        (
            lambda p: xr.DataArray(np.stack([label(p)] * 2), dims=("c", "y", "x")),
            DimensionError,
            r"\.isel\(c=0\)",
        ),
        (lambda p: np.asarray(p) > 0.5, ResultError, "skimage.measure.label"),
        (lambda p: np.asarray(p), ResultError, "dtype float32"),
        (lambda p: -label(p), ResultError, "negative"),
        (lambda p: label(p)[:-1], ResultError, "shape"),
    ],
)
def test_bad_results_name_the_window(image2d, result, error, match):
    with pytest.raises(error, match=match) as info:
        image2d.patch.apply(result, y=96, x=96, step=48, merge="instances")
    assert "Window" in str(info.value)

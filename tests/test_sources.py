"""Patches from every kind of source: in memory, lazy backends, netCDF, zarr, dask, memmap.

Real components only: a counting xarray ``BackendArray``, netCDF files and zarr stores
in ``tmp_path``, dask arrays, memory maps and a real PyTorch ``DataLoader``.
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

import xpatch  # noqa: F401  (registers the accessor)

PAD_MODES = ["constant", "edge", "reflect", "symmetric", "wrap"]


# --------------------------------------------------------------------------- helpers


class CountingBackendArray(BackendArray):
    """A lazy backend array that records the number of elements of every read.

    ``support`` is what the backend can index natively: BASIC (slices only, as
    many simple file formats) or OUTER (orthogonal integer arrays, as netCDF4).
    """

    def __init__(self, array: np.ndarray, support=indexing.IndexingSupport.BASIC) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.support = support
        self.reads: list[int] = []

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, self.support, self._raw_getitem)

    def _raw_getitem(self, key):
        # orthogonal (outer) indexing, one axis at a time from the last one, so that
        # integer keys dropping an axis never shift the axes still to be indexed
        out = self.array
        for axis in reversed(range(len(key))):
            out = out[(slice(None),) * axis + (key[axis],)]
        out = np.array(out)
        self.reads.append(out.size)
        return out


def counting_dataarray(array, dims, coords=None, support=indexing.IndexingSupport.BASIC):
    backend = CountingBackendArray(array, support)
    var = xr.Variable(dims, indexing.LazilyIndexedArray(backend))
    da = xr.DataArray(var, coords=coords, name="v", attrs={"units": "m"})
    assert backend.reads == [], "building the DataArray must not read"
    return da, backend


def window_elements(window, non_spatial: int) -> int:
    return math.prod(window.shape) * non_spatial


def pad_geometry(length: int, size: int, step: int) -> tuple[int, int, int]:
    """n patches and (before, after) padding of the pad border, from the contract."""
    n = 1 if size >= length else math.ceil((length - size) / step) + 1
    pad = (n - 1) * step + size - length
    return n, pad // 2, pad - pad // 2


def isel(da, window):
    return da.isel(dict(window))


def make_cube(dims=("band", "y", "x"), sizes=None, seed=0, dtype="float32"):
    sizes = sizes or {"band": 3, "y": 40, "x": 36}
    rng = np.random.default_rng(seed)
    shape = tuple(sizes[d] for d in dims)
    data = rng.random(shape).astype(dtype)
    coords = {}
    if "y" in sizes:
        coords["y"] = ("y", 1000.0 - 30.0 * np.arange(sizes["y"]))
    if "x" in sizes:
        coords["x"] = ("x", 500.0 + 30.0 * np.arange(sizes["x"]))
    if "band" in sizes:
        coords["band"] = ("band", [f"b{i}" for i in range(sizes["band"])])
    if "time" in sizes:
        coords["time"] = ("time", np.arange(sizes["time"]) * np.timedelta64(1, "D"))
    return xr.DataArray(data, dims=dims, coords=coords, name="refl", attrs={"units": "1"})


def rich_cube():
    """(band, y, x) with 1-D dim coords, 2-D aux coords, a scalar spatial_ref, attrs."""
    da = make_cube()
    ny, nx = da.sizes["y"], da.sizes["x"]
    lat = 45.0 + 0.01 * np.arange(ny)[:, None] + 0.001 * np.arange(nx)[None, :]
    lon = 7.0 + 0.002 * np.arange(ny)[:, None] + 0.02 * np.arange(nx)[None, :]
    return da.assign_coords(
        lat=(("y", "x"), lat),
        lon=(("y", "x"), lon),
        wavelength=("band", [490.0, 560.0, 665.0]),
        spatial_ref=xr.Variable((), np.int64(0), attrs={"crs_wkt": "EPSG:32632", "epsg": 32632}),
    ).assign_attrs(long_name="reflectance", platform="S2A")


def raise_if_dask_computes():
    import dask

    def scheduler(dsk, keys, **kwargs):
        raise AssertionError("dask computed while it should have stayed lazy")

    return dask.config.set(scheduler=scheduler)


# ------------------------------------------------- 1. lazy sources read only the patch


@pytest.mark.parametrize("border", ["squeeze", "edge", "adaptive", "crop"])
def test_counting_backend_sample_reads_only_patches(border):
    data = np.random.default_rng(1).random((3, 60, 50)).astype("float32")
    da, backend = counting_dataarray(
        data, ("band", "y", "x"), coords={"y": np.arange(60), "x": np.arange(50)}
    )
    patches = list(da.patch.sample(y=16, x=16, step=10, border=border))
    assert backend.reads == [], "sample() must stay lazy until values are used"

    grid = da.patch.grid(y=16, x=16, step=10, border=border)
    assert len(patches) == len(grid)
    for window, patch in zip(grid, patches):
        np.testing.assert_array_equal(patch.values, data[:, window["y"], window["x"]])
    assert len(backend.reads) == len(grid)
    assert max(backend.reads) <= 3 * 16 * 16
    assert sum(backend.reads) == sum(window_elements(w, 3) for w in grid)
    assert not da.variable._in_memory


@pytest.mark.parametrize("batch_size", [None, 3])
def test_counting_backend_apply_reads_only_patches(batch_size):
    data = np.random.default_rng(2).random((3, 60, 50)).astype("float32")
    da, backend = counting_dataarray(
        data, ("band", "y", "x"), coords={"y": np.arange(60), "x": np.arange(50)}
    )
    out = da.patch.apply(lambda p: p * 1, y=16, x=16, step=8, weights="mean", batch_size=batch_size)
    grid = da.patch.grid(y=16, x=16, step=8)
    np.testing.assert_allclose(out.values, data, rtol=1e-6)
    assert out.dims == da.dims
    assert max(backend.reads) <= 3 * 16 * 16
    assert len(backend.reads) == len(grid)
    assert sum(backend.reads) == sum(window_elements(w, 3) for w in grid)
    assert not da.variable._in_memory


SUPPORTS = {"basic": indexing.IndexingSupport.BASIC, "outer": indexing.IndexingSupport.OUTER}


@pytest.mark.parametrize("support", list(SUPPORTS))
@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_counting_backend_pad_reads_at_most_a_patch(pad_mode, support):
    data = np.random.default_rng(3).random((2, 30, 25)).astype("float32")
    da, backend = counting_dataarray(data, ("band", "y", "x"), support=SUPPORTS[support])
    kw = {"y": 12, "x": 12, "step": 8, "border": "pad", "pad_mode": pad_mode}
    grid = da.patch.grid(**kw)
    _, by, ay = pad_geometry(30, 12, 8)
    _, bx, ax = pad_geometry(25, 12, 8)
    padded = np.pad(data, ((0, 0), (by, ay), (bx, ax)), mode=pad_mode)
    patches = da.patch.sample(**kw)
    for window in grid:
        before = len(backend.reads)
        values = next(patches).values
        ys, xs = window["y"], window["x"]
        expected = padded[:, ys.start + by : ys.stop + by, xs.start + bx : xs.stop + bx]
        np.testing.assert_array_equal(values, expected)
        read = sum(backend.reads[before:])
        assert read <= 2 * 12 * 12, f"{window!r} read {read} elements for a patch of {2 * 144}"
    assert next(patches, None) is None


@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_counting_backend_pad_patches_read_only_themselves(pad_mode):
    # Patches inside the array stay lazy; a patch that crosses the border is
    # gathered when it is cut (design decision), reading only its own elements.
    data = np.random.default_rng(3).random((2, 30, 25)).astype("float32")
    da, backend = counting_dataarray(data, ("band", "y", "x"))
    grid = da.patch.grid(y=12, x=12, step=8, border="pad", pad_mode=pad_mode)
    sampler = da.patch.sample(y=12, x=12, step=8, border="pad", pad_mode=pad_mode)
    for window in grid:
        before = len(backend.reads)
        next(sampler)
        read = sum(backend.reads[before:])
        inside = all(s.start >= 0 and s.stop <= da.sizes[d] for d, s in window.items())
        if inside:
            assert read == 0, f"{window!r} was read before use"
        else:
            assert read <= 2 * 12 * 12, f"{window!r} read {read} elements"


def test_counting_backend_patch_dataset_reads_only_patch():
    data = np.random.default_rng(4).random((2, 40, 40)).astype("float32")
    da, backend = counting_dataarray(data, ("band", "y", "x"))
    ds = da.patch.dataset(y=10, x=20)
    assert backend.reads == []
    patch, index = ds[5]
    window = ds.grid[5]
    assert index == 5
    np.testing.assert_array_equal(patch, data[:, window["y"], window["x"]])
    assert backend.reads == [2 * 10 * 20]


# netCDF / zarr sources -------------------------------------------------------


def _netcdf_engine():
    try:
        import h5netcdf  # noqa: F401
        import h5py  # noqa: F401
    except ImportError:
        pytest.importorskip("netCDF4")
        return "netcdf4"
    return "h5netcdf"


def _write_netcdf(da, path):
    da.to_netcdf(path, engine=_netcdf_engine())
    return path


def _write_zarr(da, path, chunks=None):
    encoding = {da.name: {"chunks": chunks}} if chunks else None
    da.to_dataset().to_zarr(path, encoding=encoding, mode="w")
    return path


def _open(kind, path):
    if kind == "netcdf":
        return xr.open_dataarray(path)
    return xr.open_dataarray(path, engine="zarr", chunks=None)


@pytest.fixture
def small_file_source(request, tmp_path):
    """(kind, in-memory DataArray, lazily opened DataArray)."""
    kind = request.param
    da = rich_cube()
    if kind == "netcdf":
        path = _write_netcdf(da, tmp_path / "cube.nc")
    else:
        path = _write_zarr(da, tmp_path / "cube.zarr", chunks=(1, 16, 16))
    src = _open(kind, path)
    yield kind, da, src
    src.close()


@pytest.mark.parametrize("small_file_source", ["netcdf", "zarr"], indirect=True)
def test_file_source_opens_lazily_and_samples_patches(small_file_source):
    _, da, src = small_file_source
    assert not src.variable._in_memory
    grid = src.patch.grid(y=16, x=16, step=8)
    patches = list(src.patch.sample(y=16, x=16, step=8))
    assert len(patches) == len(grid)
    for window, patch in zip(grid, patches):
        assert not patch.variable._in_memory
        expected = isel(da, window)
        np.testing.assert_array_equal(patch.values, expected.values)
        for name in ("y", "x", "band", "lat", "lon", "wavelength"):
            np.testing.assert_array_equal(patch[name].values, expected[name].values)
        assert patch.spatial_ref.attrs["epsg"] == 32632
        assert patch.attrs["long_name"] == "reflectance"
    assert not src.variable._in_memory, "sampling must not load the whole source"


@pytest.mark.parametrize("small_file_source", ["netcdf", "zarr"], indirect=True)
@pytest.mark.parametrize("batch_size", [None, 4])
def test_file_source_apply_equals_in_memory(small_file_source, batch_size):
    _, da, src = small_file_source

    def func(p):
        return p * 2 + 1

    lazy = src.patch.apply(func, y=16, x=16, step=8, batch_size=batch_size)
    eager = da.patch.apply(func, y=16, x=16, step=8, batch_size=batch_size)
    assert not src.variable._in_memory
    assert lazy.dims == eager.dims == da.dims
    np.testing.assert_allclose(np.asarray(lazy), np.asarray(eager), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lazy), da.values * 2 + 1, rtol=1e-5)
    for name in ("y", "x", "band", "lat", "lon"):
        np.testing.assert_array_equal(lazy[name].values, da[name].values)


@pytest.mark.parametrize("small_file_source", ["netcdf", "zarr"], indirect=True)
@pytest.mark.parametrize("pad_mode", ["constant", "reflect", "wrap"])
def test_file_source_pad_patches(small_file_source, pad_mode):
    _, da, src = small_file_source
    kw = {"y": 24, "x": 24, "step": 16, "border": "pad", "pad_mode": pad_mode}
    grid = src.patch.grid(**kw)
    _, by, ay = pad_geometry(40, 24, 16)
    _, bx, ax = pad_geometry(36, 24, 16)
    padded = np.pad(da.values, ((0, 0), (by, ay), (bx, ax)), mode=pad_mode)
    for window, patch in zip(grid, src.patch.sample(**kw)):
        ys, xs = window["y"], window["x"]
        expected = padded[:, ys.start + by : ys.stop + by, xs.start + bx : xs.stop + bx]
        np.testing.assert_array_equal(patch.values, expected)
    assert not src.variable._in_memory


# A 64 MiB float32 file sampled in 64 x 64 patches.
BIG_SHAPE = (16, 1024, 1024)


def _big_expected(window, band=slice(None)):
    b = np.arange(BIG_SHAPE[0])[band, None, None]
    y = np.arange(BIG_SHAPE[1])[window["y"]][None, :, None]
    x = np.arange(BIG_SHAPE[2])[window["x"]][None, None, :]
    return (b * 2**20 + y * 1024 + x).astype("float32")


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    b = np.arange(BIG_SHAPE[0], dtype="float32")[:, None, None] * 2**20
    yx = np.arange(BIG_SHAPE[1] * BIG_SHAPE[2], dtype="float32").reshape(BIG_SHAPE[1:])
    da = xr.DataArray(b + yx, dims=("band", "y", "x"), name="big")
    assert da.nbytes == 64 * 2**20
    paths = {
        "netcdf": _write_netcdf(da, root / "big.nc"),
        "zarr": _write_zarr(da, root / "big.zarr", chunks=(16, 128, 128)),
    }
    del da, b, yx
    return paths


@pytest.mark.parametrize("kind", ["netcdf", "zarr"])
def test_file_source_sampling_memory_stays_far_below_array_size(big_files, kind):
    src = _open(kind, big_files[kind])
    nbytes = src.nbytes
    assert nbytes == 64 * 2**20
    grid = src.patch.grid(y=64, x=64)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        n = 0
        for window, patch in zip(grid, src.patch.sample(y=64, x=64)):
            values = patch.values
            assert values.shape == (16, 64, 64)
            if n % 37 == 0:
                np.testing.assert_array_equal(values, _big_expected(window))
            n += 1
            del values, patch
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert n == len(grid) == 256
    assert peak < nbytes / 8, f"peak {peak / 2**20:.1f} MiB for a 64 MiB source"
    assert not src.variable._in_memory
    src.close()


# dask ------------------------------------------------------------------------


@pytest.mark.parametrize("border", ["squeeze", "pad"])
def test_dask_sample_patches_stay_lazy(border):
    import dask.array

    da = rich_cube()
    dk = da.chunk({"band": 1, "y": 16, "x": 16})
    kw = {"y": 12, "x": 12, "step": 8, "border": border}
    with raise_if_dask_computes():
        grid = dk.patch.grid(**kw)
        patches = list(dk.patch.sample(**kw))
        ds = dk.patch.dataset(**kw)
        assert len(ds) == len(grid)
    assert len(patches) == len(grid)
    eager = list(da.patch.sample(**kw))
    for patch, expected in zip(patches, eager):
        assert isinstance(patch.data, dask.array.Array)
        assert patch.dims == da.dims
        xr.testing.assert_allclose(patch.compute(), expected)


@pytest.mark.parametrize("batch_size", [None, 5])
def test_dask_apply_equals_eager(batch_size):
    da = rich_cube()
    dk = da.chunk({"y": 16, "x": 16})

    def func(p):
        return p.mean("band") * 3

    eager = da.patch.apply(func, y=12, x=12, step=6, batch_size=batch_size)
    lazy = dk.patch.apply(func, y=12, x=12, step=6, batch_size=batch_size)
    assert lazy.dims == eager.dims == ("y", "x")
    np.testing.assert_allclose(np.asarray(lazy), np.asarray(eager), rtol=1e-5, atol=1e-6)
    for name in ("y", "x", "lat", "lon"):
        np.testing.assert_array_equal(lazy[name].values, da[name].values)


# numpy memmap ------------------------------------------------------------------


def _memmap_dataarray(path, shape=(4, 512, 512), dtype="float32"):
    mm = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
    for b in range(shape[0]):
        mm[b] = np.arange(shape[1] * shape[2], dtype=dtype).reshape(shape[1:]) + b * 1e6
    mm.flush()
    del mm
    mm = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    da = xr.DataArray(mm, dims=("band", "y", "x"), name="mm")
    return da, mm


def test_memmap_patch_is_a_view_and_sampling_loads_no_copy(tmp_path):
    da, mm = _memmap_dataarray(tmp_path / "a.dat", shape=(4, 1024, 1024))
    assert da.nbytes == 16 * 2**20
    grid = da.patch.grid(y=64, x=64)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for n, (window, patch) in enumerate(zip(grid, da.patch.sample(y=64, x=64))):
            assert np.shares_memory(patch.data, mm), "a memmap patch should be a view"
            values = patch.values
            if n % 41 == 0:
                np.testing.assert_array_equal(values, mm[:, window["y"], window["x"]])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < da.nbytes / 8


# ------------------------------------------------------------------- 2. patches


def test_patches_carry_coords_attrs_and_non_spatial_dims():
    da = rich_cube()
    grid = da.patch.grid(y=16, x=12, step=8)
    patches = list(da.patch.sample(y=16, x=12, step=8))
    assert len(patches) == len(grid) > 1
    for window, patch in zip(grid, patches):
        xr.testing.assert_identical(patch, isel(da, window))
        assert patch.dims == ("band", "y", "x")
        assert patch.sizes == {"band": 3, "y": 16, "x": 12}
        assert patch.lat.dims == ("y", "x")
        assert patch.spatial_ref.dims == ()
        assert patch.spatial_ref.attrs == {"crs_wkt": "EPSG:32632", "epsg": 32632}
        assert patch.attrs == da.attrs
        assert patch.name == "refl"
        np.testing.assert_array_equal(patch.wavelength.values, [490.0, 560.0, 665.0])


@pytest.mark.parametrize(
    "dims", [("y", "band", "x"), ("x", "time", "y"), ("x", "y", "band"), ("time", "y", "x")]
)
def test_spatial_dims_in_any_position(dims):
    sizes = {"band": 2, "time": 3, "y": 30, "x": 26}
    da = make_cube(dims=dims, sizes={d: sizes[d] for d in dims})
    grid = da.patch.grid(y=10, x=8, step=5)
    assert grid.dims == tuple(d for d in dims if d in ("y", "x"))
    non_spatial = next(d for d in dims if d not in ("y", "x"))
    for window, patch in zip(grid, da.patch.sample(y=10, x=8, step=5)):
        assert patch.dims == dims
        assert patch.sizes[non_spatial] == sizes[non_spatial]
        assert patch.sizes["y"] == 10 and patch.sizes["x"] == 8
        xr.testing.assert_identical(patch, isel(da, window))
    ds = da.patch.dataset(y=10, x=8, step=5)
    arr, i = ds[len(ds) - 1]
    np.testing.assert_array_equal(arr, isel(da, grid[i]).values)
    assert arr.shape == tuple(10 if d == "y" else 8 if d == "x" else sizes[d] for d in dims)


def test_sizes_in_any_keyword_order_and_as_mapping():
    da = make_cube(dims=("x", "band", "y"), sizes={"x": 30, "band": 2, "y": 25})
    forms = [
        {"kwargs": {"y": 10, "x": 12}},
        {"kwargs": {"x": 12, "y": 10}},
        {"mapping": {"y": 10, "x": 12}},
        {"mapping": {"x": 12, "y": 10}},
    ]
    results = []
    for form in forms:
        args = (form["mapping"],) if "mapping" in form else ()
        kwargs = form.get("kwargs", {})
        grid = da.patch.grid(*args, step={"x": 6, "y": 5}, **kwargs)
        patches = list(da.patch.sample(*args, step={"y": 5, "x": 6}, **kwargs))
        assert grid.dims == ("x", "y")
        results.append(([dict(w) for w in grid], patches))
    first_windows, first_patches = results[0]
    for windows, patches in results[1:]:
        assert windows == first_windows
        for a, b in zip(patches, first_patches):
            xr.testing.assert_identical(a, b)


PAD_CASES = [
    # (shape, size, step): pads on both dims, a patch larger than the array, exact fit
    ({"y": 11, "x": 9}, {"y": 4, "x": 4}, {"y": 3, "x": 4}),
    ({"y": 3, "x": 9}, {"y": 8, "x": 4}, {"y": 2, "x": 3}),
    ({"y": 10, "x": 7}, {"y": 4, "x": 5}, {"y": 3, "x": 5}),
]


@pytest.mark.parametrize("pad_mode", PAD_MODES)
@pytest.mark.parametrize("case", PAD_CASES, ids=["both", "larger", "mixed"])
def test_pad_patches_hold_numpy_pad_values(pad_mode, case):
    shape, size, step = case
    arr = np.arange(1, shape["y"] * shape["x"] + 1, dtype="float64").reshape(shape["y"], shape["x"])
    da = xr.DataArray(arr, dims=("y", "x"))
    geom = {d: pad_geometry(shape[d], size[d], step[d]) for d in ("y", "x")}
    padded = np.pad(arr, [geom[d][1:] for d in ("y", "x")], mode=pad_mode)
    grid = da.patch.grid(size, step=step, border="pad", pad_mode=pad_mode)
    assert grid.shape == {d: geom[d][0] for d in ("y", "x")}
    for d in ("y", "x"):
        np.testing.assert_array_equal(grid.starts[d], np.arange(geom[d][0]) * step[d] - geom[d][1])
    patches = list(da.patch.sample(size, step=step, border="pad", pad_mode=pad_mode))
    assert len(patches) == len(grid)
    by, bx = geom["y"][1], geom["x"][1]
    for window, patch in zip(grid, patches):
        ys, xs = window["y"], window["x"]
        expected = padded[ys.start + by : ys.stop + by, xs.start + bx : xs.stop + bx]
        assert patch.shape == (size["y"], size["x"])
        np.testing.assert_array_equal(patch.values, expected)


def test_pad_border_default_mode_is_constant_zero():
    arr = np.arange(1.0, 26.0).reshape(5, 5)
    da = xr.DataArray(arr, dims=("y", "x"))
    default = list(da.patch.sample(y=4, x=4, step=3, border="pad"))
    constant = list(da.patch.sample(y=4, x=4, step=3, border="pad", pad_mode="constant"))
    for a, b in zip(default, constant):
        xr.testing.assert_identical(a, b)
    assert (default[0].values[0] == 0).all()


@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_pad_patches_with_non_spatial_dim_in_the_middle(pad_mode):
    da = make_cube(dims=("x", "band", "y"), sizes={"x": 13, "band": 2, "y": 9})
    kw = {"y": 6, "x": 6, "step": 4, "border": "pad", "pad_mode": pad_mode}
    _, by, ay = pad_geometry(9, 6, 4)
    _, bx, ax = pad_geometry(13, 6, 4)
    padded = np.pad(da.values, ((bx, ax), (0, 0), (by, ay)), mode=pad_mode)
    grid = da.patch.grid(**kw)
    for window, patch in zip(grid, da.patch.sample(**kw)):
        ys, xs = window["y"], window["x"]
        assert patch.dims == ("x", "band", "y")
        expected = padded[xs.start + bx : xs.stop + bx, :, ys.start + by : ys.stop + by]
        np.testing.assert_array_equal(patch.values, expected)
        np.testing.assert_array_equal(patch.band.values, ["b0", "b1"])
        assert patch.attrs == da.attrs
        assert patch.name == da.name


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_pad_patch_coords_extrapolated_linearly(pad_mode):
    ny, nx = 11, 8
    y = 100.0 + 2.5 * np.arange(ny)
    x = 5 + 10 * np.arange(nx)  # integer coordinate
    da = xr.DataArray(np.ones((ny, nx)), dims=("y", "x"), coords={"y": y, "x": x}, attrs={"a": 1})
    kw = {"y": 4, "x": 4, "step": 3, "border": "pad", "pad_mode": pad_mode}
    grid = da.patch.grid(**kw)
    assert grid.starts["y"][0] < 0 and grid.starts["x"][0] < 0
    patches = list(da.patch.sample(**kw))
    for window, patch in zip(grid, patches):
        ys, xs = window["y"], window["x"]
        np.testing.assert_allclose(patch.y.values, 100.0 + 2.5 * np.arange(ys.start, ys.stop))
        np.testing.assert_array_equal(patch.x.values, 5 + 10 * np.arange(xs.start, xs.stop))
        assert patch.x.dtype.kind == "i"
        assert patch.y.dtype == y.dtype
    # a window inside the array has exactly the source's coordinates
    inside = [w for w in grid if all(0 <= s.start and s.stop <= da.sizes[d] for d, s in w.items())]
    assert inside
    for window in inside:
        xr.testing.assert_identical(patches[window.index], isel(da, window))


# ------------------------------------------------------------------- 3. PyTorch


def test_import_xpatch_does_not_import_torch():
    code = (
        "import sys, numpy as np, xarray as xr, xpatch\n"
        "da = xr.DataArray(np.zeros((2, 8, 8)), dims=('b', 'y', 'x'))\n"
        "ds = da.patch.dataset(y=4, x=4)\n"
        "ds[0]\n"
        "assert 'torch' not in sys.modules, 'xpatch imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def pickling_context():
    """A start method that pickles the dataset into each worker, as spawn does.

    A forkserver with the heavy imports preloaded starts workers in a fraction of a
    second, while still sending the dataset to them pickled (so lazy sources are
    re-opened in the workers and memory maps travel as re-open recipes).
    """
    pytest.importorskip("torch")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "xarray", "torch", "xpatch", "zarr", "netCDF4"])
    return ctx


def _check_loader(source, ds, context, batch_size=4):
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=2, multiprocessing_context=context
    )
    seen = []
    for batch, indices in loader:
        assert isinstance(batch, torch.Tensor)
        assert batch.shape[0] == len(indices) <= batch_size
        for patch, i in zip(batch.numpy(), indices.tolist()):
            np.testing.assert_array_equal(patch, isel(source, ds.grid[i]).values)
            seen.append(i)
    assert seen == list(range(len(ds)))


def test_dataloader_in_memory(pickling_context):
    da = make_cube(dims=("y", "band", "x"), sizes={"y": 24, "band": 2, "x": 20})
    ds = da.patch.dataset(y=8, x=8, step=6)
    assert len(ds) == len(ds.grid) == len(da.patch.grid(y=8, x=8, step=6))
    patch, i = ds[2]
    assert isinstance(patch, np.ndarray) and i == 2
    assert patch.shape == (8, 2, 8)
    _check_loader(da, ds, context=pickling_context)


@pytest.mark.parametrize("kind", ["netcdf", "zarr"])
def test_dataloader_lazy_file(tmp_path, kind, pickling_context):
    da = make_cube(sizes={"band": 2, "y": 256, "x": 256})
    if kind == "netcdf":
        path = _write_netcdf(da, tmp_path / "a.nc")
    else:
        path = _write_zarr(da, tmp_path / "a.zarr", chunks=(1, 16, 16))
    src = _open(kind, path)
    kw = {"y": 64, "x": 64, "step": 48, "border": "pad", "pad_mode": "reflect"}
    ds = src.patch.dataset(**kw)
    assert len(ds) == 25
    size = len(pickle.dumps(ds))
    assert size < src.nbytes / 20, f"a lazy source must pickle without data ({size} bytes)"
    assert not src.variable._in_memory
    expected = list(da.patch.sample(**kw))
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=2, multiprocessing_context=pickling_context
    )
    seen = []
    for batch, indices in loader:
        for patch, i in zip(batch.numpy(), indices.tolist()):
            np.testing.assert_array_equal(patch, expected[i].values)
            seen.append(i)
    assert seen == list(range(len(ds)))
    assert not src.variable._in_memory
    src.close()


def test_dataloader_memmap_pickles_a_recipe(tmp_path, pickling_context):
    da, mm = _memmap_dataarray(tmp_path / "m.dat", shape=(2, 256, 256))
    ds = da.patch.dataset(y=64, x=64, step=48)
    blob = pickle.dumps(ds)
    assert len(blob) < mm.nbytes / 50, f"pickle is {len(blob)} bytes for {mm.nbytes}"
    clone = pickle.loads(blob)
    assert isinstance(clone.obj.variable._data, np.memmap)
    for i in (0, len(ds) - 1):
        np.testing.assert_array_equal(clone[i][0], ds[i][0])
        assert clone[i][1] == i
    _check_loader(da, ds, context=pickling_context)


# ------------------------------------------------------------- 4. Dataset input


def _dataset():
    da = rich_cube()
    return xr.Dataset(
        {
            "refl": da,
            "mask": (("y", "x"), (da.isel(band=0).values > 0.5)),
            "profile": ("y", np.arange(da.sizes["y"], dtype="float64")),
            "series": ("time", np.arange(4.0)),
        },
        coords={"time": np.arange(4)},
        attrs={"title": "scene"},
    )


def test_dataset_sample_holds_only_variables_with_all_spatial_dims():
    ds = _dataset()
    grid = ds.patch.grid(y=16, x=16, step=8)
    patches = list(ds.patch.sample(y=16, x=16, step=8))
    assert len(patches) == len(grid)
    for window, patch in zip(grid, patches):
        assert isinstance(patch, xr.Dataset)
        assert set(patch.data_vars) == {"refl", "mask"}
        expected = isel(ds[["refl", "mask"]], window)
        xr.testing.assert_identical(patch, expected)
        assert patch.attrs == {"title": "scene"}
        assert patch.refl.attrs == ds.refl.attrs
        assert patch.spatial_ref.attrs["epsg"] == 32632


def test_dataset_patch_dataset_items_are_dicts(tmp_path):
    ds = _dataset()
    pds = ds.patch.dataset(y=16, x=16, step=8)
    item, i = pds[3]
    assert i == 3
    assert isinstance(item, dict) and set(item) == {"refl", "mask"}
    window = pds.grid[3]
    np.testing.assert_array_equal(item["refl"], isel(ds.refl, window).values)
    np.testing.assert_array_equal(item["mask"], isel(ds.mask, window).values)
    assert item["refl"].shape == (3, 16, 16) and item["mask"].dtype == bool

    # the same from a lazily opened netCDF Dataset, through a DataLoader
    path = tmp_path / "ds.nc"
    ds.to_netcdf(path, engine=_netcdf_engine())
    torch = pytest.importorskip("torch")
    with xr.open_dataset(path) as lazy:
        lpds = lazy.patch.dataset(y=16, x=16, step=8)
        assert len(lpds) == len(pds)
        loader = torch.utils.data.DataLoader(lpds, batch_size=4, num_workers=0)
        seen = []
        for batch, indices in loader:
            assert set(batch) == {"refl", "mask"}
            for k, i in enumerate(indices.tolist()):
                np.testing.assert_array_equal(batch["refl"][k].numpy(), pds[i][0]["refl"])
                np.testing.assert_array_equal(batch["mask"][k].numpy(), pds[i][0]["mask"])
                seen.append(i)
        assert seen == list(range(len(pds)))
        assert not lazy.refl.variable._in_memory

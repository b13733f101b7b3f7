"""Lazy file sources read chunk row by chunk row, each row decoded once (``_reader.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401
from xpatch import _reader

pytest.importorskip("zarr")


def _volume() -> xr.DataArray:
    rng = np.random.default_rng(3)
    return xr.DataArray(
        rng.integers(0, 1000, (40, 36, 30)).astype("float32"),
        dims=("z", "y", "x"),
        coords={"z": np.arange(40) * 0.5, "y": np.arange(36) * 2.0, "x": np.arange(30) * 2.0},
        name="v",
    )


@pytest.fixture(params=["zarr", "netcdf"])
def stored(request, tmp_path):
    da = _volume()
    if request.param == "zarr":
        da.chunk({"z": 8, "y": 12, "x": 10}).to_zarr(tmp_path / "v.zarr")
        return da, lambda: xr.open_zarr(tmp_path / "v.zarr", chunks=None)["v"]
    pytest.importorskip("h5netcdf")
    path = tmp_path / "v.nc"
    da.to_netcdf(path, engine="h5netcdf", encoding={"v": {"chunksizes": (8, 12, 10)}})
    return da, lambda: xr.open_dataarray(path, engine="h5netcdf")


@pytest.mark.parametrize(
    "kw",
    [
        dict(z=12, y=12, x=12, step=6),
        dict(z=12, y=10, x=16, step=5, border="pad", pad_mode="wrap"),
        dict(z=12, y=10, x=16, step=5, border="pad", pad_mode="constant"),
        dict(z=12, y=12, x=12, step=6, border="pad", pad_mode="reflect", batch_size=5),
        dict(z=12, y=12, x=12, step=6, chunks=16, weights="hann"),
    ],
)
def test_lazy_file_apply_equals_in_memory(stored, kw):
    da, open_ = stored
    func = lambda p: p * 2 + 1  # noqa: E731
    lazy = open_()
    assert _reader.ChunkReader.make(lazy, lazy.patch.grid(z=12, y=12, x=12)) is not None
    out = lazy.patch.apply(func, **kw)
    expected = da.patch.apply(func, **kw)
    xr.testing.assert_identical(out.load(), expected)


def test_each_chunk_row_is_read_once(stored, monkeypatch):
    _, open_ = stored
    reads, held = [], []
    read = _reader.ChunkReader._read

    def counted(self, k, row):
        reads.append((k, row))
        return read(self, k, row)

    monkeypatch.setattr(_reader.ChunkReader, "_read", counted)
    lazy = open_()

    def model(p):
        held.append(len(reads))
        return p

    lazy.patch.apply(model, z=12, y=12, x=12, step=6)
    assert sorted(reads) == [(0, r) for r in range(5)]  # 40 / 8 rows, once each
    assert held[0] < 5  # read ahead, not all at once


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_read_error_names_the_window(stored, monkeypatch, threads):
    # with one thread (inside a dask task, or XPATCH_NUM_THREADS=1) rows are read inline
    monkeypatch.setenv("XPATCH_NUM_THREADS", threads)
    _, open_ = stored

    def broken(self, k, row):
        if row == 3:
            raise OSError("disk gone")
        return np.zeros((8, 36, 30), dtype="float32")

    monkeypatch.setattr(_reader.ChunkReader, "_read", broken)
    with pytest.raises(OSError, match="disk gone") as info:
        open_().patch.apply(lambda p: p, z=12, y=12, x=12, step=6)
    assert any("Window" in note for note in info.value.__notes__)


def test_patches_read_from_a_file_are_read_only(stored):
    _, open_ = stored

    def model(p):
        assert not p.values.flags.writeable
        return p

    open_().patch.apply(model, z=12, y=12, x=12, step=6)


def test_sources_without_stored_chunking_use_isel():
    da = _volume()
    assert _reader.ChunkReader.make(da, da.patch.grid(z=12, y=12, x=12)) is None
    assert _reader.ChunkReader.make(da.chunk(8), da.patch.grid(z=12, y=12, x=12)) is None


def test_rows_too_large_for_the_memory_budget_are_read_per_window(stored, monkeypatch):
    # a row of stored chunks spans every other dim whole: on a huge volume holding a few
    # rows would grow with the volume, so below the budget the reader steps aside
    da, open_ = stored
    lazy = open_()
    grid = lazy.patch.grid(z=12, y=12, x=12, step=6)
    assert _reader.ChunkReader.make(lazy, grid) is not None
    monkeypatch.setenv("XPATCH_MEMORY_BUDGET", "64KiB")  # a row here is 8 x 36 x 30 x 4 B
    assert _reader.ChunkReader.make(lazy, grid) is None
    out = lazy.patch.apply(lambda p: p * 2 + 1, z=12, y=12, x=12, step=6)
    xr.testing.assert_identical(
        out.load(), da.patch.apply(lambda p: p * 2 + 1, z=12, y=12, x=12, step=6)
    )


def test_lazy_patches_carry_the_labels_of_in_memory_patches(tmp_path):
    # the reader labels in-bounds patches from cached parts, as in-memory patches are
    # labeled: same coords (index, non-index, scalar, 2-D), attrs and name, read-only
    da = _volume().assign_coords(
        t=np.float64(3.0),
        zz=("z", np.arange(40) * 10),
        yx=(("y", "x"), np.arange(36 * 30).reshape(36, 30)),
    )
    da.attrs = {"units": "counts", "nested": {"a": 1}}
    da.chunk({"z": 8, "y": 12, "x": 10}).to_zarr(tmp_path / "v.zarr")
    lazy = xr.open_zarr(tmp_path / "v.zarr", chunks=None)["v"]
    lazy_patches, memory_patches = [], []

    def keep(into):
        def model(p):
            into.append(p)
            return p

        return model

    kw = dict(z=12, y=12, x=12, step=6, border="pad", pad_mode="reflect")
    lazy.patch.apply(keep(lazy_patches), **kw)
    lazy.load().patch.apply(keep(memory_patches), **kw)
    assert len(lazy_patches) == len(memory_patches) > 0
    for got, want in zip(lazy_patches, memory_patches):
        xr.testing.assert_identical(got, want)
        assert not got.values.flags.writeable


def test_a_first_lazy_apply_does_not_import_dask_array(tmp_path):
    # xarray's constructors check data against dask's array type, importing dask.array
    # (0.4-0.6 s) the first time; a first apply on a lazily opened file need not pay it
    import subprocess
    import sys

    _volume().chunk(8).to_zarr(tmp_path / "v.zarr")
    code = f"""
import sys, numpy as np, xarray as xr, xpatch
da = xr.open_zarr({str(tmp_path / "v.zarr")!r}, chunks=None)["v"]
if "dask.array" in sys.modules:
    print("SKIP: opening the store imported dask.array")
    raise SystemExit(0)
out = da.patch.apply(lambda p: p.values * 2, z=12, y=12, x=12, step=6)
assert isinstance(out.data, np.ndarray)
print("imported" if "dask.array" in sys.modules else "not imported")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if run.stdout.startswith("SKIP"):
        pytest.skip(run.stdout.strip())
    assert run.stdout.strip() == "not imported"

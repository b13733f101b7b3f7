"""The run record of an ``out=`` store: a JSON string attribute that netCDF can hold.

The record (grid, chunks, finished chunks, the fingerprint of one window's result) is
kept in the store's attributes under ``"xpatch"``. It is written as one JSON string,
so a finished store converts with ``xr.open_zarr(store).to_netcdf(path)``; resume
reads it, and still reads the nested-dict form older runs wrote.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401  (registers .patch)
from xpatch.store import RECORD, StoreError, read_record

zarr = pytest.importorskip("zarr")

pytestmark = [
    pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated"),
    pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning"),
]

KW = dict(y=16, x=16, step=8, chunks=20)


def image(name="refl"):
    rng = np.random.default_rng(3)
    y, x = np.arange(50) * 10.0, np.arange(44) * 10.0
    return xr.DataArray(
        rng.random((2, 50, 44)).astype("float32"),
        dims=("band", "y", "x"),
        coords={"band": ["red", "nir"], "y": y, "x": x},
        name=name,
        attrs={"units": "1"},
    )


class Counter:
    """Counts its calls; a pure function of the patch (module level: a stable name)."""

    def __init__(self, fail_at: int = -1) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, p):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("crashed mid-run")
        return np.tanh(3 * p) + p * p


def stored_record(path):
    return zarr.open_group(os.fspath(path), mode="r").attrs[RECORD]


def test_the_record_is_a_json_string_attribute(tmp_path):
    path = tmp_path / "run.zarr"
    image().patch.apply(Counter(), out=path, **KW)
    raw = stored_record(path)
    assert isinstance(raw, str)
    record = json.loads(raw)
    assert record["complete"] is True and record["chunk_grid"] == [3, 3]
    assert read_record(raw) == record
    assert read_record(record) == record  # the nested-dict form of older runs
    assert read_record(None) is None
    assert read_record("not json") is None and read_record("[1, 2]") is None


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "dask"])
@pytest.mark.parametrize("engine", ["netcdf4", "h5netcdf"])
def test_a_finished_store_converts_to_netcdf(tmp_path, lazy, engine):
    pytest.importorskip({"netcdf4": "netCDF4", "h5netcdf": "h5netcdf"}[engine])
    da = image()
    source = da.chunk({"y": 20, "x": 20}) if lazy else da
    path = tmp_path / "run.zarr"
    source.patch.apply(Counter(), out=path, **KW)
    nc = tmp_path / "run.nc"
    xr.open_zarr(path).to_netcdf(nc, engine=engine)  # raised TypeError on the dict record
    with xr.open_dataset(nc, engine=engine) as back:
        expected = da.patch.apply(Counter(), **KW)
        np.testing.assert_allclose(back[da.name].values, expected.values, rtol=1e-6)
        assert json.loads(back.attrs[RECORD])["complete"] is True


def test_a_dataset_result_with_on_chunk_converts_to_netcdf(tmp_path):
    da = image()
    path = tmp_path / "run.zarr"

    def two(p):
        return xr.Dataset({"a": p.mean("band"), "b": p.max("band")})

    da.patch.apply(two, out=path, on_chunk=lambda c: c * 2, **KW)
    nc = tmp_path / "run.nc"
    xr.open_zarr(path).to_netcdf(nc)
    with xr.open_dataset(nc) as back:
        assert set(back.data_vars) == {"a", "b"}
        assert not np.isnan(back["a"].values).any()


def test_resume_reads_the_json_record(tmp_path):
    da = image()
    path = tmp_path / "run.zarr"
    n = len(da.patch.grid(y=16, x=16, step=8))
    with pytest.raises(RuntimeError, match="crashed mid-run"):
        da.patch.apply(Counter(fail_at=int(n * 0.7)), out=path, **KW)
    record = json.loads(stored_record(path))
    assert not record["complete"]
    func = Counter()
    out = da.patch.apply(func, out=path, resume=True, **KW)
    assert 1 < func.calls < n  # the fingerprint window, then only the unfinished chunks
    xr.testing.assert_allclose(out.compute(), da.patch.apply(Counter(), **KW))
    assert json.loads(stored_record(path))["complete"] is True


def test_resume_still_reads_the_nested_dict_record_of_older_runs(tmp_path):
    da = image()
    path = tmp_path / "run.zarr"
    first = da.patch.apply(Counter(), out=path, **KW).compute()
    group = zarr.open_group(os.fspath(path), mode="r+")
    group.attrs[RECORD] = json.loads(group.attrs[RECORD])  # as older xpatch wrote it
    assert isinstance(stored_record(path), dict)
    with pytest.raises(StoreError, match="already holds the store of an earlier xpatch run"):
        da.patch.apply(Counter(), out=path, **KW)
    func = Counter()
    again = da.patch.apply(func, out=path, resume=True, **KW)
    assert func.calls == 1  # only the window compared with the record's fingerprint
    xr.testing.assert_identical(again.compute(), first)


def test_a_zarr_array_out_keeps_a_json_record(tmp_path):
    da = image()
    array = zarr.create_array(
        store=os.fspath(tmp_path / "arr.zarr"),
        shape=da.shape,
        chunks=(2, 20, 20),
        dtype="float32",
        dimension_names=da.dims,
    )
    da.patch.apply(Counter(), out=array, **KW)
    raw = array.attrs[RECORD]
    assert isinstance(raw, str) and json.loads(raw)["complete"] is True
    func = Counter()
    da.patch.apply(func, out=array, resume=True, **KW)
    assert func.calls == 1

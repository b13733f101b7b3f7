"""The accessor and the functional layer agree, for every method (as xarray-einstats
checks its accessors)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch
from xpatch import api


def _source(kind: str) -> xr.DataArray | xr.Dataset:
    rng = np.random.default_rng(0)
    da = xr.DataArray(
        rng.random((2, 40, 30), dtype=np.float32),
        dims=("band", "y", "x"),
        coords={"y": np.arange(40) * 10.0, "x": np.arange(30) * 10.0, "band": ["r", "g"]},
        name="image",
    )
    return da if kind == "dataarray" else da.to_dataset().assign(mask=da.isel(band=0) > 0.5)


def _sum_bands(p):
    return p.sum("band") if isinstance(p, xr.DataArray) else p["image"].sum("band")


GRID = {"y": 16, "x": 12, "step": 8, "border": "pad", "pad_mode": "reflect"}

CALLS = {
    "grid": ((), GRID),
    "sample": ((), GRID),
    "dataset": ((), GRID),
    "apply": ((_sum_bands,), {**GRID, "weights": "hann", "chunks": 16}),
    "aggregator": ((), {**GRID, "weights": "mean", "chunks": 20}),
}


def _same(a, b):
    if isinstance(a, (xr.DataArray, xr.Dataset)):
        xr.testing.assert_identical(a, b)
    elif isinstance(a, xpatch.PatchGrid):
        assert a == b and list(a) == list(b)
    elif isinstance(a, xpatch.PatchDataset):
        assert len(a) == len(b)
        for i in (0, len(a) // 2, len(a) - 1):
            pa, pb = a[i][0], b[i][0]
            if isinstance(pa, dict):
                assert pa.keys() == pb.keys()
                for k in pa:
                    np.testing.assert_array_equal(pa[k], pb[k])
            else:
                np.testing.assert_array_equal(pa, pb)
    elif isinstance(a, xpatch.Aggregator):
        assert a.grid == b.grid and a.layout.shape == b.layout.shape
        for agg in (a, b):
            for w in agg.grid:
                agg.add(np.full(w.shape, float(w.index)), w)
        _same(a.result(), b.result())
    else:  # an iterator of patches
        for pa, pb in zip(a, b, strict=True):
            _same(pa, pb)


@pytest.mark.parametrize("kind", ["dataarray", "dataset"])
@pytest.mark.parametrize("method", sorted(CALLS))
def test_accessor_equals_function(method, kind):
    obj = _source(kind)
    args, kwargs = CALLS[method]
    if method == "aggregator":
        kwargs = {**kwargs, "output_dims": ("y", "x")}
    via_accessor = getattr(obj.patch, method)(*args, **kwargs)
    via_function = getattr(api, method)(obj, *args, **kwargs)
    _same(via_accessor, via_function)


@pytest.mark.parametrize("method", sorted(CALLS))
def test_accessor_and_function_refuse_alike(method):
    obj = _source("dataarray")
    args, _ = CALLS[method]
    with pytest.raises(xpatch.DimensionError, match="not found") as a:
        getattr(obj.patch, method)(*args, t=4)
    with pytest.raises(xpatch.DimensionError, match="not found") as b:
        getattr(api, method)(obj, *args, t=4)
    assert str(a.value) == str(b.value)

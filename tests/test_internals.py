"""xpatch's reliance on xarray internals (``xpatch/_internals.py``) is checked here.

If a new xarray changes the slots of Variable/DataArray or its index adapters, the
first test fails with a message saying what changed: xpatch then falls back to
xarray's public constructors (slower, still right), and the direct build should be
reviewed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xpatch
from xpatch import _internals


def test_xarray_internals_are_what_the_direct_build_fills():
    assert _internals.LEAN, (
        "xarray's Variable/DataArray slots changed: xpatch builds patches with xarray's"
        " constructors now (slower); review xpatch._internals.dataarray"
    )
    assert _internals.PandasIndexingAdapter is not None, "xarray moved PandasIndexingAdapter"


def _labeled() -> xr.DataArray:
    return xr.DataArray(
        np.arange(2 * 12 * 10, dtype=np.float32).reshape(2, 12, 10),
        dims=("band", "y", "x"),
        coords={
            "band": ["a", "b"],
            "y": np.linspace(0, 1, 12),
            "x": pd.date_range("2000", periods=10),
            "lat": (("y", "x"), np.arange(120.0).reshape(12, 10)),
            "label": ("x", list("abcdefghij")),
        },
        attrs={"units": "K"},
        name="t",
    )


@pytest.mark.parametrize("lean", [True, False])
def test_direct_patches_are_identical_to_isel(monkeypatch, lean):
    """The direct build and its public fallback both give exactly isel's patches."""
    monkeypatch.setattr(_internals, "LEAN", lean)
    da = _labeled()
    grid = da.patch.grid(y=5, x=4, step=3)
    for window, patch in zip(grid, da.patch.sample(y=5, x=4, step=3)):
        expected = da.isel(dict(window))
        xr.testing.assert_identical(patch, expected)
        assert patch.xindexes.keys() == expected.xindexes.keys()
        # a working DataArray: arithmetic, copies and conversions
        xr.testing.assert_identical((patch + 1) - 1, expected)
        assert patch.to_dataset().equals(expected.to_dataset())


def test_index_coordinate_equals_the_index_own_variables():
    da = _labeled()
    index = da.xindexes["y"].isel({"y": slice(2, 7)})
    built = _internals.index_coordinate(index, da["y"].variable)
    (created,) = index.create_variables({"y": da["y"].variable}).values()
    xr.testing.assert_identical(xr.DataArray(built), xr.DataArray(created))
    assert xpatch.__version__

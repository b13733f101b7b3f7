"""Edge cases found by acceptance testing: each fails early and clearly."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xpatch
from xpatch.errors import AggregationError, DimensionError, PatchError, WeightsError


@pytest.fixture
def calls() -> list[int]:
    return []


@pytest.fixture
def image() -> xr.DataArray:
    return xr.DataArray(np.random.default_rng(1).random((20, 30)), dims=("y", "x"))


def counting(calls: list[int]):
    def func(p: xr.DataArray) -> xr.DataArray:
        calls.append(1)
        return p

    return func


def test_non_unique_coordinates_are_not_guessed():
    da = xr.DataArray(np.arange(10.0), dims="x", coords={"x": [0, 1, 2, 3, 4] * 2})
    agg = da.patch.aggregator(x=5)
    patches = list(da.patch.sample(x=5))
    with pytest.raises(AggregationError, match=r"starts 2 windows.*pass the window"):
        agg.add(patches[1])
    agg.add(patches[1], agg.grid[1])
    agg.add(patches[0], agg.grid[0])
    np.testing.assert_array_equal(agg.result(), da)


def test_bad_fill_value_fails_before_func(image, calls):
    with pytest.raises(PatchError, match=r"fill_value must be a number.*'a'"):
        image.patch.apply(counting(calls), y=4, x=7, border="crop", fill_value="a")
    assert calls == []


def test_bad_out_fails_before_func(image, calls):
    with pytest.raises(TypeError, match=r"out must be a path.*123"):
        image.patch.apply(counting(calls), y=4, x=7, out=123)
    assert calls == []


def test_underflowing_kernel_is_refused(image, calls):
    with pytest.raises(WeightsError, match=r"underflows.*dim 'x'"):
        image.patch.apply(
            counting(calls), y=4, x=7, step=3, weights=xpatch.weights.gaussian(sigma=0.01)
        )
    assert calls == []


def test_step_for_a_non_spatial_dim_says_so():
    da = xr.DataArray(np.zeros((3, 20, 30)), dims=("b", "y", "x"))
    with pytest.raises(DimensionError, match=r"\['x'\] are not spatial dims.*\('y',\)"):
        da.patch.grid(y=4, step={"x": 2})


def test_array_weight_with_adaptive_border_explains_the_short_patch(image, calls):
    with pytest.raises(WeightsError, match=r"shortened last patch.*callable"):
        image.patch.apply(
            counting(calls), y=16, x=16, step=10, border="adaptive", weights=np.ones((16, 16))
        )
    assert calls == []
    out = image.patch.apply(
        lambda p: p,
        y=16,
        x=16,
        step=10,
        border="adaptive",
        weights=lambda size: np.ones(tuple(size.values())),
    )
    np.testing.assert_allclose(out, image)

"""Tests of xpatch.weights: the built-in kernels and custom weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from scipy.signal import windows

import xpatch
from xpatch.errors import PatchError, WeightsError
from xpatch.weights import CustomWeights, Kernel, gaussian, hann, mean, resolve

DIMS = ("y", "x")
patch_sizes = st.integers(1, 300)


def reference_factor(name: str, n: int) -> np.ndarray:
    """The 1-D kernels exactly as DESIGN.md defines them."""
    if name == "mean":
        return np.ones(n)
    if name == "gaussian":
        return windows.gaussian(n, std=n / 8)
    if name == "hann":
        return windows.hann(n + 2)[1:-1]
    raise ValueError(name)


# --------------------------------------------------------------------------
# built-in kernels
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mean", "gaussian", "hann"])
@given(n=patch_sizes)
def test_factor_is_exactly_the_scipy_window(name, n):
    factor = resolve(name, DIMS).factor(n)
    assert factor.dtype == np.float64
    assert factor.shape == (n,)
    np.testing.assert_array_equal(factor, reference_factor(name, n))
    assert np.all(factor > 0), "strictly positive"
    np.testing.assert_allclose(factor, factor[::-1], rtol=1e-12)


@given(n=patch_sizes, sigma=st.floats(0.01, 4.0))
def test_gaussian_sigma(n, sigma):
    factor = gaussian(sigma=sigma).factor(n)
    np.testing.assert_array_equal(factor, windows.gaussian(n, std=sigma * n))
    i, c = np.arange(n), (n - 1) / 2
    np.testing.assert_allclose(factor, np.exp(-((i - c) ** 2) / (2 * (sigma * n) ** 2)))


def test_gaussian_quarter_sigma():
    np.testing.assert_array_equal(gaussian(sigma=0.25).factor(16), windows.gaussian(16, std=4.0))
    assert gaussian(0.25) != gaussian()
    assert repr(gaussian(sigma=0.25)) == "gaussian(sigma=0.25)"


@pytest.mark.parametrize("n", [1, 7, 31, 255])
def test_gaussian_not_renormalised_odd(n):
    assert gaussian().factor(n).max() == 1.0


@pytest.mark.parametrize("n", [2, 8, 32, 256])
def test_gaussian_not_renormalised_even(n):
    peak = gaussian().factor(n).max()
    assert peak < 1.0
    # the two middle elements sit half an element off centre: exp(-0.25 / (2 (P/8)^2))
    np.testing.assert_allclose(peak, np.exp(-8 / n**2), rtol=1e-12)


@pytest.mark.parametrize("kernel", [mean(), gaussian(), gaussian(0.3), hann()])
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4))
def test_nd_kernel_is_outer_product(kernel, sizes):
    names = ("t", "z", "y", "x")[: len(sizes)]
    nd = kernel(dict(zip(names, sizes)))
    assert nd.shape == tuple(sizes)
    expected = np.ones(())
    for n in sizes:
        expected = np.multiply.outer(expected, kernel.factor(n))
    np.testing.assert_array_equal(nd, expected)


def test_nd_kernel_follows_mapping_order():
    k = hann()
    yx = k({"y": 3, "x": 5})
    xy = k({"x": 5, "y": 3})
    assert yx.shape == (3, 5) and xy.shape == (5, 3)
    np.testing.assert_array_equal(yx, xy.T)
    np.testing.assert_array_equal(yx, np.outer(k.factor(3), k.factor(5)))


def test_factor_is_a_copy():
    k = gaussian()
    k.factor(9)[:] = -1
    np.testing.assert_array_equal(k.factor(9), windows.gaussian(9, std=9 / 8))
    h = hann()
    h.factor(9)[:] = -1
    np.testing.assert_array_equal(h.factor(9), windows.hann(11)[1:-1])


def test_known_small_values():
    np.testing.assert_array_equal(mean().factor(3), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(hann().factor(3), [0.5, 1.0, 0.5])
    np.testing.assert_array_equal(hann().factor(1), [1.0])
    np.testing.assert_array_equal(gaussian().factor(1), [1.0])


# The kernels are computed in numpy with scipy's arithmetic (scipy.signal is slow to
# import); they must stay bit for bit the contract's scipy windows for every size.
ALL_SIZES = range(1, 1025)


def _all_factors(make) -> np.ndarray:
    """The 1-D kernels of every size in ALL_SIZES, end to end (one comparison)."""
    return np.concatenate([make(n) for n in ALL_SIZES])


def test_hann_matches_scipy_bit_for_bit_for_every_size():
    ours = _all_factors(hann().factor)
    theirs = _all_factors(lambda n: windows.hann(n + 2)[1:-1])
    assert ours.dtype == np.float64
    assert np.array_equal(ours, theirs), np.flatnonzero(ours != theirs)[:10]


@pytest.mark.parametrize(
    "sigma", [0.01, 0.05, 0.1, 0.125, 1 / 6, 0.2, 0.25, 1 / 3, 0.5, 1.0, 4.0, 0.0837]
)
def test_gaussian_matches_scipy_bit_for_bit_for_every_size(sigma):
    ours = _all_factors(gaussian(sigma=sigma).factor)
    theirs = _all_factors(lambda n: windows.gaussian(n, std=sigma * n))
    assert ours.dtype == np.float64
    assert np.array_equal(ours, theirs), np.flatnonzero(ours != theirs)[:10]


def test_empty_factor_matches_scipy():
    assert gaussian().factor(0).shape == hann().factor(0).shape == (0,)
    assert windows.gaussian(0, std=0.0).shape == windows.hann(2)[1:-1].shape == (0,)


def test_default_kernels_do_not_import_scipy_signal():
    """A first apply with the built-in kernels does not pay for importing scipy.signal."""
    code = textwrap.dedent(
        """
        import sys

        import numpy as np
        import xarray as xr

        import xpatch

        da = xr.DataArray(np.arange(64.0).reshape(8, 8), dims=("y", "x"))
        for weights in ("gaussian", "hann", "mean", xpatch.weights.gaussian(0.3)):
            out = da.patch.apply(lambda p: p, y=4, x=4, step=2, weights=weights)
            np.testing.assert_allclose(out, da)
        xpatch.weights.resolve("hann", ("y", "x"))({"y": 5, "x": 7})
        loaded = sorted(m for m in sys.modules if m.startswith("scipy.signal"))
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --------------------------------------------------------------------------
# resolve
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kernel"), [("mean", mean()), ("gaussian", gaussian()), ("hann", hann())]
)
def test_strings_resolve_to_default_kernels(name, kernel):
    resolved = resolve(name, DIMS)
    assert isinstance(resolved, Kernel)
    assert resolved == kernel
    assert hash(resolved) == hash(kernel)
    assert repr(resolved).startswith(name)


def test_kernel_equality():
    assert gaussian() == gaussian(sigma=0.125)
    assert gaussian() != hann()
    assert mean() != hann()
    assert len({gaussian(), gaussian(0.125), hann(), mean()}) == 3


def test_kernel_object_passes_through():
    k = gaussian(sigma=0.2)
    assert resolve(k, DIMS) is k
    assert xpatch.weights.gaussian is gaussian


@pytest.mark.parametrize("name", ["gauss", "Gaussian", "triangle", "avg", ""])
def test_unknown_name(name):
    with pytest.raises(WeightsError, match=f"weights.*{name!r}.*") as info:
        resolve(name, DIMS)
    for known in ("mean", "gaussian", "hann"):
        assert known in str(info.value)
    assert isinstance(info.value, PatchError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(("value", "shown"), [(None, "None"), (3, "int"), (1.5, "float")])
def test_not_a_weight(value, shown):
    with pytest.raises(WeightsError, match=f"weights.*{shown}"):
        resolve(value, DIMS)


@pytest.mark.parametrize("sigma", [0, -0.1, float("nan"), float("inf"), "wide", None])
def test_bad_sigma(sigma):
    with pytest.raises(WeightsError, match=f"sigma.*{sigma!r}"):
        gaussian(sigma=sigma)


# --------------------------------------------------------------------------
# custom weights
# --------------------------------------------------------------------------
def test_array_weight():
    arr = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    weights = resolve(arr, DIMS)
    assert isinstance(weights, CustomWeights)
    out = weights({"y": 3, "x": 4})
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, arr)


def test_list_weight():
    weights = resolve([[1, 2], [3, 4]], DIMS)
    np.testing.assert_array_equal(weights({"y": 2, "x": 2}), [[1.0, 2.0], [3.0, 4.0]])


def test_zeros_allowed_where_some_weight_positive():
    arr = np.zeros((3, 3))
    arr[1, 1] = 1.0
    np.testing.assert_array_equal(resolve(arr, DIMS)({"y": 3, "x": 3}), arr)


@pytest.mark.parametrize(
    ("shape", "shown"), [((4, 3), r"\(4, 3\)"), ((3,), r"\(3,\)"), ((3, 4, 1), r"\(3, 4, 1\)")]
)
def test_array_wrong_shape(shape, shown):
    weights = resolve(np.ones(shape), DIMS)
    with pytest.raises(WeightsError, match=rf"(?s)weights.*shape(?=.*{shown})(?=.*3)(?=.*4)"):
        weights({"y": 3, "x": 4})


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.nan, r"weights.*finite.*NaN"),
        (np.inf, r"weights.*finite.*inf"),
        (-np.inf, r"weights.*finite.*inf"),
        (-0.5, r"weights.*non-negative.*-0\.5"),
    ],
)
def test_array_bad_values(bad, match):
    arr = np.ones((3, 4))
    arr[1, 2] = bad
    with pytest.raises(WeightsError, match=match):
        resolve(arr, DIMS)({"y": 3, "x": 4})


def test_array_all_zero():
    with pytest.raises(WeightsError, match=r"weights.*positive.*zero"):
        resolve(np.zeros((3, 4)), DIMS)({"y": 3, "x": 4})


def test_callable_receives_dim_to_size_mapping():
    calls = []

    def weight(size):
        calls.append(size)
        return np.ones(tuple(size.values())) * 2.0

    weights = resolve(weight, DIMS)
    assert isinstance(weights, CustomWeights)
    out = weights({"x": 4, "y": 3})  # mapping order does not matter: spatial dims' order does
    np.testing.assert_array_equal(out, np.full((3, 4), 2.0))
    assert calls[0] == {"y": 3, "x": 4}
    assert list(calls[0]) == ["y", "x"]
    # a shortened (adaptive) patch gets its own call
    assert weights({"y": 2, "x": 4}).shape == (2, 4)
    assert {"y": 2, "x": 4} in calls


def test_callable_result_is_validated():
    with pytest.raises(WeightsError, match=r"weights.*shape"):
        resolve(lambda size: np.ones((2, 2)), DIMS)({"y": 3, "x": 4})
    with pytest.raises(WeightsError, match=r"weights.*finite"):
        resolve(lambda size: np.full((3, 4), np.nan), DIMS)({"y": 3, "x": 4})


def test_dataarray_weight_is_transposed_by_name():
    arr = np.arange(1.0, 13.0).reshape(3, 4)
    da = xr.DataArray(arr.T, dims=("x", "y"))
    out = resolve(da, DIMS)({"y": 3, "x": 4})
    np.testing.assert_array_equal(out, arr)


def test_callable_returning_dataarray():
    arr = np.arange(1.0, 13.0).reshape(3, 4)

    def weight(size):
        return xr.DataArray(arr.T, dims=("x", "y"))

    np.testing.assert_array_equal(resolve(weight, DIMS)({"y": 3, "x": 4}), arr)


def test_dataarray_weight_wrong_dims():
    da = xr.DataArray(np.ones((3, 4)), dims=("y", "lon"))
    with pytest.raises(WeightsError, match=r"(?s)weights.*dims(?=.*'lon')(?=.*'x')"):
        resolve(da, DIMS)({"y": 3, "x": 4})

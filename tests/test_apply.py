"""Tests of ``obj.patch.apply``: round trips, brute-force references, dtypes, errors.

The reference implementation here is deliberately naive: it pads the whole array
with ``numpy.pad``, accumulates ``sum_p w_p * f(patch_p)`` and ``sum_p w_p`` over
full-size arrays and divides. Grid positions are recomputed from the formulas of
the design (not taken from ``xpatch.grid``) and the 1-D kernels from
``scipy.signal.windows``, so each test checks geometry, kernels and blending at once.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import builtin_weights, kernel_1d, ref_for, reference, uncovered_mask
from strategies import array_cases as cases

import xpatch
from xpatch import DimensionError, GridError, ResultError, WeightsError

BORDERS = ("squeeze", "edge", "adaptive", "crop", "pad")
PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")
WEIGHTS = ("mean", "gaussian", "hann")


def make_array(case, seed=0, dtype=np.float64) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = (rng.random(case["shape"]) * 4 - 1).astype(dtype)
    coords = {d: np.arange(n, dtype=np.float64) for d, n in zip(case["dims"], case["shape"])}
    if "band" in case["dims"]:
        coords["band"] = ["red", "nir"]
    return xr.DataArray(data, dims=case["dims"], coords=coords, name="img", attrs={"units": "K"})


def grid_coords(**lengths):
    """Index-valued coordinates (a patch's first coordinate is its start)."""
    return {d: np.arange(n) for d, n in lengths.items()}


class Recorder:
    """A func that counts its calls."""

    def __init__(self, func=lambda p: p):
        self.func = func
        self.calls = 0

    def __call__(self, patch):
        self.calls += 1
        return self.func(patch)


# --- 1. identity round trip ---------------------------------------------------------
@settings(deadline=None)
@given(
    case=cases(),
    weights=st.sampled_from(WEIGHTS),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_identity_round_trip(case, weights, dtype):
    da = make_array(case, dtype=dtype)
    out = da.patch.apply(
        lambda p: p, step=case["step"], border=case["border"], weights=weights, **case["kwargs"]
    )
    assert out.dims == da.dims
    assert out.dtype == dtype
    assert out.name == "img"
    xr.testing.assert_identical(out.coords.to_dataset(), da.coords.to_dataset())
    sp = case["spatial"]
    mask = uncovered_mask(
        da.shape,
        case["axes"],
        [case["size"][d] for d in sp],
        [case["step"][d] for d in sp],
        case["border"],
    )
    if case["border"] != "crop":
        assert not mask.any()
    expected = np.where(mask, np.nan, da.values)
    np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-6)


@settings(deadline=None)
@given(
    case=cases(borders=("crop",)),
    fill=st.sampled_from([-7.0, 0.0, 123.5]),
    weights=st.sampled_from(WEIGHTS),
)
def test_identity_crop_fill_value(case, fill, weights):
    da = make_array(case)
    out = da.patch.apply(
        lambda p: p,
        step=case["step"],
        border="crop",
        weights=weights,
        fill_value=fill,
        **case["kwargs"],
    )
    sp = case["spatial"]
    mask = uncovered_mask(
        da.shape,
        case["axes"],
        [case["size"][d] for d in sp],
        [case["step"][d] for d in sp],
        "crop",
    )
    np.testing.assert_allclose(out.values, np.where(mask, fill, da.values), rtol=1e-12)


@settings(deadline=None)
@given(
    case=cases(borders=("pad",)),
    pad_mode=st.sampled_from(PAD_MODES),
    weights=st.sampled_from(WEIGHTS),
)
def test_identity_round_trip_pad_modes(case, pad_mode, weights):
    da = make_array(case, dtype=np.float32)
    out = da.patch.apply(
        lambda p: p,
        step=case["step"],
        border="pad",
        pad_mode=pad_mode,
        weights=weights,
        **case["kwargs"],
    )
    assert out.sizes == da.sizes
    xr.testing.assert_identical(out.coords.to_dataset(), da.coords.to_dataset())
    np.testing.assert_allclose(out.values, da.values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_identity_integer_input_is_float32(border, weights):
    da = xr.DataArray(np.arange(130, dtype=np.int16).reshape(10, 13) * 7, dims=("y", "x"))
    out = da.patch.apply(lambda p: p, y=4, x=5, step=3, border=border, weights=weights)
    assert out.dtype == np.float32
    mask = uncovered_mask(da.shape, [0, 1], [4, 5], [3, 3], border)
    np.testing.assert_allclose(out.values, np.where(mask, np.nan, da.values), rtol=1e-5)


# --- 2. non-identity func against the brute-force reference -----------------------------
def patch_func(p):
    """Differs from patch to patch: doubles, adds the mean and the patch's start coords."""
    spatial = [d for d in p.dims if d != "band"]
    return p * 2 + float(p.mean()) + sum(float(p[d][0]) for d in spatial)


def patch_func_np(x, starts):
    return x * 2 + x.mean() + sum(starts)


@settings(deadline=None)
@given(case=cases(), weights=st.sampled_from(WEIGHTS))
def test_func_matches_reference(case, weights):
    da = make_array(case)
    out = da.patch.apply(
        patch_func, step=case["step"], border=case["border"], weights=weights, **case["kwargs"]
    )
    expected = ref_for(case, da, builtin_weights(weights), patch_func_np)
    np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-9)


@settings(deadline=None)
@given(
    case=cases(borders=("pad",)),
    pad_mode=st.sampled_from(PAD_MODES),
    weights=st.sampled_from(WEIGHTS),
)
def test_func_matches_reference_pad_modes(case, pad_mode, weights):
    da = make_array(case)
    out = da.patch.apply(
        patch_func,
        step=case["step"],
        border="pad",
        pad_mode=pad_mode,
        weights=weights,
        **case["kwargs"],
    )
    expected = ref_for(case, da, builtin_weights(weights), patch_func_np, pad_mode=pad_mode)
    np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-9)


@settings(deadline=None)
@given(
    case=cases(),
    sigma=st.sampled_from([0.05, 0.25, 1.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_func_matches_reference_gaussian_sigma(case, sigma, dtype):
    da = make_array(case, dtype=dtype)
    out = da.patch.apply(
        patch_func,
        step=case["step"],
        border=case["border"],
        weights=xpatch.weights.gaussian(sigma=sigma),
        **case["kwargs"],
    )
    assert out.dtype == dtype
    expected = ref_for(case, da, builtin_weights("gaussian", sigma), patch_func_np)
    tol = 1e-9 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out.values, expected, rtol=tol, atol=tol)


def test_kernel_objects_match_xpatch_factors():
    # The reference's kernels are the contract's: the same as xpatch.weights' factors.
    for n in (1, 2, 5, 16, 33):
        for name in WEIGHTS:
            kernel = getattr(xpatch.weights, name)()
            np.testing.assert_allclose(kernel.factor(n), kernel_1d(name, n), rtol=1e-12)


def test_spatial_dims_follow_array_order_not_keyword_order():
    da = xr.DataArray(np.random.default_rng(1).random((7, 9)), dims=("y", "x"))
    a = da.patch.apply(patch_func, x=4, y=3, step={"x": 2, "y": 1}, weights="hann")
    b = da.patch.apply(patch_func, {"y": 3, "x": 4}, step={"y": 1, "x": 2}, weights="hann")
    xr.testing.assert_identical(a, b)


# --- 3. batching and bare-array results --------------------------------------------
@settings(deadline=None)
@given(
    case=cases(band=True),
    weights=st.sampled_from(WEIGHTS),
    batch_size=st.integers(1, 7),
)
def test_batched_equals_unbatched(case, weights, batch_size):
    da = make_array(case)
    kw = dict(step=case["step"], border=case["border"], weights=weights, **case["kwargs"])
    seen = []

    def batched(b):
        assert b.dims[0] == "patch"
        assert b.sizes["patch"] <= batch_size
        seen.append(b.sizes["patch"])
        # per-patch mean over every dim but the batch dim: differs between patches
        other = [d for d in b.dims if d != "patch"]
        return b * 2 + 1 + b.mean(other)

    out = da.patch.apply(batched, batch_size=batch_size, **kw)
    ref = da.patch.apply(lambda p: p * 2 + 1 + p.mean(), **kw)
    assert sum(seen) == case["n_patches"]
    xr.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert out.dims == da.dims


def test_batched_adaptive_groups_equal_shapes():
    da = xr.DataArray(np.random.default_rng(2).random((2, 11, 11)), dims=("band", "y", "x"))
    shapes = []

    def func(b):
        shapes.append(dict(b.sizes))
        return b * 3

    out = da.patch.apply(func, y=4, x=4, step=3, border="adaptive", batch_size=4)
    for s in shapes:
        assert s["band"] == 2
    assert {(s["y"], s["x"]) for s in shapes} == {(4, 4), (4, 2), (2, 4), (2, 2)}
    np.testing.assert_allclose(out.values, da.values * 3, rtol=1e-12)


def test_batch_has_window_index_coordinate():
    da = xr.DataArray(np.zeros((6, 6)), dims=("y", "x"))
    indices = []

    def func(b):
        indices.extend(b["patch"].values.tolist())
        return b

    da.patch.apply(func, y=2, x=2, batch_size=4)
    assert indices == list(range(9))


def test_bare_array_result_default_dims():
    da = xr.DataArray(np.random.default_rng(3).random((2, 8, 9)), dims=("band", "y", "x"))
    out = da.patch.apply(lambda p: np.asarray(p) * 2, y=4, x=3, step=2, weights="hann")
    assert out.dims == ("band", "y", "x")
    np.testing.assert_allclose(out.values, da.values * 2, rtol=1e-12)


def test_bare_array_result_output_dims():
    da = xr.DataArray(np.random.default_rng(3).random((2, 8, 9)), dims=("band", "y", "x"))
    out = da.patch.apply(
        lambda p: np.moveaxis(np.asarray(p), 0, -1)[..., :1],
        y=4,
        x=3,
        step=2,
        output_dims=("y", "x", "c"),
    )
    assert out.dims == ("y", "x", "c")
    np.testing.assert_allclose(out.values, np.moveaxis(da.values, 0, -1)[..., :1], rtol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_bare_array_batched_result_output_dims(batch_size):
    da = xr.DataArray(np.random.default_rng(4).random((2, 8, 9)), dims=("band", "y", "x"))

    def func(b):
        arr = np.asarray(b)  # (patch, band, y, x)
        assert arr.ndim == 4
        return np.transpose(arr.sum(axis=1, keepdims=True), (0, 2, 3, 1)) + 1

    out = da.patch.apply(
        func, y=4, x=3, step=2, batch_size=batch_size, output_dims=("patch", "y", "x", "s")
    )
    assert out.dims == ("y", "x", "s")
    expected = np.moveaxis(da.values.sum(axis=0, keepdims=True), 0, -1) + 1
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
def test_batched_output_dims_place_the_batch_dim_anywhere(lazy):
    """A bare batched answer laid out as output_dims says, batch dim included."""
    da = xr.DataArray(np.random.default_rng(5).random((40, 36)), dims=("y", "x"))
    if lazy:
        da = da.chunk({"y": 20, "x": 18})
    kw = dict(y=8, x=8, step=4, weights="mean")
    expected = da.patch.apply(lambda p: p * 2.0, **kw)

    def func(b):  # (patch, y, x) in, (y, patch, x) out
        return np.ascontiguousarray(np.transpose(np.asarray(b) * 2.0, (1, 0, 2)))

    out = da.patch.apply(func, batch_size=8, output_dims=("y", "patch", "x"), **kw)
    assert out.dims == ("y", "x")
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-12)


def test_batched_output_dims_must_name_batch_dim():
    da = xr.DataArray(np.zeros((8, 8)), dims=("y", "x"))
    func = Recorder()
    with pytest.raises(DimensionError, match=r"output_dims.*'patch'"):
        da.patch.apply(func, y=4, x=4, batch_size=2, output_dims=("y", "x"))
    assert func.calls == 0


def test_batched_result_without_batch_dim_is_result_error():
    da = xr.DataArray(np.zeros((8, 8)), dims=("y", "x"))
    with pytest.raises(ResultError, match=r"batch dim 'patch'"):
        da.patch.apply(lambda b: b.isel(patch=0), y=4, x=4, batch_size=2)


def test_custom_batch_dim_name():
    da = xr.DataArray(np.random.default_rng(5).random((8, 8)), dims=("y", "x"))
    out = da.patch.apply(
        lambda b: b * 2 if "sample" in b.dims else None,
        y=4,
        x=4,
        step=2,
        batch_size=3,
        batch_dim="sample",
    )
    np.testing.assert_allclose(out.values, da.values * 2, rtol=1e-12)


# --- 4. DataArray and Dataset agree ----------------------------------------------
@settings(deadline=None)
@given(case=cases(), weights=st.sampled_from(WEIGHTS), batched=st.booleans())
def test_dataset_matches_dataarray(case, weights, batched):
    da = make_array(case)
    kw = dict(step=case["step"], border=case["border"], weights=weights, **case["kwargs"])
    if batched:
        kw["batch_size"] = 4
    out_da = da.patch.apply(lambda p: p * 2 - 1, **kw)
    seen = []

    def func_ds(p):
        assert isinstance(p, xr.Dataset)
        seen.append(sorted(p.data_vars))
        return p * 2 - 1

    out_ds = da.to_dataset(name="v").patch.apply(func_ds, **kw)
    assert isinstance(out_ds, xr.Dataset)
    assert seen and all(s == ["v"] for s in seen)
    xr.testing.assert_allclose(out_ds["v"].rename(None), out_da.rename(None))
    assert out_ds["v"].dims == out_da.dims


def test_dataset_variable_without_spatial_dim_is_excluded():
    rng = np.random.default_rng(6)
    ds = xr.Dataset(
        {
            "a": (("y", "x"), rng.random((8, 10))),
            "b": (("band", "y", "x"), rng.random((2, 8, 10))),
            "profile": (("y",), rng.random(8)),
            "scalar": ((), 3.0),
        },
        coords={"y": np.arange(8), "x": np.arange(10) * 10.0},
    )
    seen = []

    def func(p):
        seen.append(set(p.data_vars))
        return p + 1

    out = ds.patch.apply(func, y=4, x=4, step=2, weights="hann")
    assert seen and all(s == {"a", "b"} for s in seen)
    assert set(out.data_vars) == {"a", "b"}
    np.testing.assert_allclose(out["a"].values, ds["a"].values + 1, rtol=1e-12)
    np.testing.assert_allclose(out["b"].values, ds["b"].values + 1, rtol=1e-12)
    np.testing.assert_array_equal(out["x"].values, ds["x"].values)


def test_dataset_func_may_return_dataarray():
    rng = np.random.default_rng(7)
    ds = xr.Dataset(
        {"a": (("y", "x"), rng.random((8, 10))), "b": (("y", "x"), rng.random((8, 10)))}
    )
    out = ds.patch.apply(lambda p: (p["a"] - p["b"]).rename("diff"), y=4, x=4, step=2)
    assert isinstance(out, xr.DataArray)
    assert out.name == "diff"
    np.testing.assert_allclose(out.values, (ds["a"] - ds["b"]).values, rtol=1e-12, atol=1e-14)


# --- 5. output non-spatial dims differ from the input ----------------------------------
def labeled_image(ny=12, nx=10):
    rng = np.random.default_rng(8)
    y = np.linspace(50.0, 49.0, ny)
    x = np.linspace(3.0, 4.0, nx)
    return xr.DataArray(
        rng.random((3, ny, nx)),
        dims=("band", "y", "x"),
        coords={
            "band": ["r", "g", "b"],
            "wavelength": ("band", [650.0, 550.0, 450.0]),
            "y": y,
            "x": x,
            "lat": (("y", "x"), np.add.outer(y, 0.01 * x)),
            "spatial_ref": 0,
        },
        name="scene",
        attrs={"source": "test"},
    )


def classify(p):
    """(band, y, x) -> (class, y, x) with a class coordinate."""
    scores = xr.concat([p.sum("band"), p.isel(band=0) - p.isel(band=1)], dim="class")
    return scores.assign_coords({"class": ["water", "land"]}).rename("scores")


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("batch_size", [None, 3])
def test_output_dims_differ_from_input(border, batch_size):
    da = labeled_image()
    out = da.patch.apply(
        classify, y=5, x=4, step=3, border=border, weights="hann", batch_size=batch_size
    )
    assert out.dims == ("class", "y", "x")
    assert out.name == "scores"
    assert out["class"].values.tolist() == ["water", "land"]
    assert "band" not in out.coords and "wavelength" not in out.coords
    np.testing.assert_array_equal(out["y"].values, da["y"].values)
    np.testing.assert_array_equal(out["x"].values, da["x"].values)
    lat = da["lat"].reset_coords(drop=True)
    xr.testing.assert_identical(out["lat"].reset_coords(drop=True), lat)
    assert "spatial_ref" in out.coords and int(out["spatial_ref"]) == 0
    expected = classify(da).values
    mask = uncovered_mask((3, 12, 10), [1, 2], [5, 4], [3, 3], border)[:2]
    np.testing.assert_allclose(out.values, np.where(mask, np.nan, expected), rtol=1e-12)


def test_output_dims_in_the_order_func_returns_them():
    da = labeled_image()
    out = da.patch.apply(lambda p: classify(p).transpose("y", "x", "class"), y=6, x=5, step=3)
    assert out.dims == ("y", "x", "class")
    np.testing.assert_allclose(
        out.values, classify(da).transpose("y", "x", "class").values, rtol=1e-12
    )
    out2 = da.patch.apply(lambda p: p.transpose("x", "band", "y"), y=6, x=5, step=3)
    assert out2.dims == ("x", "band", "y")
    assert out2["band"].values.tolist() == ["r", "g", "b"]
    assert "wavelength" in out2.coords


def test_output_name_falls_back_to_input_name():
    da = labeled_image()
    out = da.patch.apply(lambda p: p.sum("band").rename(None), y=6, x=5)
    assert out.name == "scene"
    assert out.dims == ("y", "x")
    out_bare = da.patch.apply(lambda p: np.asarray(p), y=6, x=5)
    assert out_bare.name == "scene"


def test_output_without_non_spatial_dims_keeps_spatial_coords():
    da = labeled_image()
    out = da.patch.apply(lambda p: p.mean("band"), y=6, x=5, step=2, border="pad")
    assert out.dims == ("y", "x")
    assert set(out.coords) == {"y", "x", "lat", "spatial_ref"}
    np.testing.assert_allclose(out.values, da.mean("band").values, rtol=1e-12)


# --- 6. dtypes -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_float_dtype_is_kept(dtype, weights):
    da = xr.DataArray(
        np.random.default_rng(9).random((10, 12)).astype(dtype),
        dims=("y", "x"),
        coords=grid_coords(y=10, x=12),
    )
    out = da.patch.apply(patch_func, y=4, x=5, step=2, weights=weights)
    assert out.dtype == dtype
    expected = ref_for(
        {
            "spatial": ("y", "x"),
            "axes": [0, 1],
            "size": {"y": 4, "x": 5},
            "step": {"y": 2, "x": 2},
            "border": "squeeze",
        },
        da.astype(np.float64),
        builtin_weights(weights),
        patch_func_np,
    )
    rtol = {np.float16: 4e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(out.values.astype(np.float64), expected, rtol=rtol, atol=rtol)


def test_float16_gaussian_is_not_underflowed():
    # Patchly's sum-normalised kernel underflows in float16: corner weights of a
    # 32 x 32 gaussian are ~1e-7 there. xpatch blends float16 in float32.
    rng = np.random.default_rng(10)
    data = (rng.random((64, 64)) * 100 + 1).astype(np.float16)
    da = xr.DataArray(data, dims=("y", "x"))
    out = da.patch.apply(lambda p: p, y=32, x=32, step=16, weights="gaussian")
    assert out.dtype == np.float16
    assert np.isfinite(out.values).all()
    np.testing.assert_allclose(out.values.astype(np.float64), data.astype(np.float64), rtol=2e-3)
    out2 = da.patch.apply(lambda p: p * 0.5, y=32, x=32, step=16, weights="gaussian")
    np.testing.assert_allclose(
        out2.values.astype(np.float64), data.astype(np.float64) * 0.5, rtol=2e-3
    )


@pytest.mark.parametrize("weights", WEIGHTS)
def test_uint8_many_overlaps_no_overflow(weights):
    # 32 x 32, patch 16, step 1: 289 patches, 256 of them cover the centre.
    da = xr.DataArray(np.full((32, 32), 200, dtype=np.uint8), dims=("y", "x"))
    grid = da.patch.grid(y=16, x=16, step=1)
    cov = grid.coverage()
    assert cov["y"].max() * cov["x"].max() >= 256
    out = da.patch.apply(lambda p: p, y=16, x=16, step=1, weights=weights, batch_size=64)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.values, 200, rtol=1e-5)


def test_mean_weights_256_overlapping_patches():
    # Patchly keeps the 'avg' weight map in uint8 and wraps at 256 patches.
    rng = np.random.default_rng(11)
    da = xr.DataArray(rng.random((32, 32)).astype(np.float32), dims=("y", "x"))
    out = da.patch.apply(lambda p: p + 1, y=16, x=16, step=1, weights="mean")
    cov = da.patch.grid(y=16, x=16, step=1).coverage()
    assert cov["y"][16] * cov["x"][16] == 256
    np.testing.assert_allclose(out.values, da.values + 1, rtol=1e-5, atol=1e-6)
    line = xr.DataArray(np.arange(511.0), dims="x", coords={"x": np.arange(511)})
    out1d = line.patch.apply(lambda p: p * 0 + float(p["x"][0]), x=256, step=1, weights="mean")
    # element 255 is covered by the 256 patches starting at 0..255: mean of the starts
    assert out1d.values[255] == pytest.approx(127.5)
    assert out1d.values[0] == 0.0 and out1d.values[510] == 255.0


def test_int_results_are_blended_as_float32():
    da = xr.DataArray(np.zeros(10), dims="x", coords={"x": np.arange(10)})

    def start_as_int(p):
        return xr.full_like(p, int(p["x"][0]), dtype=np.int64)

    out = da.patch.apply(start_as_int, x=4, step=1, weights="mean")
    assert out.dtype == np.float32
    expected = reference(
        np.zeros(10),
        [0],
        [4],
        [1],
        "squeeze",
        builtin_weights("mean"),
        lambda x, s: np.full(x.shape, s[0]),
    )
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    assert out.values[4] == pytest.approx(2.5)  # a blend of integers is not an integer


def test_gaussian_int_result_not_all_zero():
    # Patchly casts gaussian weights to the int output dtype: an all-zero result.
    rng = np.random.default_rng(12)
    da = xr.DataArray(rng.integers(1, 50, (20, 20)).astype(np.int32), dims=("y", "x"))
    out = da.patch.apply(lambda p: p * 2, y=8, x=8, step=4, weights="gaussian")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.values, da.values * 2, rtol=1e-5)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_bool_results_are_blended_as_float32(weights):
    rng = np.random.default_rng(13)
    da = xr.DataArray(rng.random((9, 11)), dims=("y", "x"))
    out = da.patch.apply(lambda p: p > 0.5, y=4, x=4, step=2, weights=weights)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.values, (da.values > 0.5).astype(np.float32), rtol=1e-5)
    thresholds = da.patch.apply(
        lambda p: p > float(p.mean()), y=4, x=4, step=2, weights=weights, border="crop"
    )
    assert thresholds.dtype == np.float32
    valid = thresholds.values[~np.isnan(thresholds.values)]
    assert ((valid >= -1e-6) & (valid <= 1 + 1e-6)).all()


def test_crop_uncovered_is_nan_not_zero():
    # 11 = 3 * 3 + 2: patches start at 0, 3, 6 and cover 0..9; element 10 is uncovered
    da = xr.DataArray(np.ones((11, 11)), dims=("y", "x"))
    out = da.patch.apply(lambda p: p, y=4, x=4, step=3, border="crop")
    assert np.isnan(out.values[10, :]).all() and np.isnan(out.values[:, 10]).all()
    np.testing.assert_array_equal(out.values[:10, :10], 1.0)
    # also for integer data: the blended float32 result is NaN there, not 0
    di = xr.DataArray(np.ones((11, 11), dtype=np.uint8), dims=("y", "x"))
    outi = di.patch.apply(lambda p: p, y=4, x=4, step=3, border="crop")
    assert outi.dtype == np.float32
    assert np.isnan(outi.values[10, :]).all()
    np.testing.assert_array_equal(outi.values[:10, :10], 1.0)


# --- 7. fill_value and on_chunk --------------------------------------------------------
def test_custom_fill_value_crop():
    da = xr.DataArray(np.ones((7, 10)), dims=("y", "x"))
    out = da.patch.apply(lambda p: p, y=3, x=4, step=3, border="crop", fill_value=-1)
    mask = uncovered_mask((7, 10), [0, 1], [3, 4], [3, 3], "crop")
    assert mask.any()
    np.testing.assert_array_equal(out.values, np.where(mask, -1.0, 1.0))


@pytest.mark.parametrize("chunks", [None, 4, {"x": 5}])
def test_on_chunk_int_result_fills_uncovered_with_zero(chunks):
    rng = np.random.default_rng(14)
    da = xr.DataArray(
        rng.random((3, 9, 11)), dims=("class", "y", "x"), coords=grid_coords(y=9, x=11)
    )

    def labels(c):
        return c.fillna(0).argmax("class").astype(np.int16) + 1

    out = da.patch.apply(
        lambda p: p, y=4, x=4, step=3, border="crop", chunks=chunks, on_chunk=labels
    )
    assert out.dtype == np.int16
    assert out.dims == ("y", "x")
    mask = uncovered_mask((9, 11), [0, 1], [4, 4], [3, 3], "crop")
    expected = np.where(mask, 0, da.values.argmax(axis=0) + 1)
    np.testing.assert_array_equal(out.values, expected)
    out_fill = da.patch.apply(
        lambda p: p,
        y=4,
        x=4,
        step=3,
        border="crop",
        chunks=chunks,
        on_chunk=labels,
        fill_value=-5,
    )
    np.testing.assert_array_equal(out_fill.values, np.where(mask, -5, expected))


def test_on_chunk_receives_normalised_labeled_chunk():
    # Patchly hands chunk_postprocess_func un-normalised sums.
    da = labeled_image(12, 12)
    chunks_seen = []

    def on_chunk(c):
        chunks_seen.append(c)
        region = da.sel(y=c["y"], x=c["x"])
        np.testing.assert_allclose(c.values, region.values, rtol=1e-12)
        np.testing.assert_array_equal(c["lat"].values, region["lat"].values)
        return c

    out = da.patch.apply(
        lambda p: p, y=4, x=4, step=2, weights="gaussian", chunks=6, on_chunk=on_chunk
    )
    assert len(chunks_seen) == 4
    np.testing.assert_allclose(out.values, da.values, rtol=1e-12)


def test_chunks_finish_before_the_last_patch():
    da = xr.DataArray(
        np.random.default_rng(15).random((16, 16)), dims=("y", "x"), coords=grid_coords(y=16, x=16)
    )
    func = Recorder()
    calls_at_finish = []

    def on_chunk(c):
        calls_at_finish.append(func.calls)
        return c

    out = da.patch.apply(func, y=4, x=4, step=2, chunks=8, on_chunk=on_chunk)
    n = len(da.patch.grid(y=4, x=4, step=2))
    assert func.calls == n
    assert len(calls_at_finish) == 4
    assert calls_at_finish[0] < n  # the first chunk was finished while patches remained
    np.testing.assert_allclose(out.values, da.values, rtol=1e-12)


@pytest.mark.parametrize("coords", [{}, {"y": np.arange(8)}, {"x": np.arange(8) * 2.0}])
def test_on_chunk_without_spatial_coordinates(coords):
    # The chunk handed to on_chunk is labeled with whatever coords the source has.
    rng = np.random.default_rng(16)
    da = xr.DataArray(rng.random((2, 8, 8)), dims=("c", "y", "x"), coords=coords)
    seen = []

    def on_chunk(c):
        seen.append(dict(c.sizes))
        return c.argmax("c")

    out = da.patch.apply(lambda p: p, y=4, x=4, step=2, chunks=4, on_chunk=on_chunk)
    assert len(seen) == 4 and all(s == {"c": 2, "y": 4, "x": 4} for s in seen)
    np.testing.assert_array_equal(out.values, da.values.argmax(axis=0))
    for d, v in coords.items():
        np.testing.assert_array_equal(out[d].values, v)


def test_on_chunk_exception_propagates_with_note():
    # Patchly swallows exceptions raised in chunk processing.
    da = xr.DataArray(np.zeros((8, 8)), dims=("y", "x"), coords=grid_coords(y=8, x=8))

    def on_chunk(c):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom") as info:
        da.patch.apply(lambda p: p, y=4, x=4, chunks=4, on_chunk=on_chunk)
    notes = getattr(info.value, "__notes__", [])
    assert any("on_chunk" in n and "y=0:4" in n and "x=0:4" in n for n in notes)


# --- 8. errors, raised before func is first called ---------------------------------
DA = xr.DataArray(np.zeros((2, 10, 12)), dims=("band", "y", "x"))

ERROR_CASES = [
    (dict(z=3, x=4), DimensionError, r"'z'.*\('band', 'y', 'x'\)"),
    (dict(y=4, x=20), GridError, r"size for dim 'x' is 20.*length 12.*pad"),
    (dict(y=0, x=4), GridError, r"size for dim 'y'.*positive int.*got 0"),
    (dict(y=2.5, x=4), GridError, r"size for dim 'y'.*positive int.*2\.5"),
    (dict(y=-2, x=4), GridError, r"size for dim 'y'.*got -2"),
    (dict(y=4, x=4, step=5), GridError, r"step for dim 'y' is 5.*patch size 4"),
    (dict(y=4, x=4, step={"x": 6}), GridError, r"step for dim 'x' is 6.*patch size 4"),
    (dict(y=4, x=4, step=0), GridError, r"step for dim 'y'.*positive int.*got 0"),
    (dict(y=4, x=4, step=1.5), GridError, r"step for dim 'y'.*1\.5"),
    (dict(y=4, x=4, step={"q": 2}), DimensionError, r"step.*'q'"),
    (dict(y=4, x=4, border="wrap"), GridError, r"border must be one of.*'wrap'"),
    (dict(y=4, x=4, border="pad", pad_mode="median"), GridError, r"pad_mode.*'median'"),
    (dict(y=4, x=4, border="pad", pad_mode="linear_ramp"), GridError, r"pad_mode.*'linear_ramp'"),
    (dict(y=4, x=4, pad_mode="edge"), GridError, r"pad_mode='edge'.*border='pad'.*'squeeze'"),
    (dict(y=4, x=4, border="crop", pad_mode="wrap"), GridError, r"pad_mode='wrap'.*'crop'"),
    (dict(y=4, x=4, weights="triangle"), WeightsError, r"weights.*'triangle'"),
    (dict(y=4, x=4, weights=None), WeightsError, r"weights.*None"),
    (dict(y=4, x=4, weights=np.ones((3, 3))), WeightsError, r"\{'y': 4, 'x': 4\}.*\(3, 3\)"),
    (dict(y=4, x=4, weights=-np.ones((4, 4))), WeightsError, r"non-negative"),
    (dict(y=4, x=4, weights=np.zeros((4, 4))), WeightsError, r"positive"),
    (
        dict(y=4, x=4, border="adaptive", step=3, weights=np.ones((4, 4))),
        WeightsError,
        r"patch shape \{'y': 4, 'x': 3\}, got shape \(4, 4\)",
    ),
    (
        dict(y=4, x=4, weights=lambda s: np.ones((s["y"], s["x"] + 1))),
        WeightsError,
        r"\{'y': 4, 'x': 4\}.*\(4, 5\)",
    ),
    (
        dict(y=4, x=4, weights=xr.DataArray(np.ones((4, 4)), dims=("y", "band"))),
        WeightsError,
        r"spatial dims.*'band'",
    ),
    (dict(y=4, x=4, chunks=2.5), GridError, r"chunks must be an int.*got 2\.5"),
    (dict(y=4, x=4, chunks={"band": 4}), DimensionError, r"chunks.*'band'"),
    (dict(y=4, x=4, chunks=0), GridError, r"chunks.*positive int.*0"),
    (dict(y=4, x=4, batch_size=0), GridError, r"batch_size.*positive int.*got 0"),
    (dict(y=4, x=4, batch_size=2.0), GridError, r"batch_size.*2\.0"),
    (dict(y=4, x=4, batch_size=2, batch_dim="band"), DimensionError, r"batch_dim 'band'"),
    (dict(y=4, x=4, output_dims=("band", "y")), DimensionError, r"output_dims.*\['x'\]"),
    (dict(), GridError, r"size"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), ERROR_CASES, ids=[str(i) for i in range(len(ERROR_CASES))]
)
def test_errors_before_func_is_called(kwargs, error, match):
    func = Recorder()
    with pytest.raises(error, match=match) as info:
        DA.patch.apply(func, **kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, xpatch.PatchError)
    assert func.calls == 0


def test_size_mapping_and_keywords_together_is_error():
    func = Recorder()
    with pytest.raises(GridError, match=r"mapping.*keyword"):
        DA.patch.apply(func, {"y": 4}, x=4)
    assert func.calls == 0


def test_func_not_callable_is_type_error():
    with pytest.raises(TypeError, match=r"func must be callable.*int"):
        DA.patch.apply(3, y=4, x=4)


def test_pad_border_allows_patch_larger_than_array():
    da = xr.DataArray(np.arange(15.0).reshape(3, 5), dims=("y", "x"), coords=grid_coords(y=3, x=5))
    out = da.patch.apply(patch_func, y=8, x=4, step=2, border="pad", weights="hann")
    expected = reference(
        da.values, [0, 1], [8, 4], [2, 2], "pad", builtin_weights("hann"), patch_func_np
    )
    np.testing.assert_allclose(out.values, expected, rtol=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        lambda p: p.isel(x=slice(0, -1)),
        lambda p: p.isel(y=0),
        lambda p: np.asarray(p)[..., :-1],
        lambda p: np.asarray(p)[0],
    ],
)
def test_result_of_wrong_shape_names_the_window(bad):
    da = xr.DataArray(np.zeros((6, 8)), dims=("y", "x"))
    calls = Recorder(lambda p: p if calls.calls < 3 else bad(p))
    with pytest.raises(ResultError, match=r"<Window 2: y=0:3, x=4:6>"):
        da.patch.apply(calls, y=3, x=2, step={"y": 3, "x": 2})


def test_result_with_changed_non_spatial_dims_is_error():
    da = xr.DataArray(np.zeros((2, 6, 8)), dims=("band", "y", "x"))
    calls = Recorder(lambda p: p if calls.calls == 1 else p.isel(band=[0]))
    with pytest.raises(ResultError, match=r"<Window 1: y=0:3, x=2:4>"):
        da.patch.apply(calls, y=3, x=2)


def test_func_exception_propagates_with_window_note():
    da = xr.DataArray(np.zeros((6, 8)), dims=("y", "x"))

    def func(p):
        if int(p["x"][0]) == 4 and int(p["y"][0]) == 3:
            raise ZeroDivisionError("model failed")
        return p

    da = da.assign_coords(y=np.arange(6), x=np.arange(8))
    with pytest.raises(ZeroDivisionError, match="model failed") as info:
        da.patch.apply(func, y=3, x=2)
    notes = getattr(info.value, "__notes__", [])
    assert any("<Window 6: y=3:6, x=4:6>" in n for n in notes), notes


def test_func_exception_in_batch_names_windows():
    da = xr.DataArray(np.zeros((6, 8)), dims=("y", "x"))

    def func(b):
        raise RuntimeError("oom")

    with pytest.raises(RuntimeError, match="oom") as info:
        da.patch.apply(func, y=3, x=2, batch_size=3)
    notes = getattr(info.value, "__notes__", [])
    assert any("<Window 0: y=0:3, x=0:2>" in n and "<Window 2:" in n for n in notes), notes


# --- 10. memory: separable normalisation keeps no weight map -------------------------
@pytest.mark.parametrize("weights", ["gaussian", "mean"])
def test_memory_no_weight_map(weights):
    da = xr.DataArray(np.ones((2048, 2048), dtype=np.float32), dims=("y", "x"))
    nbytes = da.nbytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracemalloc.start()
        try:
            out = da.patch.apply(lambda p: p, y=256, x=256, step=128, weights=weights)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.values[::97, ::89], 1.0, rtol=1e-5)
    assert peak < 3 * nbytes, f"peak {peak / 2**20:.1f} MiB for a {nbytes / 2**20:.0f} MiB output"

"""halo= (context cropped before blending) and scale= (outputs at another resolution)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from reference import failing_at
from scipy.ndimage import gaussian_filter

import xpatch  # noqa: F401
from xpatch.errors import DimensionError, GridError, ResultError
from xpatch.store import StoreError

RNG = np.random.default_rng(7)
RAW = RNG.random((90, 110)).astype("float32")
SPACING = 30.0  # metres


def raster() -> xr.DataArray:
    return xr.DataArray(
        RAW,
        dims=("y", "x"),
        coords={"y": 4000.0 - SPACING * np.arange(90), "x": 500.0 + SPACING * np.arange(110)},
        name="reflectance",
    )


def blur(patch: xr.DataArray) -> xr.DataArray:
    return patch.copy(data=gaussian_filter(patch.values, 2))


def blur_batch(batch: xr.DataArray) -> np.ndarray:
    return gaussian_filter(batch.values, (0, 2, 2))


REFERENCE = gaussian_filter(RAW, 2)


# --- halo ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["mean", "gaussian", "hann"])
def test_a_local_filter_with_halo_equals_the_whole_image_filter(weights):
    da = raster()
    out = da.patch.apply(blur, y=32, x=32, step=24, weights=weights, halo=8)
    np.testing.assert_allclose(out.values, REFERENCE, rtol=0, atol=2e-7)
    without = da.patch.apply(blur, y=32, x=32, step=24, weights=weights)
    assert np.abs(without.values - REFERENCE).max() > 1e-4  # the halo is what fixes it
    assert out.dims == da.dims and out.name == da.name
    np.testing.assert_array_equal(out.x.values, da.x.values)


@pytest.mark.parametrize("border", ["squeeze", "edge", "adaptive", "crop"])
def test_halo_on_every_border_mode(border):
    out = raster().patch.apply(blur, y=32, x=32, step=24, border=border, halo=8)
    covered = np.isfinite(out.values)
    np.testing.assert_allclose(out.values[covered], REFERENCE[covered], atol=2e-7)


def test_halo_on_the_pad_border_pads_the_context():
    # scipy's "reflect" is numpy's "symmetric": the padded context is what the
    # whole-image filter sees beyond the border, and every patch keeps its full width
    seen = set()

    def f(p):
        seen.add(p.shape)
        return blur(p)

    out = raster().patch.apply(f, y=32, x=32, step=24, border="pad", pad_mode="symmetric", halo=8)
    assert seen == {(48, 48)}
    np.testing.assert_allclose(out.values, REFERENCE, atol=2e-7)


def test_halo_per_dim_chunks_batches_and_on_chunk():
    da = raster()
    seen = []
    out = da.patch.apply(
        blur_batch,
        y=32,
        x=32,
        step=24,
        halo={"y": 8, "x": 10},
        batch_size=5,
        chunks=40,
        on_chunk=lambda c: seen.append(dict(c.sizes)) or c,
    )
    np.testing.assert_allclose(out.values, REFERENCE, atol=2e-7)
    assert sum(s["y"] * s["x"] for s in seen) == RAW.size  # every chunk once


def test_halo_out_of_core_and_resume(tmp_path):
    da = raster()
    store = tmp_path / "blur.zarr"
    flaky = failing_at(9, blur)

    with pytest.raises(RuntimeError, match="killed"):
        da.patch.apply(flaky, y=32, x=32, step=24, halo=8, chunks=30, out=store)
    out = da.patch.apply(blur, y=32, x=32, step=24, halo=8, chunks=30, out=store, resume=True)
    np.testing.assert_allclose(out.values, REFERENCE, atol=2e-7)


def test_halo_on_dask_is_lazy_and_equals_eager():
    da = raster()
    lazy = da.chunk({"y": 45, "x": 55}).patch.apply(blur, y=32, x=32, step=24, halo=8)
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, REFERENCE, atol=2e-7)


def test_halo_in_3d():
    vol = RNG.random((30, 40, 36)).astype("float32")
    da = xr.DataArray(vol, dims=("z", "y", "x"))
    out = da.patch.apply(
        lambda p: gaussian_filter(p.values, 1.5), z=16, y=16, x=16, step=12, halo=6
    )
    np.testing.assert_allclose(out.values, gaussian_filter(vol, 1.5), atol=2e-7)


@pytest.mark.parametrize(
    ("halo", "error"),
    [(-1, GridError), (1.5, GridError), ({"t": 2}, DimensionError), ("8", GridError)],
)
def test_bad_halo_is_refused_before_func(halo, error):
    def never(p):
        raise AssertionError("func must not be called")

    with pytest.raises(error, match="halo"):
        raster().patch.apply(never, y=32, x=32, halo=halo)


def test_a_result_that_does_not_keep_the_halo_is_refused():
    with pytest.raises(ResultError, match=r"expected \{'y': 40, 'x': 40\}"):
        raster().patch.apply(lambda p: p[8:-8, 8:-8].values, y=32, x=32, halo=8)


# --- scale ----------------------------------------------------------------------------


def upsample(p) -> np.ndarray:
    return np.repeat(np.repeat(np.asarray(p), 2, axis=-2), 2, axis=-1)


def pool4(p) -> np.ndarray:
    a = np.asarray(p)
    return a.reshape(*a.shape[:-2], a.shape[-2] // 4, 4, a.shape[-1] // 4, 4).mean((-3, -1))


def test_super_resolution_x2_found_from_the_first_result():
    da = raster()
    out = da.patch.apply(upsample, y=32, x=32, step=24)
    assert out.sizes == {"y": 180, "x": 220}
    np.testing.assert_allclose(out.values, upsample(RAW), atol=1e-7)
    # cell centres of the finer grid: the first input cell [c0 - 15, c0 + 15] holds two
    np.testing.assert_allclose(out.x.values[:3], [500.0 - 7.5, 500.0 + 7.5, 500.0 + 22.5])
    np.testing.assert_allclose(out.y.values[:2], [4000.0 + 7.5, 4000.0 - 7.5])
    assert np.allclose(np.diff(out.x.values), 15.0)


def test_a_quarter_resolution_classifier():
    da = raster().isel(y=slice(0, 88), x=slice(0, 108))
    out = da.patch.apply(pool4, y=32, x=32, step=16, border="crop", weights="mean")
    assert out.sizes == {"y": 22, "x": 27}
    covered = np.isfinite(out.values)
    np.testing.assert_allclose(out.values[covered], pool4(da.values)[covered], atol=1e-6)
    np.testing.assert_allclose(out.x.values[:2], [500.0 + 45.0, 500.0 + 165.0])


@pytest.mark.parametrize("path", ["explicit", "chunks", "batch", "dask", "out"])
def test_scale_on_every_path(path, tmp_path):
    da = raster()
    kwargs = dict(y=32, x=32, step=24, scale=2)
    if path == "chunks":
        kwargs.update(chunks=40, on_chunk=lambda c: c * 1)
    if path == "batch":
        kwargs.update(batch_size=4)
        kwargs.pop("scale")  # found from the first batch
    if path == "dask":
        da = da.chunk(45)
        kwargs.pop("scale")
    if path == "out":
        kwargs.update(out=tmp_path / "sr.zarr", chunks=50)
    out = da.patch.apply(upsample, **kwargs)
    if path == "dask":
        assert out.chunks is not None
    np.testing.assert_allclose(out.values, upsample(RAW), atol=1e-7)
    assert out.sizes == {"y": 180, "x": 220}


def test_scale_with_halo():
    def sr_blur(p):
        return upsample(gaussian_filter(p.values, 2))

    out = raster().patch.apply(sr_blur, y=32, x=32, step=24, halo=8, scale={"y": 2, "x": 2})
    np.testing.assert_allclose(out.values, upsample(REFERENCE), atol=2e-7)


def test_out_needs_the_scale_up_front(tmp_path):
    with pytest.raises((ResultError, StoreError), match="scale"):
        raster().patch.apply(upsample, y=32, x=32, out=tmp_path / "x.zarr")


def test_scale_that_misses_whole_elements_is_refused():
    with pytest.raises(GridError, match="multiples of 4"):
        raster().isel(y=slice(0, 88), x=slice(0, 108)).patch.apply(
            pool4, y=32, x=32, step=24, scale=0.25
        )
    with pytest.raises(GridError, match="length"):
        raster().patch.apply(pool4, y=32, x=32, scale=0.25)


def test_irregular_coordinates_cannot_be_rescaled():
    da = raster().assign_coords(x=np.sort(RNG.random(110)) * 1000)
    with pytest.raises(DimensionError, match="'x' is not regularly spaced"):
        da.patch.apply(upsample, y=32, x=32)


def test_stale_georeference_is_dropped_and_rioxarray_recomputes_it():
    da = raster().assign_coords(spatial_ref=xr.Variable((), 0, {"GeoTransform": "1 2 3 4 5 6"}))
    out = da.patch.apply(upsample, y=32, x=32)
    assert "GeoTransform" not in out.spatial_ref.attrs


def test_resuming_with_another_halo_is_refused(tmp_path):
    da = raster()
    store = tmp_path / "blur.zarr"
    flaky = failing_at(5, blur)

    keep = lambda p: True  # noqa: E731  (a predicate: no fingerprint check on resume)
    kw = dict(y=32, x=32, step=24, chunks=30, out=store, mask=keep)
    with pytest.raises(RuntimeError, match="killed"):
        da.patch.apply(flaky, halo=8, **kw)
    with pytest.raises(StoreError, match="halo"):
        da.patch.apply(blur, halo=4, resume=True, **kw)
    out = da.patch.apply(blur, halo=8, resume=True, **kw)
    np.testing.assert_allclose(out.values, REFERENCE, atol=2e-7)


@pytest.mark.parametrize("method", ["grid", "sample", "aggregator", "dataset"])
def test_halo_and_scale_given_to_another_method_say_where_they_belong(method):
    da = raster()
    for key in ("halo", "scale"):
        with pytest.raises(GridError, match=f"{key}= is an argument of apply"):
            result = getattr(da.patch, method)(y=32, x=32, **{key: 2})
            list(result) if method == "sample" else None

"""GeoTIFF in, GeoTIFF out: a raster opened lazily with rioxarray keeps its CRS and its
affine transform through xpatch, and is written back with ``rio.to_raster``.

Real files: a multi-band, tiled GeoTIFF written with rasterio in a temporary folder.
Skipped where rioxarray (and so rasterio) is not installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xpatch  # noqa: F401  (registers the .patch accessor)

rioxarray = pytest.importorskip("rioxarray")
rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

# affine 3 asks rasterio and rioxarray to use @ for its matrices; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

CRS = "EPSG:32633"
with warnings.catch_warnings():  # the same warning, at import time
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    TRANSFORM = from_origin(399_960.0, 5_800_020.0, 10.0, 10.0)  # west, north, 10 m pixels
BANDS = ("blue", "green", "red", "nir")


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-band 150 x 200 float32 GeoTIFF in UTM 33N, tiled in blocks of 64."""
    path = tmp_path_factory.mktemp("geo") / "scene.tif"
    data = np.random.default_rng(0).uniform(0.01, 0.5, (4, 150, 200)).astype("float32")
    profile = {
        "driver": "GTiff",
        "width": 200,
        "height": 150,
        "count": 4,
        "dtype": "float32",
        "crs": CRS,
        "transform": TRANSFORM,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = BANDS
    return path


def ndvi(patch: xr.DataArray) -> xr.DataArray:
    """NDVI of a (band, y, x) patch of the file (bands 3 and 4 are red and nir)."""
    red, nir = patch.sel(band=3), patch.sel(band=4)
    values = (nir - red) / (nir + red)
    return values.rename("ndvi").drop_attrs(deep=False).assign_attrs(long_name="NDVI")


def assert_georeferenced_like(result: xr.DataArray, source: xr.DataArray) -> None:
    assert result.rio.crs == source.rio.crs
    assert result.rio.crs.to_epsg() == 32633
    assert result.rio.transform() == source.rio.transform() == TRANSFORM
    assert "spatial_ref" in result.coords
    xr.testing.assert_identical(result.x, source.x)
    xr.testing.assert_identical(result.y, source.y)


def test_lazy_geotiff_result_keeps_crs_and_transform_and_round_trips(
    geotiff: Path, tmp_path: Path
) -> None:
    source = rioxarray.open_rasterio(geotiff, chunks={"band": -1, "y": 64, "x": 64})
    assert source.chunks is not None  # opened lazily
    result = source.patch.apply(ndvi, y=48, x=48, step=32, weights="gaussian")
    assert result.chunks is not None  # still lazy: nothing computed yet
    assert_georeferenced_like(result, source)

    eager = source.compute().patch.apply(ndvi, y=48, x=48, step=32, weights="gaussian")
    assert_georeferenced_like(eager, source)
    np.testing.assert_allclose(result, eager, rtol=1e-6)

    written = tmp_path / "ndvi.tif"
    result.rio.to_raster(written)
    back = rioxarray.open_rasterio(written)
    assert back.sizes == {"band": 1, "y": 150, "x": 200}
    assert back.rio.crs == source.rio.crs
    assert back.rio.transform() == TRANSFORM
    np.testing.assert_allclose(back.isel(band=0), eager, rtol=1e-6)


def test_multiband_result_with_out_zarr_keeps_crs(geotiff: Path, tmp_path: Path) -> None:
    """A result that keeps the band dim, finished chunk by chunk into a zarr store."""
    pytest.importorskip("zarr")
    source = rioxarray.open_rasterio(geotiff, chunks={"band": -1, "y": 64, "x": 64})
    stored = source.patch.apply(
        lambda p: p.drop_attrs(deep=False) * 2,
        y=48,
        x=48,
        step=32,
        chunks=64,
        out=tmp_path / "x2.zarr",
    )
    assert_georeferenced_like(stored, source)
    reopened = xr.open_zarr(tmp_path / "x2.zarr")
    (name,) = reopened.data_vars
    assert_georeferenced_like(reopened[name], source)
    written = tmp_path / "x2.tif"
    stored.rio.to_raster(written)
    back = rioxarray.open_rasterio(written)
    assert back.rio.crs == source.rio.crs and back.rio.transform() == TRANSFORM
    np.testing.assert_allclose(back, source.values * 2, rtol=1e-6)

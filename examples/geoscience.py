"""Geoscience: patch-wise band math and filtering of a multi-band raster, CRS kept.

A synthetic four-band scene (blue, green, red, near infrared) on a 10 m grid in UTM
zone 33N is processed patch by patch: a vegetation index (NDVI) from the red and
near-infrared bands, then a median filter against sensor noise. Patches overlap and
are blended with gaussian weights, so the result is the same as processing the whole
scene at once, without seams, and it keeps the scene's ``y``/``x`` coordinates in
metres and its CRS (a ``spatial_ref`` scalar coordinate whose ``crs_wkt`` attribute
holds the WKT, the convention rioxarray and GDAL's netCDF driver use).

The same is then done on the scene held as a Dataset with one variable per band (as
stackstac or odc-stac give it), returning two indices at once.

Run::

    python examples/geoscience.py [ndvi.nc]

The filtered NDVI is written to ``ndvi.nc`` (netCDF) in the current directory unless
another path is given. Nothing is downloaded: the scene is generated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage

import xpatch  # noqa: F401  (registers the .patch accessor)

# WGS 84 / UTM zone 33N (EPSG:32633) as GDAL writes it.
CRS_WKT = (
    'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",'
    'SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],'
    'UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]],'
    'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
    'PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],'
    'UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],AXIS["Northing",NORTH],'
    'AUTHORITY["EPSG","32633"]]'
)
RESOLUTION = 10.0  # metres per pixel
WEST, NORTH = 399_960.0, 5_800_020.0  # outer corner of the scene, metres
PATCH = {"y": 256, "x": 256}  # patch size in pixels
STEP = 192  # 64 pixels of overlap
MEDIAN = 5  # median filter width in pixels


def spatial_ref(ny: int, nx: int) -> xr.DataArray:
    """The CRS as a scalar coordinate, as rioxarray writes it."""
    transform = (WEST, RESOLUTION, 0.0, NORTH, 0.0, -RESOLUTION)
    return xr.DataArray(
        0,
        attrs={
            "crs_wkt": CRS_WKT,
            "spatial_ref": CRS_WKT,
            "grid_mapping_name": "transverse_mercator",
            "GeoTransform": " ".join(f"{v:g}" for v in transform),
        },
    )


def make_scene(ny: int = 640, nx: int = 800, seed: int = 0) -> xr.DataArray:
    """A four-band reflectance raster (band, y, x): fields, forest, a lake, sensor noise."""
    rng = np.random.default_rng(seed)
    vegetation = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 25)
    vegetation = np.clip(0.5 + vegetation / (4 * vegetation.std()), 0, 1)
    yy, xx = np.mgrid[:ny, :nx]
    water = (yy - 0.7 * ny) ** 2 / 90**2 + (xx - 0.3 * nx) ** 2 / 140**2 < 1
    soil = np.array([0.08, 0.11, 0.14, 0.25])[:, None, None]
    leaf = np.array([0.03, 0.08, 0.04, 0.45])[:, None, None]
    lake = np.array([0.06, 0.05, 0.03, 0.01])[:, None, None]
    bands = soil + (leaf - soil) * vegetation
    bands = np.where(water, lake, bands)
    bands = bands * (1 + 0.03 * rng.standard_normal(bands.shape))
    hot = rng.random((ny, nx)) < 0.002  # saturated pixels a median filter removes
    bands[:, hot] = 1.0
    y = NORTH - RESOLUTION * (np.arange(ny) + 0.5)  # pixel centres, north up
    x = WEST + RESOLUTION * (np.arange(nx) + 0.5)
    return xr.DataArray(
        bands.astype(np.float32),
        dims=("band", "y", "x"),
        coords={
            "band": ["blue", "green", "red", "nir"],
            "y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
            "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
            "spatial_ref": spatial_ref(ny, nx),
        },
        name="reflectance",
        attrs={"units": "1", "grid_mapping": "spatial_ref"},
    )


def ndvi(red: xr.DataArray, nir: xr.DataArray) -> xr.DataArray:
    """Normalised difference vegetation index, in [-1, 1]."""
    return (nir - red) / (nir + red)


def smoothed_ndvi(patch: xr.DataArray) -> xr.DataArray:
    """One patch (band, y, x) -> its median-filtered NDVI (y, x).

    Any function of a patch works; this one changes the dims (the band dim is
    consumed) and needs neighbours (the filter), which the overlap provides.
    """
    index = ndvi(patch.sel(band="red"), patch.sel(band="nir"))
    filtered = ndimage.median_filter(index.values, size=MEDIAN, mode="nearest")
    return xr.DataArray(
        filtered,
        dims=("y", "x"),
        name="ndvi",
        attrs={"long_name": "median-filtered NDVI", "units": "1", "grid_mapping": "spatial_ref"},
    )


def indices(patch: xr.Dataset) -> xr.Dataset:
    """A Dataset patch (one variable per band) -> two indices as a Dataset."""
    return xr.Dataset(
        {
            "ndvi": ndvi(patch.red, patch.nir),
            "ndwi": (patch.green - patch.nir) / (patch.green + patch.nir),
        }
    )


def main(path: Path) -> None:
    """Process the scene patch-wise, check the result and write it to ``path``."""
    scene = make_scene()
    print(f"scene: {dict(scene.sizes)}, {scene.dtype}, CRS EPSG:32633 (spatial_ref)")

    grid = scene.patch.grid(PATCH, step=STEP)
    print(f"grid: {len(grid)} patches of {PATCH}, step {STEP}, shape {grid.shape}")

    out = scene.patch.apply(smoothed_ndvi, PATCH, step=STEP, weights="gaussian")
    print(f"result: {out.name} {dict(out.sizes)}, {out.dtype}")

    # The result keeps the scene's coordinates and its CRS ...
    xr.testing.assert_identical(out.x, scene.x)
    xr.testing.assert_identical(out.y, scene.y)
    assert out.spatial_ref.attrs["crs_wkt"] == CRS_WKT
    assert out.attrs["grid_mapping"] == "spatial_ref"
    # ... and is close to processing the whole scene at once: the filter goes wrong only
    # within MEDIAN // 2 pixels of a patch's edge, where gaussian weights are near zero.
    whole = ndimage.median_filter(
        ndvi(scene.sel(band="red"), scene.sel(band="nir")).values, size=MEDIAN, mode="nearest"
    )
    err = np.abs(out.values - whole)
    print(f"|patch-wise - whole-scene|: max {err.max():.1e}, mean {err.mean():.1e}")
    assert err.max() < 1e-2, err.max()
    vegetated = float((out > 0.5).mean())
    print(f"vegetated (NDVI > 0.5): {vegetated:.1%} of the scene")

    # A Dataset with one variable per band works the same way; func gets a Dataset patch.
    per_band = scene.to_dataset("band")
    both = per_band.patch.apply(indices, PATCH, step=STEP, weights="gaussian")
    print(f"Dataset result: variables {list(both.data_vars)}, {dict(both.sizes)}")
    assert both.spatial_ref.attrs["crs_wkt"] == CRS_WKT
    lake = both.ndwi.sel(x=WEST + 0.3 * 8000, y=NORTH - 0.7 * 6400, method="nearest")
    print(f"NDWI at the lake centre: {float(lake):.2f} (water > 0)")

    out.to_netcdf(path)
    with xr.open_dataset(path) as saved:
        assert saved.ndvi.spatial_ref.attrs["crs_wkt"] == CRS_WKT
        xr.testing.assert_allclose(saved.ndvi, out)
    print(f"saved {path.resolve()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("ndvi.nc"))

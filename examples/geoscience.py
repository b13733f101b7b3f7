"""
Geoscience: a multi-band GeoTIFF, processed lazily, written back as a GeoTIFF
=============================================================================

A four-band scene (blue, green, red, near infrared) on a 10 m grid in UTM zone 33N is
written to a tiled GeoTIFF with rasterio, then opened lazily with
``rioxarray.open_rasterio(path, chunks=...)``: a dask-backed DataArray whose ``y`` and
``x`` coordinates are in metres and whose CRS sits in the ``spatial_ref`` coordinate.

A vegetation index (NDVI) followed by a median filter against sensor noise runs patch
by patch. Patches overlap and are blended with gaussian weights, so the result equals
processing the whole scene at once, without seams. The result is lazy too; it keeps
the scene's coordinates, ``rio.crs`` and ``rio.transform()``, and is written back with
``.rio.to_raster``.

Run::

    python examples/geoscience.py [ndvi.tif]

It needs rioxarray (``pip install -e ".[geo]"``). The scene is generated, nothing is
downloaded; the filtered NDVI goes to ``ndvi.tif`` unless another path is given.
"""

# %%
# A GeoTIFF on disk
# -----------------
# Fields, forest and a lake, with a little sensor noise and a few saturated pixels,
# written as GDAL writes satellite products: tiled, one band per layer, with a CRS
# and an affine transform.

import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import rasterio
import rioxarray
import xarray as xr
from matplotlib.colors import BoundaryNorm, ListedColormap
from rasterio.transform import from_origin
from scipy import ndimage

import xpatch  # noqa: F401  (registers the .patch accessor)

OUTPUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("ndvi.tif")
BANDS = ["blue", "green", "red", "nir"]
RESOLUTION = 10.0  # metres per pixel
TRANSFORM = from_origin(399_960.0, 5_800_020.0, RESOLUTION, RESOLUTION)  # west, north
PATCH = {"y": 256, "x": 256}  # patch size in pixels
STEP = 192  # 64 pixels of overlap
MEDIAN = 5  # median filter width in pixels


def make_scene(ny: int = 640, nx: int = 800, seed: int = 0) -> np.ndarray:
    """Reflectance (band, y, x) of fields, forest and a lake, with sensor noise."""
    rng = np.random.default_rng(seed)
    vegetation = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 25)
    vegetation = np.clip(0.5 + vegetation / (4 * vegetation.std()), 0, 1)
    yy, xx = np.mgrid[:ny, :nx]
    water = (yy - 0.7 * ny) ** 2 / 90**2 + (xx - 0.3 * nx) ** 2 / 140**2 < 1
    soil = np.array([0.08, 0.11, 0.14, 0.25])[:, None, None]
    leaf = np.array([0.03, 0.08, 0.04, 0.45])[:, None, None]
    lake = np.array([0.06, 0.05, 0.03, 0.01])[:, None, None]
    bands = np.where(water, lake, soil + (leaf - soil) * vegetation)
    bands = bands * (1 + 0.03 * rng.standard_normal(bands.shape))
    bands[:, rng.random((ny, nx)) < 0.002] = 1.0  # saturated pixels
    return bands.astype(np.float32)


folder = Path(tempfile.mkdtemp())
scene_path = folder / "scene.tif"
bands = make_scene()
profile = dict(
    driver="GTiff",
    width=bands.shape[2],
    height=bands.shape[1],
    count=len(BANDS),
    dtype="float32",
    crs="EPSG:32633",
    transform=TRANSFORM,
    tiled=True,
    blockxsize=256,
    blockysize=256,
)
with rasterio.open(scene_path, "w", **profile) as dst:
    dst.write(bands)
    dst.descriptions = BANDS

# %%
# Open it lazily
# --------------
# ``chunks=`` gives a dask array: nothing is read until a patch needs it. The band
# dim is labelled 1..4 by rioxarray; name the bands so the function can use them.

scene = rioxarray.open_rasterio(scene_path, chunks={"band": -1, "y": 256, "x": 256})
scene = scene.assign_coords(band=BANDS)
scene.x.attrs["units"] = scene.y.attrs["units"] = "m"  # rioxarray leaves them out
print(scene.rio.crs, scene.rio.resolution(), scene.chunks)

grid = scene.patch.grid(PATCH, step=STEP)
print(grid)

fig, ax = plt.subplots(figsize=(7.5, 6.2), layout="constrained")
grid.plot(scene, ax=ax, rgb=["red", "green", "blue"], edgecolor="white", linewidth=1.2)
ax.set_title(f"true colour, {len(grid)} patches of 256 x 256 px, 64 px overlap")
ax.ticklabel_format(useOffset=False, style="plain")

# %%
# A patch-wise function
# ---------------------
# ``smoothed_ndvi`` gets one patch (band, y, x) with its coordinates and returns a
# (y, x) result: it consumes the band dim and needs neighbours (the filter), which
# the overlap provides.


def ndvi(red: xr.DataArray, nir: xr.DataArray) -> xr.DataArray:
    """Normalised difference vegetation index, in [-1, 1]."""
    return (nir - red) / (nir + red)


def smoothed_ndvi(patch: xr.DataArray) -> xr.DataArray:
    """One patch (band, y, x) -> its median-filtered NDVI (y, x)."""
    index = ndvi(patch.sel(band="red"), patch.sel(band="nir"))
    filtered = ndimage.median_filter(index.values, size=MEDIAN, mode="nearest")
    return xr.DataArray(filtered, dims=("y", "x"), name="ndvi", attrs={"long_name": "NDVI"})


result = scene.patch.apply(smoothed_ndvi, PATCH, step=STEP, weights="gaussian")
print(f"lazy result: {result.name} {dict(result.sizes)}, chunks {result.chunks}")

# The result keeps the scene's coordinates, CRS and transform.
assert result.rio.crs == scene.rio.crs
assert result.rio.transform() == scene.rio.transform() == TRANSFORM
xr.testing.assert_identical(result.x, scene.x)

# %%
# Compute, check and write back
# -----------------------------
# The filter goes wrong only within ``MEDIAN // 2`` pixels of a patch's edge, where the
# gaussian weights are near zero: the patch-wise result is close to the whole-scene one.

ndvi_map = result.compute()
whole = ndimage.median_filter(
    ndvi(scene.sel(band="red"), scene.sel(band="nir")).values, size=MEDIAN, mode="nearest"
)
err = np.abs(ndvi_map.values - whole)
print(f"|patch-wise - whole-scene|: max {err.max():.1e}, mean {err.mean():.1e}")
assert err.max() < 1e-2, err.max()

ndvi_map.rio.to_raster(OUTPUT)
with rioxarray.open_rasterio(OUTPUT) as saved:
    assert saved.rio.crs.to_epsg() == 32633 and saved.rio.transform() == TRANSFORM
    np.testing.assert_allclose(saved.isel(band=0), ndvi_map, rtol=1e-6)
print(f"saved {OUTPUT.resolve()} (EPSG:32633, 10 m)")

# %%
# The result: NDVI, and a land-cover map from it
# ----------------------------------------------

classes = ["water", "bare soil", "sparse vegetation", "dense vegetation"]
bounds = [-1, 0, 0.35, 0.6, 1]
cover = xr.DataArray(np.digitize(ndvi_map, bounds[1:-1]), coords=ndvi_map.coords)
for k, name in enumerate(classes):
    print(f"{name:>17}: {float((cover == k).mean()):6.1%}")

colors = ListedColormap(["#2b6cb0", "#c8a165", "#a4d37a", "#1f6f2b"])
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, layout="constrained")
ndvi_map.plot.imshow(ax=ax1, cmap="RdYlGn", vmin=-0.6, vmax=0.9)
ax1.set_title("median-filtered NDVI, blended from patches")
image = cover.plot.imshow(
    ax=ax2, cmap=colors, norm=BoundaryNorm(np.arange(-0.5, 4), 4), add_colorbar=False
)
cbar = fig.colorbar(image, ax=ax2, ticks=range(4))
cbar.ax.set_yticklabels(classes)
ax2.set_title("land cover classified from the NDVI")
for ax in (ax1, ax2):
    ax.xaxis.set_major_locator(plt.MaxNLocator(4))

# %%
# The same on a Dataset, one variable per band
# --------------------------------------------
# As stackstac and odc-stac give a scene. ``func`` then gets a Dataset patch and may
# return several variables at once.


def indices(patch: xr.Dataset) -> xr.Dataset:
    """A Dataset patch (one variable per band) -> two indices as a Dataset."""
    return xr.Dataset(
        {
            "ndvi": ndvi(patch.red, patch.nir),
            "ndwi": (patch.green - patch.nir) / (patch.green + patch.nir),
        }
    )


per_band = scene.to_dataset("band")
both = per_band.patch.apply(indices, PATCH, step=STEP, weights="gaussian").compute()
print(f"Dataset result: variables {list(both.data_vars)}, CRS {both.rio.crs}")

"""
Quick start: a patch-wise filter, blended without seams
=======================================================

The image is scikit-image's bundled ``camera`` picture (no download), labelled with
coordinates in metres. A gaussian blur runs on each 128 x 128 patch on its own;
xpatch blends the overlapping results with gaussian weights into one seamless image
that keeps the input's coordinates.

Run from the repository root::

    python examples/quickstart.py [output.png]

The figure (input, patch grid, blended output) goes to ``quickstart.png`` in the
current directory unless another path is given.
"""

# %%
# An image with coordinates
# -------------------------
# Any DataArray will do; its spatial dims are named when the patch size is given.

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from scipy import ndimage
from skimage import data

import xpatch  # noqa: F401  (registers the .patch accessor)

SIZE = 128  # patch size along y and x, in pixels
STEP = 96  # distance between patch starts: 32 pixels of overlap
SIGMA = 3.0  # blur width, in pixels
RESOLUTION = 0.5  # metres per pixel
OUTPUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart.png")

image = data.camera().astype(np.float32) / 255
ny, nx = image.shape
da = xr.DataArray(
    image,
    dims=("y", "x"),
    coords={
        "y": ("y", 1000.0 - RESOLUTION * np.arange(ny), {"units": "m"}),
        "x": ("x", 200.0 + RESOLUTION * np.arange(nx), {"units": "m"}),
    },
    name="brightness",
    attrs={"long_name": "camera brightness"},
)
print(f"input: {dict(da.sizes)}, {da.dtype}")

# %%
# The grid
# --------
# The grid is pure geometry: one window (a mapping dim -> slice) per patch.
# ``grid.plot`` draws it in the image's coordinates, here metres.

grid = da.patch.grid(y=SIZE, x=SIZE, step=STEP)
print(grid)
print(grid[1])

# %%
# Run a function on every patch, blend the overlaps
# -------------------------------------------------
# ``blur`` sees one patch at a time. Patches overlap by 32 pixels and are blended
# with gaussian weights.


def blur(patch: xr.DataArray) -> xr.DataArray:
    """Blur one patch: any function from a patch to a patch-shaped result works."""
    return patch.copy(data=ndimage.gaussian_filter(patch.values, sigma=SIGMA))


out = da.patch.apply(blur, y=SIZE, x=SIZE, step=STEP, weights="gaussian")
print(f"output: {dict(out.sizes)}, {out.dtype}")

# The result keeps the input's coordinates ...
xr.testing.assert_equal(out.x, da.x)
xr.testing.assert_equal(out.y, da.y)
# ... and blending is normalised: patches passed through unchanged give the input back.
same = da.patch.apply(lambda patch: patch, y=SIZE, x=SIZE, step=STEP, weights="gaussian")
np.testing.assert_allclose(same.values, da.values, rtol=1e-5, atol=1e-6)

# Patch-wise blurring differs from blurring the whole image only near patch borders,
# where each patch saw no neighbours; the gaussian blend hides most of it.
whole = ndimage.gaussian_filter(da.values, sigma=SIGMA)
print(f"max |patch-wise - whole-image blur|: {np.abs(out.values - whole).max():.4f}")

# %%
# Input, grid and output
# ----------------------

fig, (ax_in, ax_grid, ax_out) = plt.subplots(
    1, 3, figsize=(13, 4.9), sharex=True, sharey=True, layout="constrained"
)
da.plot.imshow(ax=ax_in, cmap="gray", add_colorbar=False)
ax_in.set_title(f"input, {ny} x {nx} pixels")
grid.plot(da, ax=ax_grid, edgecolor="gold", linewidth=0.8)
# Shade the first two patches to show their overlap.
for window, color in zip(grid[:2], ("C0", "C3")):
    single = da.isel(window)
    x0, x1 = float(single.x[0]) - RESOLUTION / 2, float(single.x[-1]) + RESOLUTION / 2
    y0, y1 = float(single.y[-1]) - RESOLUTION / 2, float(single.y[0]) + RESOLUTION / 2
    ax_grid.fill_between([x0, x1], y0, y1, color=color, alpha=0.35)
ax_grid.set_title(f"grid: {len(grid)} patches of {SIZE}, step {STEP}")
out.plot.imshow(ax=ax_out, cmap="gray", add_colorbar=False)
ax_out.set_title(f"blended blur (sigma {SIGMA:g} px)")
fig.savefig(OUTPUT, dpi=100)
print(f"saved {OUTPUT.resolve()}")

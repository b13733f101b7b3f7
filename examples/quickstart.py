"""Quick start: run a patch-wise filter over an image and blend the patches.

The image is scikit-image's bundled ``camera`` picture (no download), labelled with
coordinates in metres. A gaussian blur runs on each 128 x 128 patch on its own; xpatch
blends the overlapping results with gaussian weights into one seamless image that keeps
the input's coordinates.

Run from the repository root::

    python examples/quickstart.py [output.png]

The figure (input, patch grid, blended output) goes to ``quickstart.png`` in the current
directory unless another path is given.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import ndimage
from skimage import data

import xpatch  # noqa: F401  (registers the .patch accessor)

SIZE = 128  # patch size along y and x, in pixels
STEP = 96  # distance between patch starts: 32 pixels of overlap
SIGMA = 3.0  # blur width, in pixels
RESOLUTION = 0.5  # metres per pixel


def load_image() -> xr.DataArray:
    """Return the camera picture as a (y, x) DataArray with coordinates in metres."""
    image = data.camera().astype(np.float32) / 255
    ny, nx = image.shape
    return xr.DataArray(
        image,
        dims=("y", "x"),
        coords={
            "y": ("y", 1000.0 - RESOLUTION * np.arange(ny), {"units": "m"}),
            "x": ("x", 200.0 + RESOLUTION * np.arange(nx), {"units": "m"}),
        },
        name="brightness",
        attrs={"long_name": "camera brightness"},
    )


def blur(patch: xr.DataArray) -> xr.DataArray:
    """Blur one patch: any function from a patch to a patch-shaped result works."""
    return patch.copy(data=ndimage.gaussian_filter(patch.values, sigma=SIGMA))


def _edges(coord: xr.DataArray, index: slice | None = None) -> tuple[float, float]:
    """Outer pixel edges (first, last) of a regularly spaced coordinate, or of a slice of it."""
    values = coord.values if index is None else coord.values[index]
    half = (coord.values[1] - coord.values[0]) / 2
    return float(values[0] - half), float(values[-1] + half)


def _show(ax, image: xr.DataArray, title: str) -> None:
    x0, x1 = _edges(image.x)
    y0, y1 = _edges(image.y)
    # origin="upper" puts row 0 (the first y) at the top edge y0.
    ax.imshow(image.values, cmap="gray", origin="upper", extent=(x0, x1, y1, y0))
    ax.set_title(title)
    ax.set_xlabel(f"x [{image.x.attrs['units']}]")
    ax.set_ylabel(f"y [{image.y.attrs['units']}]")


def _draw_window(ax, image: xr.DataArray, window: Mapping[str, slice], **style) -> None:
    x0, x1 = _edges(image.x, window["x"])
    y0, y1 = _edges(image.y, window["y"])
    ax.add_patch(Rectangle((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), **style))


def main(path: Path) -> None:
    """Run the quick start and save the figure to ``path``."""
    da = load_image()
    print(f"input: {dict(da.sizes)}, {da.dtype}")

    # The grid is pure geometry: one window (a mapping dim -> slice) per patch.
    grid = da.patch.grid(y=SIZE, x=SIZE, step=STEP)
    print(f"grid: {len(grid)} patches, shape {dict(grid.shape)}")

    # Run the blur on every patch and blend the overlaps with gaussian weights.
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

    matplotlib.use("Agg")
    fig = Figure(figsize=(15, 5.4), layout="constrained")
    ax_in, ax_grid, ax_out = fig.subplots(1, 3, sharex=True, sharey=True)
    _show(ax_in, da, f"input {da.sizes['y']} x {da.sizes['x']}")
    _show(ax_grid, da, f"grid: {len(grid)} patches of {SIZE} x {SIZE}, step {STEP}")
    for window in grid:
        _draw_window(ax_grid, da, window, fill=False, edgecolor="gold", linewidth=0.8)
    # Shade the first two patches to show their overlap.
    for index, color in ((0, "C0"), (1, "C3")):
        _draw_window(ax_grid, da, grid[index], facecolor=color, alpha=0.35, edgecolor=color)
    _show(ax_out, out, f"blended blur (sigma={SIGMA:g} px, gaussian weights)")
    fig.savefig(path, dpi=100)
    print(f"saved {path.resolve()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart.png"))

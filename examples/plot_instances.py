"""
Instance segmentation: stitching per-patch nucleus ids into one label volume
============================================================================

A fluorescence volume of nuclei is segmented patch by patch, as cellpose, StarDist
or a watershed would do on a volume too large for them: each patch gets its own
objects numbered 1, 2, 3... from scratch. Those ids cannot be blended (the mean of
nucleus 3 and nucleus 7 is not a nucleus). ``apply(..., merge="instances")``
stitches them instead: each patch keeps the nuclei whose centre lies in its core,
so a nucleus cut by a patch border is taken from the patch that sees it whole;
ids are made unique over the volume and numbered ``1..N``.

The result is checked against segmenting the whole volume at once: the same
nuclei, voxel for voxel.

Run::

    python examples/plot_instances.py [instances.png]

The figure goes to ``instances.png`` unless another path is given.
"""

# %%
# A synthetic nuclei volume
# -------------------------
# Ellipsoidal nuclei (flattened along z, as on a confocal stack), blurred by the
# microscope's point spread function, with shot noise.

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle
from scipy import ndimage
from skimage.measure import label

import xpatch  # noqa: F401  (registers the .patch accessor)

OUTPUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("instances.png")
SHAPE = (24, 200, 200)  # z, y, x
PATCH = {"z": 24, "y": 72, "x": 72}
STEP = {"z": 24, "y": 48, "x": 48}  # overlap 24 voxels: more than a nucleus is wide


def nuclei(seed: int = 0, n: int = 70) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    inside = np.zeros(SHAPE, dtype=bool)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for _ in range(n * 20):
        r = rng.uniform(4, 10)
        c = rng.uniform([6, 0, 0], [18, SHAPE[1], SHAPE[2]])
        d = ((z - c[0]) / (r * 0.6)) ** 2 + ((y - c[1]) / r) ** 2 + ((x - c[2]) / r) ** 2
        if (inside & (d < 1.8)).any():
            continue  # nuclei do not touch
        inside |= d < 1
        n -= 1
        if n == 0:
            break
    signal = ndimage.gaussian_filter(inside * 200.0, (0.6, 1.0, 1.0)) + 20
    counts = rng.poisson(signal).astype(np.float32)
    return xr.DataArray(
        counts,
        dims=("z", "y", "x"),
        coords={
            "z": np.arange(SHAPE[0]) * 1.0,
            "y": np.arange(SHAPE[1]) * 0.3,
            "x": np.arange(SHAPE[2]) * 0.3,
        },
        attrs={"units": "photons"},
        name="nuclei",
    )


volume = nuclei()


def segment(patch: xr.DataArray) -> np.ndarray:
    """A classical nucleus segmentation: smooth, threshold, connected components.
    Any instance model (cellpose, StarDist) takes its place unchanged."""
    smooth = ndimage.gaussian_filter(np.asarray(patch), 1.0)
    return label(smooth > 100)


# %%
# Stitching per-patch ids
# -----------------------
# ``merge="instances"`` instead of blending weights; ``chunks`` stitches the output
# block by block (the same result as without it).

stitched = volume.patch.apply(segment, PATCH, step=STEP, chunks=100, merge="instances")
whole = segment(volume)  # the reference: the whole volume at once
print(stitched.dtype, int(stitched.max()), "nuclei; whole volume:", int(whole.max()))


def same_partition(a, b) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    nz = a != 0
    pairs = np.unique(np.stack([a[nz], b[nz]]), axis=1)
    bijection = len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    return bool(np.array_equal(a == 0, b == 0) and bijection)


assert same_partition(stitched, whole)
xr.testing.assert_identical(stitched.y, volume.y)  # coordinates in microns kept

# %%
# What each patch returned, and the stitched result
# -------------------------------------------------
# Left: the patch outlines on the middle plane (neighbours overlap by 24 voxels).
# Middle: the raw ids each patch gave, each shown over its core (the part nearer to
# its centre than to any other's): every patch numbers its nuclei from 1, so the
# colours repeat, and nuclei are cut where cores meet. Right: the stitched labels,
# one id per nucleus, each taken whole from the patch whose core holds its centre.

grid = volume.patch.grid(PATCH, step=STEP)
plane = SHAPE[0] // 2
raw = np.zeros(SHAPE[1:], dtype=np.int64)
cy, cx = [(np.asarray(ax.starts) + np.asarray(ax.stops) - 1) / 2 for ax in grid.axes[1:]]
cores = [np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]]) for c in (cy, cx)]
for window, patch in zip(grid, volume.patch.sample(PATCH, step=STEP)):
    ids = segment(patch)[plane]
    _, py, px = window.position
    sy, sx = window["y"], window["x"]
    yy = np.arange(sy.start, sy.stop)
    xx = np.arange(sx.start, sx.stop)
    in_core = ((yy >= cores[0][py]) & (yy < cores[0][py + 1]))[:, None] & (
        (xx >= cores[1][px]) & (xx < cores[1][px + 1])
    )[None, :]
    raw[sy, sx][in_core] = ids[in_core]

colours = plt.get_cmap("tab20")(np.arange(20))
cmap = ListedColormap(np.vstack([[0, 0, 0, 1], np.tile(colours, (20, 1))]))


def show_ids(ax, ids, title):
    ids = np.asarray(ids).astype(np.int64)
    ax.imshow(np.where(ids > 0, (ids - 1) % 400 + 1, 0), cmap=cmap, vmin=0, vmax=400,
              interpolation="nearest")  # fmt: skip
    ax.set_title(title)


fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), layout="constrained")
axes[0].imshow(volume.isel(z=plane), cmap="magma")
for window in grid:
    sy, sx = window["y"], window["x"]
    axes[0].add_patch(
        Rectangle((sx.start - 0.5, sy.start - 0.5), sx.stop - sx.start, sy.stop - sy.start,
                  fill=False, edgecolor="white", linewidth=0.8, alpha=0.7)
    )  # fmt: skip
axes[0].set_title(f"{len(grid)} patches of 72 x 72 (step 48), plane z = {plane}")
show_ids(axes[1], raw, "raw per-patch ids (each patch from 1)")
show_ids(axes[2], stitched.isel(z=plane), f"stitched: {int(stitched.max())} nuclei, 1..N")
for ax in axes:
    ax.set_axis_off()
fig.savefig(OUTPUT, dpi=80, format="png")
print("figure written to", OUTPUT)

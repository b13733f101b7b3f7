"""
Microscopy: a 3-D network on a zarr volume in microns, written to zarr chunk by chunk
=====================================================================================

A fluorescence volume of stained nuclei is stored in a zarr store with physical
``z``/``y``/``x`` coordinates in microns and anisotropic voxels (1 um between planes,
0.25 um across), as a light-sheet or confocal stack is. It is opened lazily with
``xr.open_zarr`` and segmented into three classes (background, nucleus, nucleus
boundary) by a tiny PyTorch network (two ``Conv3d`` layers and a softmax) whose two
brightness levels are calibrated on a second, labeled volume; any trained network
takes its place unchanged.

Inference runs on overlapping patches, eight at a time (``batch_size``). The class
probabilities are blended with gaussian weights per output block; each finished block
is reduced to labels by ``on_chunk`` (argmax over the classes, as uint8) and written
to a zarr store (``out=``). The float32 probability volume, three times the size of
the input, never exists whole.

Run::

    python examples/microscopy.py [labels.zarr]

The labels go to ``labels.zarr`` in the current directory unless another path is
given. It needs PyTorch and zarr.
"""

# %%
# A volume in a zarr store, in microns
# ------------------------------------

import shutil
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr
from matplotlib.colors import ListedColormap
from scipy import ndimage
from torch import nn

import xpatch  # noqa: F401  (registers the .patch accessor)

OUTPUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("labels.zarr")
CLASSES = ["background", "nucleus", "boundary"]
SPACING = {"z": 1.0, "y": 0.25, "x": 0.25}  # microns per voxel: anisotropic
SHAPE = {"z": 48, "y": 192, "x": 192}
PATCH = {"z": 16, "y": 64, "x": 64}  # 16 x 16 x 16 um
STEP = {"z": 12, "y": 48, "x": 48}
CHUNKS = {"z": 48, "y": 96, "x": 96}  # the store's chunks, and the output blocks
torch.set_num_threads(1)  # tensors this small run fastest on one thread


def make_volume(seed: int, n_nuclei: int = 24) -> tuple[xr.DataArray, xr.DataArray]:
    """A fluorescence volume and its true labels, both (z, y, x) with coordinates in um."""
    rng = np.random.default_rng(seed)
    shape = tuple(SHAPE.values())
    coords = {d: (d, np.arange(n) * SPACING[d], {"units": "um"}) for d, n in SHAPE.items()}
    zz, yy, xx = np.meshgrid(*(np.arange(n) * SPACING[d] for d, n in SHAPE.items()), indexing="ij")
    # distance to the nearest nucleus surface, in units of its radius (< 1 inside)
    inside = np.full(shape, np.inf)
    for _ in range(n_nuclei):
        centre = [rng.uniform(0, n * SPACING[d]) for d, n in SHAPE.items()]
        radius = rng.uniform(4.0, 7.0)  # microns
        r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        inside = np.minimum(inside, r / radius)
    labels = np.where(inside < 0.8, 1, np.where(inside < 1.0, 2, 0)).astype(np.uint8)
    signal = np.clip(1.1 - inside, 0, 1) ** 0.5  # bright nuclei, dimmer towards the rim
    signal = ndimage.gaussian_filter(signal, sigma=(0.7, 1.5, 1.5))  # the microscope's blur
    image = (rng.poisson(signal * 60 + 5) / 65).astype(np.float32)  # shot noise
    volume = xr.DataArray(image, dims=tuple(SHAPE), coords=coords, name="intensity")
    return volume, xr.DataArray(labels, dims=tuple(SHAPE), coords=coords, name="truth")


folder = Path(tempfile.mkdtemp())
stack, truth = make_volume(seed=2)
stack.attrs["units"] = "photons / 65"
stack.chunk(CHUNKS).to_dataset().to_zarr(folder / "stack.zarr", mode="w")

volume = xr.open_zarr(folder / "stack.zarr")["intensity"]  # lazy: dask chunks of the store
print(volume)

# %%
# The grid, drawn in microns
# --------------------------
# Patches of 16 x 64 x 64 voxels are 16 um cubes. Drawn over one plane (the grid of a
# 2-D slice), the axes are in microns.

grid = volume.patch.grid(PATCH, step=STEP)
print(f"grid: {len(grid)} patches, shape {grid.shape}")

plane = volume.sel(z=24.0)
fig, ax = plt.subplots(figsize=(6, 5.4), layout="constrained")
plane.patch.grid(y=64, x=64, step=48).plot(plane, ax=ax, cmap="magma", linewidth=1.4)
ax.set_title("plane z = 24 um, with the patches across it")

# %%
# A tiny 3-D network
# ------------------
# Its weights are set by hand; a real one would be loaded from a checkpoint
# (``model.load_state_dict(torch.load(...))``). The first layer averages each voxel
# with its 26 neighbours (against shot noise); the second turns that local brightness
# ``b`` into three logits so that the argmax is background below one level, nucleus
# above another and boundary in between. The levels are measured on a second,
# labeled volume.


def make_model(background: float, nucleus: float) -> nn.Module:
    """1 channel in, one logit per class out."""
    model = nn.Sequential(
        nn.Conv3d(1, 1, kernel_size=3, padding=1, padding_mode="replicate"),
        nn.Conv3d(1, len(CLASSES), kernel_size=1),
    )
    gain = 40.0
    with torch.no_grad():
        model[0].weight.fill_(1 / 27)
        model[0].bias.zero_()
        model[1].weight.copy_(torch.tensor([-gain, gain, 0.0]).reshape(3, 1, 1, 1, 1))
        model[1].bias.copy_(torch.tensor([gain * background, -gain * nucleus, 0.0]))
    return model.eval()


def calibrate(volume: xr.DataArray, truth: xr.DataArray) -> tuple[float, float]:
    """Brightness levels between the classes, measured on a labeled volume."""
    brightness = ndimage.uniform_filter(volume.values, size=3, mode="nearest")
    median = [float(np.median(brightness[truth.values == k])) for k in range(len(CLASSES))]
    return (median[0] + median[2]) / 2, (median[2] + median[1]) / 2


model = make_model(*calibrate(*make_volume(seed=1)))


def predict(batch: xr.DataArray) -> xr.DataArray:
    """A batch of patches (patch, z, y, x) -> class probabilities (patch, class, z, y, x)."""
    with torch.no_grad():
        logits = model(torch.from_numpy(batch.values)[:, None])  # add a channel dim
        probabilities = logits.softmax(dim=1).numpy()
    return xr.DataArray(
        probabilities,
        dims=(batch.dims[0], "class", *batch.dims[1:]),
        coords={"class": CLASSES},
    )


# %%
# Segment lazily, straight into a zarr store
# ------------------------------------------
# The input is dask-backed, so each output block (a zarr chunk of the store) is
# computed from the patches that touch it, reduced to labels and written by the worker
# that finishes it. ``apply`` returns the labels opened lazily from the store.

shutil.rmtree(OUTPUT, ignore_errors=True)
start = time.perf_counter()
labels = volume.patch.apply(
    predict,
    PATCH,
    step=STEP,
    weights="gaussian",
    batch_size=8,
    chunks=CHUNKS,
    on_chunk=lambda c: c.argmax("class").astype("uint8"),
    out=OUTPUT,
)
print(f"segmented in {time.perf_counter() - start:.1f} s -> {OUTPUT}")
print(f"labels: {dict(labels.sizes)}, {labels.dtype}, read lazily from the store")

# The labels keep the volume's coordinates (microns), and are good.
xr.testing.assert_identical(labels.z, volume.z)
xr.testing.assert_identical(labels.x, volume.x)
labels = labels.load()
accuracy = float((labels == truth).mean())
print(f"voxel accuracy: {accuracy:.1%}")
for k, name in enumerate(CLASSES):
    both = int(((labels == k) & (truth == k)).sum())
    either = int(((labels == k) | (truth == k)).sum())
    print(f"  IoU {name:<10} {both / max(either, 1):.2f}")
assert accuracy > 0.8, accuracy

# %%
# Input and labels, across and along the stack
# --------------------------------------------
# The side view (x, z) shows the anisotropy: one voxel is four times taller than wide.

cmap = ListedColormap(["#111111", "#e8a33d", "#5ab4e5"])
labels_style = dict(cmap=cmap, vmin=-0.5, vmax=2.5, add_colorbar=False, yincrease=False)
fig, axes = plt.subplots(2, 2, figsize=(9, 8.8), layout="constrained")
for row, where in enumerate(({"z": 24.0}, {"y": 24.0})):
    stack.sel(where).plot.imshow(ax=axes[row, 0], cmap="magma", add_colorbar=False, yincrease=False)
    labels.sel(where).plot.imshow(ax=axes[row, 1], **labels_style)
for ax in axes.flat:
    ax.set_aspect("equal")  # microns on both axes
axes[0, 0].set_title("intensity, plane z = 24 um")
axes[0, 1].set_title("labels: background, nucleus, boundary")
axes[1, 0].set_title("intensity, side view y = 24 um")
axes[1, 1].set_title(f"labels, side view (voxel accuracy {accuracy:.0%})")

"""Microscopy: a 3-D segmentation network run patch-wise, written chunk by chunk.

A synthetic fluorescence volume (z, y, x in microns) of stained nuclei is segmented
into three classes (background, nucleus, nucleus boundary) by a tiny PyTorch network
(two ``Conv3d`` layers and a softmax) whose two brightness levels are calibrated on a
second, labeled volume; any trained network takes its place unchanged.

Inference runs on overlapping patches, eight at a time (``batch_size``). The class
probabilities are blended with gaussian weights chunk by chunk (``chunks=``): as soon
as every patch touching a chunk has been added, the chunk is normalised, reduced to
labels by ``on_chunk`` (argmax over the classes, as uint8) and written to a zarr
store (``out=``). The full float32 probability volume, three times the size of the
input, is never held in memory.

Run::

    python examples/microscopy.py [labels.zarr]

The labels go to ``labels.zarr`` in the current directory unless another path is given.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from scipy import ndimage
from torch import nn

import xpatch  # noqa: F401  (registers the .patch accessor)

CLASSES = ["background", "nucleus", "boundary"]
SPACING = {"z": 1.0, "y": 0.25, "x": 0.25}  # microns per voxel
SHAPE = {"z": 48, "y": 192, "x": 192}
PATCH = {"z": 16, "y": 64, "x": 64}
STEP = {"z": 12, "y": 48, "x": 48}
CHUNKS = {"z": 48, "y": 96, "x": 96}


def make_volume(seed: int, n_nuclei: int = 24) -> tuple[xr.DataArray, xr.DataArray]:
    """A fluorescence volume and its true labels, both (z, y, x) with coordinates in microns."""
    rng = np.random.default_rng(seed)
    shape = tuple(SHAPE.values())
    coords = {d: (d, np.arange(n) * SPACING[d], {"units": "um"}) for d, n in zip(SHAPE, shape)}
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
    counts = rng.poisson(signal * 60 + 5)  # shot noise
    image = (counts / 65).astype(np.float32)
    volume = xr.DataArray(image, dims=tuple(SHAPE), coords=coords, name="intensity")
    return volume, xr.DataArray(labels, dims=tuple(SHAPE), coords=coords, name="truth")


def make_model(background: float, nucleus: float) -> nn.Module:
    """A tiny 3-D segmentation network: 1 channel in, one logit per class out.

    Its weights are set by hand here; a real one would be loaded from a checkpoint
    (``model.load_state_dict(torch.load(...))``). The first layer averages each voxel
    with its 26 neighbours (against shot noise); the second turns that local
    brightness ``b`` into three logits, ``g * (background - b)``, ``g * (b - nucleus)``
    and 0, so that the argmax is background below the ``background`` level, nucleus
    above the ``nucleus`` level and boundary in between.
    """
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


def predictor(model: nn.Module):
    """``func`` for ``apply``: a batch of patches (patch, z, y, x) -> class probabilities."""

    def predict(batch: xr.DataArray) -> xr.DataArray:
        with torch.no_grad():
            logits = model(torch.from_numpy(batch.values)[:, None])  # add a channel dim
            probabilities = logits.softmax(dim=1).numpy()
        return xr.DataArray(
            probabilities,
            dims=(batch.dims[0], "class", *batch.dims[1:]),
            coords={"class": CLASSES},
        )

    return predict


def main(path: Path) -> None:
    """Segment a volume patch-wise into a zarr store at ``path``, and check the labels."""
    torch.set_num_threads(1)  # tensors this small run fastest on one thread
    background, nucleus = calibrate(*make_volume(seed=1))
    model = make_model(background, nucleus)
    print(f"model: Conv3d(1, 1, 3) -> Conv3d(1, {len(CLASSES)}, 1) -> softmax over {CLASSES}")

    volume, truth = make_volume(seed=2)
    print(f"volume: {dict(volume.sizes)} voxels of {SPACING} um, {volume.dtype}")
    grid = volume.patch.grid(PATCH, step=STEP)
    print(f"grid: {len(grid)} patches of {PATCH}, shape {grid.shape}")

    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    labels = volume.patch.apply(
        predictor(model),
        PATCH,
        step=STEP,
        weights="gaussian",
        batch_size=8,
        chunks=CHUNKS,
        on_chunk=lambda c: c.argmax("class").astype("uint8"),
        out=path,
    )
    print(f"segmented in {time.perf_counter() - start:.1f} s -> {path}")
    print(f"labels: {dict(labels.sizes)}, {labels.dtype}, read lazily from the zarr store")

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


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("labels.zarr"))

"""
PyTorch: patches through a DataLoader, predictions blended back
===============================================================

The hand-written loop that training code and multi-GPU inference need: xpatch gives
the patches (``da.patch.dataset``, a map-style dataset that a ``DataLoader`` batches
and spreads over worker processes) and puts the predictions back together
(``da.patch.aggregator``), blended with gaussian weights and labeled with the
source's coordinates. The model could run anywhere (a GPU, another machine); the
aggregator takes its output tensors as they are.

The source is a small netCDF file written to a temporary folder and opened lazily
with xarray: each worker process reads only the patches it is asked for.

Run::

    python examples/pytorch_dataloader.py [prediction.nc]

The blended prediction is written to ``prediction.nc`` in the current directory
unless another path is given.
"""

# %%
# An image and a model
# --------------------
# A noisy three-channel image of land (bright) and water (dark), and a small fully
# convolutional network whose weights are set by hand.

import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader

import xpatch  # noqa: F401  (registers the .patch accessor)

CLASSES = ["land", "water"]


def make_image() -> tuple[xr.DataArray, np.ndarray]:
    """A three-channel 256 x 320 image with coordinates, and its water mask.

    Land is bright, water dark, and every channel is noisy.
    """
    rng = np.random.default_rng(0)
    ny, nx = 256, 320
    yy, xx = np.mgrid[:ny, :nx]
    water = np.sin(xx / 23) + np.cos(yy / 31) > 0.6
    image = np.where(water, 0.2, 0.6)[None] * np.array([0.8, 1.0, 1.2])[:, None, None]
    image = image + 0.1 * rng.standard_normal((3, ny, nx))
    da = xr.DataArray(
        image.astype(np.float32),
        dims=("channel", "y", "x"),
        coords={
            "channel": ["red", "green", "blue"],
            "y": ("y", 1000.0 + 2.0 * np.arange(ny), {"units": "m"}),
            "x": ("x", 500.0 + 2.0 * np.arange(nx), {"units": "m"}),
        },
        name="image",
    )
    return da, water


def make_model(level: float = 0.4, gain: float = 30.0) -> nn.Module:
    """A small fully convolutional network: 3 channels in, one probability per class out.

    Its weights are set by hand (a real one would be loaded from a checkpoint): a 3 x 3
    average over all channels gives each pixel's brightness ``b``; the logits are
    ``gain * (b - level)`` for land and ``gain * (level - b)`` for water.
    """
    model = nn.Sequential(
        nn.Conv2d(3, len(CLASSES), kernel_size=3, padding=1, padding_mode="replicate"),
        nn.Softmax(dim=1),
    )
    with torch.no_grad():
        box = torch.full((3, 3, 3), gain / 27)
        model[0].weight.copy_(torch.stack([box, -box]))
        model[0].bias.copy_(torch.tensor([-gain * level, gain * level]))
    return model.eval()


# %%
# Patches through a DataLoader, predictions into an aggregator
# ------------------------------------------------------------
# Everything that starts worker processes runs under ``if __name__ == "__main__":``,
# as it must where workers are spawned (macOS, Windows). The first figure shows one
# batch as the DataLoader hands it over; the second the blended result.


def main(path: Path) -> None:
    """Predict patch-wise through a DataLoader, blend, check and write to ``path``."""
    torch.set_num_threads(1)  # tensors this small run fastest on one thread
    model = make_model()
    image, water = make_image()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "image.nc"
        image.to_netcdf(source)
        da = xr.open_dataarray(source)  # lazy: nothing is read yet
        print(f"source: {dict(da.sizes)} in {source.name}, opened lazily")

        ds = da.patch.dataset(y=64, x=64, step=48)
        loader = DataLoader(ds, batch_size=8, num_workers=2)
        agg = da.patch.aggregator(y=64, x=64, step=48, output_dims=("class", "y", "x"))
        print(f"{len(ds)} patches in {len(loader)} batches of up to 8, 2 worker processes")

        first = None
        for patches, indices in loader:  # patches: (8, channel, y, x), indices: (8,)
            with torch.no_grad():
                prediction = model(patches)  # (8, class, y, x), a torch tensor
            for tensor, i in zip(prediction, indices):
                agg.add(tensor, agg.grid[int(i)])  # tensors are accepted as they are
            if first is None:
                first = patches, indices, prediction
        show_batch(*first)

        result = agg.result().assign_coords({"class": CLASSES})
        result.name = "probability"
        print(f"result: {dict(result.sizes)}, {result.dtype}")

        # Blended probabilities still sum to one and keep the source's coordinates ...
        np.testing.assert_allclose(result.sum("class"), 1, rtol=1e-5)
        xr.testing.assert_identical(result.x, da.x)
        xr.testing.assert_identical(result.y, da.y)
        # ... and match running the model on the whole image: its 3 x 3 convolution
        # sees other neighbours only at patch edges, where the gaussian weights are tiny.
        with torch.no_grad():
            whole = model(torch.from_numpy(da.values)[None])[0].numpy()
        err = float(np.abs(result.values - whole).max())
        print(f"max |patch-wise - whole-image|: {err:.1e}")
        assert err < 1e-2, err
        da.close()

    found = (result.argmax("class") == CLASSES.index("water")).values
    accuracy = float((found == water).mean())
    print(f"water found with {accuracy:.1%} pixel accuracy")
    assert accuracy > 0.9, accuracy
    result.to_netcdf(path)
    print(f"saved {path.resolve()}")

    _, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.9), layout="constrained")
    grid = image.patch.grid(y=64, x=64, step=48)
    grid.plot(image, ax=ax1, rgb=True, linewidth=1.2)
    ax1.set_title(f"input and its {len(grid)} patches")
    result.sel({"class": "water"}).plot.imshow(ax=ax2, cmap="Blues", vmin=0, vmax=1)
    ax2.set_title("blended P(water)")
    ax3.imshow(found.astype(int) - water.astype(int), cmap="coolwarm", vmin=-1, vmax=1)
    ax3.set_title(f"errors (red, blue): {1 - accuracy:.1%} of pixels")
    ax3.set_axis_off()


def show_batch(patches: torch.Tensor, indices: torch.Tensor, prediction: torch.Tensor) -> None:
    """One batch as the DataLoader gives it: the patches and the model's P(water)."""
    n = len(indices)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), layout="constrained")
    for k in range(n):
        rgb = patches[k].permute(1, 2, 0).numpy()  # (y, x, channel) for imshow
        axes[0, k].imshow(np.clip(rgb / 0.8, 0, 1))
        axes[0, k].set_title(f"window {int(indices[k])}", fontsize=10)
        axes[1, k].imshow(prediction[k, CLASSES.index("water")], cmap="Blues", vmin=0, vmax=1)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"the first batch: patches {tuple(patches.shape)}, P(water) below")


if __name__ == "__main__":  # needed where worker processes are spawned (macOS, Windows)
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("prediction.nc"))

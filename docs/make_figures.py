"""Draw the documentation's figures from code (matplotlib, Agg backend).

Every picture in the docs is made here by calling xpatch, so it shows what the
code does. ``docs/conf.py`` runs this at the start of each Sphinx build; run it by
hand to look at the figures without building the docs::

    python docs/make_figures.py [output-folder]   # default: docs/_static/figures

Figures (PNG, 100 dpi):

- ``border_modes.png``: the grid of each border mode over scikit-image's bundled
  ``camera`` picture, and the patches along x of each (3 + 3 panels, readable at
  page width).
- ``kernels.png``: the 1-D weight kernels and two of their 2-D products.
- ``blending_1d.png``: the final (normalised) weight of each patch along one axis.
- ``coverage.png``: how many patches cover each pixel, and the blending denominator.
- ``seams.png``: a patch-wise function that disagrees between patches, blended with
  mean, gaussian and hann weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import xarray as xr
from matplotlib.colors import BoundaryNorm, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from skimage import data

import xpatch

DPI = 100
OUT = Path(__file__).resolve().parent / "_static" / "figures"
BORDERS = ("squeeze", "edge", "adaptive", "crop", "pad")
# PNG metadata without the matplotlib version, so the files only change when the picture does.
METADATA = {"Software": None}


def camera() -> xr.DataArray:
    """The bundled 512 x 512 ``camera`` picture as a (y, x) DataArray in [0, 1]."""
    image = data.camera().astype(np.float32) / 255
    ny, nx = image.shape
    return xr.DataArray(
        image, dims=("y", "x"), coords={"y": np.arange(ny), "x": np.arange(nx)}, name="camera"
    )


def _save(fig: Figure, out: Path, name: str) -> Path:
    path = out / name
    fig.savefig(path, dpi=DPI, metadata=METADATA)
    return path


def border_modes(out: Path) -> Path:
    """The grid of each border mode over the camera picture (patch 180, step 150).

    Laid out 3 + 3 so that it stays readable at page width: one panel per mode (every
    window over the image), and a last panel with the patches along x of every mode,
    one bar each, so starts, sizes and overlaps can be read off.
    """
    da = camera()
    size, step = 180, 150
    n = da.sizes["x"]
    fig = Figure(figsize=(10, 7.4), layout="constrained")
    axes = fig.subplots(2, 3).flat
    image_extent = (-0.5, n - 0.5, n - 0.5, -0.5)
    grids = {}
    for ax, border in zip(axes, BORDERS):
        pad_mode = "reflect" if border == "pad" else None
        grid = grids[border] = da.patch.grid(
            y=size, x=size, step=step, border=border, pad_mode=pad_mode
        )
        if border == "pad":
            # Show the virtual padding (reflect) around the image, and the image's outline.
            (b_y, a_y), (b_x, a_x) = grid.pad_width["y"], grid.pad_width["x"]
            padded = np.pad(da.values, ((b_y, a_y), (b_x, a_x)), mode="reflect")
            extent = (-b_x - 0.5, n + a_x - 0.5, n + a_y - 0.5, -b_y - 0.5)
            ax.imshow(padded, cmap="gray", extent=extent, alpha=0.45)
            ax.imshow(da.values, cmap="gray", extent=image_extent)
            ax.add_patch(Rectangle((-0.5, -0.5), n, n, fill=False, ls="--", ec="white", lw=2))
            grid.plot(ax=ax, linewidth=2)
        else:
            grid.plot(da.values, ax=ax, linewidth=2)
        if border == "crop":
            # Elements no patch covers get fill_value (NaN) in the aggregated output.
            cov = grid.coverage()
            covered = np.multiply.outer(cov["y"], cov["x"]) > 0
            shade = np.ma.masked_where(covered, np.ones(covered.shape))
            ax.imshow(shade, cmap="autumn", alpha=0.6, extent=image_extent)
        ax.set_title(f'border="{border}": {len(grid)} patches', fontsize=13)
        ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)
    bars = fig.axes[-1]  # the sixth panel
    for row, grid in enumerate(grids.values()):
        for k, (start, length) in enumerate(zip(grid.starts["x"], grid.sizes["x"])):
            bars.barh(
                row + 0.22 * (k % 2) - 0.11,
                length,
                left=start - 0.5,
                height=0.2,
                color=f"C{k}",
                alpha=0.9,
            )
    for edge in (-0.5, n - 0.5):
        bars.axvline(edge, color="k", ls="--", lw=1)
    bars.set_yticks(range(len(BORDERS)), [f'"{b}"' for b in BORDERS], fontsize=12)
    bars.set_ylim(len(BORDERS) - 0.5, -0.5)
    bars.set_xlabel("x (pixels); dashed: the image's edges", fontsize=11)
    bars.set_title("the patches along x", fontsize=13)
    return _save(fig, out, "border_modes.png")


def kernels(out: Path) -> Path:
    """The 1-D kernels of a 64-element patch, and the 2-D gaussian and hann kernels."""
    n = 64
    fig = Figure(figsize=(13, 3.7), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=(1.6, 1, 1))
    one_d: dict[str, xpatch.weights.Kernel] = {
        '"mean"': xpatch.weights.mean(),
        '"gaussian" (sigma=1/8)': xpatch.weights.gaussian(),
        "gaussian(sigma=0.25)": xpatch.weights.gaussian(sigma=0.25),
        '"hann"': xpatch.weights.hann(),
    }
    for label, kernel in one_d.items():
        ax1.plot(np.arange(n), kernel.factor(n), label=label, lw=2)
    ax1.set_xlabel("element of a 64-element patch")
    ax1.set_ylabel("weight")
    ax1.set_title("1-D kernels: kernel.factor(64)")
    ax1.legend(fontsize=9, loc="center right")
    for ax, name in ((ax2, "gaussian"), (ax3, "hann")):
        kernel = xpatch.weights.resolve(name, ("y", "x"))
        image = ax.imshow(kernel({"y": n, "x": n}), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f'2-D "{name}" (product of 1-D factors)')
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    fig.colorbar(image, ax=[ax2, ax3], shrink=0.85, label="weight")
    return _save(fig, out, "kernels.png")


def _final_weights(length: int, size: int, step: int, name: str) -> list[np.ndarray]:
    """Each patch's weight along one axis after separable normalisation (full length)."""
    grid = xpatch.PatchGrid({"x": length}, {"x": size}, step=step)
    kernel = xpatch.weights.resolve(name, ("x",))
    starts = grid.starts["x"]
    denom = np.zeros(length)
    for s in starts:
        denom[s : s + size] += kernel.factor(size)
    curves = []
    for s in starts:
        w = np.full(length, np.nan)
        w[s : s + size] = kernel.factor(size) / denom[s : s + size]
        curves.append(w)
    return curves


def blending_1d(out: Path) -> Path:
    """Normalised weights of every patch along an axis of 200 (patch 64, step 40)."""
    length, size, step = 200, 64, 40
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, name in zip(axes, ("mean", "gaussian", "hann")):
        curves = _final_weights(length, size, step, name)
        for i, w in enumerate(curves):
            ax.plot(w, lw=2, color=f"C{i}")
        ax.plot(np.nansum(curves, axis=0), "k--", lw=1.2, label="sum")
        ax.set_title(f'weights="{name}"')
        ax.set_xlabel("element")
        ax.set_ylim(0, 1.1)
    axes[0].set_ylabel("final weight")
    axes[0].legend(loc="lower left", fontsize=9)
    fig.suptitle(
        f"Normalised per-patch weights along one axis: length {length}, patch {size}, step {step}",
        fontsize=12,
    )
    return _save(fig, out, "blending_1d.png")


def coverage(out: Path) -> Path:
    """Patches per pixel (edge border) and the gaussian blending denominator."""
    da = camera()
    size, step = 180, 150
    grid = da.patch.grid(y=size, x=size, step=step, border="edge")
    cov = grid.coverage()
    count = np.multiply.outer(cov["y"], cov["x"])
    kernel = xpatch.weights.gaussian()
    denom = {}
    for dim in grid.dims:
        d = np.zeros(grid.lengths[dim])
        for s in grid.starts[dim]:
            d[s : s + size] += kernel.factor(size)
        denom[dim] = d
    wsum = np.multiply.outer(denom["y"], denom["x"])

    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    values = np.unique(count)  # products of per-axis counts: 1, 2, 4 here
    bounds = np.concatenate([[values[0] - 0.5], (values[1:] + values[:-1]) / 2, [values[-1] + 0.5]])
    cmap = matplotlib.colormaps["viridis"].resampled(len(values))
    image = ax1.imshow(count, cmap=cmap, norm=BoundaryNorm(bounds, cmap.N))
    grid.plot(ax=ax1, edgecolor="white", linewidth=0.8, alpha=0.6)
    fig.colorbar(image, ax=ax1, ticks=values, label="patches")
    ax1.set_title('grid.coverage(): patches per pixel (border="edge")')
    image = ax2.imshow(wsum, cmap="magma", norm=LogNorm(vmin=wsum.min(), vmax=wsum.max()))
    fig.colorbar(image, ax=ax2, label="sum of raw weights (log scale)")
    ax2.set_title('blending denominator: sum of raw "gaussian" weights')
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, out, "coverage.png")


def disagreeing(offset: float = 0.15) -> Callable[[xr.DataArray], xr.DataArray]:
    """A patch-wise function whose patches disagree: it adds a random offset per patch."""

    def func(patch: xr.DataArray) -> xr.DataArray:
        seed = int(patch.y[0]) * 10_000 + int(patch.x[0])  # one fixed offset per window
        return patch + np.random.default_rng(seed).uniform(-offset, offset)

    return func


def seams(out: Path) -> Path:
    """The same disagreeing function blended with mean, gaussian and hann weights."""
    da = camera()
    func = disagreeing()
    fig = Figure(figsize=(13, 8.6), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True, sharey=True)
    for col, name in enumerate(("mean", "gaussian", "hann")):
        result = da.patch.apply(func, y=128, x=128, step=64, weights=name)
        axes[0, col].imshow(result.values, cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f'weights="{name}"')
        diff = axes[1, col].imshow((result - da).values, cmap="RdBu_r", vmin=-0.15, vmax=0.15)
        axes[1, col].set_title("result - input (the per-patch offsets)")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(diff, ax=axes[1, :], shrink=0.8, label="offset")
    fig.suptitle(
        "patch + a random offset per patch; patches of 128, step 64 (half overlap)", fontsize=13
    )
    return _save(fig, out, "seams.png")


FIGURES = (border_modes, kernels, blending_1d, coverage, seams)


def main(out: Path | str = OUT) -> list[Path]:
    """Draw every figure into ``out`` and return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [figure(out) for figure in FIGURES]


if __name__ == "__main__":
    for path in main(sys.argv[1] if len(sys.argv) > 1 else OUT):
        print(path)

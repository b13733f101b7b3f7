"""Drawing a 2-D grid over an image: :meth:`xpatch.grid.PatchGrid.plot`.

numpy only at import time; matplotlib is imported when a grid is drawn. A labeled
image (an xarray DataArray) is recognised by its ``dims`` and ``coords`` attributes,
so this module imports no xarray and stays a pure planning module.

A labeled image is drawn in its coordinates: every pixel spans from the midpoint to
its neighbours' coordinates, and the first and last pixel (and any virtual padding
of ``border="pad"``) extend the spacing at that end, so a window's rectangle covers
exactly the pixels the window selects.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from xpatch.errors import DimensionError, GridError

__all__ = ["plot_grid"]

# Percentiles an RGB composite is stretched between (all channels together).
STRETCH = (2.0, 98.0)


def _edges(centres: np.ndarray, before: int, after: int) -> np.ndarray:
    """Pixel edges (one more than centres) plus ``before``/``after`` extrapolated pixels."""
    c = np.asarray(centres, dtype=float)
    first = c[1] - c[0] if c.size > 1 else 1.0
    last = c[-1] - c[-2] if c.size > 1 else 1.0
    mid = (c[1:] + c[:-1]) / 2
    head = c[0] - first / 2 - first * np.arange(before, 0, -1)
    tail = c[-1] + last / 2 + last * np.arange(after + 1)
    return np.concatenate([head, [c[0] - first / 2], mid, tail])


def _is_labeled(image: Any) -> bool:
    return hasattr(image, "dims") and hasattr(image, "coords") and hasattr(image, "sizes")


def _label(image: Any, dim: Hashable) -> str:
    """Axis label: the dim's name and the units of its coordinate, if any."""
    units = image.coords[dim].attrs.get("units") if dim in image.coords else None
    return f"{dim} [{units}]" if units else str(dim)


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """(y, x, 3) scaled to [0, 1] between the 2nd and 98th percentiles of all three
    channels together (one stretch keeps the colour balance)."""
    values = rgb.astype(float)
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, STRETCH) if finite.size else (0.0, 1.0)
    return np.nan_to_num(np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0, 1))


def _select(image: Any, grid: Any, band: Any, rgb: Any) -> tuple[np.ndarray, bool]:
    """The picture to show from a labeled image: (values in grid-dim order, is_rgb)."""
    if hasattr(image, "data_vars"):
        raise TypeError(
            "image: a Dataset cannot be drawn; pass one of its variables, e.g. "
            "grid.plot(ds['red']), or several bands stacked with ds.to_dataarray('band')"
        )
    missing = [d for d in grid.dims if d not in image.dims]
    if missing:
        raise DimensionError(
            f"image: dims {missing} of the grid are not among the image's dims {tuple(image.dims)}"
        )
    for d in grid.dims:
        if image.sizes[d] != grid.lengths[d]:
            raise GridError(
                f"image: dim {d!r} has length {image.sizes[d]}, the grid's {grid.lengths[d]}; "
                "draw the grid over the array it was made for"
            )
    other = [d for d in image.dims if d not in grid.dims]
    if band is not None or rgb is not None:
        if len(other) != 1:
            raise DimensionError(
                f"image: band= and rgb= pick along the one non-spatial dim, but the image has "
                f"{len(other)}: {other}; select the others first, e.g. image.isel(time=0)"
            )
        (dim,) = other
        if band is not None and rgb is not None:
            raise TypeError("image: give band= (one band) or rgb= (three bands), not both")
        if band is not None:
            if band not in image.indexes.get(dim, ()):
                labels = list(image.indexes[dim]) if dim in image.indexes else []
                raise DimensionError(
                    f"band: {band!r} is not a label of dim {dim!r}; its labels are {labels}"
                )
            image = image.sel({dim: band})
        else:
            if rgb is True:
                if image.sizes[dim] != 3:
                    raise DimensionError(
                        f"rgb: dim {dim!r} has {image.sizes[dim]} entries, not 3; name the "
                        f"three to show, e.g. rgb=['red', 'green', 'blue']"
                    )
            else:
                labels = list(rgb) if not isinstance(rgb, str) else [rgb]
                if len(labels) != 3:
                    raise DimensionError(
                        f"rgb: {rgb!r} names {len(labels)} labels of dim {dim!r}; give three "
                        "(red, green, blue) or rgb=True for a dim of length 3"
                    )
                known = set(image.indexes[dim]) if dim in image.indexes else set()
                unknown = [label for label in labels if label not in known]
                if unknown:
                    raise DimensionError(
                        f"rgb: {unknown} are not labels of dim {dim!r}; "
                        f"its labels are {sorted(known, key=str)}"
                    )
                image = image.sel({dim: labels})
            values = np.asarray(image.transpose(*grid.dims, dim).values)
            return _stretch(values), True
    elif other:
        raise DimensionError(
            f"image: the image has non-spatial dims {other}; choose one band with "
            "band=<label> or three with rgb=[...], or select them first (image.isel(...))"
        )
    return np.asarray(image.transpose(*grid.dims).values), False


def plot_grid(
    grid: Any,
    image: Any = None,
    ax: Any = None,
    *,
    band: Any = None,
    rgb: bool | Sequence[Any] | None = None,
    cmap: str = "gray",
    **kwargs: Any,
) -> Any:
    """Draw ``grid``'s windows over ``image``; see :meth:`xpatch.grid.PatchGrid.plot`."""
    if len(grid.dims) != 2:
        raise GridError(
            f"grid.plot draws 2-D grids only; this one has dims {grid.dims}: "
            "draw a 2-D slice's grid, e.g. volume.isel(z=0).patch.grid(...)"
        )
    if ax is not None and not hasattr(ax, "add_patch"):
        raise TypeError(f"ax must be a matplotlib Axes, not {type(ax).__name__}")
    try:
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("PatchGrid.plot needs matplotlib: pip install matplotlib") from err

    dy, dx = grid.dims
    (pad_y0, pad_y1), (pad_x0, pad_x1) = (a.pad_width for a in grid.axes)
    labeled = image is not None and _is_labeled(image)
    if labeled and all(
        d in image.coords
        and image.coords[d].ndim == 1
        and np.issubdtype(image.coords[d].dtype, np.number)
        for d in grid.dims
    ):
        # pixel edges in the image's coordinates, the virtual padding included
        ey = _edges(image.coords[dy].values, pad_y0, pad_y1)
        ex = _edges(image.coords[dx].values, pad_x0, pad_x1)
    else:
        ey = np.arange(-pad_y0, grid.lengths[dy] + pad_y1 + 1) - 0.5
        ex = np.arange(-pad_x0, grid.lengths[dx] + pad_x1 + 1) - 0.5
    if band is not None or rgb is not None:
        if not labeled:
            raise TypeError(
                "band= and rgb= need a labeled image (an xarray DataArray) to pick bands from"
            )

    if ax is None:
        _, ax = plt.subplots()
    if image is not None:
        if labeled:
            values, is_rgb = _select(image, grid, band, rgb)
        else:
            values = np.asarray(image)
            is_rgb = values.ndim == 3 and values.shape[-1] in (3, 4)
            if values.shape[:2] != (grid.lengths[dy], grid.lengths[dx]) or values.ndim not in (
                2,
                3,
            ):
                raise GridError(
                    f"image: shape {values.shape} does not match the grid's lengths "
                    f"{dict(grid.lengths)}; pass a 2-D image (or (y, x, 3) RGB) of that size"
                )
        iy = slice(pad_y0, pad_y0 + grid.lengths[dy] + 1)
        ix = slice(pad_x0, pad_x0 + grid.lengths[dx] + 1)
        inner_y, inner_x = ey[iy], ex[ix]
        uniform = all(np.allclose(np.diff(e), np.diff(e)[0], rtol=1e-6) for e in (inner_y, inner_x))
        if uniform:
            ax.imshow(
                values,
                cmap=None if is_rgb else cmap,
                extent=(inner_x[0], inner_x[-1], inner_y[-1], inner_y[0]),
                origin="upper",
                interpolation="nearest",
            )
        else:
            ax.pcolormesh(inner_x, inner_y, values, cmap=None if is_rgb else cmap)

    style = {"fill": False, "linewidth": 1.0, "alpha": 0.8} | kwargs
    edgecolor = style.pop("edgecolor", None)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for w in grid:
        ys, xs = w.slices
        y0, y1 = ey[ys.start + pad_y0], ey[ys.stop + pad_y0]
        x0, x1 = ex[xs.start + pad_x0], ex[xs.stop + pad_x0]
        color = edgecolor or colors[w.index % len(colors)]
        if grid.kept is not None and not grid.kept[w.index]:  # skipped by a mask: faint
            skipped = style | {"linestyle": ":", "alpha": 0.35, "linewidth": 0.8}
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, edgecolor="0.5", **skipped))
            continue
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, edgecolor=color, **style))
    ax.set_xlim(ex[0], ex[-1])
    ax.set_ylim(ey[-1], ey[0])  # the first row on top, as images are shown
    if labeled:
        ax.set_xlabel(_label(image, dx))
        ax.set_ylabel(_label(image, dy))
    return ax

"""Which windows a boolean mask keeps (``apply(..., mask=)``).

A window is kept if the mask holds a True anywhere over its region. The mask is a
boolean DataArray over some or all of the spatial dims, at any resolution: it is
aligned to the source by coordinates (a coarse land/sea or tissue mask), else by
position when it has the source's length along a dim. Along each spatial dim a
window covers the cells of its elements, ``[first cell's lower edge, last cell's
upper edge]`` (cell edges halfway between coordinate values); it sees every mask cell
that overlaps that extent. The mask is read once, whole (it is small next to the
source), and each window's verdict comes from an N-D prefix sum of the mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable

import numpy as np
import xarray as xr

from xpatch.errors import DimensionError
from xpatch.grid import PatchGrid

__all__ = ["kept_by_mask"]


def _edges(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper cell edges of ascending coordinate values."""
    v = values.astype(np.float64)
    if len(v) == 1:
        return np.array([-np.inf]), np.array([np.inf])
    mid = (v[1:] + v[:-1]) / 2
    lo = np.concatenate([[v[0] - (mid[0] - v[0])], mid])
    hi = np.concatenate([mid, [v[-1] + (v[-1] - mid[-1])]])
    return lo, hi


def _numeric_1d(obj: xr.DataArray | xr.Dataset, dim: Hashable) -> np.ndarray | None:
    if dim not in obj.coords or obj[dim].dims != (dim,):
        return None
    values = np.asarray(obj[dim].values)
    return values if values.dtype.kind in "iuf" else None


def _axis_ranges(
    obj: xr.DataArray | xr.Dataset, mask: xr.DataArray, grid: PatchGrid, i: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per window position along grid axis ``i``: the range [lo, hi) of mask cells it
    sees; and whether the mask runs the other way along this dim (then flipped)."""
    ax = grid.axes[i]
    d = ax.dim
    a = np.clip(ax.starts, 0, ax.length)
    b = np.clip(ax.stops, 0, ax.length)
    src = _numeric_1d(obj, d)
    msk = _numeric_1d(mask, d)
    n = mask.sizes[d]
    if src is not None and msk is not None:
        flip = len(msk) > 1 and msk[0] > msk[-1]
        msk = msk[::-1] if flip else msk
        if not np.all(np.diff(msk) > 0):  # (NaN too)
            raise DimensionError(
                f"mask coordinate {d!r} is not strictly monotonic: it cannot be aligned; sort"
                f" it and drop repeated values first (mask.sortby({d!r}))"
            )
        order = src if len(src) < 2 or src[0] < src[-1] else src[::-1]
        if not np.all(np.diff(order) > 0):
            raise DimensionError(
                f"the array's coordinate {d!r} is not strictly monotonic: a mask cannot be"
                f" aligned to it by coordinates; sort the array first (obj.sortby({d!r})),"
                " or give a mask without coordinates and of the array's length (aligned by"
                " position)"
            )
        lo_s, hi_s = _edges(order)
        if order is not src:  # back to the source's index order
            lo_s, hi_s = lo_s[::-1], hi_s[::-1]
        m_lo, m_hi = _edges(msk)
        empty = b <= a
        bb = np.maximum(b - 1, a)
        ends = np.stack(
            [
                lo_s[np.minimum(a, len(src) - 1)],
                hi_s[np.minimum(a, len(src) - 1)],
                lo_s[np.minimum(bb, len(src) - 1)],
                hi_s[np.minimum(bb, len(src) - 1)],
            ]
        )
        w_lo, w_hi = ends.min(axis=0), ends.max(axis=0)
        first = np.searchsorted(m_hi, w_lo, side="right")
        last = np.searchsorted(m_lo, w_hi, side="left")
        last = np.where(empty, first, np.maximum(last, first))
        return first, last, flip
    if n == ax.length:
        return a, b, False
    raise DimensionError(
        f"mask has {n} elements along dim {d!r} and the array {ax.length}, and they do not"
        f" both have numeric coordinates along {d!r} to align by: give the mask coordinates"
        " (at any resolution) or the array's length"
    )


def kept_by_mask(obj: xr.DataArray | xr.Dataset, grid: PatchGrid, mask: xr.DataArray) -> np.ndarray:
    """Per window of ``grid``: does ``mask`` hold a True over its region?

    Examples
    --------
    >>> import xpatch
    >>> da = xr.DataArray(np.zeros((8, 8)), dims=("y", "x"),
    ...                   coords={"y": np.arange(8.0), "x": np.arange(8.0)})
    >>> coarse = xr.DataArray([[True, False], [False, False]], dims=("y", "x"),
    ...                       coords={"y": [1.5, 5.5], "x": [1.5, 5.5]})
    >>> kept_by_mask(da, da.patch.grid(y=4, x=4), coarse).tolist()
    [True, False, False, False]
    """
    if callable(mask) and not isinstance(mask, xr.DataArray):
        raise TypeError(
            "a grid's mask must be a boolean DataArray: a predicate is asked per patch while"
            " func runs, so give it to apply(..., mask=predicate)"
        )
    if not isinstance(mask, xr.DataArray):
        raise TypeError(
            f"mask must be a boolean DataArray over the spatial dims or a callable, got"
            f" {type(mask).__name__}"
        )
    extra = [d for d in mask.dims if d not in grid.dims]
    if extra:
        raise DimensionError(
            f"mask has dims {extra} that are not spatial dims {grid.dims}: a mask covers the"
            " spatial dims only (reduce it first, e.g. mask.any('band'))"
        )
    if mask.dtype != bool:
        raise DimensionError(
            f"mask must be boolean, got dtype {mask.dtype}: compare it first (e.g. mask > 0)"
        )
    values = np.asarray(mask.transpose(*[d for d in grid.dims if d in mask.dims]).values)
    firsts, lasts = [], []
    for i, d in enumerate(grid.dims):
        if d not in mask.dims:
            continue
        lo, hi, flip = _axis_ranges(obj, mask, grid, i)
        if flip:
            values = np.flip(values, axis=len(firsts))
        firsts.append(lo)
        lasts.append(hi)
    # N-D prefix sums: the number of Trues in any box by inclusion-exclusion
    total = np.pad(values.astype(np.int64), [(1, 0)] * values.ndim)
    for axis in range(values.ndim):
        total = np.cumsum(total, axis=axis)
    lo = np.meshgrid(*firsts, indexing="ij")
    hi = np.meshgrid(*lasts, indexing="ij")
    count = np.zeros(lo[0].shape if lo else (), dtype=np.int64)
    for corner in itertools.product((0, 1), repeat=values.ndim):
        index = tuple(h if c else low for c, low, h in zip(corner, lo, hi))
        count += (-1) ** (values.ndim - sum(corner)) * total[index]
    kept = count > 0
    # broadcast along the spatial dims the mask does not have
    shape = [len(ax.starts) if d in mask.dims else 1 for d, ax in zip(grid.dims, grid.axes)]
    kept = kept.reshape(shape)
    return np.broadcast_to(kept, grid.shape_tuple).reshape(-1).copy()

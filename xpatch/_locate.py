"""Locating a labeled result in the grid by its spatial coordinates.

``agg.add(result)`` without a window finds the window whose start has the
result's first coordinate value along every spatial dim.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from xpatch._structure import padded_coordinate
from xpatch.errors import AggregationError
from xpatch.grid import PatchGrid, Window

__all__ = ["Locator", "check_window"]


class Locator:
    """Finds the window of a result from the coordinate values at the window starts.

    Parameters
    ----------
    template : DataArray or Dataset
        The source: its spatial coordinates (extrapolated under the pad border).
    grid : PatchGrid
        The windows.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xpatch
    >>> da = xr.DataArray(np.zeros(8), dims="x", coords={"x": np.arange(8) * 10})
    >>> grid = da.patch.grid(x=4, step=2)
    >>> Locator(da, grid)(da.isel(x=slice(2, 6))).index
    1
    """

    def __init__(self, template: xr.DataArray | xr.Dataset, grid: PatchGrid) -> None:
        self.grid = grid
        self.starts: dict[Hashable, np.ndarray | None] = {}
        for ax in grid.axes:
            if ax.dim not in template.coords:
                self.starts[ax.dim] = None
                continue
            before, after = ax.pad_width
            coord = padded_coordinate(template[ax.dim].values, before, after)
            self.starts[ax.dim] = coord[ax.starts + before]

    def __call__(self, result: Any) -> Window:
        dims = self.grid.dims
        if not isinstance(result, (xr.DataArray, xr.Dataset)):
            raise AggregationError(
                "add(result) without a window needs a DataArray or Dataset result with the"
                f" spatial coords {dims}; got {type(result).__name__}: pass the window"
            )
        starts = {}
        for d, coords in self.starts.items():
            if coords is None or d not in result.coords or result.sizes.get(d, 0) == 0:
                raise AggregationError(
                    f"cannot locate the result: dim {d!r} has no coordinate to match;"
                    " pass the window"
                )
            value = result[d].values[0]
            hits = np.flatnonzero(coords == value)
            if not len(hits) and coords.dtype.kind == "f":
                hits = np.flatnonzero(np.isclose(coords, value, rtol=1e-9, atol=0))
            if not len(hits):
                raise AggregationError(
                    f"cannot locate the result: its coordinate {d}={value!r} is not the start of"
                    " any window of the grid"
                )
            if len(hits) > 1:
                raise AggregationError(
                    f"cannot locate the result: its coordinate {d}={value!r} starts"
                    f" {len(hits)} windows (the coordinate is not unique); pass the window"
                )
            starts[d] = int(self.grid.axes[dims.index(d)].starts[hits[0]])
        window = self.grid.locate(starts)
        if window is None:  # pragma: no cover - starts come from the grid
            raise AggregationError(f"no window starts at {starts}")
        return window


def check_window(grid: PatchGrid, window: Any) -> Window:
    """``window`` as this grid's own window, or a clear error.

    Examples
    --------
    >>> grid = PatchGrid({"x": 8}, {"x": 4})
    >>> check_window(grid, grid[1]) == grid[1]
    True
    """
    if not isinstance(window, Window):
        raise TypeError(f"window must be a Window from the grid, got {type(window).__name__}")
    if grid.owns(window):
        return window
    if not 0 <= window.index < len(grid) or grid[window.index] != window:
        raise AggregationError(f"{window!r} is not a window of this grid")
    return grid[window.index]

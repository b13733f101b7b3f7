"""Locating a labeled result in the grid by its spatial coordinates.

``agg.add(result)`` without a window finds the window whose start has the
result's first coordinate value along every spatial dim.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from xpatch._internals import index_values, indexes_of
from xpatch._structure import padded_coordinate
from xpatch.errors import AggregationError, ResultError
from xpatch.grid import PatchGrid, Window

__all__ = ["LabelCheck", "Locator", "align", "check_window", "compare"]


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


class LabelCheck:
    """Aligns a labeled result to its window by its labels, or refuses it.

    A result placed by position must mean what its labels say. Along a spatial dim,
    a result's index must hold the window's own labels: in the same order (accepted),
    in another order (put back in the window's order), or other labels (refused, with
    the window, the dim and both labels in the message). Along a non-spatial dim
    (classes, bands), every result's labels must be the first result's, in any order.
    A result without labels along a dim is placed by position.

    Each index object found equal is remembered per window position (spatial) or
    dim, so the results of a model that keeps its patch's labels (``p * 2``) cost
    one identity test per dim.

    Parameters
    ----------
    template : DataArray or Dataset
        The source, for the labels of each window.
    grid : PatchGrid
        The windows.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xpatch
    >>> da = xr.DataArray(np.arange(6.0), dims="x", coords={"x": np.arange(6) * 10})
    >>> grid = da.patch.grid(x=3)
    >>> check = LabelCheck(da, grid)
    >>> check(da.isel(x=slice(0, 3))[::-1], grid[0]).x.values  # put back in order
    array([ 0, 10, 20])
    >>> check(da.isel(x=slice(3, 6)), grid[0])
    Traceback (most recent call last):
    ...
    xpatch.errors.ResultError: the result for <Window 0: x=0:3> has labels [30 40 50] ...
    """

    def __init__(self, template: xr.DataArray | xr.Dataset, grid: PatchGrid) -> None:
        self.dims = grid.dims
        self.axes = grid.axes
        self.coords: list[np.ndarray | None] = []
        for ax in grid.axes:
            if ax.dim in template.coords and ax.dim in template.xindexes:
                before, after = ax.pad_width
                self.coords.append(padded_coordinate(template[ax.dim].values, before, after))
            else:
                self.coords.append(None)
        self.before = [ax.pad_width[0] for ax in grid.axes]
        self.seen: list[dict[int, Any]] = [{} for _ in grid.axes]
        self.others: dict[Hashable, tuple[Any, np.ndarray]] | None = None

    def __call__(
        self, result: Any, window: Window | None, what: Any = None, batch_dim: Any = None
    ) -> Any:
        """``result`` aligned to ``window`` (None: a batch stacked along ``batch_dim``,
        checked along its other non-spatial dims)."""
        indexes = indexes_of(result)
        fix: dict[Hashable, np.ndarray] = {}
        what = what if what is not None else f"the result for {window!r}"
        if window is not None:
            for i, d in enumerate(self.dims):
                index = indexes.get(d)
                if index is None or self.coords[i] is None:
                    continue
                p = window.position[i]
                if self.seen[i].get(p) is index:
                    continue
                s = window.slices[i]
                expected = self.coords[i][s.start + self.before[i] : s.stop + self.before[i]]  # type: ignore[index]
                if compare(index, expected, d, what, fix):
                    self.seen[i][p] = index
        if self.others is None:
            self.others = {
                d: (index, index_values(index))
                for d, index in indexes.items()
                if d not in self.dims and d in result.dims and d != batch_dim
            }
        else:
            for d, (first, expected) in self.others.items():
                index = indexes.get(d)
                if index is None or index is first:
                    continue
                if compare(index, expected, d, what, fix, across="earlier results have"):
                    self.others[d] = (index, expected)
        return result.sel(fix) if fix else result


def align(result: Any, expected: Mapping[Hashable, np.ndarray], what: Any) -> Any:
    """``result`` with its labels along each dim of ``expected`` put in that order, or
    a :class:`~xpatch.errors.ResultError` (see :func:`compare`)."""
    indexes = indexes_of(result)
    fix: dict[Hashable, np.ndarray] = {}
    for d, values in expected.items():
        index = indexes.get(d)
        if index is not None:
            compare(index, values, d, what, fix)
    return result.sel(fix) if fix else result


def compare(
    index: Any,
    expected: np.ndarray,
    dim: Hashable,
    what: Any,
    fix: dict[Hashable, np.ndarray],
    across: str = "the window has",
) -> bool:
    """True if ``index`` holds ``expected`` in order; else note in ``fix`` the order to
    select (the same labels in another order) or raise (other labels). A length that
    differs is left to the shape checks (False, nothing noted)."""
    values = index_values(index)
    if values.shape != expected.shape:
        return False  # another length: the shape checks that follow say so
    if np.array_equal(values, expected):
        return True
    if len(np.unique(values)) == len(values) and np.array_equal(np.sort(values), np.sort(expected)):
        fix[dim] = expected
        return False
    advice = (
        "return the patch's own coordinates (or none)"
        if across == "the window has"
        else "every result must have these labels (in any order)"
    )
    raise ResultError(
        f"{what} has labels {_short(values)} along dim {dim!r}, {across} {_short(expected)};"
        f" {advice}"
    )


def _short(values: np.ndarray) -> str:
    return np.array2string(values, threshold=6, edgeitems=3, max_line_width=10_000)

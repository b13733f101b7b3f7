"""Instance stitching, window by window: :class:`InstanceAggregator` and its eager run.

See :mod:`xpatch.instances` for the rules; the numerics are in
:mod:`xpatch._instances`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import xarray as xr

from xpatch._apply import _call, _progress
from xpatch._dtypes import DEFAULT
from xpatch._instances import (
    Cores,
    Equivalence,
    Piece,
    keep,
    pieces_of,
    relabel,
    stitch_chunk,
)
from xpatch._locate import LabelCheck, Locator, check_window
from xpatch._sampling import Sampler
from xpatch._structure import source_name
from xpatch.errors import AggregationError, DimensionError, IncompleteError, ResultError
from xpatch.grid import PatchGrid, Window
from xpatch.layout import ChunkLayout

__all__ = ["InstanceAggregator", "check_options", "labels_of"]

MERGES = ("instances",)


def check_options(
    merge: Any,
    iou: Any,
    *,
    batch_size: Any = None,
    on_chunk: Any = None,
    fill_value: Any = DEFAULT,
    output_dims: Any = None,
    halo: Any = None,
    scale: Any = None,
    keep: Any = None,
) -> float:
    """Refuse what ``merge="instances"`` cannot honour, before ``func`` is first called;
    return ``iou`` as a float.

    Examples
    --------
    >>> check_options("instances", 0.5)
    0.5
    >>> check_options("instance", 0.5)
    Traceback (most recent call last):
    ...
    xpatch.errors.ResultError: merge='instance' is not known: use merge='instances' ...
    """
    if merge not in MERGES:
        raise ResultError(
            f"merge={merge!r} is not known: use merge='instances' to stitch instance labels"
            " (integer ids per patch, 0 background), or leave merge out to blend with weights"
        )
    if isinstance(iou, bool) or not isinstance(iou, numbers.Real) or not 0 < iou <= 1:
        raise (TypeError if not isinstance(iou, numbers.Real) else ResultError)(
            f"iou must be a number in (0, 1], got {iou!r}: objects of two overlapping patches"
            " are one object when their IoU over the shared region reaches it (default 0.5)"
        )
    refused = {
        "batch_size": batch_size is not None,
        "on_chunk": on_chunk is not None,
        "fill_value": fill_value is not DEFAULT,
        "output_dims": output_dims is not None,
        "halo": halo is not None,
        "scale": scale is not None,
        "a callable mask": keep is not None,
    }
    for name, given in refused.items():
        if given:
            raise ResultError(
                f"{name} is not used with merge='instances': the result is one integer label"
                f" image over the spatial dims (0 where no object or no patch); leave {name}"
                " out (post-process the returned labels instead)"
            )
    return float(iou)


def labels_of(result: Any, window: Window, check: LabelCheck | None = None) -> np.ndarray:
    """``func``'s result for ``window`` as a numpy label image in the grid's dim order.

    A DataArray must have exactly the spatial dims (any order); a bare array the
    window's shape. Labels must be non-negative integers. With ``check`` (the
    source's :class:`~xpatch._locate.LabelCheck`), a DataArray's coordinates along
    the spatial dims must be the window's (in any order: they are put back in order).

    Examples
    --------
    >>> from xpatch.grid import PatchGrid
    >>> w = PatchGrid({"y": 4, "x": 4}, {"y": 2, "x": 2})[0]
    >>> labels_of(np.array([[0, 1], [1, 1]]), w).tolist()
    [[0, 1], [1, 1]]
    >>> labels_of(xr.DataArray(np.zeros((3, 2, 2), int), dims=("c", "y", "x")), w)
    Traceback (most recent call last):
    ...
    xpatch.errors.DimensionError: merge='instances': the result for <Window ...> has the ...
    """
    dims = window.dims
    if isinstance(result, xr.Dataset):
        raise ResultError(
            f"merge='instances': the result for {window!r} is a Dataset; return one label"
            " image (a DataArray or array over the spatial dims)"
        )
    if isinstance(result, xr.DataArray):
        extra = [d for d in result.dims if d not in dims]
        if extra or set(result.dims) != set(dims):
            raise DimensionError(
                f"merge='instances': the result for {window!r} has the dims {result.dims};"
                f" a label image has exactly the spatial dims {dims} (non-spatial dims such as"
                f" {extra or 'these'} are not allowed: select or reduce them in func, e.g."
                f" .isel({(extra or ['c'])[0]}=0))"
            )
        if check is not None:
            result = check(result, window)
        data = np.asarray(result.transpose(*dims).data)
    else:
        data = np.asarray(result)
        if data.ndim != len(dims):
            raise DimensionError(
                f"merge='instances': the result for {window!r} has {data.ndim} dims (shape"
                f" {data.shape}); a label image has exactly the spatial dims {dims}"
                " (non-spatial dims are not allowed)"
            )
    if data.shape != window.shape:
        raise ResultError(
            f"merge='instances': the result for {window!r} has the shape {data.shape}, the"
            f" window has {window.shape} (dims {dims}): return one label per element of the"
            " patch (undo any resizing or cropping in func)"
        )
    if data.dtype.kind not in "iu":
        hint = (
            " label the mask first, e.g. skimage.measure.label(mask)"
            if data.dtype.kind == "b"
            else " cast them, e.g. .astype(int), if they are ids"
        )
        raise ResultError(
            f"merge='instances': the result for {window!r} has dtype {data.dtype}; instance"
            f" labels are integers (0 background, one id per object):{hint}"
        )
    if data.dtype.kind == "i" and data.size and data.min() < 0:
        raise ResultError(
            f"merge='instances': the result for {window!r} holds negative ids"
            f" (min {data.min()}); use 0 for background and positive ids for objects"
        )
    return data


class MemoryPaint:
    """Painted chunks kept in one array of provisional ids (the eager path)."""

    def __init__(self, layout: ChunkLayout) -> None:
        self.layout = layout
        self.painted = np.zeros(tuple(int(e[-1]) for e in layout.edges), dtype=np.uint64)

    def put(self, cpos: tuple[int, ...], painted: np.ndarray, stats: Any) -> None:
        self.painted[tuple(self.layout.region(cpos).values())] = painted

    def final(self, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = relabel(self.painted, keys, values)
        self.painted = np.zeros(0, np.uint64)
        return out


class InstanceAggregator:
    """Stitches instance labels added window by window (``aggregator(merge="instances")``).

    Parameters
    ----------
    obj : DataArray or Dataset
        The source (its spatial coordinates label the result).
    grid : PatchGrid
        The windows.
    iou : float, default: 0.5
        Objects of two overlapping windows whose IoU over the shared region reaches
        this are one object.
    chunks : int or mapping, optional
        Stitching regions per spatial dim: a chunk is painted, and its pieces freed,
        as soon as every window touching it is added.
    paint : optional
        Where painted chunks go (in memory by default; a zarr scratch store for ``out=``).

    Examples
    --------
    >>> import numpy as np, xarray as xr, xpatch
    >>> da = xr.DataArray(np.zeros(12), dims="x")
    >>> agg = da.patch.aggregator(x=8, step=4, merge="instances")
    >>> full = np.array([0, 1, 1, 0, 0, 2, 2, 0, 0, 0, 3, 3])
    >>> for w in agg.grid:
    ...     agg.add(full[w["x"]] * 10, w)  # ids local to each patch
    >>> agg.result().values.tolist()
    [0, 1, 1, 0, 0, 2, 2, 0, 0, 0, 3, 3]
    """

    def __init__(
        self,
        obj: xr.DataArray | xr.Dataset,
        grid: PatchGrid,
        *,
        iou: float = 0.5,
        chunks: Any = None,
        paint: Any = None,
        name: Hashable | None = None,
    ) -> None:
        self.obj, self.grid = obj, grid
        self.layout = ChunkLayout(grid, chunks)
        self.cores = Cores(grid)
        self.equivalence = Equivalence(iou)
        self.paint = paint if paint is not None else MemoryPaint(self.layout)
        self.waiting = self.layout.waiting().copy()
        self.done = np.zeros(self.layout.shape, dtype=bool)
        self.added = np.zeros(len(grid), dtype=bool)
        self.open: dict[tuple[int, ...], list[Piece]] = {}
        self.name = name if name is not None else source_name(obj)
        self._locator: Locator | None = None
        self._labels: LabelCheck | None = None
        self._result: xr.DataArray | None = None
        kept = getattr(grid, "kept", None)  # windows a mask skips: never computed, no objects
        if kept is not None:  # the layout does not wait for them (ChunkLayout.waiting)
            self.added |= ~kept

    def skip(self, done: np.ndarray, stats: list[Any]) -> np.ndarray:
        """Take chunks finished by an earlier run (resume); return the windows not needed."""
        self.done |= done.reshape(self.layout.shape)
        for s in stats:
            self.equivalence.add(s)
        skipped = self.layout.skipped(self.done)
        self.added |= skipped
        return skipped

    def add(self, result: Any, window: Window | None = None) -> None:
        """Add ``func``'s labels for ``window`` (located by its coordinates if not given).

        Raises
        ------
        AggregationError
            The window was added before or is not in the grid.
        ResultError, DimensionError
            The result is not a label image of the window's shape over the spatial dims.
        """
        if window is None:
            if self._locator is None:
                self._locator = Locator(self.obj, self.grid)
            window = self._locator(result)
        else:
            window = check_window(self.grid, window)
        if self.grid.kept is not None and not self.grid.kept[window.index]:
            raise AggregationError(
                f"{window!r} is skipped by the mask: it takes no result (add only the"
                " windows of grid.kept_windows())"
            )
        if self.added[window.index]:
            raise AggregationError(f"{window!r} was added twice")
        if self._labels is None:
            self._labels = LabelCheck(self.obj, self.grid)
        kept = keep(labels_of(result, window, self._labels), window, self.cores)
        self.add_kept(kept, window)

    def add_kept(self, kept: np.ndarray, window: Window) -> None:
        self.added[window.index] = True
        touched = list(self.layout.touched(window.position))
        centre = self.cores.centre(window)
        for cpos, piece in pieces_of(kept, window, touched, self.layout.edges, centre).items():
            if not self.done[cpos]:
                self.open.setdefault(cpos, []).append(piece)
        for cpos in touched:
            if self.done[cpos]:
                continue
            self.waiting[cpos] -= 1
            if self.waiting[cpos] == 0:
                self._finish(cpos)

    def _finish(self, cpos: tuple[int, ...]) -> None:
        origin = [int(e[c]) for e, c in zip(self.layout.edges, cpos)]
        painted, stats = stitch_chunk(
            origin, self.layout.chunk_shape(cpos), self.open.pop(cpos, [])
        )
        self.paint.put(cpos, painted, stats)
        self.equivalence.add(stats)
        self.done[cpos] = True

    def missing(self) -> np.ndarray:
        return np.flatnonzero(~self.added)

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """The final numbering, once every window is in (else :class:`IncompleteError`)."""
        missing = self.missing()
        if len(missing):
            first = ", ".join(repr(self.grid[int(i)]) for i in missing[:3])
            raise IncompleteError(
                f"{len(missing)} of {len(self.grid)} windows were never added (first: {first});"
                " stitching needs every window"
            )
        return self.equivalence.resolve()

    def result(self) -> xr.DataArray:
        """The stitched labels ``1..N`` (0 background) as a DataArray over the spatial dims
        (the same one when asked again: the painted chunks are freed the first time)."""
        if self._result is None:
            keys, values = self.resolve()
            if hasattr(self.paint, "result"):
                self._result = self.paint.result(keys, values)
            else:
                self._result = self.wrap(self.paint.final(keys, values))
        return self._result

    def wrap(self, data: Any) -> xr.DataArray:
        """Label data over the spatial dims, with the source's coords along them."""
        dims = self.grid.dims
        coords = {
            k: c.variable
            for k, c in self.obj.coords.items()
            if set(c.dims) <= set(dims) and all(c.sizes[d] == self.grid.lengths[d] for d in c.dims)
        }
        return xr.DataArray(data, dims=dims, coords=coords, name=self.name)


def _run(
    agg: InstanceAggregator,
    func: Callable[[Any], Any],
    obj: xr.DataArray | xr.Dataset,
    progress: bool,
) -> None:
    """Call ``func`` on every window not yet added, in the order that finishes chunks."""
    grid = agg.grid
    sampler = Sampler(obj, grid)
    order = [int(i) for i in agg.layout.order() if not agg.added[int(i)]]
    bar = _progress(len(order), progress)
    try:
        for i in order:
            window = grid[i]
            result = _call(func, sampler(window), window)
            if isinstance(result, xr.DataArray) and not isinstance(result.data, np.ndarray):
                result = result.compute()
            agg.add(result, window)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()

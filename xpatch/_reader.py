"""Reading patches from lazily opened files: each stored chunk decoded once, read ahead.

A zarr store or a netCDF/HDF5 file opened with xarray (without dask) is read through
xarray's lazy indexing: cutting every patch with ``isel`` decodes every stored chunk
the patch touches, again for every overlapping patch (with a half-patch step, each
chunk about eight times in 3-D). Here the patches of a run are cut, following each
window's :class:`~xpatch._sampling.CutPlan`, from rows of stored chunks:

- each row of stored chunks (along the grid's first spatial dim, the others whole)
  is read and decoded once, when the first window that needs it comes within reach,
  and freed after the last window that needs it (the run's window order is known in
  advance), so memory stays at a few chunk rows;
- chunks are read ahead by a helper thread (``ahead`` windows) while ``func`` runs on
  the current patch: reading overlaps the model, in the order of the run, and an
  error in reading surfaces at the window that needed the chunk.

Used by ``apply`` for lazy, non-dask sources whose variables say how they are
chunked (``encoding["preferred_chunks"]``, set by xarray's zarr and netCDF backends).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

from xpatch._accumulate import memory_budget
from xpatch._sampling import Sampler, SourceLabels, cut_coords, labeler, take
from xpatch._structure import data_variables
from xpatch.grid import PatchGrid, Window

__all__ = ["ChunkReader"]

# how many windows ahead chunks are read while func runs
AHEAD = 4


def stored_chunks(var: xr.Variable) -> tuple[tuple[int, ...], ...] | None:
    """The stored chunking of a lazily opened variable, as dask-style chunk lengths."""
    preferred = var.encoding.get("preferred_chunks")
    if not preferred:
        return None
    out = []
    for d, n in zip(var.dims, var.shape):
        c = int(preferred.get(d, n)) or n
        out.append((c,) * (n // c) + ((n % c,) if n % c else ()))
    return tuple(out)


class ChunkReader:
    """Cuts the patches of a run from slabs of stored chunk rows of a lazy file source.

    Along the grid's first spatial dim the source is read a row of stored chunks at a
    time (every other dim whole), each row decoded once and freed after the last window
    that needs it. The windows of one grid row need the same chunk rows: they are
    joined into one slab and each patch is a read-only view of it (padded windows
    take copies), as patches of an in-memory array are.

    Parameters
    ----------
    obj : DataArray or Dataset
        The source, opened lazily without dask.
    grid : PatchGrid
        The windows.
    threads : int
        Helper threads reading ahead; 0 reads on the calling thread.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xpatch
    >>> da = xr.DataArray(np.arange(16.0).reshape(4, 4), dims=("y", "x"))
    >>> ChunkReader.make(da, da.patch.grid(y=2, x=2)) is None  # in memory: not a file
    True
    """

    def __init__(self, obj: xr.DataArray | xr.Dataset, grid: PatchGrid, threads: int) -> None:
        self.grid = grid
        self.dim = grid.dims[0]
        self.sampler = Sampler(xr.Dataset(coords=obj.coords), grid)
        self.skeleton = self.sampler.obj
        self.labels = SourceLabels.of(obj, grid.dims)
        self.fast = labeler(obj, grid)  # labels of in-bounds patches, cached per position
        self.variables = data_variables(obj)
        # per variable: the axis of the first spatial dim and its stored chunk edges
        self.axis = [v.dims.index(self.dim) for v in self.variables]
        self.edges = [
            np.concatenate([[0], np.cumsum(stored_chunks(v)[ax])])  # type: ignore[index]
            for v, ax in zip(self.variables, self.axis)
        ]
        self.threads = threads

    @classmethod
    def make(
        cls, obj: xr.DataArray | xr.Dataset, grid: PatchGrid, threads: int = 1
    ) -> ChunkReader | None:
        """A reader for ``obj`` if it is a lazy, non-dask file source that says how it is
        chunked; else None."""
        variables = data_variables(obj)
        lazy = all(v.chunks is None and not isinstance(v._data, np.ndarray) for v in variables)
        if not variables or not lazy or any(stored_chunks(v) is None for v in variables):
            return None
        if _held_bytes(variables, grid) > memory_budget() // 2:
            return None  # rows too large to hold (a huge volume): read per window instead
        return cls(obj, grid, threads)

    def _rows(self, k: int, ix: Any) -> tuple[int, ...]:
        """The stored chunk rows of variable ``k`` that indexer ``ix`` reads."""
        edges = self.edges[k]
        if isinstance(ix, slice):
            first = int(np.searchsorted(edges, ix.start, side="right")) - 1
            stop = int(np.searchsorted(edges, ix.stop, side="left"))
            return tuple(range(first, stop))
        return tuple(np.unique(np.searchsorted(edges, ix, side="right") - 1).tolist())

    def _read(self, k: int, row: int) -> np.ndarray:
        """Chunk row ``row`` of variable ``k`` (every other dim whole), decoded."""
        var, edges = self.variables[k], self.edges[k]
        return np.asarray(var.isel({self.dim: slice(int(edges[row]), int(edges[row + 1]))}).values)

    def _slab(self, k: int, rows: tuple[int, ...], held: dict[Any, Any]) -> np.ndarray:
        parts = []
        for r in rows:
            block = held[(k, r)]
            if callable(block) and not isinstance(block, Future):  # read now, keep it
                block = held[(k, r)] = block()
            parts.append(_done(block))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=self.axis[k])

    def _local(self, k: int, rows: tuple[int, ...], ix: Any) -> Any:
        """Indexer ``ix`` along the first spatial dim, in the slab of ``rows``."""
        edges = self.edges[k]
        if isinstance(ix, slice) and all(b == a + 1 for a, b in itertools.pairwise(rows)):
            start = int(edges[rows[0]])
            return slice(ix.start - start, ix.stop - start)
        offsets, position = {}, 0
        for r in rows:
            offsets[r] = position - int(edges[r])
            position += int(edges[r + 1] - edges[r])
        ix = np.arange(ix.start, ix.stop) if isinstance(ix, slice) else np.asarray(ix)
        row_of = np.searchsorted(edges, ix, side="right") - 1
        return ix + np.array([offsets[int(r)] for r in row_of], dtype=np.intp)

    def stream(self, windows: Iterable[Window], ahead: int = AHEAD) -> Iterator[tuple[Window, Any]]:
        """The labeled patch of each window, in the given order.

        Every chunk row is read once: ahead of need by the helper threads, and freed
        after the last window of ``windows`` that needs it.
        """
        windows = list(windows)
        plans = [self.sampler.plan(w) for w in windows]
        need = [
            [self._rows(k, plan.indexers[self.dim]) for k in range(len(self.variables))]
            for plan in plans
        ]
        last: dict[tuple[int, int], int] = {}
        for i, per_var in enumerate(need):
            for k, rows in enumerate(per_var):
                for r in rows:
                    last[(k, r)] = i
        pool = ThreadPoolExecutor(self.threads) if self.threads > 0 else None
        held: dict[tuple[int, int], Future[np.ndarray] | np.ndarray] = {}
        slabs: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

        def request(i: int) -> None:
            for k, rows in enumerate(need[i]):
                for r in rows:
                    if (k, r) not in held:
                        # without helper threads a row is read when first needed (there,
                        # a read error is blamed on the window that needs it)
                        held[(k, r)] = (
                            pool.submit(self._read, k, r)
                            if pool is not None
                            else functools.partial(self._read, k, r)
                        )

        try:
            for i in range(min(ahead, len(windows))):
                request(i)
            for i, window in enumerate(windows):
                if i + ahead < len(windows):
                    request(i + ahead)
                plan, data = plans[i], []
                try:
                    for k, (var, rows) in enumerate(zip(self.variables, need[i])):
                        slab = slabs.get((k, rows))
                        if slab is None:  # a new grid row: its slab replaces the last one
                            for key in [key for key in slabs if key[0] == k]:
                                del slabs[key]
                            slab = slabs[(k, rows)] = self._slab(k, rows, held)
                        local = [
                            self._local(k, rows, plan.indexers[d])
                            if d == self.dim
                            else plan.indexers.get(d, slice(None))
                            for d in var.dims
                        ]
                        masks = [(var.dims.index(d), m) for d, m in plan.masks]
                        part = take(slab, local, masks)
                        if part.base is not None:
                            part.flags.writeable = False  # a view of the slab
                        data.append(part)
                except Exception as err:
                    err.add_note(f"xpatch: raised while reading the patch of {window!r}")
                    raise
                for k, rows in enumerate(need[i]):
                    for r in rows:
                        if last[(k, r)] == i:
                            del held[(k, r)]
                yield window, self._label(window, plan, data)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _label(self, window: Window, plan: Any, data: list[np.ndarray]) -> Any:
        """The labeled patch of ``window`` around its cut ``data``."""
        if (
            self.fast is not None
            and not plan.masks
            and not plan.coords
            and window.dims == self.grid.dims
            and all(type(ix) is slice for ix in plan.indexers.values())
        ):
            return self.fast.wrap(window, data[0])
        return self.labels.patch(cut_coords(self.skeleton, plan), data)


def _held_bytes(variables: list[Any], grid: PatchGrid) -> int:
    """About what the reader holds at once: the rows one window spans, plus those read
    ahead, of every variable (a row is one stored chunk along the grid's first dim and
    the whole of every other dim)."""
    dim = grid.dims[0]
    window = int(grid.axes[0].sizes.max())
    total = 0
    for v in variables:
        axis = v.dims.index(dim)
        row = int(max(stored_chunks(v)[axis]))  # type: ignore[index]
        per_row = row * int(np.prod(v.shape)) // max(int(v.shape[axis]), 1) * v.dtype.itemsize
        total += (AHEAD + 2 * (-(-window // row) + 1)) * per_row
    return total


def _done(block: Future[np.ndarray] | Callable[[], np.ndarray] | np.ndarray) -> np.ndarray:
    if isinstance(block, Future):
        return block.result()
    return block() if callable(block) else block

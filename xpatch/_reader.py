"""Reading patches from lazily opened files: stored chunks decoded once, read ahead.

A zarr store or a netCDF/HDF5 file opened with xarray (without dask) is read through
xarray's lazy indexing: cutting every patch with ``isel`` decodes every stored chunk
the patch touches, again for every overlapping patch (with a half-patch step, each
chunk about eight times in 3-D). Here the patches of a run are cut, following each
window's :class:`~xpatch._sampling.CutPlan`, from units of stored chunks, each read
with one ``isel`` and decoded once:

- :class:`RowReader`: rows of stored chunks along the grid's first spatial dim (the
  other dims whole), joined into a slab per grid row of which patches are views;
  taken where the rows a window and the read-ahead span fit the reader's budget
  (the faster of the two: no copy per patch);
- :class:`WholeReader`: a row reader for sources no larger than those rows, which
  decodes the rows into one array of the source's size (no slab joined per grid row),
  all of them requested when the run starts;
- :class:`TileReader`: tiles, the stored chunks themselves (the non-spatial dims
  whole); each patch is copied from the tiles it touches (a window inside one tile
  is a view of it); memory depends on the chunk and patch sizes, never on the volume.

A unit is read when the first window that needs it comes within reach and dropped
after the last one (the run's window order is known in advance); under the byte
budget the unit whose next use comes last is dropped first and read again when
needed (:class:`~xpatch._tiles.TileSchedule`). Units are read ahead by helper threads
(``ahead`` windows) while ``func`` runs on the current patch: reading overlaps the
model, in the order of the run, and an error in reading surfaces at the window that
needed the unit.

Used by ``apply`` for lazy, non-dask sources whose variables say how they are
chunked (``encoding["preferred_chunks"]``, set by xarray's zarr and netCDF backends).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

from xpatch._accumulate import memory_budget
from xpatch._sampling import CutPlan, Sampler, SourceLabels, cut_coords, labeler, take
from xpatch._structure import data_variables
from xpatch._tiles import Cut, TileSchedule, axis_cut, edges_of
from xpatch.grid import PatchGrid, Window

__all__ = ["ChunkReader"]

# how many windows ahead tiles are read while func runs
AHEAD = 4
# the share of memory_budget() (the open chunks' buffers) the tiles may hold
SHARE = 4


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
    """Cuts the patches of a run from the stored chunks of a lazy file source.

    :meth:`make` picks the reader: :class:`RowReader` (rows of stored chunks along the
    grid's first spatial dim, the other dims whole; fastest) where the rows a window
    and the read-ahead span fit the reader's budget, else :class:`TileReader` (stored
    chunks in every spatial dim; memory independent of the volume). Either reads
    each unit (a row, a tile) with one ``isel``, ahead of need on helper threads, and
    drops it after the last window that needs it (:class:`~xpatch._tiles.TileSchedule`
    over the run's known order). Patches are read-only.

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
        self.sampler = Sampler(xr.Dataset(coords=obj.coords), grid)
        self.skeleton = self.sampler.obj
        self.labels = SourceLabels.of(obj, grid.dims)
        self.fast = labeler(obj, grid)  # labels of in-bounds patches, cached per position
        self.variables = data_variables(obj)
        spatial = set(grid.dims)
        self.spatial = [[d in spatial for d in v.dims] for v in self.variables]
        self.threads = threads
        self.schedule: TileSchedule | None = None  # the last run's (its statistics)
        self.held: dict[Hashable, Any] = {}  # what the run holds now (read or being read)

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
        rows = _row_bytes(variables, grid)
        if rows > budget():
            return TileReader(obj, grid, threads)
        whole = sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in variables)
        # rows read ahead would hold more than the whole array: fill one array instead
        return (WholeReader if whole <= rows else RowReader)(obj, grid, threads)

    # what a reader defines: the unit read, the cut of a window, the patch from units
    def _cut(self, k: int, plan: CutPlan) -> Any:
        raise NotImplementedError

    def _units(self, cut: Any) -> list[Any]:
        raise NotImplementedError

    def _nbytes(self, key: tuple[int, Any]) -> int:
        raise NotImplementedError

    def _read(self, k: int, unit: Any) -> np.ndarray:
        raise NotImplementedError

    def _part(self, k: int, plan: CutPlan, cut: Any, get: Callable[[Any], np.ndarray]) -> Any:
        raise NotImplementedError

    def _budget(self) -> int:
        return budget()

    def _start(self) -> None:
        """A run begins or ends: forget what the last one kept."""

    def _ahead(self, windows: int, ahead: int) -> int:
        """Windows whose units are requested before the current one is cut."""
        return ahead

    def stream(self, windows: Iterable[Window], ahead: int = AHEAD) -> Iterator[tuple[Window, Any]]:
        """The labeled patch of each window, in the given order.

        Units (rows, tiles) are read ahead of need by the helper threads and dropped
        after the last window of ``windows`` that needs them; one dropped for the
        budget is read again when needed (never while the budget holds them all).
        """
        windows = list(windows)
        ahead = self._ahead(len(windows), ahead)
        plans = [self.sampler.plan(w) for w in windows]
        cuts = [[self._cut(k, plan) for k in range(len(self.variables))] for plan in plans]
        needs = [[(k, u) for k, cut in enumerate(per) for u in self._units(cut)] for per in cuts]
        schedule = self.schedule = TileSchedule(needs, self._nbytes, self._budget(), ahead)
        pool = ThreadPoolExecutor(self.threads) if self.threads > 0 else None
        held = self.held = {}
        self._start()

        def request(j: int) -> None:
            read, drop = schedule.admit(j)
            for key in drop:
                del held[key]
            for key in read:
                # without helper threads a unit is read when first needed (there, a
                # read error is blamed on the window that needs it)
                held[key] = (
                    pool.submit(self._read, *key)
                    if pool is not None
                    else functools.partial(self._read, *key)
                )

        def getter(k: int) -> Callable[[Any], np.ndarray]:
            def get(unit: Any) -> np.ndarray:
                block = held[(k, unit)]
                if type(block) is not np.ndarray:
                    block = held[(k, unit)] = _done(block)
                return block

            return get

        try:
            for j in range(min(ahead, len(windows))):
                request(j)
            for i, window in enumerate(windows):
                if i + ahead < len(windows):
                    request(i + ahead)
                plan, data = plans[i], []
                try:
                    for k, cut in enumerate(cuts[i]):
                        part = self._part(k, plan, cut, getter(k))
                        part.flags.writeable = False  # (a view, or a copy like one)
                        data.append(part)
                except Exception as err:
                    err.add_note(f"xpatch: raised while reading the patch of {window!r}")
                    raise
                for key in schedule.done(i):
                    del held[key]
                yield window, self._label(window, plan, data)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            held.clear()
            self._start()

    def _label(self, window: Window, plan: Any, data: list[np.ndarray]) -> Any:
        """The labeled patch of ``window`` around its cut ``data``."""
        if (
            self.fast is not None
            and not plan.masks
            and not plan.coords
            and window.dims == self.grid.dims
            and all(type(ix) is slice for ix in plan.indexers.values())
        ):
            return self.fast(window, data[0])
        return self.labels.patch(cut_coords(self.skeleton, plan), data)


class TileReader(ChunkReader):
    """Reads tiles: stored chunks in every spatial dim (the other dims whole).

    Memory depends on the chunk and patch sizes only: at most the reader's budget
    (:func:`budget`), raised to what one window and the read-ahead need. Each patch is
    copied from the tiles it touches (a window inside one tile is a view of it).
    """

    def __init__(self, obj: xr.DataArray | xr.Dataset, grid: PatchGrid, threads: int) -> None:
        super().__init__(obj, grid, threads)
        self.edges = [
            [
                edges_of(c if s else (n,))
                for s, n, c in zip(spatial, v.shape, stored_chunks(v))  # type: ignore[arg-type]
            ]
            for v, spatial in zip(self.variables, self.spatial)
        ]
        self._axis: dict[tuple[int, int, int, int], Any] = {}

    def _cut(self, k: int, plan: CutPlan) -> Cut:
        axes = []
        for a, (d, edges) in enumerate(zip(self.variables[k].dims, self.edges[k])):
            ix = plan.indexers.get(d)
            if ix is None:
                ix = slice(0, int(edges[-1]))
            if isinstance(ix, slice):  # (windows share their slices along an axis)
                key = (k, a, int(ix.start), int(ix.stop))
                hit = self._axis.get(key)
                if hit is None:
                    hit = self._axis[key] = axis_cut(edges, ix)
                axes.append(hit)
            else:
                axes.append(axis_cut(edges, ix))
        return Cut.of(axes)

    def _units(self, cut: Cut) -> list[tuple[int, ...]]:
        return cut.keys()

    def _nbytes(self, key: tuple[int, Any]) -> int:
        k, index = key
        n = self.variables[k].dtype.itemsize
        for edges, t in zip(self.edges[k], index):
            n *= int(edges[t + 1] - edges[t])
        return n

    def _read(self, k: int, unit: Any) -> np.ndarray:
        """Tile ``unit`` (an index per dim) of variable ``k``, decoded."""
        var = self.variables[k]
        box = {
            d: slice(int(edges[t]), int(edges[t + 1]))
            for d, edges, t, s in zip(var.dims, self.edges[k], unit, self.spatial[k])
            if s
        }
        return np.asarray(var.isel(box).values)

    def _part(self, k: int, plan: CutPlan, cut: Cut, get: Callable[[Any], np.ndarray]) -> Any:
        var = self.variables[k]
        part = cut.assemble(get, var.dtype)
        if cut.whole and not plan.masks:
            return part
        # a padded window: its indices, taken from the parts of the tiles they touch
        return take(part, cut.local, [(var.dims.index(d), m) for d, m in plan.masks])


class RowReader(ChunkReader):
    """Reads rows of stored chunks along the grid's first spatial dim (the other dims
    whole), for sources whose rows fit the budget.

    The windows of one grid row need the same rows: they are joined into one slab and
    each patch is a view of it (padded windows take copies), as patches of an
    in-memory array are; no copy per patch.
    """

    def __init__(self, obj: xr.DataArray | xr.Dataset, grid: PatchGrid, threads: int) -> None:
        super().__init__(obj, grid, threads)
        self.dim = grid.dims[0]
        # per variable: the axis of the first spatial dim and its stored chunk edges
        self.axis = [v.dims.index(self.dim) for v in self.variables]
        self.edges = [
            edges_of(stored_chunks(v)[ax])  # type: ignore[index]
            for v, ax in zip(self.variables, self.axis)
        ]
        self.slabs: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}

    def _budget(self) -> int:
        return 1 << 62  # (chosen where the rows fit: each row read once)

    def _start(self) -> None:
        self.slabs.clear()

    def _cut(self, k: int, plan: CutPlan) -> tuple[int, ...]:
        """The rows of variable ``k`` that the window reads."""
        edges, ix = self.edges[k], plan.indexers[self.dim]
        if isinstance(ix, slice):
            first = int(np.searchsorted(edges, ix.start, side="right")) - 1
            stop = int(np.searchsorted(edges, ix.stop, side="left"))
            return tuple(range(first, stop))
        return tuple(np.unique(np.searchsorted(edges, ix, side="right") - 1).tolist())

    def _units(self, cut: tuple[int, ...]) -> list[int]:
        return list(cut)

    def _nbytes(self, key: tuple[int, Any]) -> int:
        k, row = key
        var, edges = self.variables[k], self.edges[k]
        size = int(np.prod(var.shape)) // max(int(var.shape[self.axis[k]]), 1)
        return size * int(edges[row + 1] - edges[row]) * var.dtype.itemsize

    def _read(self, k: int, unit: Any) -> np.ndarray:
        """Row ``unit`` of variable ``k`` (every other dim whole), decoded."""
        var, edges = self.variables[k], self.edges[k]
        return np.asarray(
            var.isel({self.dim: slice(int(edges[unit]), int(edges[unit + 1]))}).values
        )

    def _part(
        self, k: int, plan: CutPlan, rows: tuple[int, ...], get: Callable[[Any], np.ndarray]
    ) -> Any:
        var = self.variables[k]
        held = self.slabs.get(k)
        if held is None or held[0] != rows:  # a new grid row: its slab replaces the last
            parts = [get(r) for r in rows]
            slab = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=self.axis[k])
            held = self.slabs[k] = (rows, slab)
        local = [
            self._local(k, rows, plan.indexers[d])
            if d == self.dim
            else plan.indexers.get(d, slice(None))
            for d in var.dims
        ]
        return take(held[1], local, [(var.dims.index(d), m) for d, m in plan.masks])

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


class WholeReader(RowReader):
    """A :class:`RowReader` for small sources: rows are decoded on the helper thread
    into one array the size of the source, kept for the run; each patch is a read-only
    view of it, with no slab joined per grid row. Every row is requested when the run
    starts, in the order the windows first need them (the array takes the source's
    memory anyway), so decoding never waits for the windows to come near a row.

    Chosen where the whole array takes no more than the rows a row reader would hold
    at once (so it never holds more), it reads as reading the whole array first does,
    while the model already runs on the first rows.
    """

    def __init__(self, obj: xr.DataArray | xr.Dataset, grid: PatchGrid, threads: int) -> None:
        super().__init__(obj, grid, threads)
        self.arrays: list[np.ndarray] = []

    def _ahead(self, windows: int, ahead: int) -> int:
        # the array takes the whole source's memory anyway: every row is requested at
        # once, in the order the windows first need them, so that the helper thread
        # decodes from the start instead of a few windows before each row is needed
        return windows

    def _start(self) -> None:
        # a new array per run (pages are taken only as rows fill them): patches a model
        # kept from the last run stay as they were
        self.arrays = [np.empty(v.shape, dtype=v.dtype) for v in self.variables]

    def _read(self, k: int, unit: Any) -> np.ndarray:
        edges, ax = self.edges[k], self.axis[k]
        rows = (slice(None),) * ax + (slice(int(edges[unit]), int(edges[unit + 1])),)
        target = self.arrays[k][rows]
        target[...] = super()._read(k, unit)
        return target

    def _part(
        self, k: int, plan: CutPlan, rows: tuple[int, ...], get: Callable[[Any], np.ndarray]
    ) -> Any:
        for r in rows:
            get(r)  # read (or wait for) each row the window spans
        var = self.variables[k]
        local = [plan.indexers.get(d, slice(None)) for d in var.dims]
        return take(self.arrays[k], local, [(var.dims.index(d), m) for d, m in plan.masks])


def budget() -> int:
    """Bytes the reader may hold: a quarter of ``memory_budget()`` (the open chunks'
    buffers take the rest)."""
    return memory_budget() // SHARE


def _row_bytes(variables: list[Any], grid: PatchGrid) -> int:
    """About what a :class:`RowReader` holds at once: the rows one window spans, plus
    those read ahead, of every variable, and their joined slab."""
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

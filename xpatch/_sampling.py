"""Reading patches from the source: index-space windows to labeled patches.

Windows inside the array are plain ``isel`` slices, so lazy sources (dask, zarr,
netCDF, memory maps) read only the patch. Windows of the pad border that reach
past the array are gathered through a padded index map, which gives exactly the
values ``numpy.pad`` would, without ever padding the whole array.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from xpatch._internals import dataarray, index_coordinate, indexes_of, is_memory_coordinate
from xpatch._structure import (
    all_variables,
    data_variables,
    padded_coordinate,
    source_dims,
    source_name,
)
from xpatch._tiles import axis_cut, edges_of
from xpatch.grid import PatchGrid, Window


class CutPlan(NamedTuple):
    """How a window is cut from the source (see :meth:`Sampler.plan`)."""

    indexers: dict[Hashable, Any]  # per dim: a slice, or integer positions (pad border)
    masks: list[tuple[Hashable, np.ndarray]]  # constant padding: which positions are data
    coords: dict[Hashable, Any]  # dim coordinates replaced by extrapolated ones


class Sampler:
    """Cuts the patch of each window out of a DataArray or Dataset."""

    def __init__(self, obj: xr.DataArray | xr.Dataset, grid: PatchGrid) -> None:
        self.obj = obj
        self.grid = grid
        self.lengths = grid.lengths
        self.spatial = set(grid.dims)
        self._maps: dict[Hashable, np.ndarray] = {}
        self._coords: dict[Hashable, np.ndarray] = {}
        self._before: dict[Hashable, int] = {}
        if grid.border == "pad":
            mode = grid.pad_mode or "constant"
            for ax in grid.axes:
                before, after = ax.pad_width
                self._before[ax.dim] = before
                index = np.arange(ax.length)
                if mode == "constant":
                    self._maps[ax.dim] = np.arange(-before, ax.length + after)
                else:
                    self._maps[ax.dim] = np.pad(index, (before, after), mode=mode)
                if ax.dim in obj.coords:
                    self._coords[ax.dim] = padded_coordinate(obj[ax.dim].values, before, after)
        self._constant = grid.pad_mode == "constant"
        # only the pad border has windows reaching past the array
        self._inside = all(ax.pad_width == (0, 0) for ax in grid.axes)
        self._fast = _FastCutter.make(obj, grid)
        self._lazy_file = any(
            v.chunks is None and not isinstance(v._data, np.ndarray) for v in data_variables(obj)
        )

    def cutter(self) -> Callable[[Window], Any]:
        """What cuts one window of the grid: this sampler, or straight the in-memory
        patch builder when no window leaves the array (one call less per patch)."""
        if self._inside and self._fast is not None:
            return self._fast
        return self

    def batch(self, windows: Sequence[Window], batch_dim: Hashable) -> Any:
        """The patches of ``windows`` stacked along ``batch_dim`` (see :func:`stack`)."""
        fast = self._fast
        if (
            fast is not None
            and all(w.dims == self.grid.dims for w in windows)
            and (
                self._inside
                or all(
                    s.start >= 0 and s.stop <= self.lengths[d]
                    for w in windows
                    for d, s in zip(w.dims, w.slices)
                )
            )
        ):
            return fast.batch(windows, batch_dim)
        return stack([self(w) for w in windows], windows, batch_dim)

    def axis_indexer(self, i: int, p: int) -> Any:
        """The indexer along grid axis ``i`` of the windows at position ``p`` on it (as
        in :meth:`plan`: a slice, or integer positions where the window is padded)."""
        ax = self.grid.axes[i]
        start = int(ax.starts[p])
        stop = start + int(ax.sizes[p])
        if start >= 0 and stop <= ax.length:
            return slice(start, stop)
        b = self._before[ax.dim]
        raw = self._maps[ax.dim][start + b : stop + b]
        return np.clip(raw, 0, ax.length - 1) if self._constant else raw

    def plan(self, window: Window) -> CutPlan:
        """How to cut ``window``: per-dim indexers, constant-pad masks, replaced coords.

        Indexers are slices for windows inside the array and integer arrays
        (through the padded index map) for dims where a window leaves it. Every
        reader of a padded window (``isel``, file runs, dask blocks) follows this plan.
        """
        indexers: dict[Hashable, Any] = {}
        masks: list[tuple[Hashable, np.ndarray]] = []
        coords: dict[Hashable, Any] = {}
        for d, s in zip(window.dims, window.slices):
            if s.start >= 0 and s.stop <= self.lengths[d]:
                indexers[d] = s
                continue
            b = self._before[d]
            raw = self._maps[d][s.start + b : s.stop + b]
            if self._constant:
                masks.append((d, (raw >= 0) & (raw < self.lengths[d])))
                raw = np.clip(raw, 0, self.lengths[d] - 1)
            indexers[d] = raw
            if d in self._coords:
                coords[d] = (d, self._coords[d][s.start + b : s.stop + b])
        return CutPlan(indexers, masks, coords)

    def __call__(self, window: Window) -> Any:
        if self._inside or all(
            s.start >= 0 and s.stop <= self.lengths[d] for d, s in zip(window.dims, window.slices)
        ):
            if self._fast is not None and window.dims == self.grid.dims:
                return self._fast(window)  # (built for the grid's dims, in its order)
            patch = self.obj.isel(dict(zip(window.dims, window.slices)))
            for var in all_variables(patch, coords=True):
                if self.spatial & set(var.dims):
                    read_only(var)
            return patch
        indexers, masks, coords = self.plan(window)
        if self._lazy_file:
            patch = _read_runs(self.obj, indexers)
        else:
            patch = self.obj.isel(indexers)
        if masks:
            mask = None
            for d, valid in masks:
                m = xr.DataArray(valid, dims=(d,))
                mask = m if mask is None else mask & m
            patch = patch.where(mask, 0)
        return patch.assign_coords(coords) if coords else patch


class _FastCutter:
    """Builds in-bounds patches of an in-memory DataArray without ``isel``.

    ``isel`` re-slices every coordinate and rebuilds every index for each patch;
    here the per-axis coordinate slices and indexes are cached per slice (and
    merged once per grid row), and the patch is assembled directly. The result
    is the same DataArray that ``isel`` returns (a view of the source data, with
    its coords and attrs) for windows with the grid's dims, in its order.
    """

    def __init__(self, obj: xr.DataArray, grid: PatchGrid) -> None:
        self.obj = obj
        # a read-only view of the source, made once: every patch cut from it is a
        # read-only view too (func must not write to the user's array), at no cost
        self.data = obj.variable._data.view()
        self.data.flags.writeable = False
        self.dims = tuple(obj.dims)
        self.spatial = set(grid.dims)
        self.fixed: dict[Hashable, Any] = {}
        self.along: dict[Hashable, list[Hashable]] = {d: [] for d in grid.dims}
        self.multi: list[Hashable] = []
        self.variables = {name: coord.variable for name, coord in obj.coords.items()}
        for name, coord in obj.coords.items():
            cdims = set(coord.dims) & self.spatial
            if not cdims:
                self.fixed[name] = coord.variable
            elif len(coord.dims) == 1:
                self.along[coord.dims[0]].append(name)
            else:
                self.multi.append(name)
        self.indexes = dict(obj.xindexes.items())
        self.counts = tuple(len(ax.starts) for ax in grid.axes)
        self.starts = [np.asarray(ax.starts, dtype=np.int64) for ax in grid.axes]
        self.fixed_indexes = {k: v for k, v in self.indexes.items() if k in self.fixed}
        self.cache: dict[tuple[Hashable, int, int], tuple[dict[Hashable, Any], ...]] = {}
        # spatial axes in the order of the data's dims, and the full-slice key to fill
        self.order = [(i, d, self.dims.index(d)) for i, d in enumerate(grid.dims)]
        self.key0 = [slice(None)] * len(self.dims)
        self.others = [d for d in self.dims if d not in self.spatial]
        self.views: dict[tuple[int, ...], np.ndarray] = {}
        self.attrs = dict(obj.attrs)
        # the data's dims are the grid's, in order: the window's slices index it as they are
        self.plain = self.dims == tuple(grid.dims)
        self.last = grid.dims[-1]
        self.head: tuple[Any, dict[Hashable, Any], dict[Hashable, Any]] = (None, {}, {})

    @classmethod
    def make(cls, obj: Any, grid: PatchGrid) -> _FastCutter | None:
        from xarray.core.indexes import PandasIndex

        if not isinstance(obj, xr.DataArray) or type(obj.variable._data) not in (
            np.ndarray,
            np.memmap,
        ):
            return None
        for name, index in obj.xindexes.items():
            coord_dims = obj[name].dims
            if set(coord_dims) & set(grid.dims) and (
                type(index) is not PandasIndex or len(coord_dims) != 1
            ):
                return None
        for coord in obj.coords.values():
            if set(coord.dims) & set(grid.dims) and not is_memory_coordinate(coord.variable):
                return None
        return cls(obj, grid)

    def _axis_coords(self, dim: Hashable, s: slice) -> tuple[dict[Hashable, Any], ...]:
        key = (dim, s.start, s.stop)
        hit = self.cache.get(key)
        if hit is None:
            coords, indexes = {}, {}
            for name in self.along[dim]:
                var = self.variables[name]
                index = self.indexes.get(name)
                if index is None:
                    coords[name] = read_only(var[s])
                    continue
                # the sliced index and its coordinate, built from each other as isel
                # does, without slicing the pandas index twice (a few times faster)
                index = indexes[name] = index.isel({dim: s})
                coords[name] = index_coordinate(index, var)
            hit = (coords, indexes)
            if len(self.cache) > 4096:
                self.cache.clear()
            self.cache[key] = hit
        return hit

    def stacked(self, windows: Sequence[Window], flat: np.ndarray | None = None) -> np.ndarray:
        """The patches of equally shaped in-bounds windows, stacked on a new first axis.

        One fancy-indexing call on a strided view of the source (no Python per patch
        beyond reading its start), in the source's dim order, C-contiguous.
        """
        shape = windows[0].shape
        if len(windows) < 4 or any(n == 0 for n in shape):
            return np.stack([self.data[self.key(w)] for w in windows])
        view = self.views.get(shape)
        if view is None:
            axes = [ax for _, _, ax in self.order]
            view = np.lib.stride_tricks.sliding_window_view(self.data, shape, axis=axes)
            # the per-start axes first, then the other dims, then the window's own axes
            others = [k for k in range(self.data.ndim) if k not in axes]
            n = self.data.ndim
            view = view.transpose([*axes, *others, *range(n, n + len(axes))])
            if len(self.views) > 8:
                self.views.clear()
            self.views[shape] = view
        if flat is None:
            flat = np.fromiter([w.index for w in windows], dtype=np.int64, count=len(windows))
        position = np.unravel_index(flat, self.counts)  # the windows' starts, from the grid
        out = view[tuple(st[p] for st, p in zip(self.starts, position))]
        current = [None, *self.others, *(d for _, d, _ in self.order)]
        perm = [0, *(current.index(d) for d in self.dims)]
        if perm != list(range(len(perm))):
            out = np.ascontiguousarray(out.transpose(perm))
        return out

    def batch(self, windows: Sequence[Window], batch_dim: Hashable) -> xr.DataArray:
        """The gathered patches as a DataArray, with the window indices along ``batch_dim``."""
        from xarray.core.indexes import PandasIndex

        flat = np.fromiter([w.index for w in windows], dtype=np.int64, count=len(windows))
        data = self.stacked(windows, flat)
        index = PandasIndex(flat, batch_dim)
        coords = dict(self.fixed)
        coords.update(index.create_variables())
        indexes = dict(self.fixed_indexes)
        indexes[batch_dim] = index
        dims = (batch_dim, *self.dims)
        return dataarray(dims, data, self.attrs.copy(), coords, self.obj.name, indexes)

    def key(self, window: Window) -> tuple[slice, ...]:
        """Numpy index of the window's patch in the source data."""
        key = self.key0.copy()
        slices = window.slices
        for i, _, ax in self.order:
            key[ax] = slices[i]
        return tuple(key)

    def _row(self, head: tuple[slice, ...]) -> tuple[dict[Hashable, Any], ...]:
        """The fixed coords and those along every spatial axis but the last, for ``head``."""
        coords = self.fixed.copy()
        indexes = self.fixed_indexes.copy()
        for (_, d, _), s in zip(self.order, head):
            c, idx = self._axis_coords(d, s)
            coords.update(c)
            indexes.update(idx)
        row = self.head = (head, coords, indexes)
        return row

    def __call__(self, window: Window, data: np.ndarray | None = None) -> xr.DataArray:
        """The labeled patch of an in-bounds ``window``: cut from the source, or around
        ``data`` cut elsewhere (in the source's dim order, e.g. from a file's slabs)."""
        slices = window.slices
        if data is None:
            data = self.data[tuple(slices) if self.plain else self.key(window)]
        # windows come row by row: the labels along all axes but the last change rarely
        head, row, row_indexes = self.head
        if slices[:-1] != head:
            head, row, row_indexes = self._row(slices[:-1])
        c, idx = self._axis_coords(self.last, slices[-1])
        coords = {**row, **c}
        indexes = {**row_indexes, **idx}
        if self.multi:
            sel = dict(zip(window.dims, slices))
            for name in self.multi:
                var = self.variables[name]
                coords[name] = read_only(var[tuple(sel.get(d, slice(None)) for d in var.dims)])
        return dataarray(self.dims, data, self.attrs.copy(), coords, self.obj.name, indexes)


def labeler(obj: Any, grid: PatchGrid) -> _FastCutter | None:
    """What labels the in-bounds patches of a lazily read DataArray as in-memory patches
    are labeled (their data cut elsewhere, e.g. from a file's slabs), or None (a
    Dataset, or coordinates that are not in memory).

    It is built on a stand-in of the source's shape that holds no data (a broadcast
    scalar), so only the labels are cached; building each patch with ``xr.DataArray``
    deep-copies its coordinates and costs more than the patch's share of reading.
    """
    if not isinstance(obj, xr.DataArray):
        return None
    var = obj.variable
    coords = {k: v.variable for k, v in obj.coords.items()}
    if not all(is_memory_coordinate(c) for c in coords.values()):
        return None
    stand_in = np.broadcast_to(np.zeros((), dtype=var.dtype), var.shape)
    # (assembled from the source's valid parts: xarray's constructor would check the
    # data against every duck-array type, importing dask.array on a first call)
    proxy = dataarray(var.dims, stand_in, dict(obj.attrs), coords, obj.name, dict(indexes_of(obj)))
    return _FastCutter.make(proxy, grid)


def read_only(var: xr.Variable) -> xr.Variable:
    """Make a sliced variable's numpy data read-only (a view of the user's array must
    not be written through a patch); other data is left as it is."""
    data = var._data
    if type(data) is np.ndarray or type(data) is np.memmap:
        if data.base is not None:  # a view made for this patch, never the source itself
            data.flags.writeable = False
    return var


def _read_runs(obj: Any, indexers: dict[Hashable, Any]) -> Any:
    """Cut a padded patch from a lazily indexed file source with slice reads only.

    An index map of the pad border (wrap, reflect, ...) may jump across the
    array; a backend that only reads slices would then read everything in
    between. Here the distinct indices along each dim are split into contiguous
    runs, each combination of runs is read as one slice, and the patch is
    gathered from those pieces in memory: at most the patch's elements are read.
    """
    runs: dict[Hashable, list[slice]] = {}
    local: dict[Hashable, Any] = {}
    for d, ix in indexers.items():
        if isinstance(ix, slice):
            runs[d] = [ix]
            continue
        uniq = np.unique(ix)
        breaks = np.flatnonzero(np.diff(uniq) > 1) + 1
        runs[d] = [slice(int(r[0]), int(r[-1]) + 1) for r in np.split(uniq, breaks)]
        local[d] = np.searchsorted(uniq, ix)

    def read(prefix: dict[Hashable, slice], rest: list[Hashable]) -> Any:
        if not rest:
            return obj.isel(prefix).load()
        d, others = rest[0], rest[1:]
        parts = [read({**prefix, d: r}, others) for r in runs[d]]
        return (
            parts[0]
            if len(parts) == 1
            else xr.concat(parts, dim=d, coords="minimal", compat="override", join="override")
        )

    compact = read({}, list(runs))
    return compact.isel(local) if local else compact


def stack(patches: Sequence[Any], windows: Sequence[Window], batch_dim: Hashable) -> Any:
    """Stack patches of equal shape along a new leading ``batch_dim``.

    Spatial coordinates differ from patch to patch and are dropped; the batch
    dim gets a coordinate holding each patch's window index.
    """
    first = patches[0]
    spatial = set(windows[0].dims)
    coords = {k: v.variable for k, v in first.coords.items() if not spatial.intersection(v.dims)}
    coords[batch_dim] = xr.Variable((batch_dim,), np.array([w.index for w in windows]))
    if isinstance(first, xr.DataArray):
        data = np.stack([np.asarray(p.data) for p in patches])
        return xr.DataArray(
            data, dims=(batch_dim, *first.dims), coords=coords, name=first.name, attrs=first.attrs
        )
    data_vars = {
        k: ((batch_dim, *v.dims), np.stack([np.asarray(p[k].data) for p in patches]), v.attrs)
        for k, v in first.data_vars.items()
    }
    return xr.Dataset(data_vars, coords=coords, attrs=first.attrs)


class BlockCut:
    """One variable's patch cut from the dask blocks it reads (the dask path's reader
    of a :class:`CutPlan`).

    Per axis, ``pieces`` lists ``(block, slice within block)`` in order; concatenated
    they form a compact axis, and ``local`` indexes the patch in it (``slice(None)``
    for a window inside the array, integer positions for a padded one). Only blocks
    holding needed elements are read, so a wrap-padded patch reads the two ends of
    an axis, not everything in between.
    """

    def __init__(
        self,
        blocks: list[list[int]],
        cuts: list[list[slice]],
        local: list[Any],
        masks: list[tuple[int, np.ndarray]],
        shape: tuple[int, ...],
    ) -> None:
        self.blocks, self.cuts, self.local, self.masks, self.shape = (
            blocks,
            cuts,
            local,
            masks,
            shape,
        )

    @classmethod
    def of(
        cls,
        plan: CutPlan,
        dims: Sequence[Hashable],
        shape: Sequence[int],
        chunks: Sequence[Sequence[int]],
    ) -> BlockCut:
        """The cut of a variable with ``dims``, ``shape`` and dask ``chunks``."""
        blocks, cuts, local, out_shape = [], [], [], []
        for d, n, c in zip(dims, shape, chunks):
            edges = edges_of(c)
            ix = plan.indexers.get(d, slice(0, int(n)))
            pieces, where = _axis_pieces(edges, ix)
            blocks.append([b for b, _ in pieces])
            cuts.append([c for _, c in pieces])
            local.append(where)
            out_shape.append(ix.stop - ix.start if isinstance(ix, slice) else len(ix))
        masks = [(list(dims).index(d), m) for d, m in plan.masks]
        return cls(blocks, cuts, local, masks, tuple(out_shape))

    def keys(self, name: str) -> Any:
        """Nested lists of the keys of the blocks read (the task's arguments)."""
        if not self.blocks:
            return (name,)

        def build(prefix: tuple[int, ...], rest: Sequence[list[int]]) -> Any:
            if not rest:
                return (name, *prefix)
            return [build((*prefix, b), rest[1:]) for b in rest[0]]

        return build((), self.blocks)

    def read(self, blocks: Any) -> np.ndarray:
        """Concatenate the needed parts of the input blocks and cut the patch from them."""
        arr = np.block(self._trim(blocks, ())) if self.cuts else np.asarray(blocks)
        return take(arr, self.local, self.masks)

    def _trim(self, nested: Any, position: tuple[int, ...]) -> Any:
        """Slice every block of a nested list to the part the patch needs."""
        if len(position) == len(self.cuts):
            cuts = [c[p] for c, p in zip(self.cuts, position)]
            if type(nested) is Strip:  # a part of the block: its cuts shift with it
                cuts = [slice(c.start - o, c.stop - o) for c, o in zip(cuts, nested.offset)]
                nested = nested.data
            return np.asarray(nested)[tuple(cuts)]
        return [self._trim(sub, (*position, j)) for j, sub in enumerate(nested)]


class Strip(NamedTuple):
    """The part of a dask block that a group of windows reads, and where it starts in
    the block: cut on the worker that holds the block, so only this part travels."""

    data: np.ndarray
    offset: tuple[int, ...]

    @classmethod
    def of(cls, block: np.ndarray, box: tuple[slice, ...]) -> Strip:
        return cls(np.ascontiguousarray(block[box]), tuple(s.start for s in box))


def take(arr: np.ndarray, local: Sequence[Any], masks: Sequence[tuple[int, np.ndarray]]) -> Any:
    """``arr`` indexed by a slice or integer positions per axis, then zero where a
    constant-pad mask says the position is padding (what ``numpy.pad`` gives)."""
    if all(isinstance(ix, slice) for ix in local):
        arr = arr[tuple(local)]
    else:
        for axis, ix in enumerate(local):
            arr = (
                arr[(slice(None),) * axis + (ix,)]
                if isinstance(ix, slice)
                else np.take(arr, ix, axis=axis)
            )
    for axis, valid in masks:
        shape = [1] * arr.ndim
        shape[axis] = len(valid)
        arr = np.where(valid.reshape(shape), arr, np.zeros((), dtype=arr.dtype))
    return arr


def _axis_pieces(edges: np.ndarray, ix: Any) -> tuple[list[tuple[int, slice]], Any]:
    """The parts of input blocks one axis of a patch reads, and where the patch lies
    in them (see :class:`BlockCut`; the same cut as a file's tiles, :func:`axis_cut`)."""
    blocks, parts, local, _ = axis_cut(edges, ix)
    return list(zip(blocks, parts)), local


@dataclass(frozen=True)
class SourceLabels:
    """The labels of the source that every patch carries (not its data)."""

    kind: str  # "dataarray" or "dataset"
    name: Hashable | None
    attrs: dict[Hashable, Any]
    var_names: list[Hashable | None]
    var_dims: list[tuple[Hashable, ...]]
    var_attrs: list[dict[Hashable, Any]]
    spatial: tuple[Hashable, ...]
    sizes: dict[Hashable, int]  # the non-spatial lengths of the source

    @classmethod
    def of(cls, obj: xr.DataArray | xr.Dataset, spatial: tuple[Hashable, ...]) -> SourceLabels:
        variables = data_variables(obj)
        dims = source_dims(obj)
        return cls(
            kind="dataset" if dims is None else "dataarray",
            name=source_name(obj),
            attrs=dict(obj.attrs),
            var_names=[None] if dims is not None else list(obj.data_vars),
            var_dims=[tuple(v.dims) for v in variables],
            var_attrs=[dict(v.attrs) for v in variables],
            spatial=spatial,
            sizes={d: n for d, n in obj.sizes.items() if d not in spatial},
        )

    @property
    def default_dims(self) -> tuple[Hashable, ...] | None:
        """Dims of a bare-array result: the source DataArray's."""
        return self.var_dims[0] if self.kind == "dataarray" else None

    def patch(self, coords: dict[Hashable, xr.Variable], data: Sequence[np.ndarray]) -> Any:
        """A labeled patch from its variables' data."""
        if self.kind == "dataarray":
            return xr.DataArray(
                data[0], dims=self.var_dims[0], coords=coords, name=self.name, attrs=self.attrs
            )
        data_vars = {
            k: xr.Variable(dims, arr, attrs=a)
            for k, dims, arr, a in zip(self.var_names, self.var_dims, data, self.var_attrs)
        }
        return xr.Dataset(data_vars, coords=coords, attrs=self.attrs)


def cut_coords(skeleton: xr.Dataset, plan: CutPlan) -> dict[Hashable, xr.Variable]:
    """The coordinates of a window's patch, from a coordinates-only ``skeleton`` of the
    source (extrapolated along padded dims)."""
    coords_ds = skeleton.isel(plan.indexers, missing_dims="ignore")
    if plan.coords:
        coords_ds = coords_ds.assign_coords(plan.coords)
    return {k: v.variable for k, v in coords_ds.coords.items()}

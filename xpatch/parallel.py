"""The dask path: ``apply`` on dask-backed input builds a lazy graph.

The graph is built directly, without ``map_overlap``, two tasks per output block:

- a *group task* computes the windows whose first touched output block is its
  block (each window exactly once). It depends only on the input blocks those
  windows read, cuts each patch from them (:class:`~xpatch._sampling.BlockCut`),
  calls ``func`` (in batches if asked) and adds the weighted results to partial
  sums: the whole of its own block, and the thin parts of the neighbouring blocks
  its windows reach into. Final weights (separable normalisation) make partial sums
  additive.
- a *block task* sums the partial sums from the group tasks whose windows touch its
  block (its own and its lower neighbours'), fills, applies ``on_chunk`` and returns
  the block.

The graph has O(blocks) tasks, each described by a few numbers (the per-window
cuts are made inside the tasks), so it does not grow with the number of patches;
the big partial sum stays with its block task, only the thin overlaps move; and
no task holds the full array. The same graph runs on the threaded scheduler or a
``dask.distributed`` cluster.
"""

from __future__ import annotations

import itertools
import operator
import uuid
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from xpatch._accumulate import Accumulator
from xpatch._apply import Rescaled, _BatchWhere, _call, _keep, batches, crop_variables, unbatch
from xpatch._blend import Blender
from xpatch._finish import ChunkFinisher
from xpatch._locate import align
from xpatch._options import ApplyOptions
from xpatch._patchmap import PatchMap
from xpatch._plan import BlendPlan
from xpatch._rescale import scaled_template
from xpatch._sampling import (
    BlockCut,
    CutPlan,
    Sampler,
    SourceLabels,
    _axis_pieces,
    cut_coords,
    stack,
)
from xpatch._sinks import CaptureSink
from xpatch._structure import (
    Meta,
    ResultSpec,
    Variables,
    What,
    assemble,
    data_variables,
    spatial_check,
    split,
)
from xpatch.aggregate import Aggregator
from xpatch.grid import PatchGrid, Window
from xpatch.layout import ChunkLayout, Tally


def is_dask_backed(obj: xr.DataArray | xr.Dataset) -> bool:
    """True if any data variable of ``obj`` is a dask array."""
    # ``Variable.chunks`` looks at the wrapped array without loading a lazy one
    return any(v.chunks is not None for v in data_variables(obj))


def default_chunks(
    obj: xr.DataArray | xr.Dataset, grid: PatchGrid
) -> dict[Hashable, tuple[int, ...]]:
    """The input's dask chunks along the spatial dims (first variable that has them)."""
    out: dict[Hashable, tuple[int, ...]] = {}
    for v in data_variables(obj):
        if v.chunks is None:
            continue
        for d, c in zip(v.dims, v.chunks):
            if d in grid.dims and d not in out:
                out[d] = tuple(int(n) for n in c)
    for d in grid.dims:
        out.setdefault(d, (grid.lengths[d],))
    return out


@dataclass(frozen=True)
class _Shared:
    """What every task of one graph needs (one object in the graph, sent once)."""

    plan: BlendPlan
    spec: ResultSpec
    labels: SourceLabels
    sampler: Sampler  # over the source's coordinates only: plans cuts, never reads data
    chunks: list[tuple[tuple[int, ...], ...]]  # per variable: its dask chunks
    options: ApplyOptions
    reference: dict[Hashable, np.ndarray]  # non-spatial labels every result must have
    pm: PatchMap  # what func sees (the sampler's grid) and where results go (the plan's)
    keep: Callable[[Any], Any] | None = None  # a predicate on the patch: False drops it


def _group_task(
    func: Callable[[Any], Any],
    shared: _Shared,
    ranges: tuple[range, ...],
    block_ids: list[list[tuple[int, ...]]],
    area: tuple[dict[Hashable, int], xr.Dataset] | None,
    *blocks: np.ndarray,
) -> dict[tuple[int, ...], tuple[tuple[slice, ...], dict[Hashable, np.ndarray], Any]]:
    """Compute the windows at the grid positions in ``ranges``; return partial sums.

    ``blocks`` are the input blocks the windows read, per variable in the order of
    ``block_ids``; ``area``: the coordinates with several spatial dims (2-D lat/lon)
    over the part of the source the windows read, and where that part starts. Returns,
    per output block touched, the box of it the windows reach (spatial slices within
    the block) and the weighted sums there (and the summed custom weights).
    """
    plan, spec, labels, pm = shared.plan, shared.spec, shared.labels, shared.pm
    grid, layout = plan.grid, plan.layout
    found: list[dict[tuple[int, ...], np.ndarray]] = []
    it = iter(blocks)
    for ids in block_ids:
        found.append({key: next(it) for key in ids})
    # source windows (what func sees), in grid order; the kept ones only
    windows = [pm.source[grid.index_of(p)] for p in itertools.product(*ranges)]
    if grid.kept is not None:
        windows = [w for w in windows if grid.kept[w.index]]
    dropped: list[int] = []
    acc = Accumulator(plan, Blender(threads=1), spec)
    tally = Tally(len(grid), np.zeros(layout.shape, dtype=np.int64))
    options = shared.options

    def patch(window: Window) -> Any:
        cut = shared.sampler.plan(window)
        data = []
        for k, (dims, chunks) in enumerate(zip(labels.var_dims, shared.chunks)):
            shape = tuple(sum(c) for c in chunks)
            block_cut = BlockCut.of(cut, dims, shape, chunks)
            data.append(block_cut.read(_fill_keys(block_cut.keys(k), found[k])))
        coords = cut_coords(shared.sampler.obj, cut)
        if area is not None:
            start, multi = area
            local = {d: _shift(ix, -start[d]) for d, ix in cut.indexers.items()}
            coords.update(cut_coords(multi, CutPlan(local, [], {})))
        return labels.patch(coords, data)

    def add(window: Window, variables: Variables) -> None:
        if not pm.identity:
            variables = crop_variables(variables, pm, window, What(window))
            window = grid[window.index]
        spatial_check(variables, dict(zip(grid.dims, window.shape)), What(window))
        spec.check(variables, What(window))
        acc.add(window, variables, list(layout.touched(window.position)), tally)

    if shared.keep is not None:
        kept = []
        for window in windows:
            if _keep(shared.keep, patch(window), window):
                kept.append(window)
            else:
                dropped.append(window.index)
        windows = kept
    if options.batch_size is None:
        for window in windows:
            cut = patch(window)
            # the window's own labels, to align a labeled result to (extrapolated if padded)
            expected = {
                d: np.asarray(cut[d].values)
                for d in labels.spatial
                if d in cut.coords and cut[d].dims == (d,) and not pm.scaled
            }
            result = _call(func, cut, window)
            del cut
            if isinstance(result, (xr.DataArray, xr.Dataset)):
                result = align(result, {**expected, **shared.reference}, What(window))
            variables, _ = split(
                result,
                spatial=labels.spatial,
                default_dims=labels.default_dims,
                output_dims=options.blend.output_dims,
                what=What(window),
                default_sizes=labels.sizes,
            )
            add(window, variables)
    else:
        batch_dim = options.batch_dim
        default = (batch_dim, *labels.default_dims) if labels.default_dims else None
        for group in batches(windows, options.batch_size, key=pm.crop):
            where = _BatchWhere(group)
            result = _call(func, stack([patch(w) for w in group], group, batch_dim), where)
            if isinstance(result, (xr.DataArray, xr.Dataset)):
                result = align(result, shared.reference, f"func's result for {where}")
            unbatched = unbatch(
                result,
                len(group),
                batch_dim,
                default,
                options.batch_output_dims,
                str(where),
                labels.sizes,
            )
            for window, (variables, _) in zip(group, unbatched):
                add(window, variables)
    partials = _partials(acc, [grid[w.index] for w in windows])
    if dropped:
        partials[DROPPED] = dropped  # type: ignore[assignment]
    return partials


DROPPED = ("dropped",)  # the key of the windows a predicate dropped, in a group's partials


def _partials(
    acc: Accumulator, windows: Sequence[Window]
) -> dict[tuple[int, ...], tuple[tuple[slice, ...], dict[Hashable, np.ndarray], Any]]:
    """Cut each touched block's sums to the box the windows reach (copies: the thin
    overlaps are all that travels to the neighbouring block tasks)."""
    layout = acc.plan.layout
    spec = acc.spec
    assert spec is not None
    out: dict[Any, Any] = {}
    if not windows:
        return out
    lo = np.min([[s.start for s in w.slices] for w in windows], axis=0)
    hi = np.max([[s.stop for s in w.slices] for w in windows], axis=0)
    for cpos, buffers in acc.buffers.items():
        region = list(layout.region(cpos).values())
        box = tuple(
            slice(max(int(a), r.start) - r.start, min(int(b), r.stop) - r.start)
            for a, b, r in zip(lo, hi, region)
        )
        cut = {}
        for name, buf in buffers.items():
            index = [slice(None)] * buf.ndim
            for ax, sl in zip(spec.axes[name], box):
                index[ax] = sl
            cut[name] = buf[tuple(index)].copy()
        weight_sum = acc.weight_sums.get(cpos)
        out[cpos] = (box, cut, None if weight_sum is None else weight_sum[box].copy())
    return out


def _block_task(
    shared: _Shared,
    cpos: tuple[int, ...],
    template: xr.Dataset | None,
    order: Mapping[Hashable, tuple[Hashable, ...]],
    *partials: dict[tuple[int, ...], Any],
) -> dict[Hashable, np.ndarray]:
    """Sum the partial sums of one output block, finish it and return its arrays."""
    plan, spec = shared.plan, shared.spec
    acc = Accumulator(plan, Blender(threads=1), spec)
    buffers = acc.new(cpos)
    weight_sum = None
    added = None if plan.grid.kept is None else plan.grid.kept.copy()
    for part in partials:
        if DROPPED in part:
            if added is None:
                added = np.ones(len(plan.grid), dtype=bool)
            added[part[DROPPED]] = False
        if cpos not in part:
            continue
        box, sums, ws = part[cpos]
        for name, data in sums.items():
            index = [slice(None)] * buffers[name].ndim
            for ax, sl in zip(spec.axes[name], box):
                index[ax] = sl
            buffers[name][tuple(index)] += data
        if ws is not None:
            if weight_sum is None:
                weight_sum = np.zeros(plan.layout.chunk_shape(cpos), dtype=ws.dtype)
            weight_sum[box] += ws
    if not plan.weights.separable and weight_sum is None:
        weight_sum = np.zeros(plan.layout.chunk_shape(cpos), dtype=np.float32)
    finisher = ChunkFinisher(plan, _EMPTY, shared.labels.name)
    finisher.chunk_template = template
    variables, _ = finisher(cpos, buffers, spec, weight_sum, added)
    return {
        name: np.moveaxis(data, [dims.index(d) for d in order[name]], range(len(dims)))
        for name, (dims, data) in variables.items()
    }


_EMPTY = xr.Dataset()


def _shift(ix: Any, by: int) -> Any:
    return slice(ix.start + by, ix.stop + by) if isinstance(ix, slice) else ix + by


def _fill_keys(nested: Any, found: Mapping[tuple[int, ...], np.ndarray]) -> Any:
    """Block keys ``(k, *index)`` in a nested list replaced by the blocks."""
    if isinstance(nested, tuple):
        return found[tuple(nested[1:])]
    return [_fill_keys(sub, found) for sub in nested]


class _GraphBuilder:
    """Builds the lazy graph of one ``apply`` on dask-backed input."""

    def __init__(
        self,
        obj: xr.DataArray | xr.Dataset,
        func: Callable[[Any], Any],
        grid: PatchGrid,
        options: ApplyOptions,
        pm: PatchMap | None = None,
        keep: Callable[[Any], Any] | None = None,
    ) -> None:
        pm = pm if pm is not None else PatchMap.make(grid)
        chunks = options.blend.chunks
        chunks = pm.target_chunks(chunks if chunks is not None else default_chunks(obj, grid))
        self.layout = ChunkLayout(pm.target, chunks)
        if isinstance(obj, xr.Dataset) and any(v.chunks is None for v in obj.data_vars.values()):
            obj = obj.chunk({})  # (after the layout: it follows the dask variables' chunks)
        self.obj, self.func, self.grid, self.options = obj, func, pm.source, options
        self.pm, self.keep = pm, keep
        self.template = scaled_template(obj, pm) if pm.scaled else obj
        self.plan = BlendPlan.make(pm.target, options.blend, self.layout)
        self.labels = SourceLabels.of(obj, grid.dims)
        self.arrays = [v.data for v in data_variables(obj)]
        # coordinates along at most one spatial dim go to every task; those along several
        # (2-D lat/lon) only as the part each task reads
        spatial = set(grid.dims)
        several = {k for k, c in obj.coords.items() if len(spatial & set(c.dims)) > 1}
        self.multi = xr.Dataset(coords={k: obj.coords[k] for k in several})
        self.sampler = Sampler(xr.Dataset(coords=obj.coords).drop_vars(several), pm.source)
        token = uuid.uuid4().hex[:12]
        self.token = token
        self.func_key = f"xpatch-func-{token}"
        self.shared_key = f"xpatch-plan-{token}"
        self.group_name = f"xpatch-group-{token}"
        self.block_name = f"xpatch-block-{token}"
        self._per_position: list[list[tuple[int | None, Any]]] | None = None
        self.layout_known: tuple[ResultSpec, Variables, Meta] | None = None

    def learn_layout(self) -> tuple[ResultSpec, Variables, Meta]:
        """The layout of ``func``'s result and of the blended output, from one dry call.

        ``func`` is called once on the first patch filled with zeros (so that building
        computes nothing), or on the real first patch if it refuses zeros; ``on_chunk``
        once on a zero chunk.
        """
        first = next(self.grid.kept_windows(), self.grid[0])
        cut = self.sampler.plan(first)
        zeros = [
            np.zeros(BlockCut.of(cut, v.dims, v.shape, v.chunks).shape, dtype=v.dtype)  # type: ignore[arg-type]
            for v in data_variables(self.obj)
        ]
        try:
            variables, meta = self._dry_call(
                self.labels.patch(cut_coords(self.sampler.obj, cut), zeros)
            )
        except Exception:  # a func may refuse an all-zero patch: try the real one
            try:
                variables, meta = self._dry_call(Sampler(self.obj, self.grid)(first).compute())
            except Exception as err:
                err.add_note(
                    f"xpatch: raised by func on {first!r}, called once while building the dask"
                    " graph to learn the layout of its result"
                )
                raise
        pm = self.pm
        if self.options.scale is None:
            dims, data = next(iter(variables.values()))
            sizes = {d: n for d, n in zip(dims, data.shape) if d in self.grid.dims}
            found = pm.infer_scale(sizes, first, What(first))
            if found is not None:
                raise Rescaled(found, first.index, None)
        if not pm.identity:
            variables = crop_variables(variables, pm, first, What(first))
            first = pm.target[first.index]
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            spatial_check(variables, dict(zip(self.grid.dims, first.shape)), What(first))
            spec = ResultSpec(self.grid.dims, variables, meta)
            probe = CaptureSink()
            agg = Aggregator.from_plan(self.plan, self.template, probe, spec=spec, threads=1)
            agg.finish_chunk(next(iter(self.layout.touched(first.position))))
        assert probe.meta is not None
        return spec, probe.variables, probe.meta

    def _dry_call(self, patch: Any) -> tuple[Variables, Meta]:
        first, options = next(self.grid.kept_windows(), self.grid[0]), self.options
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if options.batch_size is not None:
                result = self.func(stack([patch], [first], options.batch_dim))
                default = self.labels.default_dims
                default = (options.batch_dim, *default) if default else None
                ((variables, meta),) = list(
                    unbatch(
                        result,
                        1,
                        options.batch_dim,
                        default,
                        options.batch_output_dims,
                        repr(first),
                    )
                )
                return variables, meta
            return split(
                self.func(patch),
                spatial=self.grid.dims,
                default_dims=self.labels.default_dims,
                output_dims=options.blend.output_dims,
                what=f"the result for {first!r}",
            )

    def _group_ranges(self) -> dict[tuple[int, ...], tuple[range, ...]]:
        """Per output block, the grid positions of the windows whose first touched block
        it is (a box of positions; blocks no window starts in have none)."""
        per_axis = []
        for first, n in zip(self.layout.first, self.layout.shape):
            bounds = np.searchsorted(first, np.arange(n + 1))
            per_axis.append([range(int(a), int(b)) for a, b in itertools.pairwise(bounds)])
        groups = {}
        for cpos in self.layout.chunks():
            ranges = tuple(axis[c] for axis, c in zip(per_axis, cpos))
            if all(len(r) for r in ranges):
                groups[cpos] = ranges
        return groups

    def _blocks_read(self, ranges: tuple[range, ...]) -> list[list[tuple[int, ...]]]:
        """Per source variable, the input blocks that the windows in ``ranges`` read."""
        out = []
        for per_axis in self._blocks_per_position():
            per_dim = []
            for i, along in per_axis:
                if i is None:  # a non-spatial dim: every block
                    per_dim.append(along)
                    continue
                used: set[int] = set()
                for p in ranges[i]:
                    used.update(along[p])
                per_dim.append(sorted(used))
            out.append(list(itertools.product(*per_dim)))
        return out

    def _blocks_per_position(self) -> list[list[tuple[int | None, Any]]]:
        """Per source variable and dim: the blocks each window position reads along it
        (a list per grid position), or every block of a non-spatial dim (made once)."""
        if self._per_position is None:
            self._per_position = []
            for v, arr in zip(data_variables(self.obj), self.arrays):
                per_axis: list[tuple[int | None, Any]] = []
                for d, chunks in zip(v.dims, arr.chunks):
                    if d not in self.grid.dims:
                        per_axis.append((None, range(len(chunks))))
                        continue
                    i = self.grid.dims.index(d)
                    edges = np.concatenate([[0], np.cumsum(chunks)])
                    blocks = [
                        [b for b, _ in _axis_pieces(edges, self.sampler.axis_indexer(i, p))[0]]
                        for p in range(len(self.grid.axes[i].starts))
                    ]
                    per_axis.append((i, blocks))
                self._per_position.append(per_axis)
        return self._per_position

    def _area(self, ranges: tuple[range, ...]) -> tuple[dict[Hashable, int], xr.Dataset] | None:
        """The coordinates along several spatial dims over what the windows in ``ranges``
        read, and where that part starts (None if the source has no such coordinate)."""
        if not self.multi.coords:
            return None
        start, box = {}, {}
        for i, (d, r) in enumerate(zip(self.grid.dims, ranges)):
            lo, hi = [], []
            for p in r:
                ix = self.sampler.axis_indexer(i, p)
                lo.append(ix.start if isinstance(ix, slice) else int(np.min(ix)))
                hi.append(ix.stop if isinstance(ix, slice) else int(np.max(ix)) + 1)
            start[d] = min(lo)
            box[d] = slice(min(lo), max(hi))
        return start, self.multi.isel(box, missing_dims="ignore")

    def graph(
        self, layout: tuple[ResultSpec, Variables, Meta] | None = None
    ) -> tuple[dict[Any, Any], Variables, Meta]:
        """The tasks up to the finished blocks (``block_name``), and the output's layout."""
        if layout is None:
            layout = self.layout_known if self.layout_known is not None else self.learn_layout()
        spec, out_vars, out_meta = layout
        reference = {
            name: np.asarray(var.values)
            for name, var in spec.meta.coords.items()
            if var.dims == (name,) and name not in self.grid.dims
        }
        shared = _Shared(
            plan=self.plan,
            spec=spec,
            labels=self.labels,
            sampler=self.sampler,
            chunks=[tuple(tuple(int(n) for n in c) for c in arr.chunks) for arr in self.arrays],
            options=self.options,
            reference=reference,
            pm=self.pm,
            keep=self.keep,
        )
        dsk: dict[Any, Any] = {self.func_key: self.func, self.shared_key: shared}
        groups = self._group_ranges()
        kept = self.grid.kept
        if kept is not None:  # a group whose windows the mask all skips is no task
            shape = self.grid.shape_tuple
            groups = {
                c: r
                for c, r in groups.items()
                if kept.reshape(shape)[tuple(slice(q.start, q.stop) for q in r)].any()
            }
        for cpos, ranges in groups.items():
            block_ids = self._blocks_read(ranges)
            keys = [(arr.name, *key) for arr, ids in zip(self.arrays, block_ids) for key in ids]
            dsk[(self.group_name, *cpos)] = (
                _group_task,
                self.func_key,
                self.shared_key,
                ranges,
                block_ids,
                self._area(ranges),
                *keys,
            )
        # which groups reach each block: their windows touch it
        touching: dict[tuple[int, ...], list[tuple[int, ...]]] = {
            c: [] for c in self.layout.chunks()
        }
        for cpos, ranges in groups.items():
            last = [
                int(self.layout.stop[i][r[-1]]) if len(r) else c
                for i, (r, c) in enumerate(zip(ranges, cpos))
            ]
            for other in itertools.product(*(range(c, e) for c, e in zip(cpos, last))):
                touching[other].append(cpos)
        template = xr.Dataset(coords=self.template.coords, attrs=self.template.attrs)
        on_chunk = self.options.blend.on_chunk is not None
        order = {name: dims for name, (dims, _) in out_vars.items()}
        for cpos in self.layout.chunks():
            region = self.layout.region(cpos)
            dsk[(self.block_name, *cpos)] = (
                _block_task,
                self.shared_key,
                cpos,
                template.isel(region, missing_dims="ignore") if on_chunk else None,
                order,
                *[(self.group_name, *g) for g in touching[cpos]],
            )
        return dsk, out_vars, out_meta

    def build(self) -> xr.DataArray | xr.Dataset:
        """The lazy result."""
        import dask.array as dsa
        from dask.highlevelgraph import HighLevelGraph

        dsk, out_vars, out_meta = self.graph()
        dims_of = self.grid.dims
        lazy = {}
        for name, (dims, data) in out_vars.items():
            out_name = f"xpatch-{self.token}-{name}"
            layer = dict(dsk)
            for cpos in self.layout.chunks():
                idx = tuple(cpos[dims_of.index(d)] if d in dims_of else 0 for d in dims)
                layer[(out_name, *idx)] = (operator.getitem, (self.block_name, *cpos), name)
            chunks_out = tuple(
                tuple(int(n) for n in np.diff(self.layout.edges[dims_of.index(d)]))
                if d in dims_of
                else (int(n),)
                for d, n in zip(dims, data.shape)
            )
            graph = HighLevelGraph.from_collections(out_name, layer, dependencies=self.arrays)
            meta = np.empty((0,) * len(dims), dtype=data.dtype)
            lazy[name] = (dims, dsa.Array(graph, out_name, chunks_out, meta=meta))
        return assemble(lazy, out_meta, self.template, default_name=self.labels.name)


def apply_lazy(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
    pm: PatchMap | None = None,
    keep: Callable[[Any], Any] | None = None,
) -> xr.DataArray | xr.Dataset:
    """Lazy ``apply`` on dask-backed input: returns a dask-backed result at once."""
    return builder(obj, func, grid, options, pm, keep).build()


def builder(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
    pm: PatchMap | None = None,
    keep: Callable[[Any], Any] | None = None,
) -> _GraphBuilder:
    """The graph builder, its layout learnt (the scale too, when none was given)."""
    b = _GraphBuilder(obj, func, grid, options, pm, keep)
    try:
        b.layout_known = b.learn_layout()
    except Rescaled as again:
        pm = PatchMap.make(grid, b.pm.halo, again.scale)
        b = _GraphBuilder(obj, func, grid, options, pm, keep)
        b.layout_known = b.learn_layout()
    return b

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

Where a block's sums are heavy (``THIN_BYTES``), the thin parts of input blocks a
group reads (*strip tasks*) and of a group's sums a neighbour needs (*part tasks*) are
cut where their data lives, so only they move: the block task of a group's own block
cuts the group's parts (so the group's sums are released with that block), and a
data-free dependency on the parts behind orders the groups in a wavefront.

The graph has O(blocks) tasks, each described by a few numbers (the per-window
cuts are made inside the tasks), so it does not grow with the number of patches;
no task holds the full array. The same graph runs on the threaded scheduler or a
``dask.distributed`` cluster.
"""

from __future__ import annotations

import itertools
import math
import uuid
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import xarray as xr

from xpatch._apply import Rescaled, crop_variables, unbatch, weights_hint
from xpatch._dtypes import accumulation_dtype
from xpatch._options import ApplyOptions
from xpatch._patchmap import PatchMap
from xpatch._plan import BlendPlan
from xpatch._rescale import scaled_template
from xpatch._sampling import (
    BlockCut,
    Sampler,
    SourceLabels,
    Strip,
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
from xpatch._tasks import _block_task, _group_task, _part_of, _Shared, _take
from xpatch._tiles import edges_of
from xpatch.aggregate import Aggregator
from xpatch.errors import ResultError, WeightsError
from xpatch.grid import PatchGrid, Window
from xpatch.layout import ChunkLayout


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
        self.strip_name = f"xpatch-strip-{token}"
        self.part_name = f"xpatch-part-{token}"
        self._per_position: list[list[tuple[int | None, Any]]] | None = None
        self.layout_known: tuple[ResultSpec, Variables, Meta] | None = None

    def learn_layout(self) -> tuple[ResultSpec, Variables, Meta]:
        """The layout of ``func``'s result and of the blended output, from one dry call.

        ``func`` is called once on the first patch filled with zeros (so that building
        computes nothing), or on the real first patch if it refuses zeros; ``on_chunk``
        once on a zero chunk.
        """
        first = next(self.grid.kept_windows(), self.grid[0])
        if self.options.template is not None:  # the layout is told: no dry call
            variables, meta = self._from_template(first)
            return self._finish_layout(first, variables, meta)
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
        return self._finish_layout(first, variables, meta)

    def _from_template(self, first: Window) -> tuple[Variables, Meta]:
        """``template=`` (an example result: its dims, non-spatial sizes and coords,
        dtypes) as the result of ``first``: zeros of the shape ``func`` returns there."""
        variables, meta = split(
            self.options.template,
            spatial=self.grid.dims,
            default_dims=self.labels.default_dims,
            output_dims=None,
            what="template",
        )
        batch_dim = self.options.batch_dim if self.options.batch_size is not None else None
        for dims, _ in variables.values():
            if batch_dim in dims:
                raise ResultError(
                    f"template has the batch dim {batch_dim!r}: give func's result for one"
                    f" patch, as if unbatched (e.g. template.isel({batch_dim}=0))"
                )
            if missing := [d for d in self.grid.dims if d not in dims]:
                raise ResultError(
                    f"template lacks the spatial dims {missing}: it has dims {dims}; give an"
                    " example of func's result for one patch, which keeps the patch's spatial"
                    " dims (their sizes do not matter)"
                )
        expected = dict(zip(self.grid.dims, self.pm.expected(first)))
        return {
            name: (
                dims,
                np.zeros([expected.get(d, n) for d, n in zip(dims, data.shape)], data.dtype),
            )
            for name, (dims, data) in variables.items()
        }, meta

    def _finish_layout(
        self, first: Window, variables: Variables, meta: Meta
    ) -> tuple[ResultSpec, Variables, Meta]:
        """The result's spec and the output's layout from one result for ``first``."""
        pm = self.pm
        if self.options.scale is None and self.options.template is None:
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

    def _blocks_read(
        self, ranges: tuple[range, ...], boxes_too: bool = True
    ) -> tuple[list[list[tuple[int, ...]]], list[list[tuple[slice, ...] | None]]]:
        """Per source variable, the input blocks that the windows in ``ranges`` read,
        and of each the box they read (None: all of it, or not asked for)."""
        out, boxes = [], []
        for per_axis, arr in zip(self._blocks_per_position(), self.arrays):
            per_dim, spans = [], []
            for axis, (i, along) in enumerate(per_axis):
                if i is None:  # a non-spatial dim: every block, whole
                    per_dim.append(list(along))
                    spans.append({b: slice(0, arr.chunks[axis][b]) for b in along})
                    continue
                span: dict[int, slice] = {}
                for p in ranges[i]:
                    for b, cut in along[p]:
                        old = span.get(b, cut)
                        span[b] = slice(min(old.start, cut.start), max(old.stop, cut.stop))
                per_dim.append(sorted(span))
                spans.append(span)
            keys = list(itertools.product(*per_dim))
            out.append(keys)
            var_boxes: list[tuple[slice, ...] | None] = []
            if not boxes_too:
                boxes.append([None] * len(keys))
                continue
            for key in keys:
                box = tuple(span[b] for span, b in zip(spans, key))
                whole = all(
                    s.start == 0 and s.stop == arr.chunks[a][b]
                    for a, (s, b) in enumerate(zip(box, key))
                )
                var_boxes.append(None if whole else box)
            boxes.append(var_boxes)
        return out, boxes

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
                    edges = edges_of(chunks)
                    blocks = [
                        _axis_pieces(edges, self.sampler.axis_indexer(i, p))[0]
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
        group_args: dict[tuple[int, ...], Any] = {}
        # thin cuts (strips of input blocks, parts of groups' sums) are tasks of their own
        # only where a block's sums (of func's results, before any on_chunk) are large:
        # there the work per group dwarfs a task's cost; with light blocks it does not
        extent = dict(zip(self.grid.dims, self.layout.chunk_shape(next(self.layout.chunks()))))
        thin = sum(
            math.prod(spec.shape(name, extent)) * accumulation_dtype(spec.dtype[name]).itemsize
            for name in spec.dims
        )
        cuts = thin >= THIN_BYTES
        for cpos, ranges in groups.items():
            block_ids, boxes = self._blocks_read(ranges, boxes_too=cuts)
            keys = []
            for k, (arr, ids, var_boxes) in enumerate(zip(self.arrays, block_ids, boxes)):
                for key, box in zip(ids, var_boxes):
                    if box is None or _share(arr.chunks, key, box) > 0.5:
                        keys.append((arr.name, *key))  # whole, or too little to save
                        continue
                    # a part of a block: cut where the block is, so only it travels
                    strip = (self.strip_name, *cpos, k, *key)
                    dsk[strip] = (Strip.of, (arr.name, *key), box)
                    keys.append(strip)
            group_args[cpos] = (ranges, block_ids, self._area(ranges), keys)
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
        parts_of: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
        self.cut_from: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
        for cpos in self.layout.chunks():
            parts_of[cpos] = []
            for g in sorted(touching[cpos], key=lambda g: g != cpos):  # its own group first
                if g == cpos or not cuts:
                    parts_of[cpos].append((self.group_name, *g))
                    continue
                # the thin part for this block, cut by the block task of the group's own
                # block (which then releases the group's sums) where it ran: only it travels
                key = (self.part_name, *g, *cpos)
                dsk[key] = (_part_of, (self.block_name, *g), cpos)
                parts_of[cpos].append(key)
                self.cut_from.setdefault(g, []).append(key)
        for cpos, (ranges, block_ids, area, keys) in group_args.items():
            # where blocks' sums are large, a group runs after the blocks behind it
            # along each dim: the parts they cut for its block (needed there anyway) are
            # its unused arguments, so groups run in a wavefront and each block can be
            # finished, and its group's sums released, right after its group (with
            # small blocks the held sums are small, and the wavefront's ordering cost
            # 2 workers a tenth of their speed-up on the 2-D benchmark)
            behind = [
                key
                for key in (parts_of[cpos] if cuts else ())
                if sum(a != b for a, b in zip(key[1 : 1 + len(cpos)], cpos)) == 1
            ]
            dsk[(self.group_name, *cpos)] = (
                _group_task,
                self.func_key,
                self.shared_key,
                ranges,
                block_ids,
                area,
                behind,
                *keys,
            )
        for cpos, parts in parts_of.items():
            # with cuts, the block task also cuts its own group's parts for the blocks
            # ahead, so the group's sums are released with the block, whenever dask gets
            # to the parts (dask.order puts a part next to the block that needs it, a
            # slab of blocks later: cut from the group, the group's whole sums waited)
            dsk[(self.block_name, *cpos)] = (
                _block_task,
                self.shared_key,
                cpos,
                template.isel(self.layout.region(cpos), missing_dims="ignore")
                if on_chunk
                else None,
                order,
                cuts and cpos in groups,
                *parts,
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
                layer[(out_name, *idx)] = (
                    _take,
                    (self.block_name, *cpos),
                    name,
                    *self.cut_from.get(cpos, ()),
                )
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


# thin cuts (the part of an input block a group reads, the part of a group's sums a
# neighbouring block needs) are tasks of their own only where a block's sums take at
# least this many bytes (and a strip only where it is at most half its block): a task costs
# about a millisecond of scheduling on a distributed cluster, about as long as moving a
# few MiB between workers on one host, and a graph of light blocks is mostly tasks
THIN_BYTES = 16 * 2**20


def _share(chunks: Any, key: tuple[int, ...], box: tuple[slice, ...]) -> float:
    """The share of input block ``key`` that a cut ``box`` of it holds."""
    whole = math.prod(int(c[b]) for c, b in zip(chunks, key))
    return math.prod(s.stop - s.start for s in box) / max(whole, 1)


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
    try:
        b = _GraphBuilder(obj, func, grid, options, pm, keep)
    except WeightsError as err:
        weights_hint(err, options)
        raise
    try:
        b.layout_known = b.learn_layout()
    except Rescaled as again:
        pm = PatchMap.make(grid, b.pm.halo, again.scale)
        b = _GraphBuilder(obj, func, grid, options, pm, keep)
        b.layout_known = b.learn_layout()
    return b

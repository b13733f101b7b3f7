"""The dask path: ``apply`` on dask-backed input builds a lazy graph.

The graph is built directly, without ``map_overlap``:

- one *patch task* per window (or per batch of windows) depends only on the
  input blocks the window reads, assembles the patch from them and calls
  ``func``;
- one *block task* per output block depends only on the patch tasks whose
  windows touch the block, blends them with their final (separably normalised)
  weights, fills, applies ``on_chunk`` and returns the block.

So every patch is computed once, however many blocks it touches; the graph
grows linearly with patches + blocks; and no task holds the full array. The
same graph runs on the threaded scheduler or a ``dask.distributed`` cluster.
"""

from __future__ import annotations

import operator
import uuid
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from xpatch._apply import _BatchWhere, _call, batches, unbatch
from xpatch._locate import align
from xpatch._options import ApplyOptions
from xpatch._plan import BlendPlan
from xpatch._sampling import BlockCut, Sampler, SourceLabels, cut_coords, stack
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


@dataclass(frozen=True)
class PatchTask:
    """What one patch task needs besides the input blocks (opaque to dask).

    One entry per window in ``windows``; per variable of the source, the cut of
    its blocks (see :class:`~xpatch._sampling.BlockCut`).
    """

    source: SourceLabels
    windows: list[Window]
    coords: list[dict[Hashable, xr.Variable]]
    cuts: list[list[BlockCut]]
    batch_dim: Hashable | None
    output_dims: tuple[Hashable, ...] | None
    batch_output_dims: tuple[Hashable, ...] | None
    reference: dict[Hashable, np.ndarray]  # non-spatial labels every result must have


def _patch_task(func: Callable[[Any], Any], task: PatchTask, *blocks: Any) -> list[Variables]:
    """Assemble the patches of a task, call ``func``, return one result per window."""
    labels = task.source
    n_vars = len(labels.var_names)
    patches = [
        labels.patch(
            task.coords[i],
            [task.cuts[i][k].read(blocks[i * n_vars + k]) for k in range(n_vars)],
        )
        for i in range(len(task.windows))
    ]
    if task.batch_dim is None:
        window = task.windows[0]
        result = _call(func, patches[0], window)
        if isinstance(result, (xr.DataArray, xr.Dataset)):
            coords = task.coords[0]
            expected = {
                d: np.asarray(coords[d].values)
                for d in labels.spatial
                if d in coords and coords[d].dims == (d,)
            }
            result = align(result, {**expected, **task.reference}, What(window))
        variables, _ = split(
            result,
            spatial=labels.spatial,
            default_dims=labels.default_dims,
            output_dims=task.output_dims,
            what=What(window),
            default_sizes=labels.sizes,
        )
        return [variables]
    where = _BatchWhere(task.windows)
    result = _call(func, stack(patches, task.windows, task.batch_dim), where)
    if isinstance(result, (xr.DataArray, xr.Dataset)):
        result = align(result, task.reference, f"func's result for {where}")
    default = (task.batch_dim, *labels.default_dims) if labels.default_dims else None
    unbatched = unbatch(
        result,
        len(task.windows),
        task.batch_dim,
        default,
        task.batch_output_dims,
        str(where),
        labels.sizes,
    )
    return [v for v, _ in unbatched]


def _block_task(
    plan: BlendPlan,
    spec: ResultSpec,
    cpos: tuple[int, ...],
    template: xr.Dataset | None,
    windows: Sequence[Window],
    where: Sequence[tuple[int, int]],
    order: Mapping[Hashable, tuple[Hashable, ...]],
    *task_results: list[Any],
) -> dict[Hashable, np.ndarray]:
    """Blend the patch results touching one output block; return its arrays."""
    sink = CaptureSink()
    agg = Aggregator.from_plan(
        plan, _EMPTY, sink, spec=spec, threads=1, chunk_template=template
    )  # dask runs blocks in parallel already: one thread each
    for window, (t, j) in zip(windows, where):
        agg.add_variables(window, task_results[t][j], spec.meta, only=cpos)
    agg.finish_chunk(cpos)
    return {
        name: np.moveaxis(data, [dims.index(d) for d in order[name]], range(len(dims)))
        for name, (dims, data) in sink.variables.items()
    }


_EMPTY = xr.Dataset()


class _GraphBuilder:
    """Builds the lazy graph of one ``apply`` on dask-backed input."""

    def __init__(
        self,
        obj: xr.DataArray | xr.Dataset,
        func: Callable[[Any], Any],
        grid: PatchGrid,
        options: ApplyOptions,
    ) -> None:
        chunks = options.blend.chunks
        self.layout = ChunkLayout(grid, chunks if chunks is not None else default_chunks(obj, grid))
        if isinstance(obj, xr.Dataset) and any(v.chunks is None for v in obj.data_vars.values()):
            obj = obj.chunk({})  # (after the layout: it follows the dask variables' chunks)
        self.obj, self.func, self.grid, self.options = obj, func, grid, options
        self.plan = BlendPlan.make(grid, options.blend, self.layout)
        self.labels = SourceLabels.of(obj, grid.dims)
        self.arrays = [v.data for v in data_variables(obj)]
        self.skeleton = xr.Dataset(coords=obj.coords)
        self.sampler = Sampler(self.skeleton, grid)
        token = uuid.uuid4().hex[:12]
        self.token = token
        self.func_key = f"xpatch-func-{token}"
        self.plan_key = f"xpatch-plan-{token}"
        self.patch_name = f"xpatch-patch-{token}"
        self.block_name = f"xpatch-block-{token}"

    def cut(self, window: Window) -> tuple[list[Any], list[BlockCut], dict[Hashable, Any]]:
        """The block keys and cuts of every variable for ``window``, and its coords."""
        plan = self.sampler.plan(window)
        coords = cut_coords(self.skeleton, plan)
        keys, cuts = [], []
        for dims, arr in zip(self.labels.var_dims, self.arrays):
            cut = BlockCut.of(plan, dims, arr.shape, arr.chunks)
            keys.append(cut.keys(arr.name))
            cuts.append(cut)
        return keys, cuts, coords

    def task(
        self,
        windows: list[Window],
        batched: bool,
        reference: dict[Hashable, np.ndarray] | None = None,
    ) -> tuple[PatchTask, list[Any]]:
        """The patch task of ``windows`` and the input block keys it reads."""
        all_keys, cuts, coords = [], [], []
        for window in windows:
            keys, cut, crd = self.cut(window)
            all_keys.extend(keys)
            cuts.append(cut)
            coords.append(crd)
        options = self.options
        task = PatchTask(
            source=self.labels,
            windows=windows,
            coords=coords,
            cuts=cuts,
            batch_dim=options.batch_dim if batched else None,
            output_dims=options.blend.output_dims,
            batch_output_dims=options.batch_output_dims,
            reference=reference or {},
        )
        return task, all_keys

    def learn_layout(self) -> tuple[ResultSpec, Variables, Meta]:
        """The layout of ``func``'s result and of the blended output, from one dry call.

        ``func`` is called once on the first patch filled with zeros (so that building
        computes nothing), or on the real first patch if it refuses zeros; ``on_chunk``
        once on a zero chunk.
        """
        first = self.grid[0]
        task, _ = self.task([first], self.options.batch_size is not None)
        zeros = [
            np.zeros(cut.shape, dtype=arr.dtype) for cut, arr in zip(task.cuts[0], self.arrays)
        ]
        try:
            variables, meta = self._dry_call(task.source.patch(task.coords[0], zeros))
        except Exception:
            try:
                variables, meta = self._dry_call(Sampler(self.obj, self.grid)(first).compute())
            except Exception as err:
                err.add_note(
                    f"xpatch: raised by func on {first!r}, called once while building the dask"
                    " graph to learn the layout of its result"
                )
                raise
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            spatial_check(variables, dict(zip(self.grid.dims, first.shape)), What(first))
            spec = ResultSpec(self.grid.dims, variables, meta)
            probe = CaptureSink()
            agg = Aggregator.from_plan(self.plan, self.obj, probe, spec=spec, threads=1)
            agg.finish_chunk((0,) * len(self.grid.dims))
        assert probe.meta is not None
        return spec, probe.variables, probe.meta

    def _dry_call(self, patch: Any) -> tuple[Variables, Meta]:
        first, options = self.grid[0], self.options
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

    def patch_tasks(self, dsk: dict[Any, Any], spec: ResultSpec) -> dict[int, tuple[int, int]]:
        """Add the patch tasks (windows grouped so that batches share output blocks);
        return where each window's result is: (task, position in the task)."""
        grid, batch_size = self.grid, self.options.batch_size
        ordered = (grid[int(i)] for i in self.layout.order())
        groups = (
            [[w] for w in ordered] if batch_size is None else list(batches(ordered, batch_size))
        )
        # the non-spatial labels of the first result: every result must have them
        reference = {
            name: np.asarray(var.values)
            for name, var in spec.meta.coords.items()
            if var.dims == (name,) and name not in grid.dims
        }
        location: dict[int, tuple[int, int]] = {}
        for t, group in enumerate(groups):
            task, keys = self.task(group, batch_size is not None, reference)
            dsk[(self.patch_name, t)] = (_patch_task, self.func_key, task, *keys)
            for j, window in enumerate(group):
                location[window.index] = (t, j)
        return location

    def block_tasks(
        self,
        dsk: dict[Any, Any],
        location: Mapping[int, tuple[int, int]],
        spec: ResultSpec,
        order: Mapping[Hashable, tuple[Hashable, ...]],
    ) -> None:
        """Add one block task per output block, on the patch tasks touching it."""
        template = xr.Dataset(coords=self.obj.coords, attrs=self.obj.attrs)
        on_chunk = self.options.blend.on_chunk is not None
        dsk[self.plan_key] = self.plan
        for cpos in self.layout.chunks():
            windows = self.layout.windows_touching(cpos)
            tasks = sorted({location[w.index][0] for w in windows})
            slot = {t: k for k, t in enumerate(tasks)}
            where = [(slot[location[w.index][0]], location[w.index][1]) for w in windows]
            region = self.layout.region(cpos)
            dsk[(self.block_name, *cpos)] = (
                _block_task,
                self.plan_key,
                spec,
                cpos,
                template.isel(region, missing_dims="ignore") if on_chunk else None,
                windows,
                where,
                order,
                *[(self.patch_name, t) for t in tasks],
            )

    def build(self) -> xr.DataArray | xr.Dataset:
        """The lazy result."""
        import dask.array as dsa
        from dask.highlevelgraph import HighLevelGraph

        spec, out_vars, out_meta = self.learn_layout()
        dsk: dict[Any, Any] = {self.func_key: self.func}
        location = self.patch_tasks(dsk, spec)
        order = {name: dims for name, (dims, _) in out_vars.items()}
        self.block_tasks(dsk, location, spec, order)
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
        return assemble(lazy, out_meta, self.obj, default_name=self.labels.name)


def apply_lazy(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
) -> xr.DataArray | xr.Dataset:
    """Lazy ``apply`` on dask-backed input: returns a dask-backed result at once."""
    return _GraphBuilder(obj, func, grid, options).build()

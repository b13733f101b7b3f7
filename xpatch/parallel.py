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

import copy
import operator
import uuid
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._apply import _BatchWhere, _call, batches, check_apply_args, unbatch
from xpatch._sampling import Sampler, stack
from xpatch._structure import What, split
from xpatch.aggregate import Aggregator
from xpatch.grid import PatchGrid, Window


def is_dask_backed(obj: xr.DataArray | xr.Dataset) -> bool:
    """True if any data variable of ``obj`` is a dask array."""
    variables = [obj.variable] if isinstance(obj, xr.DataArray) else obj.data_vars.values()
    # ``Variable.chunks`` looks at the wrapped array without loading a lazy one
    return any(v.chunks is not None for v in variables)


def default_chunks(
    obj: xr.DataArray | xr.Dataset, grid: PatchGrid
) -> dict[Hashable, tuple[int, ...]]:
    """The input's dask chunks along the spatial dims (first variable that has them)."""
    variables = [obj.variable] if isinstance(obj, xr.DataArray) else list(obj.data_vars.values())
    out: dict[Hashable, tuple[int, ...]] = {}
    for v in variables:
        if v.chunks is None:
            continue
        for d, c in zip(v.dims, v.chunks):
            if d in grid.dims and d not in out:
                out[d] = tuple(int(n) for n in c)
    for d in grid.dims:
        out.setdefault(d, (grid.lengths[d],))
    return out


class _PatchSpec:
    """Everything a patch task needs besides the input blocks (opaque to dask)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _axis_pieces(edges: np.ndarray, ix: Any) -> tuple[list[tuple[int, slice]], Any]:
    """The parts of input blocks one axis of a patch reads, and where the patch lies in them.

    Returns ``(pieces, local)``: ``pieces`` lists ``(block, slice within block)`` in
    order; concatenated they form a compact axis, and ``local`` indexes the patch
    in it (``slice(None)`` for a window inside the array, integer positions for a
    padded one). Only blocks holding needed elements appear, so a wrap-padded patch
    reads the two ends of an axis, not everything in between.
    """
    if isinstance(ix, slice):
        lo, hi = ix.start, ix.stop
        b0 = int(np.searchsorted(edges, lo, side="right") - 1)
        b1 = int(np.searchsorted(edges, hi, side="left"))
        pieces = []
        for b in range(b0, b1):
            e0, e1 = int(edges[b]), int(edges[b + 1])
            pieces.append((b, slice(max(lo, e0) - e0, min(hi, e1) - e0)))
        return pieces, slice(None)
    uniq = np.unique(ix)
    blocks = np.searchsorted(edges, uniq, side="right") - 1
    pieces, starts, offsets = [], {}, {}
    offset = 0
    for b in np.unique(blocks):
        sel = uniq[blocks == b]
        a, z = int(sel.min()), int(sel.max()) + 1
        e0 = int(edges[b])
        pieces.append((int(b), slice(a - e0, z - e0)))
        starts[int(b)], offsets[int(b)] = a, offset
        offset += z - a
    of_ix = np.searchsorted(edges, ix, side="right") - 1
    local = np.array(
        [offsets[int(b)] + int(i) - starts[int(b)] for b, i in zip(of_ix, ix)], dtype=np.intp
    )
    return pieces, local


def _trim(nested: Any, cuts: Sequence[Sequence[slice]], position: tuple[int, ...] = ()) -> Any:
    """Slice every block of a nested list to the part the patch needs."""
    if len(position) == len(cuts):
        return np.asarray(nested)[tuple(c[p] for c, p in zip(cuts, position))]
    return [_trim(sub, cuts, (*position, j)) for j, sub in enumerate(nested)]


def _gather(
    blocks: Any, cuts: Sequence[Sequence[slice]], local: Sequence[Any], masks: Sequence[Any]
) -> np.ndarray:
    """Concatenate the needed parts of the input blocks and cut the patch from them."""
    arr = np.block(_trim(blocks, cuts)) if cuts else np.asarray(blocks)
    for axis, ix in enumerate(local):
        if not isinstance(ix, slice):
            arr = np.take(arr, ix, axis=axis)
    for axis, valid in masks:
        shape = [1] * arr.ndim
        shape[axis] = len(valid)
        arr = np.where(valid.reshape(shape), arr, np.zeros((), dtype=arr.dtype))
    return arr


def _build_patch(spec: _PatchSpec, i: int, data: Sequence[np.ndarray]) -> Any:
    coords = spec.coords[i]
    if spec.kind == "dataarray":
        return xr.DataArray(
            data[0], dims=spec.var_dims[0], coords=coords, name=spec.name, attrs=spec.attrs
        )
    data_vars = {
        k: xr.Variable(dims, arr, attrs=a)
        for k, dims, arr, a in zip(spec.var_names, spec.var_dims, data, spec.var_attrs)
    }
    return xr.Dataset(data_vars, coords=coords, attrs=spec.attrs)


def _patch_task(func: Callable[[Any], Any], spec: _PatchSpec, *blocks: Any) -> list[Any]:
    """Assemble the patches of a task, call ``func``, return one result per window."""
    n_vars = len(spec.var_names)
    patches = []
    for i in range(len(spec.windows)):
        data = [
            _gather(blocks[i * n_vars + k], spec.cuts[i][k], spec.local[i][k], spec.masks[i][k])
            for k in range(n_vars)
        ]
        patches.append(_build_patch(spec, i, data))
    if spec.batch_dim is None:
        window = spec.windows[0]
        result = _call(func, patches[0], window)
        variables, _ = split(
            result,
            spatial=spec.spatial,
            default_dims=spec.default_dims,
            output_dims=spec.output_dims,
            what=What(window),
        )
        return [variables]
    where = _BatchWhere(spec.windows)
    result = _call(func, stack(patches, spec.windows, spec.batch_dim), where)
    default = (spec.batch_dim, *spec.default_dims) if spec.default_dims else None
    return [
        v
        for v, _ in unbatch(
            result, len(spec.windows), spec.batch_dim, default, spec.batch_output_dims, where
        )
    ]


def _block_task(
    agg: Aggregator,
    cpos: tuple[int, ...],
    template: xr.Dataset | None,
    windows: Sequence[Window],
    where: Sequence[tuple[int, int]],
    order: Mapping[Hashable, tuple[Hashable, ...]],
    *task_results: list[Any],
) -> dict[Hashable, np.ndarray]:
    """Blend the patch results touching one output block; return its arrays."""
    added = [(w, task_results[t][j]) for w, (t, j) in zip(windows, where)]
    for window, variables in added:
        agg.check_variables(window, variables)
    out = agg.finish_block(cpos, added, template)
    blocks = {}
    for name, (dims, data) in out.items():
        target = order[name]
        blocks[name] = np.moveaxis(data, [dims.index(d) for d in target], range(len(dims)))
    return blocks


def apply_lazy(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    *,
    weights: Any,
    batch_size: Any,
    batch_dim: Hashable,
    output_dims: Sequence[Hashable] | None,
    chunks: Any,
    on_chunk: Callable[[Any], Any] | None,
    fill_value: Any,
    progress: bool = False,
) -> xr.DataArray | xr.Dataset:
    """Lazy ``apply`` on dask-backed input: returns a dask-backed result at once."""
    import dask.array as dsa
    from dask.highlevelgraph import HighLevelGraph

    batch_size, agg_dims, batch_dims = check_apply_args(
        obj, func, batch_size, batch_dim, output_dims
    )
    out_chunks = chunks if chunks is not None else default_chunks(obj, grid)
    if isinstance(obj, xr.Dataset) and any(v.chunks is None for v in obj.data_vars.values()):
        obj = obj.chunk({})
    agg = Aggregator(
        obj,
        grid,
        weights=weights,
        chunks=out_chunks,
        on_chunk=on_chunk,
        fill_value=fill_value,
        output_dims=agg_dims,
    )
    variables = [obj.variable] if isinstance(obj, xr.DataArray) else list(obj.data_vars.values())
    var_names = [None] if isinstance(obj, xr.DataArray) else list(obj.data_vars)
    arrays = [v.data for v in variables]
    skeleton = xr.Dataset(coords=obj.coords)
    sampler = Sampler(skeleton, grid)
    token = uuid.uuid4().hex[:12]
    func_key = f"xpatch-func-{token}"
    agg_key = f"xpatch-plan-{token}"
    patch_name = f"xpatch-patch-{token}"
    block_name = f"xpatch-block-{token}"
    base_spec = {
        "kind": "dataarray" if isinstance(obj, xr.DataArray) else "dataset",
        "name": obj.name if isinstance(obj, xr.DataArray) else None,
        "attrs": dict(obj.attrs),
        "var_names": var_names,
        "var_dims": [tuple(v.dims) for v in variables],
        "var_attrs": [dict(v.attrs) for v in variables],
        "spatial": grid.dims,
        "default_dims": tuple(obj.dims) if isinstance(obj, xr.DataArray) else None,
        "output_dims": agg_dims,
        "batch_output_dims": batch_dims,
        "batch_dim": None if batch_size is None else batch_dim,
    }

    def cut(
        window: Window,
    ) -> tuple[list[Any], list[Any], list[Any], list[Any], dict[Hashable, Any]]:
        indexers, masks, new_coords = sampler.plan(window)
        coords_ds = skeleton.isel(indexers, missing_dims="ignore")
        if new_coords:
            coords_ds = coords_ds.assign_coords(new_coords)
        coords = {k: v.variable for k, v in coords_ds.coords.items()}
        keys, cuts, local, var_masks = [], [], [], []
        for v, arr in zip(variables, arrays):
            block_ids, axis_cuts, loc = [], [], []
            for axis, d in enumerate(v.dims):
                edges = np.concatenate([[0], np.cumsum(arr.chunks[axis])])
                ix = indexers.get(d, slice(0, int(edges[-1])))
                pieces, where = _axis_pieces(edges, ix)
                block_ids.append([b for b, _ in pieces])
                axis_cuts.append([c for _, c in pieces])
                loc.append(where)
            keys.append(_nested_keys(arr.name, block_ids))
            cuts.append(axis_cuts)
            local.append(loc)
            var_masks.append([(list(v.dims).index(d), m) for d, m in masks])
        return keys, cuts, local, var_masks, coords

    # Dry run: learn the output's dims, dtypes and coords from one call of func
    # on the first patch filled with zeros (so that building computes nothing).
    first = grid[0]
    _, cuts0, local0, masks0, coords0 = cut(first)
    zeros = [np.zeros(first_shape(v, first), dtype=v.dtype) for v in variables]
    dry = _PatchSpec(
        windows=[first],
        coords=[coords0],
        cuts=[cuts0],
        local=[local0],
        masks=[masks0],
        **base_spec,
    )
    dry.batch_dim = None

    def dry_call(patch0: Any) -> tuple[Any, Any]:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if batch_size is not None:
                result0 = func(stack([patch0], [first], batch_dim))
                default = (batch_dim, *obj.dims) if base_spec["default_dims"] else None
                ((v0, m0),) = list(unbatch(result0, 1, batch_dim, default, batch_dims, repr(first)))
                return v0, m0
            return split(
                func(patch0),
                spatial=grid.dims,
                default_dims=base_spec["default_dims"],
                output_dims=agg_dims,
                what=f"the result for {first!r}",
            )

    try:
        vars0, meta0 = dry_call(_build_patch(dry, 0, zeros))
    except Exception:
        # func does not accept a zero patch: learn the layout from the real one
        try:
            vars0, meta0 = dry_call(Sampler(obj, grid)(first).compute())
        except Exception as err:
            err.add_note(
                f"xpatch: raised by func on {first!r}, called once while building the dask"
                " graph to learn the layout of its result"
            )
            raise
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        agg.add_spec(first, vars0, meta0)
        dry_out = agg.fork()
        dry_out._finish(tuple(0 for _ in grid.dims))
        out_vars, out_meta = dry_out._sink.variables, dry_out._sink.meta
    assert out_meta is not None

    # Patch tasks, grouped so that batches hold windows that share output blocks.
    order = agg.chunk_order()
    groups: list[list[Window]] = (
        [[grid[int(i)]] for i in order]
        if batch_size is None
        else list(batches((grid[int(i)] for i in order), batch_size))
    )
    plan = copy.copy(agg)
    plan.detach_coords()  # blocks receive their own region's coordinates
    dsk: dict[Any, Any] = {func_key: func, agg_key: plan}
    location: dict[int, tuple[int, int]] = {}
    for t, group in enumerate(groups):
        all_keys, cts, locs, msks, crds = [], [], [], [], []
        for window in group:
            keys, cuts, local, var_masks, coords = cut(window)
            all_keys.extend(keys)
            cts.append(cuts)
            locs.append(local)
            msks.append(var_masks)
            crds.append(coords)
        spec = _PatchSpec(windows=group, coords=crds, cuts=cts, local=locs, masks=msks, **base_spec)
        dsk[(patch_name, t)] = (_patch_task, func_key, spec, *all_keys)
        for j, window in enumerate(group):
            location[window.index] = (t, j)

    # Block tasks: one per output block, on the patch tasks touching it.
    out_order = {name: dims for name, (dims, _) in out_vars.items()}
    n_blocks = agg.chunk_grid
    for cpos in np.ndindex(*n_blocks):
        windows = agg.windows_touching(cpos)
        tasks = sorted({location[w.index][0] for w in windows})
        slot = {t: k for k, t in enumerate(tasks)}
        where = [(slot[location[w.index][0]], location[w.index][1]) for w in windows]
        dsk[(block_name, *cpos)] = (
            _block_task,
            agg_key,
            cpos,
            agg.region_template(cpos) if on_chunk is not None else None,
            windows,
            where,
            out_order,
            *[(patch_name, t) for t in tasks],
        )

    lazy = {}
    edges = agg.edges
    for name, (dims, data) in out_vars.items():
        out_name = f"xpatch-{token}-{name}"
        layer = dict(dsk)
        for cpos in np.ndindex(*n_blocks):
            idx = tuple(cpos[grid.dims.index(d)] if d in grid.dims else 0 for d in dims)
            layer[(out_name, *idx)] = (operator.getitem, (block_name, *cpos), name)
        chunks_out = tuple(
            tuple(int(n) for n in np.diff(edges[grid.dims.index(d)]))
            if d in grid.dims
            else (int(n),)
            for d, n in zip(dims, data.shape)
        )
        graph = HighLevelGraph.from_collections(out_name, layer, dependencies=arrays)
        meta = np.empty((0,) * len(dims), dtype=data.dtype)
        lazy[name] = (dims, dsa.Array(graph, out_name, chunks_out, meta=meta))
    from xpatch._structure import assemble

    return assemble(lazy, out_meta, obj, default_name=base_spec["name"])


def first_shape(var: xr.Variable, window: Window) -> tuple[int, ...]:
    """Shape of ``var``'s patch for ``window``."""
    size = dict(zip(window.dims, window.shape))
    return tuple(size.get(d, n) for d, n in zip(var.dims, var.shape))


def _nested_keys(name: str, ranges: Sequence[range]) -> Any:
    """Nested lists of block keys over the Cartesian product of block ranges."""
    if not ranges:
        return (name,)

    def build(prefix: tuple[int, ...], rest: Sequence[range]) -> Any:
        if not rest:
            return (name, *prefix)
        return [build((*prefix, b), rest[1:]) for b in rest[0]]

    return build((), ranges)

"""What the tasks of the dask graph run (see :mod:`xpatch.parallel`).

A *group task* computes a box of windows from the input blocks they read and returns
partial sums per output block; a *block task* sums the partial sums of one output
block and finishes it. Both receive one :class:`_Shared` object (the plan, the result
spec, the labels), sent once per graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from dask.sizeof import sizeof

from xpatch._accumulate import Accumulator
from xpatch._apply import _BatchWhere, _call, _keep, batches, crop_variables, unbatch
from xpatch._blend import Blender
from xpatch._finish import ChunkFinisher
from xpatch._locate import align
from xpatch._options import ApplyOptions
from xpatch._patchmap import PatchMap
from xpatch._plan import BlendPlan
from xpatch._sampling import BlockCut, CutPlan, Sampler, SourceLabels, cut_coords, stack
from xpatch._structure import ResultSpec, Variables, What, spatial_check, split
from xpatch.errors import ResultError
from xpatch.grid import Window
from xpatch.layout import Tally


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
    behind: list[Any],
    *blocks: np.ndarray,
) -> dict[tuple[int, ...], tuple[tuple[slice, ...], dict[Hashable, np.ndarray], Any]]:
    """Compute the windows at the grid positions in ``ranges``; return partial sums.

    ``blocks`` are the input blocks the windows read, per variable in the order of
    ``block_ids``; ``area``: the coordinates with several spatial dims (2-D lat/lon)
    over the part of the source the windows read, and where that part starts;
    ``behind`` (unused): the parts the blocks behind this one along each dim cut for
    its block, a dependency that makes groups run in a wavefront. Returns,
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
    acc = Accumulator(
        plan, Blender(threads=1), spec, _frames(layout, [grid[w.index] for w in windows])
    )
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
        try:
            if not pm.identity:
                variables = crop_variables(variables, pm, window, What(window))
                window = grid[window.index]
            spatial_check(variables, dict(zip(grid.dims, window.shape)), What(window))
        except ResultError as err:
            if options.template is not None and options.scale is None:
                err.add_note(
                    "xpatch: with template=, no result tells the scale: if func returns"
                    " patches at another resolution, give scale= as well"
                )
            raise
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
    partials = _partials(acc)
    if dropped:
        partials[DROPPED] = dropped  # type: ignore[assignment]
    return partials


DROPPED = ("dropped",)  # the key of the windows a predicate dropped, in a group's partials


def _frames(layout: Any, windows: Sequence[Window]) -> dict[tuple[int, ...], list[tuple[int, int]]]:
    """Per output block the windows touch, the box of it they reach (per spatial dim,
    [start, stop) within the block): a group task's buffers hold only that much."""
    if not windows:
        return {}
    lo = np.min([[s.start for s in w.slices] for w in windows], axis=0)
    hi = np.max([[s.stop for s in w.slices] for w in windows], axis=0)
    frames = {}
    for w in windows:
        for cpos in layout.touched(w.position):
            if cpos in frames:
                continue
            region = list(layout.region(cpos).values())
            frames[cpos] = [
                (max(int(a), r.start) - r.start, min(int(b), r.stop) - r.start)
                for a, b, r in zip(lo, hi, region)
            ]
    return frames


def _partials(
    acc: Accumulator,
) -> dict[tuple[int, ...], tuple[tuple[slice, ...], dict[Hashable, np.ndarray], Any]]:
    """Each touched block's sums over the box the windows reach (the accumulator's
    buffers hold just that box: only the thin overlaps travel to neighbouring blocks)."""
    frames = acc.frames or {}
    out: dict[Any, Any] = {}
    for cpos, buffers in acc.buffers.items():
        box = tuple(slice(a, b) for a, b in frames[cpos])
        out[cpos] = (box, dict(buffers), acc.weight_sums.get(cpos))
    return out


def _thin(partials: dict[Any, Any], cpos: tuple[int, ...]) -> dict[Any, Any]:
    """What one output block needs of a group's partial sums (its box, the drops)."""
    return {k: v for k, v in partials.items() if k == cpos or k == DROPPED}


def _part_of(block: Finished, cpos: tuple[int, ...]) -> dict[Any, Any]:
    """The part of a group's partial sums that block ``cpos`` needs, from the finished
    block of the group's own block (which cut it)."""
    # a block its group's windows did not reach after all (a predicate dropped them)
    # still learns which windows were dropped
    return block.parts.get(cpos) or block.parts[None]


def _take(block: dict[Hashable, np.ndarray], name: Hashable, *cut: Any) -> np.ndarray:
    """Variable ``name`` of a finished block. ``cut`` (unused): the parts cut with the
    block for the blocks ahead; as dependencies they are taken before the block's
    arrays are used, so the finished block is not held until the blocks ahead run."""
    return block[name]


class Finished(dict):  # type: ignore[type-arg]
    """A finished block's arrays by variable name, and, where its own group reached
    other blocks, the thin parts of the group's sums cut for them (``parts``)."""

    parts: dict[tuple[int, ...] | None, dict[Any, Any]]  # None: the drops, for any block


@sizeof.register(Finished)
def _sizeof_finished(block: Finished) -> int:
    # what a distributed worker counts against its memory limit (and spills by)
    return sum(sizeof(v) for v in block.values()) + sizeof(getattr(block, "parts", {}))


def _block_task(
    shared: _Shared,
    cpos: tuple[int, ...],
    template: xr.Dataset | None,
    order: Mapping[Hashable, tuple[Hashable, ...]],
    cut: bool,
    *partials: dict[tuple[int, ...], Any],
) -> dict[Hashable, np.ndarray]:
    """Sum the partial sums of one output block, finish it and return its arrays.

    With ``cut``, the first of ``partials`` holds the sums of this block's own group
    (every block it reaches): the parts the other blocks need are cut from it and
    returned with the arrays (:class:`Finished`), so the group's sums need not wait for
    them.
    """
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
    finished = Finished(
        (name, np.moveaxis(data, [dims.index(d) for d in order[name]], range(len(dims))))
        for name, (dims, data) in variables.items()
    )
    if cut:
        own = partials[0]
        finished.parts = {c: _thin(own, c) for c in own if c not in (cpos, DROPPED)}
        finished.parts[None] = {DROPPED: own[DROPPED]} if DROPPED in own else {}
    return finished


_EMPTY = xr.Dataset()


def _shift(ix: Any, by: int) -> Any:
    return slice(ix.start + by, ix.stop + by) if isinstance(ix, slice) else ix + by


def _fill_keys(nested: Any, found: Mapping[tuple[int, ...], np.ndarray]) -> Any:
    """Block keys ``(k, *index)`` in a nested list replaced by the blocks."""
    if isinstance(nested, tuple):
        return found[tuple(nested[1:])]
    return [_fill_keys(sub, found) for sub in nested]

"""The accumulation buffers: weighted results summed per chunk of the output.

One :class:`Accumulator` per run holds a buffer per open chunk and variable (in the
accumulation dtype, :mod:`xpatch._dtypes`), the summed custom weights where the
kernel is not separable, and the cached final weights (:mod:`xpatch._placement`).
It adds; the :class:`~xpatch.aggregate.Aggregator` decides what and when, and keeps
the books.
"""

from __future__ import annotations

import itertools
import os
import pickle
import shutil
import tempfile
import weakref
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from xpatch._blend import Blender
from xpatch._dtypes import accumulation_dtype
from xpatch._gather import add_batch_at_once, colours
from xpatch._normalise import place
from xpatch._placement import Placement
from xpatch._plan import BlendPlan
from xpatch._structure import THIS, ResultSpec, Variables
from xpatch.grid import Window
from xpatch.layout import ChunkLayout, ChunkPosition, Tally

__all__ = ["Accumulator"]


class Accumulator:
    """Per-chunk buffers of weighted sums, and how a result is added to them.

    Parameters
    ----------
    plan : BlendPlan
        The run's grid, chunk layout and final weights.
    blender : Blender
        Does the weighted adds (on helper threads for large results).
    spec : ResultSpec, optional
        The result layout, when known; else set once the first result fixed it.
    """

    def __init__(
        self,
        plan: BlendPlan,
        blender: Blender,
        spec: ResultSpec | None = None,
        frames: dict[ChunkPosition, list[tuple[int, int]]] | None = None,
    ) -> None:
        self.plan = plan
        # per chunk, the box [start, stop) per spatial dim that its buffers hold, if not
        # the whole chunk (a dask group task holds only what its windows reach)
        self.frames = frames
        self.dims = plan.grid.dims
        self.blender = blender
        self.spec = spec
        self.placement = Placement(plan.layout, plan.weights)
        self.custom = not plan.weights.separable
        self.zero_weights = plan.weights.has_zeros  # (a custom weight is checked per patch)
        self.buffers: dict[ChunkPosition, dict[Hashable, np.ndarray]] = {}  # open, in memory
        # open chunks beyond the memory budget wait on disk (several chunks only)
        self.spill = Spill(memory_budget()) if not plan.layout.single and not frames else None
        # per open chunk (spilled or not): the box the windows added so far cover, per
        # spatial dim [start, stop) in the chunk; only that part goes to disk
        self.boxes: dict[ChunkPosition, list[tuple[int, int]]] = {}
        self.buffer_bytes = 0  # of the largest chunk's buffers
        self.weight_sums: dict[ChunkPosition, np.ndarray] = {}  # custom weights only
        self._colour_counts: list[int] | None = None

    def budget(self) -> int:
        """Bytes the cached weights may take: a few percent of the output."""
        return self.buffer_bytes // 32

    def new(self, cpos: ChunkPosition) -> dict[Hashable, np.ndarray]:
        """Zeroed buffers for chunk ``cpos``."""
        spec = self.spec
        assert spec is not None
        extent = dict(zip(self.dims, self._shape(cpos)))
        out = {
            name: np.zeros(spec.shape(name, extent), dtype=accumulation_dtype(spec.dtype[name]))
            for name in spec.dims
        }
        self.buffer_bytes = max(self.buffer_bytes, sum(b.nbytes for b in out.values()))
        return out

    def _shape(self, cpos: ChunkPosition) -> tuple[int, ...]:
        """The spatial shape of chunk ``cpos``'s buffers (its frame, if it has one)."""
        if self.frames is not None:
            return tuple(b - a for a, b in self.frames[cpos])
        return self.plan.layout.chunk_shape(cpos)

    def take(
        self, cpos: ChunkPosition, partial: bool
    ) -> tuple[dict[Hashable, np.ndarray], np.ndarray | None]:
        """The buffers and summed custom weight of chunk ``cpos``, to be finished.

        ``partial``: copies, leaving the chunk open; else the chunk's buffers are freed.
        """
        if self.spill is not None and cpos in self.spill:
            self._load(cpos)
        if partial:
            held = self.buffers.get(cpos)
            buffers = {k: v.copy() for k, v in held.items()} if held else self.new(cpos)
            weight_sum = self.weight_sums.get(cpos)
            return buffers, None if weight_sum is None else weight_sum.copy()
        self.boxes.pop(cpos, None)
        buffers = self.buffers.pop(cpos, None) or self.new(cpos)
        return buffers, self.weight_sums.pop(cpos, None)

    def _open(self, cpos: ChunkPosition) -> dict[Hashable, np.ndarray]:
        """The buffers of chunk ``cpos`` in memory: back from disk, or new. Others go to
        disk when the open chunks would pass the memory budget."""
        if self.spill is not None:
            if cpos in self.spill:
                return self._load(cpos)
            self.spill.make_room(self, cpos)
        buffers = self.buffers[cpos] = self.new(cpos)
        return buffers

    def _load(self, cpos: ChunkPosition) -> dict[Hashable, np.ndarray]:
        assert self.spill is not None
        self.spill.make_room(self, cpos)
        parts, weight_part = self.spill.load(cpos)
        box = self.boxes[cpos]
        buffers = self.buffers[cpos] = self.new(cpos)
        for name, part in parts.items():
            buffers[name][self._box_index(name, box, part.ndim)] = part
        if weight_part is not None:
            shape = self.plan.layout.chunk_shape(cpos)
            weight_sum = self.weight_sums[cpos] = np.zeros(shape, dtype=weight_part.dtype)
            weight_sum[tuple(slice(*b) for b in box)] = weight_part
        return buffers

    def trimmed(
        self, cpos: ChunkPosition, buffers: dict[Hashable, np.ndarray], weight_sum: Any
    ) -> tuple[dict[Hashable, np.ndarray], Any]:
        """The part of chunk ``cpos``'s buffers (and custom weight sum) that windows
        have covered so far: views, the rest is zero."""
        box = self.boxes[cpos]
        parts = {name: buf[self._box_index(name, box, buf.ndim)] for name, buf in buffers.items()}
        if weight_sum is not None:
            weight_sum = weight_sum[tuple(slice(*b) for b in box)]
        return parts, weight_sum

    def _box_index(self, name: Hashable, box: list[tuple[int, int]], ndim: int) -> tuple:
        index = [slice(None)] * ndim
        for ax, b in zip(self.spec.axes[name], box):  # type: ignore[union-attr]
            index[ax] = slice(*b)
        return tuple(index)

    def add_single(self, position: tuple[int, ...], data: np.ndarray, background: bool) -> None:
        """One result holding only the spatial dims into the single chunk (the hot path)."""
        buf = self.buffers[(0,) * len(position)][THIS]
        placement = self.placement
        parts = placement.single_parts(position)
        weights = placement.weight(THIS, parts, self.spec.axes[THIS], buf, self.budget())  # type: ignore[union-attr]
        self.blender(
            buf[tuple([pt[1] for pt in parts])],
            data[tuple([pt[0] for pt in parts])],
            weights,
            background,
        )

    def add_batch(
        self,
        windows: Sequence[Window],
        name: Hashable,
        dims: tuple[Hashable, ...],
        data: Any,
        background: bool,
    ) -> bool:
        """``data[1:]`` of a batch into the single chunk at once, if the batch qualifies
        (built-in weights, the spatial dims last; see
        :func:`~xpatch._gather.add_batch_at_once`)."""
        spec = self.spec
        if self.custom or self.zero_weights or spec is None or dims != spec.dims[name]:
            return False
        buf = self.buffers.get((0,) * len(self.dims), {}).get(name)
        axes = spec.axes[name]
        k = len(axes)
        if buf is None or axes != list(range(buf.ndim - k, buf.ndim)):
            return False
        if self._colour_counts is None:
            self._colour_counts = [colours(ax.starts, ax.sizes) for ax in self.plan.grid.axes]
        return add_batch_at_once(
            windows,
            data,
            buf,
            axes,
            name=name,
            weights=self.plan.weights,
            placement=self.placement,
            budget=self.budget(),
            colour_counts=self._colour_counts,
            submit=lambda task: self.blender.submit(task, background),
        )

    def add(
        self,
        window: Window,
        variables: Variables,
        touched: Sequence[ChunkPosition],
        tally: Tally,
        background: bool = False,
    ) -> None:
        """Add the weighted result to each chunk in ``touched`` that is not finished."""
        spec = self.spec
        assert spec is not None
        kernel = self.plan.kernel
        custom_weight = kernel(dict(zip(self.dims, window.shape))) if self.custom else None
        if self.spill is not None:
            self.spill.now(self.plan.layout, window.position)
        for cpos in touched:
            flat = tally.flats.get(cpos)
            if tally.finished[tally.flat(cpos) if flat is None else flat]:
                continue
            parts = self.placement.parts(window.position, cpos)
            if self.frames is not None:  # destinations relative to the chunk's frame
                parts = [
                    (pt[0], slice(pt[1].start - a, pt[1].stop - a), *pt[2:])
                    for pt, (a, _) in zip(parts, self.frames[cpos])
                ]
            buffers = self.buffers.get(cpos)
            if buffers is None:
                buffers = self._open(cpos)
            if self.spill is not None:  # (after opening: a spilled part has the old box)
                box = self.boxes.get(cpos)
                self.boxes[cpos] = (
                    [(pt[1].start, pt[1].stop) for pt in parts]
                    if box is None
                    else [
                        (min(lo, pt[1].start), max(hi, pt[1].stop))
                        for (lo, hi), pt in zip(box, parts)
                    ]
                )
            if custom_weight is not None:
                part_weight = custom_weight[tuple(pt[0] for pt in parts)]
                if cpos not in self.weight_sums:
                    dtype = accumulation_dtype(next(iter(spec.dtype.values())))
                    shape = self._shape(cpos)
                    self.weight_sums[cpos] = np.zeros(shape, dtype=dtype)
                self.weight_sums[cpos][tuple(pt[1] for pt in parts)] += part_weight
            for name, (dims, data) in variables.items():
                buf = buffers[name]
                out_dims = spec.dims[name]
                if dims != out_dims:
                    data = np.moveaxis(
                        data, [dims.index(d) for d in out_dims], range(len(out_dims))
                    )
                axes = spec.axes[name]
                if custom_weight is not None:
                    weights = [place(part_weight, axes, buf.ndim)]
                else:
                    weights = self.placement.weight(name, parts, axes, buf, self.budget())
                zero = self.zero_weights or custom_weight is not None
                if spec.plain[name]:  # the buffer holds the spatial dims only, in order
                    src = tuple(pt[0] for pt in parts)
                    dst = tuple(pt[1] for pt in parts)
                else:
                    src_list: list[slice] = [slice(None)] * buf.ndim
                    dst_list: list[slice] = [slice(None)] * buf.ndim
                    for ax, pt in zip(axes, parts):
                        src_list[ax] = pt[0]
                        dst_list[ax] = pt[1]
                    src, dst = tuple(src_list), tuple(dst_list)
                part = data[src]
                if zero:  # where the weight is 0 the result counts for nothing, NaN or not
                    weights = (
                        [np.prod(np.broadcast_arrays(*weights), axis=0)]
                        if len(weights) > 1
                        else weights
                    )
                    if not weights[0].all():
                        part = np.where(weights[0] == 0, np.zeros((), part.dtype), part)
                self.blender(buf[dst], part, weights, background)


def memory_budget() -> int:
    """Bytes the open chunks' buffers may take in memory: ``XPATCH_MEMORY_BUDGET``
    (bytes, or with a unit: ``"512MB"``, ``"2GiB"``), default 1 GiB."""
    raw = os.environ.get("XPATCH_MEMORY_BUDGET", "").strip()
    if not raw:
        return 1 << 30
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}  # fmt: skip
    number = raw.rstrip("BbIiKkMmGgTt ")
    unit = raw[len(number) :].strip().upper()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(
            f"XPATCH_MEMORY_BUDGET must be a number of bytes (e.g. 2GiB), got {raw!r}"
        ) from None
    return max(int(value), 0)


class Spill:
    """Open chunks' partial sums kept on disk while the run works elsewhere.

    Final weights make partial sums additive: a chunk's buffers can be written out,
    read back when the next window touching it comes, and added to, with the same
    result. Whenever the open chunks would take more than ``budget`` bytes, those
    whose next window comes last go to disk (a scratch folder, removed when the run is
    over): only the box the windows added so far cover, the rest being zero (a chunk
    waiting for its own windows holds sums only in the margins its neighbours' windows
    reach). Peak memory: ``budget`` plus one chunk's buffers plus the patches in flight.

    Which window comes next is read from the run's order (:meth:`ChunkLayout.order
    <xpatch.layout.ChunkLayout.order>`: windows grouped by the first chunk they
    touch, the groups row-major): the next use of a chunk is the first group still to
    come whose windows touch it. Windows added in another order give the same result,
    only with more chunks written out.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.files: dict[ChunkPosition, str] = {}
        self.folder: str | None = None
        self.count = 0  # chunks written out, for tests and reports
        self.group = 0  # row-major rank of the current window's group
        # per axis and chunk index: the sorted first chunks of the windows touching it
        self._groups: list[list[list[int]]] | None = None
        self._strides: list[int] = []

    def __contains__(self, cpos: object) -> bool:
        return cpos in self.files

    def now(self, layout: ChunkLayout, position: tuple[int, ...]) -> None:
        """The window at grid ``position`` is being added: its group is the current one."""
        if self._groups is None:
            self._groups = [
                _groups_touching(first, stop, n)
                for first, stop, n in zip(layout.first, layout.stop, layout.shape)
            ]
            self._strides = [int(np.prod(layout.shape[i + 1 :])) for i in range(len(layout.shape))]
        self.group = sum(
            int(first[p]) * s for first, p, s in zip(layout.first, position, self._strides)
        )

    def next_use(self, cpos: ChunkPosition) -> float:
        """Rank of the first group from the current one on whose windows touch ``cpos``
        (infinite if none is left)."""
        if self._groups is None:
            return 0.0
        best = np.inf
        per_axis = [groups[c] for groups, c in zip(self._groups, cpos)]
        for combo in itertools.product(*per_axis):
            rank = sum(g * s for g, s in zip(combo, self._strides))
            if self.group <= rank < best:
                best = rank
        return best

    def make_room(self, acc: Accumulator, keep: ChunkPosition) -> None:
        """Write the open chunks needed last to disk until one more chunk fits."""
        held = sum(b.nbytes for bufs in acc.buffers.values() for b in bufs.values())
        per_chunk = max(acc.buffer_bytes, 1)
        if held + per_chunk <= self.budget:
            return
        # a blend left to the helper threads may still be writing to a chunk going out
        acc.blender.wait()
        # needed last first; ties (and an unknown order) go by opening order
        opened = list(acc.buffers)
        for cpos in sorted(opened, key=self.next_use, reverse=True):
            if held + per_chunk <= self.budget:
                break
            if cpos == keep:
                continue
            buffers = acc.buffers.pop(cpos)
            held -= sum(b.nbytes for b in buffers.values())
            self._write(cpos, *acc.trimmed(cpos, buffers, acc.weight_sums.pop(cpos, None)))

    def _write(
        self, cpos: ChunkPosition, buffers: dict[Hashable, np.ndarray], weight_sum: Any
    ) -> None:
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="xpatch-spill-")
            weakref.finalize(self, shutil.rmtree, self.folder, True)
        path = os.path.join(self.folder, "_".join(map(str, cpos)) + ".pkl")
        with open(path, "wb") as f:
            pickle.dump((buffers, weight_sum), f, protocol=pickle.HIGHEST_PROTOCOL)
        self.files[cpos] = path
        self.count += 1

    def close(self) -> None:
        """The run is over (it failed): remove the scratch folder now, not when this
        object is collected (a failed run's traceback keeps it alive)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, True)
        self.folder = None
        self.files.clear()

    def load(self, cpos: ChunkPosition) -> tuple[dict[Hashable, np.ndarray], Any]:
        path = self.files.pop(cpos)
        with open(path, "rb") as f:
            buffers, weight_sum = pickle.load(f)
        os.remove(path)
        return buffers, weight_sum


def _groups_touching(first: np.ndarray, stop: np.ndarray, n: int) -> list[list[int]]:
    """Along one axis, per chunk index: the sorted first chunks of the windows touching
    it (``first``/``stop``: per window position, the first chunk and one past the last)."""
    groups: list[set[int]] = [set() for _ in range(n)]
    for lo, hi in zip(first.tolist(), stop.tolist()):
        for c in range(lo, hi):
            groups[c].add(lo)
    return [sorted(g) for g in groups]

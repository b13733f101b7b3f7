"""Where a window's result lands in a chunk, and its final weight there (cached).

Numpy only. The per-window hot path of the aggregator asks two things for each
(window, chunk) pair: which part of the result goes to which part of the chunk, and
the final weight of that part (from :mod:`xpatch._normalise`). Both are cached: parts
per (axis, window position, chunk), weights by the ids of their 1-D factors, so all
interior windows of a regular grid share one N-D weight.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from xpatch._normalise import SeparableWeights, outer
from xpatch.layout import ChunkLayout

__all__ = ["SMALL_BYTES", "Part", "Placement"]

# the cached weights may take 1/32 of the output, and never less than this: next to a
# small output, a few hundred KiB are nothing (and a weight per patch would be rebuilt)
SMALL_BYTES = 1 << 18

# per axis: source slice, destination slice, weight-factor key, factor cut
Part = tuple[slice, slice, tuple[int, int, int], tuple[int, int, int]]


class Placement:
    """Parts and final weights of windows in chunks, cached for the per-window hot path.

    Parameters
    ----------
    layout : ChunkLayout
        The chunks.
    weights : SeparableWeights
        The final per-axis factors.
    """

    def __init__(self, layout: ChunkLayout, weights: SeparableWeights) -> None:
        grid = layout.grid
        self.weights = weights
        self._starts = [ax.starts.tolist() for ax in grid.axes]
        self._sizes = [ax.sizes.tolist() for ax in grid.axes]
        self._edges = [e.tolist() for e in layout.edges]
        self._parts: list[dict[tuple[int, int], Part]] = [{} for _ in grid.axes]
        # with one chunk, the parts are planned per position up front
        self._single = (
            [[self._axis_part(i, p, 0) for p in range(len(s))] for i, s in enumerate(self._starts)]
            if layout.single
            else None
        )
        self._cache: dict[Any, list[np.ndarray]] = {}
        self._cache_bytes = 0

    def _axis_part(self, i: int, p: int, c: int) -> Part:
        """Where window position ``p`` of axis ``i`` meets chunk ``c`` (cached)."""
        s = self._starts[i][p]
        e0, e1 = self._edges[i][c], self._edges[i][c + 1]
        a = s if s > e0 else e0
        b = s + self._sizes[i][p]
        if e1 < b:
            b = e1
        lo, hi = a - s, b - s
        part = (slice(lo, hi), slice(a - e0, b - e0), (self.weights.ids[i][p], lo, hi), (p, lo, hi))
        self._parts[i][(p, c)] = part
        return part

    def parts(self, position: tuple[int, ...], cpos: tuple[int, ...]) -> list[Part]:
        """Per axis: the source slice, the destination slice in chunk ``cpos``, the
        key of the weight factor and the cut of the window's own factor."""
        if self._single is not None:
            return [table[p] for table, p in zip(self._single, position)]
        out = []
        for i, (table, p, c) in enumerate(zip(self._parts, position, cpos)):
            part = table.get((p, c))
            out.append(part if part is not None else self._axis_part(i, p, c))
        return out

    def single_parts(self, position: tuple[int, ...]) -> list[Part]:
        """:meth:`parts` for the one chunk of a single-chunk layout (the hot path)."""
        assert self._single is not None
        return [table[p] for table, p in zip(self._single, position)]

    def weight(
        self,
        name: Hashable,
        parts: Sequence[Part],
        axes: Sequence[int],
        buf: np.ndarray,
        budget: int,
    ) -> list[np.ndarray]:
        """The final weight of a window's part in ``buf``, as arrays whose product it is.

        Windows whose factors are equal share one cached N-D weight. A weight too large
        to cache next to the output (``budget`` bytes) is given as its outermost factor
        times the (cached) product of the others, which the blender multiplies in turn.
        """
        key = (name, *[pt[2] for pt in parts])
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        factors = self.weights.factors
        facs = [factors[i][p][lo:hi] for i, (p, lo, hi) in enumerate(pt[3] for pt in parts)]
        dtype = buf.dtype
        budget = max(budget, SMALL_BYTES)
        nbytes = int(np.prod([len(f) for f in facs])) * dtype.itemsize
        if len(facs) > 1 and nbytes * 4 > budget:
            first_axis = int(np.argmin(axes))
            first = outer([facs[first_axis]], [axes[first_axis]], buf.ndim, dtype)
            rest_key = (key[0], *(k for i, k in enumerate(key[1:]) if i != first_axis), first_axis)
            rest = self._cache.get(rest_key)
            if rest is None:
                others = [i for i in range(len(facs)) if i != first_axis]
                product = outer(
                    [facs[i] for i in others], [axes[i] for i in others], buf.ndim, dtype
                )
                rest = self._keep(rest_key, [product], budget)
            # kept as the pair (counted in full, though ``rest`` is shared): a small
            # output's budget is small, and patches must not rebuild their weight
            return self._keep(key, [first, *rest], budget)
        return self._keep(key, [outer(facs, axes, buf.ndim, dtype)], budget)

    def _keep(self, key: Any, weights: list[np.ndarray], budget: int) -> list[np.ndarray]:
        """Cache ``weights``, evicting the oldest beyond ``budget`` bytes."""
        nbytes = sum(w.nbytes for w in weights)
        while self._cache and self._cache_bytes + nbytes > max(budget, nbytes):
            old = self._cache.pop(next(iter(self._cache)))
            self._cache_bytes -= sum(w.nbytes for w in old)
        self._cache[key] = weights
        self._cache_bytes += nbytes
        return weights

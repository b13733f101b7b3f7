"""Which stored chunks (tiles) each window reads, and which to keep: pure, numpy only.

A lazily opened file is read a stored chunk at a time (a *tile*: the chunk's extent in
every spatial dim, the other dims whole). This module plans, from positions alone:

- :func:`axis_cut`: the tiles a window's indexer reads along one axis, the part of
  each, and where the window lies in their concatenation (its *box*);
- :class:`Cut`: one variable's cut of one window, and :meth:`Cut.assemble`, which
  copies the box from the tiles (a window inside one tile is a view of it);
- :class:`TileSchedule`: which tiles to read and which to drop as the run goes, under
  a byte budget, with the run's window order known in advance: a tile with no later
  use goes at once, and when over budget the tile whose next use comes last goes
  (Belady's rule, optimal for a known order); a tile needed again is read again.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Cut", "TileSchedule", "axis_cut", "edges_of"]

Key = tuple[Hashable, tuple[int, ...]]  # (variable, tile index per axis)


def edges_of(chunks: Sequence[int]) -> np.ndarray:
    """Tile edges along an axis from its chunk lengths.

    >>> edges_of((4, 4, 2)).tolist()
    [0, 4, 8, 10]
    """
    return np.concatenate([[0], np.cumsum(chunks, dtype=np.int64)])


def axis_cut(edges: np.ndarray, ix: Any) -> tuple[tuple[int, ...], tuple[slice, ...], Any, int]:
    """The tiles indexer ``ix`` (a slice, or integer positions) reads along one axis.

    Returns the tiles, the part of each read (a slice within the tile), where the
    window lies in the parts' concatenation (``slice(None)``: all of it, in order; else
    integer positions) and the concatenation's length. Integer positions (a padded
    window) read only the span of their tiles that they touch: a wrapped axis reads
    its two ends, not everything in between.

    >>> e = edges_of((4, 4, 4))
    >>> axis_cut(e, slice(2, 7))
    ((0, 1), (slice(2, 4, None), slice(0, 3, None)), slice(None, None, None), 5)
    >>> tiles, parts, local, n = axis_cut(e, np.array([11, 10, 0, 1]))
    >>> tiles, parts, local.tolist(), n
    ((0, 2), (slice(0, 2, None), slice(2, 4, None)), [3, 2, 0, 1], 4)
    """
    if isinstance(ix, slice):
        lo, hi = int(ix.start), int(ix.stop)
        first = int(np.searchsorted(edges, lo, side="right")) - 1
        stop = max(int(np.searchsorted(edges, hi, side="left")), first + 1)
        tiles = tuple(range(first, stop))
        parts = tuple(
            slice(
                max(lo, int(edges[t])) - int(edges[t]), min(hi, int(edges[t + 1])) - int(edges[t])
            )
            for t in tiles
        )
        return tiles, parts, slice(None), hi - lo
    ix = np.asarray(ix, dtype=np.int64)
    of = np.searchsorted(edges, ix, side="right") - 1
    tiles_, parts_, shift = [], [], np.zeros(len(edges), dtype=np.int64)
    offset = 0
    for t in np.unique(of).tolist():
        sel = ix[of == t]
        a, z = int(sel.min()), int(sel.max()) + 1
        tiles_.append(t)
        parts_.append(slice(a - int(edges[t]), z - int(edges[t])))
        shift[t] = offset - a  # box position = ix + shift
        offset += z - a
    return tuple(tiles_), tuple(parts_), (ix + shift[of]).astype(np.intp), offset


class Cut(NamedTuple):
    """One variable's cut of one window: per axis, the tiles read, the part of each,
    its place in the box, and where the window lies in the box."""

    tiles: tuple[tuple[int, ...], ...]
    parts: tuple[tuple[slice, ...], ...]
    places: tuple[tuple[slice, ...], ...]
    local: tuple[Any, ...]
    shape: tuple[int, ...]

    @classmethod
    def of(cls, axes: Sequence[tuple[tuple[int, ...], tuple[slice, ...], Any, int]]) -> Cut:
        """From :func:`axis_cut` of every axis."""
        places = []
        for _, parts, _, _ in axes:
            at, spans = 0, []
            for p in parts:
                spans.append(slice(at, at + p.stop - p.start))
                at += p.stop - p.start
            places.append(tuple(spans))
        return cls(
            tuple(a[0] for a in axes),
            tuple(a[1] for a in axes),
            tuple(places),
            tuple(a[2] for a in axes),
            tuple(a[3] for a in axes),
        )

    def keys(self) -> list[tuple[int, ...]]:
        """The tiles read, as index tuples."""
        return list(itertools.product(*self.tiles))

    @property
    def whole(self) -> bool:
        """Whether the box is the window (no integer positions along any axis)."""
        return all(type(ix) is slice for ix in self.local)

    def assemble(self, tile: Callable[[tuple[int, ...]], np.ndarray], dtype: Any) -> np.ndarray:
        """The box, from ``tile(index)``: a read-only view of the tile when it lies in
        one, else a fresh array with each tile's part copied in.

        >>> tiles = {(0, 0): np.zeros((2, 2)), (0, 1): np.ones((2, 2))}
        >>> e = edges_of((2, 2))
        >>> cut = Cut.of([axis_cut(e, slice(0, 2)), axis_cut(e, slice(1, 3))])
        >>> cut.assemble(tiles.__getitem__, float)
        array([[0., 1.],
               [0., 1.]])
        """
        if all(len(t) == 1 for t in self.tiles):
            view = tile(tuple(t[0] for t in self.tiles))[tuple(p[0] for p in self.parts)]
            view.flags.writeable = False
            return view
        out = np.empty(self.shape, dtype=dtype)
        for choice in itertools.product(*(range(len(t)) for t in self.tiles)):
            index = tuple(t[c] for t, c in zip(self.tiles, choice))
            part = tuple(p[c] for p, c in zip(self.parts, choice))
            out[tuple(s[c] for s, c in zip(self.places, choice))] = tile(index)[part]
        return out


class TileSchedule:
    """Which tiles to read and drop as a run of known window order goes, under a budget.

    Parameters
    ----------
    needs : sequence of sequences of keys
        The tiles each window reads, in the run's order.
    nbytes : callable
        A tile's size in bytes.
    budget : int
        Bytes of tiles to hold at most; raised to :attr:`floor` (what one window and
        the ``ahead`` windows read ahead of it need together) when below it.
    ahead : int
        Windows whose tiles are requested before the current one is cut.

    Call :meth:`admit` for window ``i + ahead`` before cutting window ``i`` (and for
    the first windows up front), and :meth:`done` after cutting it.

    Examples
    --------
    >>> s = TileSchedule([["a"], ["b"], ["a"]], lambda k: 10, budget=10, ahead=0)
    >>> s.admit(0), s.done(0), s.admit(1), s.done(1), s.admit(2), s.done(2)
    ((['a'], []), [], (['b'], ['a']), ['b'], (['a'], []), ['a'])
    >>> s.reads
    {'a': 2, 'b': 1}
    """

    def __init__(
        self,
        needs: Sequence[Sequence[Hashable]],
        nbytes: Callable[[Hashable], int],
        budget: int,
        ahead: int,
    ) -> None:
        self.needs = [list(dict.fromkeys(n)) for n in needs]
        self.size: dict[Hashable, int] = {}
        self.uses: dict[Hashable, list[int]] = {}
        for i, keys in enumerate(self.needs):
            for key in keys:
                if key not in self.size:
                    self.size[key] = int(nbytes(key))
                    self.uses[key] = []
                self.uses[key].append(i)
        self.ahead = ahead
        self.floor = self._floor()
        self.budget = max(int(budget), self.floor)
        self.next: dict[Hashable, int] = dict.fromkeys(self.uses, 0)  # index into uses
        self.held: set[Hashable] = set()
        self.held_bytes = 0
        self.peak_bytes = 0
        self.peak_tiles = 0
        self.reads: dict[Hashable, int] = {}
        self.heap: list[tuple[int, int, Hashable]] = []  # (-next use, tie, key)
        self.tie = itertools.count()
        self.cursor = 0  # the window being cut

    def _floor(self) -> int:
        """The most bytes the tiles of ``ahead + 1`` consecutive windows take together."""
        count: dict[Hashable, int] = {}
        total = best = 0
        span = self.ahead + 1
        for i, keys in enumerate(self.needs):
            for key in keys:
                count[key] = count.get(key, 0) + 1
                if count[key] == 1:
                    total += self.size[key]
            if i >= span:
                for key in self.needs[i - span]:
                    count[key] -= 1
                    if not count[key]:
                        total -= self.size[key]
            best = max(best, total)
        return best

    def _next_use(self, key: Hashable) -> int | None:
        uses, k = self.uses[key], self.next[key]
        return uses[k] if k < len(uses) else None

    def admit(self, j: int) -> tuple[list[Hashable], list[Hashable]]:
        """The tiles to read for window ``j`` (not held yet) and those to drop first to
        stay within budget (their next use comes last; never one a window from the
        current one to ``j`` reads)."""
        read = [key for key in self.needs[j] if key not in self.held]
        for key in read:
            self.held.add(key)
            self.held_bytes += self.size[key]
            self.reads[key] = self.reads.get(key, 0) + 1
            heapq.heappush(self.heap, (-self._next_use(key), next(self.tie), key))  # type: ignore[operator]
        drop = []
        while self.held_bytes > self.budget and self.heap:
            negative, _, key = self.heap[0]
            if key not in self.held or self._next_use(key) != -negative:
                heapq.heappop(self.heap)  # stale entry
                continue
            if -negative <= j:
                break  # everything left is needed before window j is done
            heapq.heappop(self.heap)
            self._drop(key)
            drop.append(key)
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self.peak_tiles = max(self.peak_tiles, len(self.held))
        return read, drop

    def done(self, i: int) -> list[Hashable]:
        """Window ``i`` is cut: the tiles no later window reads, to drop now."""
        drop = []
        for key in self.needs[i]:
            self.next[key] += 1
            nu = self._next_use(key)
            if nu is None:
                self._drop(key)
                drop.append(key)
            else:
                heapq.heappush(self.heap, (-nu, next(self.tie), key))
        if len(self.heap) > 4 * len(self.held) + 64:  # mostly stale entries: rebuild
            self.heap = [(-self._next_use(k), next(self.tie), k) for k in self.held]  # type: ignore[operator]
            heapq.heapify(self.heap)
        self.cursor = i + 1
        return drop

    def _drop(self, key: Hashable) -> None:
        self.held.discard(key)
        self.held_bytes -= self.size[key]

"""The numerics of instance stitching: which objects a window keeps, how a chunk is
painted, which objects of neighbouring windows are the same, and the final relabel.

No xarray here: labels are numpy arrays in the grid's dim order, windows are the
grid's :class:`~xpatch.grid.Window`. The drivers (eager, zarr, dask) live in
:mod:`xpatch.instances`; they all go through the same three steps:

1. :func:`keep` turns one window's labels into its *piece*: only the objects whose
   bounding-box centre lies in the window's core (the cell of points nearer to its
   centre than to any other window's), renumbered ``1..k``.
2. :func:`stitch_chunk` paints one output chunk from the pieces that touch it (each
   element takes the object of the nearest window centre that has one there) and
   counts, for every pair of overlapping pieces, how the objects of the two meet
   (:class:`Stats`). Ids in a painted chunk are *provisional*:
   ``(window index + 1) << 32 | local id``, unique over the whole grid.
3. :class:`Equivalence` sums the counts of every chunk, merges the objects of two
   windows whose IoU (over the region the two windows share) reaches ``iou``, and
   gives the map from provisional ids to ``1..N``; :func:`relabel` applies it to a
   chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from xpatch.grid import PatchGrid, Window

__all__ = [
    "Cores",
    "Equivalence",
    "Piece",
    "Stats",
    "keep",
    "relabel",
    "smallest_uint",
    "stitch_chunk",
]

SHIFT = np.uint64(32)  # provisional id = (window index + 1) << 32 | local id


def smallest_uint(n: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``n``.

    Examples
    --------
    >>> smallest_uint(255), smallest_uint(256), smallest_uint(70_000)
    (dtype('uint8'), dtype('uint16'), dtype('uint32'))
    """
    for dt in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


class Cores:
    """The core of every window: per axis, the interval between the middles of its
    overlaps with the neighbouring windows. For windows of one size that is the set
    of points nearer to the window's centre than to its neighbours' (a product
    grid's Voronoi cells are boxes, so "nearest centre" is decided axis by axis); for
    the adaptive border's shortened last window it keeps half the overlap on each
    side, so an object no larger than the overlap is still whole in its window.

    Coordinates are those of elements: a window over elements ``s .. s+P-1`` has
    its centre at ``s + (P-1)/2``. Cores are half-open ``[lo, hi)``; the first and
    last reach to infinity.

    Examples
    --------
    >>> cores = Cores(PatchGrid({"x": 20}, {"x": 8}, step=6))
    >>> cores.centres[0].tolist(), cores.bounds[0].tolist()
    ([3.5, 9.5, 15.5], [-inf, 6.5, 12.5, inf])
    """

    def __init__(self, grid: PatchGrid) -> None:
        self.centres: list[np.ndarray] = []
        self.bounds: list[np.ndarray] = []
        for ax in grid.axes:
            starts = np.asarray(ax.starts, dtype=np.float64)
            stops = np.asarray(ax.stops, dtype=np.float64)
            self.centres.append((starts + stops - 1) / 2)
            middles = (starts[1:] + stops[:-1] - 1) / 2  # of each overlap (or gap)
            self.bounds.append(np.concatenate([[-np.inf], middles, [np.inf]]))
        self.kept = grid.kept  # windows a mask skips keep nothing; their cores go to
        self.shape = grid.shape_tuple  # the nearest kept window (see adopts)
        if self.kept is not None:
            self.kept_index = np.flatnonzero(self.kept)
            pos = np.unravel_index(self.kept_index, self.shape)
            self.kept_centres = np.stack([c[p] for c, p in zip(self.centres, pos)], axis=1)

    def centre(self, window: Window) -> tuple[float, ...]:
        """The centre of ``window`` in element coordinates."""
        return tuple(float(c[p]) for c, p in zip(self.centres, window.position))

    def owns(self, window: Window, points: np.ndarray) -> np.ndarray:
        """Mask of ``points`` (n, ndim; element coordinates) inside the core of ``window``."""
        inside = np.ones(len(points), dtype=bool)
        for i, (b, p) in enumerate(zip(self.bounds, window.position)):
            inside &= (points[:, i] >= b[p]) & (points[:, i] < b[p + 1])
        if self.kept is not None and not inside.all():
            inside[~inside] = self.adopts(window, points[~inside])
        return inside

    def adopts(self, window: Window, points: np.ndarray) -> np.ndarray:
        """Mask of ``points`` in the core of a window the mask skips whose nearest kept
        window centre (squared distance; ties: the lower index) is ``window``'s: an
        object a kept window sees there is not lost with the skipped window."""
        if self.kept is None or not len(points):
            return np.zeros(len(points), dtype=bool)
        pos = [
            np.searchsorted(b, points[:, i], side="right") - 1 for i, b in enumerate(self.bounds)
        ]
        skipped = ~self.kept[np.ravel_multi_index(tuple(pos), self.shape)]
        out = np.zeros(len(points), dtype=bool)
        for i in np.flatnonzero(skipped):  # few: objects near the mask's edge
            d2 = ((self.kept_centres - points[i]) ** 2).sum(axis=1)
            out[i] = self.kept_index[int(np.argmin(d2))] == window.index
        return out


@dataclass
class Piece:
    """The objects one window keeps, over the part of it inside one chunk.

    ``box`` is the part, as slices within the chunk; ``labels`` the kept objects
    there, numbered ``1..k`` for the whole window (0 elsewhere); ``centre`` the
    window's centre (element coordinates). ``empty``: no kept object in the part
    (``labels`` is then a zero-stride array of zeros); it still counts, as the region
    its window shares with the others, in the sizes the IoU is taken over.
    """

    index: int
    box: tuple[slice, ...]
    labels: np.ndarray
    centre: tuple[float, ...]
    empty: bool = False


def keep(labels: np.ndarray, window: Window, cores: Cores) -> np.ndarray:
    """The objects of ``labels`` (one window's) whose bounding-box centre lies in the
    window's core, renumbered ``1..k`` in the order of their ids; 0 elsewhere.

    ``labels`` are non-negative integers in the grid's dim order, of the window's
    shape (pad border: the padded shape; elements outside the array are dropped
    later). The dtype is the smallest unsigned one that holds ``k``.

    Examples
    --------
    >>> grid = PatchGrid({"x": 12}, {"x": 8}, step=4)
    >>> labels = np.array([0, 5, 5, 0, 0, 0, 7, 7], dtype=np.int32)
    >>> keep(labels, grid[0], Cores(grid)).tolist()  # 7's centre 6.5 is in window 1's core
    [0, 1, 1, 0, 0, 0, 0, 0]
    """
    if labels.size == 0:
        return np.zeros(labels.shape, dtype=np.uint8)
    top = int(labels.max())
    if top == 0:
        return np.zeros(labels.shape, dtype=np.uint8)
    if top > labels.size:  # sparse ids (e.g. hashes): number them densely first
        _, dense = np.unique(labels, return_inverse=True)
        labels = dense.reshape(labels.shape)
        top = int(labels.max())
    from scipy import ndimage  # (imported when first needed: it costs ~0.4 s)

    boxes = ndimage.find_objects(labels)
    present = np.array([b is not None for b in boxes], dtype=bool)
    ids = np.flatnonzero(present) + 1
    starts = np.array([[s.start for s in window.slices]], dtype=np.float64)
    centres = np.array(
        [[(s.start + s.stop - 1) / 2 for s in b] for b in boxes if b is not None],
        dtype=np.float64,
    ).reshape(len(ids), labels.ndim)
    kept = ids[cores.owns(window, centres + starts)]
    lut = np.zeros(top + 1, dtype=smallest_uint(len(kept)))
    lut[kept] = np.arange(1, len(kept) + 1, dtype=lut.dtype)
    return lut[labels]


def pieces_of(
    kept: np.ndarray,
    window: Window,
    touched: Sequence[tuple[int, ...]],
    edges: Sequence[np.ndarray],
    centre: tuple[float, ...],
) -> dict[tuple[int, ...], Piece]:
    """Cut a window's kept labels into the pieces of the chunks it touches."""
    if not kept.any():  # no object: nothing meets, nothing to count
        return {}
    out = {}
    for cpos in touched:
        box, src = [], []
        for s, e, c in zip(window.slices, edges, cpos):
            lo, hi = max(s.start, int(e[c])), min(s.stop, int(e[c + 1]))
            box.append(slice(lo - int(e[c]), hi - int(e[c])))
            src.append(slice(lo - s.start, hi - s.start))
        part = kept[tuple(src)]
        if not part.size:
            continue
        if part.any():
            out[cpos] = Piece(window.index, tuple(box), part, centre)
        else:  # objects elsewhere in the window: the sizes need this part of it
            zeros = np.broadcast_to(np.zeros((), kept.dtype), part.shape)
            out[cpos] = Piece(window.index, tuple(box), zeros, centre, empty=True)
    return out


@dataclass
class Stats:
    """What one chunk says about how objects meet (provisional ids, uint64).

    ``pairs`` (n, 2) and ``inter`` (n,): elements where object a of one window and
    object b of an overlapping window are both present; ``sizes_of`` (m, 2) =
    (object, other window index) and ``sizes`` (m,): elements of the object inside
    the region its window shares with the other window; ``present``: the ids painted.
    """

    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.uint64))
    inter: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes_of: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.uint64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    present: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def arrays(self) -> dict[str, np.ndarray]:
        """As a mapping of arrays (what :func:`numpy.savez` writes)."""
        return {k: getattr(self, k) for k in ("pairs", "inter", "sizes_of", "sizes", "present")}


def _prov(index: int, local: np.ndarray) -> np.ndarray:
    return (np.uint64(index + 1) << SHIFT) | local.astype(np.uint64)


def stitch_chunk(
    origin: Sequence[int], shape: Sequence[int], pieces: Sequence[Piece]
) -> tuple[np.ndarray, Stats]:
    """Paint one chunk from the pieces that touch it, and count how their objects meet.

    Each element takes the kept object of the window whose centre is nearest (squared
    Euclidean distance in elements; ties: the lower window index); 0 where no piece
    has an object. ``origin`` is the chunk's first element.

    Examples
    --------
    >>> a = Piece(0, (slice(0, 4),), np.array([0, 1, 1, 1], np.uint8), (1.5,))
    >>> b = Piece(1, (slice(2, 6),), np.array([1, 1, 0, 0], np.uint8), (3.5,))
    >>> painted, stats = stitch_chunk((0,), (6,), [a, b])
    >>> (painted >> 32).tolist(), stats.inter.tolist()
    ([0, 1, 1, 2, 0, 0], [2])
    """
    pieces = sorted(pieces, key=lambda p: p.index)
    painted = np.zeros(tuple(shape), dtype=np.uint64)
    best = np.full(tuple(shape), np.inf)
    for p in pieces:
        if p.empty:
            continue
        axes = [
            (np.arange(s.start, s.stop) + o - c) ** 2 for s, o, c in zip(p.box, origin, p.centre)
        ]
        dist = axes[0]
        for a in axes[1:]:
            dist = np.add.outer(dist, a)
        dist = dist.reshape(p.labels.shape)
        take = (p.labels > 0) & (dist < best[p.box])
        best[p.box][take] = dist[take]
        painted[p.box][take] = _prov(p.index, p.labels[take])
    stats = _meetings(pieces)
    nz = painted[painted > 0]
    stats.present = np.unique(nz) if nz.size else np.zeros(0, np.uint64)
    return painted, stats


def _meetings(pieces: Sequence[Piece]) -> Stats:
    pairs, inter, sizes_of, sizes = [], [], [], []
    for p, q in itertools.combinations(pieces, 2):
        if p.empty and q.empty:
            continue
        box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(p.box, q.box))
        if any(s.stop <= s.start for s in box):
            continue
        a = p.labels[tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, p.box))]
        b = q.labels[tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, q.box))]
        both = None if p.empty or q.empty else (a > 0) & (b > 0)
        if both is not None and both.any():
            ka, kb = _prov(p.index, a[both]), _prov(q.index, b[both])
            u, n = np.unique(np.stack([ka, kb], axis=1), axis=0, return_counts=True)
            pairs.append(u)
            inter.append(n)
        # sizes in the shared region count here even where nothing meets: the two
        # objects may meet in another chunk of the same region
        for own, other, labels in ((p, q, a), (q, p, b)):
            if own.empty:
                continue
            ids, counts = np.unique(labels[labels > 0], return_counts=True)
            sizes_of.append(
                np.stack([_prov(own.index, ids), np.full(len(ids), other.index, np.uint64)], 1)
            )
            sizes.append(counts)
    if not sizes:
        return Stats()
    return Stats(
        np.concatenate(pairs) if pairs else np.zeros((0, 2), np.uint64),
        np.concatenate(inter).astype(np.int64) if inter else np.zeros(0, np.int64),
        np.concatenate(sizes_of),
        np.concatenate(sizes).astype(np.int64),
    )


def _summed(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(keys):
        return keys.reshape(0, 2), values
    u, inverse = np.unique(keys, axis=0, return_inverse=True)
    return u, np.bincount(inverse.ravel(), weights=values, minlength=len(u)).astype(np.int64)


class Equivalence:
    """The table of object meetings over all chunks, and the final numbering.

    Objects are merged when ``inter / (size_a + size_b - inter) >= iou``, both sizes
    taken over the region their two windows share (what both windows saw). Memory:
    a few numbers per pair of meeting objects and per painted object.

    Examples
    --------
    >>> eq = Equivalence(0.5)
    >>> a, b = (1 << 32) | 1, (2 << 32) | 1
    >>> eq.add(Stats(np.array([[a, b]], np.uint64), np.array([3]),
    ...              np.array([[a, 1], [b, 0]], np.uint64), np.array([4, 3]),
    ...              np.array([a, b], np.uint64)))
    >>> keys, values = eq.resolve()
    >>> values.tolist()  # 3 / (4 + 3 - 3) = 0.75: one object
    [1, 1]
    """

    def __init__(self, iou: float) -> None:
        self.iou = iou
        self.parts: list[Stats] = []

    def add(self, stats: Stats) -> None:
        self.parts.append(stats)
        if len(self.parts) > 64:  # keep the table summed, not one entry per chunk
            self.parts = [self._compact()]

    def _compact(self) -> Stats:
        cat = {k: np.concatenate([s.arrays()[k] for s in self.parts]) for k in Stats().arrays()}
        pairs, inter = _summed(cat["pairs"].reshape(-1, 2), cat["inter"])
        sizes_of, sizes = _summed(cat["sizes_of"].reshape(-1, 2), cat["sizes"])
        return Stats(pairs, inter, sizes_of, sizes, np.unique(cat["present"]))

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted provisional ids of the painted objects, and their final ids ``1..N``.

        Final ids follow the smallest provisional id of each merged object (window
        order, then the window's own order), so the numbering does not depend on
        ``chunks`` or on the order in which chunks finished.
        """
        total = self._compact()
        present = total.present
        merged = np.zeros((0, 2), np.uint64)
        if len(total.pairs):
            window = (total.pairs >> SHIFT).astype(np.int64) - 1
            size_a = _lookup(total.sizes_of, total.sizes, total.pairs[:, 0], window[:, 1])
            size_b = _lookup(total.sizes_of, total.sizes, total.pairs[:, 1], window[:, 0])
            union = size_a + size_b - total.inter
            merged = total.pairs[total.inter >= self.iou * union]
        nodes = np.unique(np.concatenate([present, merged.ravel()]))
        if not len(present):  # no object: N = 0
            return present, np.zeros(0, smallest_uint(0))
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        ends = np.searchsorted(nodes, merged)
        graph = coo_matrix(
            (np.ones(len(ends), np.int8), (ends[:, 0], ends[:, 1])),
            shape=(len(nodes), len(nodes)),
        )
        _, component = connected_components(graph, directed=False)
        comp = component[np.searchsorted(nodes, present)]
        first_comps, first = np.unique(comp, return_index=True)
        rank = np.empty(len(first_comps), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(1, len(first) + 1)
        final = rank[np.searchsorted(first_comps, comp)]
        return present, final.astype(smallest_uint(int(final.max(initial=0))))


def _lookup(keys: np.ndarray, values: np.ndarray, ids: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``values`` at the rows ``(ids, other)`` of the sorted key table (0 if absent)."""
    view = np.ascontiguousarray(keys).view([("a", np.uint64), ("b", np.uint64)]).ravel()
    want = np.empty(len(ids), dtype=view.dtype)
    want["a"], want["b"] = ids, other.astype(np.uint64)
    at = np.searchsorted(view, want)
    at = np.minimum(at, len(view) - 1)
    found = view[at] == want
    return np.where(found, values[at], 0)


def relabel(painted: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A painted chunk (provisional ids) in the final ids, of ``values``' dtype.

    Examples
    --------
    >>> relabel(np.array([0, 7, 9, 7], np.uint64), np.array([7, 9], np.uint64),
    ...         np.array([2, 1], np.uint8)).tolist()
    [0, 2, 1, 2]
    """
    out = np.zeros(painted.shape, dtype=values.dtype)
    nz = painted != 0
    if nz.any():
        out[nz] = values[np.searchsorted(keys, painted[nz])]
    return out

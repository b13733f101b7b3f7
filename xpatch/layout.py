"""The chunk plan: which chunks of the output each window touches, and in what order.

Pure geometry, like :mod:`xpatch.grid` (numpy only, no xarray, no dask). A
:class:`ChunkLayout` is built once from a grid and the ``chunks`` argument,
before anything is sampled, and every path reads it: the eager driver (the order
of windows), the aggregator (how many windows a chunk still waits for), the dask
graph builder (which windows feed which output block) and the zarr store (which
chunks an interrupted run finished). Nobody asks the aggregator for geometry.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import numpy as np

from xpatch._validate import is_int, positive_int
from xpatch.errors import DimensionError, GridError
from xpatch.grid import PatchGrid

__all__ = ["ChunkLayout", "Tally", "chunk_edges", "chunk_sizes"]

Chunks = int | Mapping[Hashable, Any] | None
ChunkPosition = tuple[int, ...]


def chunk_sizes(chunks: Chunks, grid: PatchGrid) -> dict[Hashable, int]:
    """One positive chunk length per spatial dim (at most the dim's length).

    Regular chunks from 0, as a zarr store has them. Block lengths per dim (as dask
    gives them) are taken if they are regular (all equal, the last one no longer).

    Examples
    --------
    >>> grid = PatchGrid({"y": 10, "x": 7}, {"y": 4, "x": 4})
    >>> chunk_sizes({"y": 5}, grid)
    {'y': 5, 'x': 7}
    >>> chunk_sizes(100, grid)
    {'y': 10, 'x': 7}
    >>> chunk_sizes({"y": (4, 4, 2)}, grid)
    {'y': 4, 'x': 7}
    >>> chunk_sizes({"y": (3, 7)}, grid)
    Traceback (most recent call last):
    ...
    xpatch.errors.GridError: chunks for dim 'y' are the irregular block lengths (3, 7): ...
    ... e.g. chunks={'y': 3}
    """
    raw = _per_dim(chunks, grid)
    out = {}
    for d, value in raw.items():
        if _is_blocks(value):
            blocks = _blocks(value, d, grid.lengths[d])
            first = blocks[0]
            if any(b != first for b in blocks[:-1]) or blocks[-1] > first:
                raise GridError(
                    f"chunks for dim {d!r} are the irregular block lengths {tuple(value)!r}:"
                    f" out= writes regular zarr chunks, so give one length per dim,"
                    f" e.g. chunks={{{d!r}: {first}}}"
                )
            value = first
        # a chunk may be smaller than the patch (a patch then feeds several chunks):
        # with patches large next to the array, only small chunks bound the memory
        out[d] = min(_length(value, d), grid.lengths[d])
    return out


def chunk_edges(chunks: Chunks, grid: PatchGrid) -> dict[Hashable, np.ndarray]:
    """Chunk boundaries per spatial dim.

    ``chunks`` is an int, a mapping dim -> int (regular chunks from 0), or a
    mapping dim -> tuple (or list) of ints (explicit chunk lengths, as dask gives
    them: positive, summing to the dim's length).

    Examples
    --------
    >>> grid = PatchGrid({"x": 10}, {"x": 4})
    >>> chunk_edges(4, grid)["x"]
    array([ 0,  4,  8, 10])
    >>> chunk_edges({"x": (3, 7)}, grid)["x"]
    array([ 0,  3, 10])
    >>> chunk_edges({"x": (-1, 11)}, grid)
    Traceback (most recent call last):
    ...
    xpatch.errors.GridError: chunks for dim 'x' are the block lengths (-1, 11): each must be a
    positive int, got -1; ...
    """
    out = {}
    for d, value in _per_dim(chunks, grid).items():
        length = grid.lengths[d]
        if _is_blocks(value):
            blocks = _blocks(value, d, length)
            out[d] = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)
        else:
            c = min(_length(value, d), length)
            out[d] = np.append(np.arange(0, length, c), length).astype(np.int64)
    return out


def _per_dim(chunks: Chunks, grid: PatchGrid) -> dict[Hashable, Any]:
    """The ``chunks`` argument as one raw value per spatial dim (unchecked values)."""
    if chunks is None:
        return dict(grid.lengths)
    if isinstance(chunks, Mapping):
        unknown = [d for d in chunks if d not in grid.dims]
        if unknown:
            raise DimensionError(
                f"chunks: dims {unknown} are not spatial dims; the spatial dims are {grid.dims}"
            )
        return {d: chunks.get(d, grid.lengths[d]) for d in grid.dims}
    if is_int(chunks):
        return dict.fromkeys(grid.dims, chunks)
    if isinstance(chunks, (tuple, list)):
        example = dict(zip(grid.dims, chunks)) if len(chunks) == len(grid.dims) else None
        example = example or dict.fromkeys(grid.dims, 256)
        raise GridError(
            f"chunks={chunks!r}: give chunks per dim by name, e.g. chunks={example!r}"
            f" (the spatial dims are {grid.dims}), or one int for every dim"
        )
    raise GridError(
        f"chunks must be an int or a mapping dim -> int, got {chunks!r} ({type(chunks).__name__})"
    )


def _is_blocks(value: Any) -> bool:
    return isinstance(value, (tuple, list))


def _length(value: Any, dim: Hashable) -> int:
    if is_int(value) and value == -1:
        raise GridError(
            f"chunks for dim {dim!r} must be a positive int, got -1; for one chunk along"
            f" {dim!r} leave it out of chunks"
        )
    return positive_int(value, "chunks", dim)


def _blocks(value: Any, dim: Hashable, length: int) -> tuple[int, ...]:
    """Check explicit chunk lengths: positive ints summing to the dim's length."""
    what = f"chunks for dim {dim!r} are the block lengths {tuple(value)!r}"
    fix = f"give lengths that sum to the dim's length {length}, or one int for regular chunks"
    if not value:
        raise GridError(f"{what}: none given; {fix}")
    for b in value:
        if not is_int(b) or b < 1:
            raise GridError(f"{what}: each must be a positive int, got {b!r}; {fix}")
    if sum(value) != length:
        raise GridError(
            f"chunks for dim {dim!r} sum to {sum(value)}, not the dim's length {length}"
            f" (block lengths {tuple(value)!r}); {fix}"
        )
    return tuple(int(b) for b in value)


class ChunkLayout:
    """How the output is cut into chunks, and which windows touch each chunk.

    Parameters
    ----------
    grid : PatchGrid
        The windows.
    chunks : int, mapping of hashable to int or to tuple of int, optional
        Chunk lengths per spatial dim (see :func:`chunk_edges`); default one chunk.

    Attributes
    ----------
    grid : PatchGrid
    edges : list of ndarray
        Chunk boundaries along each spatial dim, in the grid's dim order.
    shape : tuple of int
        Number of chunks along each spatial dim.

    Examples
    --------
    >>> grid = PatchGrid({"y": 8, "x": 8}, {"y": 4, "x": 4}, step=2)
    >>> layout = ChunkLayout(grid, 4)
    >>> layout.shape
    (2, 2)
    >>> layout.waiting().tolist()  # windows each chunk waits for
    [[4, 4], [4, 4]]
    >>> layout.region((1, 0))
    {'y': slice(4, 8, None), 'x': slice(0, 4, None)}
    >>> [w.index for w in layout.windows_touching((0, 0))]
    [0, 1, 3, 4]
    """

    def __init__(self, grid: PatchGrid, chunks: Chunks = None) -> None:
        self.grid = grid
        by_dim = chunk_edges(chunks, grid)
        self.edges = [by_dim[d] for d in grid.dims]
        self.shape: ChunkPosition = tuple(len(e) - 1 for e in self.edges)
        # per axis and window position: the first chunk touched and the one past the last
        self.first: list[np.ndarray] = []
        self.stop: list[np.ndarray] = []
        for ax, edges in zip(grid.axes, self.edges):
            lo = np.clip(ax.starts, 0, ax.length)
            hi = np.clip(ax.stops, 0, ax.length)
            self.first.append(np.searchsorted(edges, lo, side="right") - 1)
            self.stop.append(np.searchsorted(edges, hi, side="left"))
        # plain-int copies for the per-window hot path
        self._first_list = [f.tolist() for f in self.first]
        self._stop_list = [s.tolist() for s in self.stop]

    @property
    def single(self) -> bool:
        """True if the output is one chunk (every window touches chunk ``(0, ..., 0)``)."""
        return all(n == 1 for n in self.shape)

    @property
    def size(self) -> int:
        """Number of chunks."""
        return int(np.prod(self.shape))

    def chunks(self) -> Iterator[ChunkPosition]:
        """Every chunk position, row-major."""
        return iter(np.ndindex(*self.shape))

    def waiting(self) -> np.ndarray:
        """Per chunk, how many windows touch it (what a chunk waits for before it is done).

        Windows a mask skips (``grid.kept``) are not waited for.
        """
        kept = self.grid.kept
        if kept is not None:
            return self._kept_waiting(kept)
        counts = np.ones((), dtype=np.int64)
        for first, stop, n in zip(self.first, self.stop, self.shape):
            diff = np.zeros(n + 1, dtype=np.int64)
            np.add.at(diff, first, 1)
            np.add.at(diff, stop, -1)
            counts = np.multiply.outer(counts, np.cumsum(diff[:-1]))
        return counts

    def _kept_waiting(self, kept: np.ndarray) -> np.ndarray:
        """:meth:`waiting` counting only the kept windows: each adds 1 over its box of
        chunks (an N-D difference array, summed along every axis)."""
        k = len(self.shape)
        diff = np.zeros(tuple(n + 1 for n in self.shape), dtype=np.int64)
        positions = np.unravel_index(np.flatnonzero(kept), self.grid.shape_tuple)
        lo = [f[p] for f, p in zip(self.first, positions)]
        hi = [s[p] for s, p in zip(self.stop, positions)]
        for corner in itertools.product((0, 1), repeat=k):
            index = tuple(b if c else a for c, a, b in zip(corner, lo, hi))
            np.add.at(diff, index, (-1) ** sum(corner))
        for axis in range(k):
            diff = np.cumsum(diff, axis=axis)
        return diff[tuple(slice(0, n) for n in self.shape)]

    def touched(self, position: tuple[int, ...]) -> Iterator[ChunkPosition]:
        """The chunks the window at grid ``position`` touches."""
        ranges = [
            range(first[p], stop[p])
            for first, stop, p in zip(self._first_list, self._stop_list, position)
        ]
        return itertools.product(*ranges)

    def order(self) -> np.ndarray:
        """Window indices ordered so that chunks finish as early as possible.

        Windows are sorted by the first chunk they touch (row-major), then by grid
        order: every chunk is finished once the windows of its group are in.
        """
        key = np.zeros((), dtype=np.int64)
        for first, n in zip(self.first, self.shape):
            key = np.add.outer(key * n, first)
        order = np.argsort(key.ravel(), kind="stable")
        kept = self.grid.kept
        return order if kept is None else order[kept[order]]

    def region(self, cpos: ChunkPosition) -> dict[Hashable, slice]:
        """The index-space region of chunk ``cpos``, per spatial dim."""
        return {
            d: slice(int(e[c]), int(e[c + 1])) for d, e, c in zip(self.grid.dims, self.edges, cpos)
        }

    def chunk_shape(self, cpos: ChunkPosition) -> tuple[int, ...]:
        """The spatial shape of chunk ``cpos``."""
        return tuple(int(e[c + 1] - e[c]) for e, c in zip(self.edges, cpos))

    def positions_touching(self, cpos: ChunkPosition) -> list[range]:
        """Per axis, the range of window positions that overlap chunk ``cpos``."""
        ranges = []
        for ax, edges, c in zip(self.grid.axes, self.edges, cpos):
            first, last = ax.touching(np.array([edges[c]]), np.array([edges[c + 1]]))
            ranges.append(range(int(first[0]), int(last[0])))
        return ranges

    def windows_touching(self, cpos: ChunkPosition) -> list[Any]:
        """Every window of the grid that overlaps chunk ``cpos``, in grid order."""
        grid = self.grid
        return [grid[grid.index_of(p)] for p in itertools.product(*self.positions_touching(cpos))]

    def skipped(self, done: np.ndarray) -> np.ndarray:
        """Mask of windows that touch only chunks flagged in ``done`` (resume).

        Such windows need not be computed. Windows that also touch an unfinished
        chunk must still be added; they contribute to the unfinished chunks only.

        Examples
        --------
        >>> layout = ChunkLayout(PatchGrid({"x": 8}, {"x": 4}, step=2), 4)
        >>> layout.skipped(np.array([True, False])).tolist()
        [True, False, False]
        """
        done = np.asarray(done, dtype=bool).reshape(self.shape)
        # a window is skipped if every chunk in its box is done: count the unfinished
        # chunks in each box with an N-D prefix sum of the "not done" flags
        total = np.pad((~done).astype(np.int64), [(1, 0)] * done.ndim)
        for axis in range(done.ndim):
            total = np.cumsum(total, axis=axis)
        lo = np.meshgrid(*self.first, indexing="ij")
        hi = np.meshgrid(*self.stop, indexing="ij")
        count = np.zeros(lo[0].shape, dtype=np.int64) if lo else np.zeros((), np.int64)
        for corner in itertools.product((0, 1), repeat=done.ndim):
            index = tuple(b if c else a for c, a, b in zip(corner, lo, hi))
            sign = (-1) ** (done.ndim - sum(corner))
            count += sign * total[index]
        return (count == 0).ravel()

    def __repr__(self) -> str:
        return f"<ChunkLayout {self.size} chunks {self.shape} over dims {self.grid.dims}>"


class Tally:
    """Which windows were added, how many each chunk still waits for, which are finished.

    Plain buffers (bytearray, array) for the per-window hot path; numpy views of
    them only through :meth:`added_mask` and :meth:`finished_mask`.
    """

    def __init__(self, n_windows: int, waiting: np.ndarray) -> None:
        self.shape = waiting.shape
        self.added = bytearray(n_windows)
        self.n_added = 0
        self.waiting = array("q", waiting.ravel().tolist())
        self.finished = bytearray(waiting.size)
        self._strides = [int(np.prod(self.shape[i + 1 :])) for i in range(len(self.shape))]
        self.flats: dict[ChunkPosition, int] = {}  # chunk position -> flat index

    def flat(self, cpos: ChunkPosition) -> int:
        """Flat index of chunk ``cpos`` (remembered in :attr:`flats`)."""
        flat = self.flats[cpos] = sum(c * s for c, s in zip(cpos, self._strides))
        return flat

    def added_mask(self) -> np.ndarray:
        return np.frombuffer(self.added, dtype=bool)

    def finished_mask(self) -> np.ndarray:
        return np.frombuffer(self.finished, dtype=bool).reshape(self.shape)

    def skip(self, windows: np.ndarray, chunks: np.ndarray) -> None:
        """Count ``windows`` as added and ``chunks`` as finished elsewhere (resume)."""
        self.added_mask()[...] |= windows
        self.finished_mask()[...] |= chunks
        self.n_added = int(self.added_mask().sum())

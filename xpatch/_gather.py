"""Adding many small results together: two optional strategies of the aggregator.

Adding a 32 x 32 patch costs a few numpy calls whatever the patch, so for many small
patches that overhead is most of the work. Both strategies here add many windows with
a few numpy calls, for one chunk and built-in (separable) weights:

- :class:`Gathering`: small *single* results are copied into a buffer laid out as
  the output is, then weighted and added a whole buffer at a time;
- :func:`add_batch_at_once`: the results of a *batch* are weighted at once and added
  through a writeable strided view of the output, one call per group of windows
  that cannot overlap.

Either changes the summation order of overlapping windows, so results change by
float32 rounding only. Numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from xpatch._blend import Blender
from xpatch._normalise import SeparableWeights, outer
from xpatch._placement import SMALL_BYTES, Placement
from xpatch.grid import PatchGrid, Window

__all__ = ["BATCH_BYTES", "Gathering", "add_batch_at_once", "colours"]

BATCH_BYTES = 1 << 16  # patches up to this size are added many at a time
# gathered results: at most this many, in a buffer of at most STAGE_BYTES and
# 1/STAGE_SHARE of the output (or SMALL_BYTES), and only if at least STAGE_MIN fit
STAGE_WINDOWS = 256
STAGE_BYTES = 1 << 19
STAGE_SHARE = 32
STAGE_MIN = 16


def colours(starts: np.ndarray, sizes: np.ndarray) -> int:
    """Along an axis, windows whose positions differ by a multiple of this never overlap.

    Examples
    --------
    >>> colours(np.array([0, 2, 4, 6]), np.array([4, 4, 4, 4]))
    2
    """
    m = 1
    while m < len(starts) and np.any(starts[m:] < starts[:-m] + sizes[:-m]):
        m += 1
    return m


class Gathering:
    """Small single results gathered, then weighted and added together.

    Laid out as the output is: ``segments`` pieces of grid rows (``span`` windows of
    one row, the whole row where it fits), each as one block per colour of the last
    axis (see :func:`colours`) in which the windows of that colour sit side by side
    along the last axis. Windows that tile the output along the last axis (the usual
    half-patch step) then add as one block of long rows: numpy loops over the block's
    rows, not over each patch's. Made by :meth:`plan`, which says whether it pays.
    A result may be gathered if its window is ``inside`` the array and its dtype is
    ``data_dtype``.
    """

    def __init__(
        self,
        grid: PatchGrid,
        weights: SeparableWeights,
        blender: Blender,
        buf: np.ndarray,
        *,
        inside: bytearray,
        shape: tuple[int, ...],
        data_dtype: np.dtype,
        segments: int,
        span: int,
        colours: int,
    ) -> None:
        self.grid, self.weights, self.blender, self.buf = grid, weights, blender, buf
        self.counts = tuple(len(ax.starts) for ax in grid.axes)
        self.last_starts = grid.axes[-1].starts
        self.inside = inside  # per window: inside the array (no part cut off)
        self.data_dtype = data_dtype  # of the results gathered (others are added at once)
        self.segments = segments  # pieces of grid rows held at a time
        self.span = span  # windows per piece
        self.colours = colours
        self.length = length = self.counts[-1]  # windows per grid row
        self.pieces = -(-length // span)  # pieces per grid row
        self.q = q = -(-span // colours)  # places per colour and piece
        *head, self.size = shape
        last = self.size
        dtype = np.result_type(data_dtype, buf.dtype)  # a place holds data * weight
        self.array = np.empty((segments, colours, *head, q * last), dtype=dtype)
        # the place of each window of a piece, as a view made once
        self.slots = [
            [
                piece[s % colours, ..., s // colours * last : (s // colours + 1) * last]
                for s in range(span)
            ]
            for piece in self.array
        ]
        self.local: dict[int, int] = {}  # piece key (see put) -> segment
        self.heads: dict[tuple[int, ...], np.ndarray] = {}  # see _head_factor
        self.tiles: dict[tuple[int, int], np.ndarray] = {}  # see _last_factors
        self.indices: list[int] = []  # the gathered windows
        self.places: list[int] = []  # and where each is: segment * span + place in the piece

    @classmethod
    def plan(
        cls,
        grid: PatchGrid,
        weights: SeparableWeights,
        blender: Blender,
        buf: np.ndarray,
        data: np.ndarray,
        buffer_bytes: int,
    ) -> Gathering | None:
        """A gathering buffer for results like ``data`` into ``buf``, if it pays.

        The caller has checked: one chunk, built-in weights, one patch shape, one
        variable whose spatial dims come last in ``buf``.
        """
        if data.nbytes > BATCH_BYTES or data.dtype.kind not in "biufc":
            return None  # large patches are shared across threads; objects stay objects
        ax = grid.axes[-1]
        m = colours(ax.starts, ax.sizes)
        length = len(ax.starts)
        if 4 * m > length:
            return None  # few windows along the last axis: runs would be too short
        # at most a few percent of the output (as the cached weights), or SMALL_BYTES;
        # a place holds a result as data * weight
        dtype = np.result_type(data.dtype, buf.dtype)
        room = min(STAGE_BYTES, max(buffer_bytes // STAGE_SHARE, SMALL_BYTES))
        n = min(STAGE_WINDOWS, room // max(data.size * dtype.itemsize, 1))
        if min(n, len(grid)) < STAGE_MIN:
            return None
        inside = np.ones((), dtype=bool)
        for a in grid.axes:
            inside = np.logical_and.outer(inside, (a.starts >= 0) & (a.stops <= a.length))
        # whole grid rows if they fit (a flush then cuts no run short; a row takes a
        # whole number of places per colour), else pieces of rows of a whole number
        # of colours
        places = -(-length // m) * m
        span = length if places <= n else n - n % m
        if span == 0:
            return None  # not one window of each colour fits
        return cls(
            grid,
            weights,
            blender,
            buf,
            inside=bytearray(inside.ravel().tobytes()),
            shape=data.shape,
            data_dtype=data.dtype,
            segments=min(n // places, len(grid) // length) if span == length else 1,
            span=span,
            colours=m,
        )

    def put(self, index: int, data: np.ndarray) -> None:
        """Copy one small result (not added before) to its place in the buffer."""
        row, j = divmod(index, self.length)
        key = row * self.pieces + j // self.span
        r = self.local.get(key)
        if r is None:
            if len(self.local) == self.segments:
                self.flush()  # every segment is taken: add them, start afresh
            r = self.local[key] = len(self.local)
        s = j % self.span
        self.slots[r][s][...] = data  # (a safe cast, if any: never a floating-point error)
        self.indices.append(index)
        self.places.append(r * self.span + s)

    def flush(self) -> None:
        """Add the gathered results, on the calling thread.

        (Handing them to a helper thread costs more than it saves: the add is
        mostly Python-level work on small views, so the two threads would take
        turns on the interpreter lock.)

        Every run is added even if one fails (a floating-point error under
        ``np.errstate(...="raise")`` is raised after the ufunc has written its
        output): the gathered windows count as added, so all must be in the
        output. The first error is raised at the end.
        """
        if not self.indices:
            return
        self.blender.wait()
        runs = self._runs()
        self.indices, self.places = [], []
        self.local.clear()
        error: Exception | None = None
        for target, block, factors, source in runs:
            for f in factors:  # the buffer is ours: weighted in place
                try:
                    np.multiply(block, f, out=block)
                except Exception as err:
                    error = error or err
            try:
                np.add(target, source, out=target)
            except Exception as err:
                error = error or err
        if error is not None:
            raise error

    def _runs(self) -> list[tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]]:
        """The gathered windows as runs: an output view, the run's block of the buffer,
        the weight factors for the block and the block's view to add to the output.

        A run holds windows of one segment and colour at consecutive places there, so
        side by side along the last axis of the buffer, and their starts step evenly.
        Where they step by the patch size, the windows tile the output and the run is
        one block of it; else it is a strided view with the windows along a new first
        axis. The weight of a window is the product of its 1-D factors: the block is
        multiplied by that of the axes but the last (one segment, one grid row: the
        same for all), then by the last axis' factors of its windows side by side.
        """
        buf = self.buf
        index = np.array(self.indices)
        r, s = np.divmod(np.array(self.places), self.span)
        m, q, size = self.colours, self.q, self.size
        place = (r * m + s % m) * q + s // m  # in the buffer's colour-major layout
        order = np.argsort(place)
        place, index = place[order], index[order]
        last = index % self.length
        starts = self.last_starts[last]
        step = starts[1:] - starts[:-1]
        joined = (place[1:] - place[:-1] == 1) & (place[1:] // q == place[:-1] // q)
        # a run's starts step evenly (a cut before a pair frees it from the pair before)
        joined[1:] &= (step[1:] == step[:-1]) | ~joined[:-1]
        cuts = np.flatnonzero(~joined) + 1
        k = len(self.grid.dims)
        lead = buf.ndim - k
        shape = self.array.shape[2:-1]  # a window's, but the last axis
        axes = self.grid.axes
        runs = []
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(order)]):
            n = b - a
            group, first = divmod(int(place[a]), q)
            block = self.array[(*divmod(group, m), ..., slice(first * size, (first + n) * size))]
            position = [int(p) for p in np.unravel_index(int(index[a]), self.counts)]
            tile = self._last_factors(int(last[a]), group % m, buf.dtype)
            factors = [tile[first * size : (first + n) * size]]
            if k > 1:
                factors.insert(0, self._head_factor(position[:-1], lead, buf.dtype))
            corner = [int(axes[i].starts[p]) for i, p in enumerate(position)]
            by = int(step[a]) if n > 1 else size
            if by == size:  # side by side in the output too
                key = (
                    *(slice(None),) * lead,
                    *(slice(c, c + w) for c, w in zip(corner, shape[lead:])),
                    slice(corner[-1], corner[-1] + n * size),
                )
                runs.append((buf[key], block, factors, block))
                continue
            offset = sum(c * st for c, st in zip(corner, buf.strides[lead:]))
            target = np.ndarray(
                (n, *shape, size),
                dtype=buf.dtype,
                buffer=buf,
                offset=offset,
                strides=(by * buf.strides[-1], *buf.strides),
            )
            source = np.moveaxis(block.reshape(*shape, n, size), -2, 0)
            runs.append((target, block, factors, source))
        return runs

    def _head_factor(self, head: list[int], lead: int, dtype: np.dtype) -> np.ndarray:
        """The weight factor of the axes but the last of a grid row (cached), in the
        output's dtype as every weight."""
        key = tuple(self.weights.ids[i][p] for i, p in enumerate(head))
        factor = self.heads.get(key)
        if factor is None:
            if len(self.heads) >= 256:
                self.heads.clear()
            facs = [self.weights.factors[i][p] for i, p in enumerate(head)]
            axes = [lead + i for i in range(len(head))]
            factor = self.heads[key] = outer(facs, axes, lead + len(head) + 1, dtype)
        return factor

    def _last_factors(self, j: int, colour: int, dtype: np.dtype) -> np.ndarray:
        """The last axis' weight factors of the windows of a segment and colour, side by
        side as in the buffer (cached), for the segment of window position ``j`` along
        the last axis."""
        piece = j // self.span
        factors = self.tiles.get((piece, colour))
        if factors is None:
            size = self.size
            factors = np.zeros(self.q * size, dtype=dtype)  # (places no window takes: 0)
            for t, s in enumerate(range(colour, self.span, self.colours)):
                p = piece * self.span + s
                if p < self.length:
                    factors[t * size : (t + 1) * size] = self.weights.factors[-1][p]
            self.tiles[(piece, colour)] = factors
        return factors


def add_batch_at_once(
    windows: Sequence[Window],
    data: Any,
    buf: np.ndarray,
    axes: Sequence[int],
    *,
    name: Hashable,
    weights: SeparableWeights,
    placement: Placement,
    budget: int,
    colour_counts: Sequence[int],
    submit: Callable[[Callable[[], None]], None],
) -> bool:
    """Vectorised add of ``data[1:]`` (one result per window) to the one chunk ``buf``.

    Windows are grouped so that windows of a group never overlap (positions that
    differ by a multiple of the axis' colour count along some axis), and each group
    is one vectorised add through a writeable strided view of ``buf``. Returns False
    (and adds nothing) if the batch does not qualify: large patches, or windows
    reaching past the array. ``colour_counts``: :func:`colours` of each axis.
    """
    k = len(axes)
    shape = windows[0].shape
    if np.prod(shape) * buf.itemsize > BATCH_BYTES:
        return False  # large patches: the per-window path shares them across threads
    grid_axes = weights.grid.axes
    positions = np.array([w.position for w in windows])
    starts = np.stack([grid_axes[i].starts[positions[:, i]] for i in range(k)], axis=1)
    lengths = np.array([ax.length for ax in grid_axes])
    if (starts < 0).any() or (starts + np.array(shape) > lengths).any():
        return False  # windows reaching past the array (pad border) are clipped
    # windows inside the array whose normalised factors are equal share one weight
    _, first, inverse = np.unique(
        weights.codes(positions.T), return_index=True, return_inverse=True
    )
    distinct = []
    for j in first:
        parts = placement.parts(windows[j].position, (0,) * k)
        w = placement.weight(name, parts, axes, buf, budget)
        distinct.append(w[0] if len(w) == 1 else np.prod(np.broadcast_arrays(*w), axis=0))
    stacked = np.stack(distinct) if len(distinct) > 1 else None
    view = np.lib.stride_tricks.sliding_window_view(buf, shape, axis=axes, writeable=True)
    lead = buf.ndim - k
    colour = np.zeros(len(windows), dtype=np.int64)
    for i, m in enumerate(colour_counts):
        colour = colour * m + positions[:, i] % m

    def add() -> None:
        # one vectorised add per group of windows that cannot overlap (temporaries
        # of a group's size only)
        for c in np.unique(colour):
            sel = np.flatnonzero(colour == c)
            w = distinct[0] if stacked is None else stacked[inverse[sel]]
            contrib = np.multiply(data[sel + 1], w)  # promoted as in the per-window path
            index = (*(slice(None),) * lead, *(starts[sel, i] for i in range(k)))
            view[index] += np.moveaxis(contrib, 0, lead)

    submit(add)
    return True

"""Weighted accumulation of patch results into chunks of the output.

The :class:`Aggregator` is the only place that does arithmetic on patch results.
It receives each patch result once, multiplies it by its final weight and adds it
to every chunk of the output that the patch touches. Built-in kernels are
normalised per axis in advance (separable normalisation), so a chunk is finished
the moment its last patch lands: no weight map, no division pass. A chunk that is
finished is filled where no patch covers it, handed to ``on_chunk``, written to
the output and freed.
"""

from __future__ import annotations

import copy
import itertools
from array import array
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._blend import BLOCK_BYTES, THREAD_BYTES, Blender, sole_owner
from xpatch._chunks import (
    _DEFAULT,
    Variables,
    _Capture,
    _fill,
    _fmt,
    _MemorySink,
    _outer,
    _place,
    _start_coordinates,
    accumulation_dtype,
    blended_dtype,
    chunk_edges,
    default_fill,
)
from xpatch._structure import THIS, Meta, What, assemble, spatial_check, split, to_numpy
from xpatch.errors import (
    AggregationError,
    DimensionError,
    IncompleteError,
    PatchError,
    ResultError,
    WeightsError,
)
from xpatch.grid import PatchGrid, Window
from xpatch.weights import CustomWeights, Kernel, WeightsLike, resolve

__all__ = ["Aggregator"]

BATCH_BYTES = 1 << 16  # patches up to this size are added a whole batch at a time
# small single results are gathered and added together: at most this many, in a
# buffer of at most STAGE_BYTES and 1/STAGE_SHARE of the output (or SMALL_BYTES),
# and only if at least STAGE_MIN fit
STAGE_WINDOWS = 256
STAGE_BYTES = 1 << 19
STAGE_SHARE = 32
STAGE_MIN = 16
# the cached weights and the gathering buffer may take 1/32 of the output each, and
# never less than this: next to a small output, a few hundred KiB are nothing
SMALL_BYTES = 1 << 18

# per axis: source slice, destination slice, weight-factor key, factor cut
_Part = tuple[slice, slice, tuple[int, int, int], tuple[int, int, int]]


class Aggregator:
    """Blend patch results back into an array with the source's coordinates.

    Usually made by ``obj.patch.aggregator(...)`` for a hand-written loop; the
    accessor's ``apply`` uses one internally.

    Parameters
    ----------
    template : DataArray or Dataset
        The source array: its spatial dims, lengths and coordinates label the result.
        Its data is never read.
    grid : PatchGrid
        The grid of windows whose results are added.
    weights : str, Kernel, array-like or callable, default: "gaussian"
        Blending weights (see :mod:`xpatch.weights`).
    chunks : int or mapping of hashable to int, optional
        Aggregation regions per spatial dim; default one region covering everything.
    on_chunk : callable, optional
        Called once per finished chunk with the normalised chunk (DataArray or
        Dataset with coordinates); returns what is written instead.
    fill_value : scalar, optional
        Value of elements no patch covers; default NaN, or 0 for integer results.
    output_dims : sequence of hashable, optional
        Dims of bare-array results; default the source's dims.
    sink : object, optional
        Where finished chunks go (internal; ``out=`` of the accessor sets a zarr
        sink). Default: memory.

    Attributes
    ----------
    grid : PatchGrid
        The grid whose windows are added.
    kernel : Kernel or CustomWeights
        The resolved blending weights.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xpatch
    >>> da = xr.DataArray(np.arange(12.0).reshape(3, 4), dims=("y", "x"))
    >>> agg = da.patch.aggregator(y=3, x=2, step=1, weights="mean")
    >>> for window, patch in zip(agg.grid, da.patch.sample(y=3, x=2, step=1)):
    ...     agg.add(patch * 10, window)
    >>> agg.result().values
    array([[  0.,  10.,  20.,  30.],
           [ 40.,  50.,  60.,  70.],
           [ 80.,  90., 100., 110.]])
    """

    def __init__(
        self,
        template: xr.DataArray | xr.Dataset,
        grid: PatchGrid,
        *,
        weights: WeightsLike = "gaussian",
        chunks: int | Mapping[Hashable, int] | None = None,
        on_chunk: Callable[[Any], Any] | None = None,
        fill_value: Any = _DEFAULT,
        output_dims: Sequence[Hashable] | None = None,
        sink: Any = None,
    ) -> None:
        self.grid = grid
        self.dims = grid.dims
        self.kernel: Kernel | CustomWeights = resolve(weights, grid.dims)
        self._custom = isinstance(self.kernel, CustomWeights)
        if isinstance(self.kernel, CustomWeights):  # validate every patch shape up front
            for shape in itertools.product(*(np.unique(s) for s in grid.sizes.values())):
                self.kernel(dict(zip(grid.dims, shape)))
        if on_chunk is not None and not callable(on_chunk):
            raise TypeError(f"on_chunk must be callable, got {type(on_chunk).__name__}")
        if output_dims is not None:
            output_dims = tuple(output_dims)
            missing = [d for d in grid.dims if d not in output_dims]
            if missing:
                raise DimensionError(f"output_dims {output_dims} lacks the spatial dims {missing}")
        self.output_dims = output_dims
        self.on_chunk = on_chunk
        if fill_value is not _DEFAULT:
            value = np.asarray(fill_value)
            if value.ndim != 0 or value.dtype.kind not in "biufc":
                raise PatchError(f"fill_value must be a number (or NaN), got {fill_value!r}")
        self.fill_value = fill_value
        self._chunk_edges = chunk_edges(chunks, grid)
        self._template = xr.Dataset(coords=template.coords, attrs=template.attrs)
        self._block_template: xr.Dataset | None = None
        self._name = template.name if isinstance(template, xr.DataArray) else None
        self._default_dims = tuple(template.dims) if isinstance(template, xr.DataArray) else None
        self._start_coords = _start_coordinates(template, grid)
        self._plan_weights()
        self._plan_chunks()
        self._sink = sink if sink is not None else _MemorySink(grid.lengths)
        self._n_added = 0
        self._spec: dict[Hashable, tuple[tuple[Hashable, ...], dict[Hashable, int], np.dtype]] = {}
        self._axes_of: dict[Hashable, list[int]] = {}
        self._plain: dict[Hashable, bool] = {}
        self._lean: tuple[type, tuple[Hashable, ...]] | None = None
        self._single_plain = False
        self._uniform: tuple[int, ...] | None = None
        self._stage: _Stage | None = None
        self._expected: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._n_colours: dict[int, int] = {}
        self._meta: Meta | None = None
        self._out_meta: Meta | None = None
        self._buffers: dict[tuple[int, ...], dict[Hashable, np.ndarray]] = {}
        self._wmaps: dict[tuple[int, ...], np.ndarray] = {}
        self._set_flags(np.zeros(len(grid), dtype=bool), np.zeros(self._outstanding.shape, bool))

    # --- planning ------------------------------------------------------------
    def _plan_weights(self) -> None:
        """Per-axis kernels normalised by their per-axis sums (separable normalisation)."""
        self._factors: list[list[np.ndarray]] = []
        self._factor_ids: list[list[int]] = []
        self._weight_cache: dict[Any, list[np.ndarray]] = {}
        self._cache_bytes = 0
        self._buffer_bytes = 0
        self._blend = Blender()
        self._covered: list[np.ndarray] = []
        separable = isinstance(self.kernel, Kernel)
        for ax in self.grid.axes:
            before, after = ax.pad_width
            raw = [self.kernel.factor(int(n)) if separable else np.ones(int(n)) for n in ax.sizes]
            denom = np.zeros(ax.length + before + after)
            for s, f in zip(ax.starts, raw):
                denom[s + before : s + before + len(f)] += f
            covered = ax.coverage() > 0
            if np.any(covered & ~(denom[before : before + ax.length] > 0)):
                raise WeightsError(
                    f"weights={self.kernel!r}: the kernel is 0 (underflows) over elements of dim"
                    f" {ax.dim!r} that patches cover, so they cannot be blended; use a wider"
                    " kernel (e.g. a larger gaussian sigma)"
                )
            self._covered.append(covered)
            if separable:
                factors = [
                    f / denom[s + before : s + before + len(f)] for s, f in zip(ax.starts, raw)
                ]
            else:
                factors = raw
            self._factors.append(factors)
            ids: list[int] = []
            seen: dict[bytes, int] = {}
            for f in factors:
                ids.append(seen.setdefault(f.tobytes(), len(seen)))
            self._factor_ids.append(ids)

    def _plan_chunks(self) -> None:
        """Per-axis chunk edges, the chunks each patch touches, and patches per chunk."""
        self._edges: list[np.ndarray] = []
        self._chunk_ranges: list[tuple[np.ndarray, np.ndarray]] = []
        counts = []
        for ax in self.grid.axes:
            edges = self._chunk_edges[ax.dim]
            lo = np.searchsorted(edges, np.clip(ax.starts, 0, ax.length), side="right") - 1
            hi = np.searchsorted(edges, np.clip(ax.stops, 0, ax.length), side="left")
            n_chunks = len(edges) - 1
            diff = np.zeros(n_chunks + 1, dtype=np.int64)
            np.add.at(diff, lo, 1)
            np.add.at(diff, hi, -1)
            self._edges.append(edges)
            self._chunk_ranges.append((lo, hi))
            counts.append(np.cumsum(diff[:-1]))
        outstanding = np.ones((), dtype=np.int64)
        for cnt in counts:
            outstanding = np.multiply.outer(outstanding, cnt)
        # numpy views of plain buffers: the per-patch hot path reads and writes them
        # with cheap Python indexing, everything else with numpy
        self._outstanding_a = array("q", outstanding.ravel().tolist())
        self._outstanding = np.frombuffer(self._outstanding_a, dtype=np.int64).reshape(
            outstanding.shape
        )
        # with a single chunk every window touches chunk (0, ..., 0)
        self._single = [(0,) * len(counts)] if outstanding.size == 1 else None
        # plain-int copies for the per-patch hot path
        self._starts_l = [ax.starts.tolist() for ax in self.grid.axes]
        self._sizes_l = [ax.sizes.tolist() for ax in self.grid.axes]
        self._edges_l = [e.tolist() for e in self._edges]
        self._lengths_l = [ax.length for ax in self.grid.axes]
        self._lo_l = [lo.tolist() for lo, _ in self._chunk_ranges]
        self._hi_l = [hi.tolist() for _, hi in self._chunk_ranges]
        self._parts: list[dict[tuple[int, int], _Part]] = [{} for _ in self.grid.axes]
        self._starts_a = [ax.starts for ax in self.grid.axes]
        self._ids_a = [np.asarray(ids) for ids in self._factor_ids]
        self._lengths_a = np.array(self._lengths_l)
        self._counts = tuple(len(starts) for starts in self._starts_l)  # windows per axis
        self._single_parts = (
            [
                [self._axis_part(i, p, 0) for p in range(len(ax.starts))]
                for i, ax in enumerate(self.grid.axes)
            ]
            if self._single is not None
            else []
        )

    def _axis_part(self, i: int, p: int, c: int) -> _Part:
        """Where window position ``p`` of axis ``i`` meets chunk ``c`` (cached).

        Returns the source slice, the destination slice in the chunk, the key of
        the weight factor (windows with equal normalised factors share it) and
        the cut of the window's own factor.
        """
        s = self._starts_l[i][p]
        e0, e1 = self._edges_l[i][c], self._edges_l[i][c + 1]
        a = s if s > e0 else e0
        b = s + self._sizes_l[i][p]
        if e1 < b:
            b = e1
        lo, hi = a - s, b - s
        ids = self._factor_ids[i]
        part = (slice(lo, hi), slice(a - e0, b - e0), (ids[p], lo, hi), (p, lo, hi))
        self._parts[i][(p, c)] = part
        return part

    def _window_parts(self, position: tuple[int, ...], cpos: tuple[int, ...]) -> list[_Part]:
        if self._single is not None:  # one chunk: parts are planned per position
            return [table[p] for table, p in zip(self._single_parts, position)]
        out = []
        for i, (table, p, c) in enumerate(zip(self._parts, position, cpos)):
            part = table.get((p, c))
            out.append(part if part is not None else self._axis_part(i, p, c))
        return out

    def _set_flags(self, added: np.ndarray, finished: np.ndarray) -> None:
        """Which windows were added and which chunks finished (numpy views of bytearrays)."""
        self._added_b = bytearray(added.astype(bool).tobytes())
        self._added = np.frombuffer(self._added_b, dtype=bool)
        self._finished_b = bytearray(finished.astype(bool).tobytes())
        self._finished = np.frombuffer(self._finished_b, dtype=bool).reshape(finished.shape)

    def chunk_order(self) -> np.ndarray:
        """Window indices ordered so that chunks finish as early as possible.

        Windows are sorted by the first chunk they touch (row-major), then by
        grid order: every chunk is finished once the windows of its group are in.
        """
        first = [lo for lo, _ in self._chunk_ranges]
        n_chunks = [len(e) - 1 for e in self._edges]
        key = np.zeros((), dtype=np.int64)
        for f, n in zip(first, n_chunks):
            key = np.add.outer(key * n, f)
        return np.argsort(key.ravel(), kind="stable")

    # --- adding --------------------------------------------------------------
    @property
    def n_added(self) -> int:
        """How many windows have been added."""
        return self._n_added

    def add(self, result: Any, window: Window | None = None) -> None:
        """Add one patch result.

        Parameters
        ----------
        result : DataArray, Dataset or array-like
            The result for ``window``; it must hold every spatial dim at the
            window's size. A bare array takes ``output_dims`` (default: the source's dims).
        window : Window, optional
            Where the result goes; default: located by the result's spatial coordinates.

        Raises
        ------
        AggregationError
            The window was added before, is not in the grid, or cannot be located.
        ResultError
            The result has the wrong dims or shape.

        Notes
        -----
        Many small results (up to 64 KiB each) are gathered and added to the output
        a few hundred at a time: a floating-point error in one of them (say
        ``inf - inf`` under ``np.errstate(invalid="raise")``) is then raised by a
        later ``add`` or by :meth:`result`. The result is the same either way.
        """
        if window is None:
            window = self._locate(result)
        else:
            window = self._check_window(window)
        self.add_result([result], window)

    def add_result(self, box: list[Any], window: Window) -> None:
        """Add the result in ``box`` for a window of this very grid (internal: no window check).

        The caller hands the result over in a one-item list and keeps no other
        reference to it, so that once its data is taken out nothing but this
        method may hold it: such a result (see :func:`~xpatch._blend.sole_owner`)
        is blended in the background while ``func`` makes the next one.
        """
        result = box.pop()
        if self._added_b[window.index]:
            raise AggregationError(f"{window!r} was already added; each window is added once")
        lean = self._lean
        if lean is not None and type(result) is lean[0]:
            # the layout is fixed: only the data matters (the fast, common case)
            kind, dims = lean
            if kind is np.ndarray:
                data = result
            else:
                data = result.variable._data
                if type(data) is not np.ndarray:
                    data = to_numpy(result.data)
            if kind is np.ndarray or result.dims == dims:
                shape = self._uniform
                if shape is None:
                    shape = self._expected.get(window.shape)
                    if shape is None:
                        shape = self._expected_shape(window.shape)
                if data.shape == shape:
                    del result  # the data may now be ours alone
                    stage = self._stage
                    if (
                        stage is not None
                        and stage.inside[window.index]
                        and data.dtype == stage.data_dtype
                    ):
                        self._add_staged(stage, window, data)
                        return
                    # (smaller results are blended at once anyway)
                    background = sole_owner(data, THREAD_BYTES)
                    if self._single_plain and not self._finished_b[0]:
                        self._add_single(window, data, background)
                    else:
                        self._add_checked(window, {THIS: (dims, data)}, background)
                    return
        variables, meta = split(
            result,
            spatial=self.dims,
            default_dims=self._default_dims,
            output_dims=self.output_dims,
            what=What(window),
        )
        first = self._meta is None
        self.add_variables(window, variables, meta)
        if first and list(variables) == [THIS] and type(result) in (xr.DataArray, np.ndarray):
            self._lean = (type(result), variables[THIS][0])
            self._single_plain = (
                self._single is not None and not self._custom and variables[THIS][0] == self.dims
            )
            if all(len(set(sizes)) == 1 for sizes in self._sizes_l):  # one patch shape
                self._uniform = self._expected_shape(window.shape)
                self._stage = self._plan_stage(variables[THIS][1])

    def _plan_stage(self, data: np.ndarray) -> _Stage | None:
        """A gathering buffer for small single results, if they may be added together.

        Adding a 32 x 32 patch costs a few numpy calls, whatever the patch: for many
        small patches that overhead is most of the work. Results of windows inside
        the array are copied into a buffer laid out as the output is (see
        :class:`_Stage`), then weighted and added a whole buffer at a time, a few
        numpy calls per run of windows that cannot overlap (see :meth:`_runs`). The
        windows count as added at once; every read of the output buffers
        (:meth:`settle`) adds what is gathered first.
        """
        if self._single is None or self._custom or self._uniform is None:
            return None
        buf = self._buffers.get(self._single[0], {}).get(THIS)
        k = len(self.dims)
        if buf is None or self._axes_of[THIS] != list(range(buf.ndim - k, buf.ndim)):
            return None
        if data.nbytes > BATCH_BYTES or data.dtype.kind not in "biufc":
            return None  # large patches are shared across threads; objects stay objects
        m = self._colours(k - 1)
        length = self._counts[-1]
        if 4 * m > length:
            return None  # few windows along the last axis: runs would be too short
        # at most a few percent of the output (as the cached weights), or SMALL_BYTES;
        # a place holds a result as data * weight
        dtype = np.result_type(data.dtype, buf.dtype)
        room = min(STAGE_BYTES, max(self._buffer_bytes // STAGE_SHARE, SMALL_BYTES))
        n = min(STAGE_WINDOWS, room // max(data.size * dtype.itemsize, 1))
        if min(n, len(self.grid)) < STAGE_MIN:
            return None
        inside = np.ones((), dtype=bool)
        for ax in self.grid.axes:
            mask = (ax.starts >= 0) & (ax.starts + ax.sizes <= ax.length)
            inside = np.logical_and.outer(inside, mask)
        # whole grid rows if they fit (a flush then cuts no run short; a row takes a
        # whole number of places per colour), else pieces of rows of a whole number
        # of colours
        places = -(-length // m) * m
        span = length if places <= n else n - n % m
        if span == 0:
            return None  # not one window of each colour fits
        return _Stage(
            inside=bytearray(inside.ravel().tobytes()),
            shape=data.shape,
            data_dtype=data.dtype,
            dtype=dtype,
            segments=min(n // places, len(self.grid) // length) if span == length else 1,
            span=span,
            colours=m,
            length=length,
        )

    def _add_staged(self, stage: _Stage, window: Window, data: np.ndarray) -> None:
        """Copy one small result (not added before) to its place in the gathering buffer."""
        index = window.index
        row, j = divmod(index, stage.length)
        key = row * stage.pieces + j // stage.span
        r = stage.local.get(key)
        if r is None:
            if len(stage.local) == stage.segments:
                self._flush_stage()  # every segment is taken: add them, start afresh
            r = stage.local[key] = len(stage.local)
        s = j % stage.span
        stage.slots[r][s][...] = data  # (a safe cast, if any: never a floating-point error)
        stage.indices.append(index)
        stage.places.append(r * stage.span + s)
        self._added_b[index] = 1
        self._n_added += 1
        left = self._outstanding_a[0] - 1  # the single chunk
        self._outstanding_a[0] = left
        if not left:
            self._finish(self._single[0])  # type: ignore[index]

    def _flush_stage(self) -> None:
        """Add the gathered results, on the calling thread.

        (Handing them to a helper thread costs more than it saves: the add is
        mostly Python-level work on small views, so the two threads would take
        turns on the interpreter lock.)

        Every run is added even if one fails (a floating-point error under
        ``np.errstate(...="raise")`` is raised after the ufunc has written its
        output): the gathered windows count as added, so all must be in the
        output. The first error is raised at the end.
        """
        stage = self._stage
        if stage is None or not stage.indices:
            return
        self._blend.wait()
        buf = self._buffers[self._single[0]][THIS]  # type: ignore[index]
        runs = self._runs(stage, buf)
        stage.indices, stage.places = [], []
        stage.local.clear()
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

    def _runs(
        self, stage: _Stage, buf: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]]:
        """The gathered windows as runs: an output view, the run's block of the buffer,
        the weight factors for the block and the block's view to add to the output.

        A run holds windows of one segment (see :class:`_Stage`) and colour at
        consecutive places there, so side by side along the last axis of the buffer,
        and their starts step evenly. Where they step by the patch size, the windows
        tile the output and the run is one block of it; else it is a strided view with
        the windows along a new first axis. The weight of a window is the product of
        its 1-D factors: the block is multiplied by that of the axes but the last (one
        segment, one grid row: the same for all), then by the last axis' factors of its
        windows side by side.
        """
        index = np.array(stage.indices)
        r, s = np.divmod(np.array(stage.places), stage.span)
        m, q, size = stage.colours, stage.q, stage.size
        place = (r * m + s % m) * q + s // m  # in the buffer's colour-major layout
        order = np.argsort(place)
        place, index = place[order], index[order]
        last = index % stage.length
        starts = self._starts_a[-1][last]
        step = starts[1:] - starts[:-1]
        joined = (place[1:] - place[:-1] == 1) & (place[1:] // q == place[:-1] // q)
        # a run's starts step evenly (a cut before a pair frees it from the pair before)
        joined[1:] &= (step[1:] == step[:-1]) | ~joined[:-1]
        cuts = np.flatnonzero(~joined) + 1
        k = len(self.dims)
        lead = buf.ndim - k
        shape = stage.array.shape[2:-1]  # a window's, but the last axis
        runs = []
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(order)]):
            n = b - a
            group, first = divmod(int(place[a]), q)
            block = stage.array[(*divmod(group, m), ..., slice(first * size, (first + n) * size))]
            position = [int(p) for p in np.unravel_index(int(index[a]), self._counts)]
            tile = self._last_factors(stage, int(last[a]), group % m, buf.dtype)
            factors = [tile[first * size : (first + n) * size]]
            if k > 1:
                factors.insert(0, self._head_factor(stage, position[:-1], lead, buf.dtype))
            corner = [self._starts_l[i][p] for i, p in enumerate(position)]
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

    def _head_factor(
        self, stage: _Stage, head: list[int], lead: int, dtype: np.dtype
    ) -> np.ndarray:
        """The weight factor of the axes but the last of a grid row (cached), in the
        output's dtype as every weight."""
        key = tuple(self._factor_ids[i][p] for i, p in enumerate(head))
        factor = stage.heads.get(key)
        if factor is None:
            if len(stage.heads) >= 256:
                stage.heads.clear()
            facs = [self._factors[i][p] for i, p in enumerate(head)]
            axes = [lead + i for i in range(len(head))]
            factor = stage.heads[key] = _outer(facs, axes, lead + len(head) + 1, dtype)
        return factor

    def _last_factors(self, stage: _Stage, j: int, colour: int, dtype: np.dtype) -> np.ndarray:
        """The last axis' weight factors of the windows of a segment and colour, side by
        side as in the gathering buffer (cached), for the segment of window position
        ``j`` along the last axis."""
        piece = j // stage.span
        factors = stage.tiles.get((piece, colour))
        if factors is None:
            size = stage.size
            factors = np.zeros(stage.q * size, dtype=dtype)  # (places no window takes: 0)
            for t, s in enumerate(range(colour, stage.span, stage.colours)):
                p = piece * stage.span + s
                if p < stage.length:
                    factors[t * size : (t + 1) * size] = self._factors[-1][p]
            stage.tiles[(piece, colour)] = factors
        return factors

    def _weight_codes(self, positions: Sequence[np.ndarray]) -> np.ndarray:
        """Per window (given its positions along each axis): equal codes, equal weights."""
        code = np.zeros(len(positions[0]), dtype=np.int64)
        for i, p in enumerate(positions):
            code = code * (len(self._factors[i]) + 1) + self._ids_a[i][p]
        return code

    def _add_single(self, window: Window, data: np.ndarray, background: bool = False) -> None:
        """One result holding only the spatial dims into the single chunk (the hot path)."""
        cpos = self._single[0]  # type: ignore[index]
        buf = self._buffers[cpos][THIS]
        parts = [table[p] for table, p in zip(self._single_parts, window.position)]
        weights = self._weights_for(THIS, parts, buf)
        self._blend(
            buf[tuple([pt[1] for pt in parts])],
            data[tuple([pt[0] for pt in parts])],
            weights,
            background,
        )
        self._added_b[window.index] = 1
        self._n_added += 1
        left = self._outstanding_a[0] - 1  # the single chunk
        self._outstanding_a[0] = left
        if not left:
            self._finish(cpos)

    def _expected_shape(self, window_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of a (single-variable) result for windows of ``window_shape``."""
        ((dims, other, _),) = self._spec.values()
        sizes = dict(zip(self.dims, window_shape))
        shape = self._expected[window_shape] = tuple(
            sizes[d] if d in sizes else other[d] for d in dims
        )
        return shape

    def add_variables(
        self, window: Window, variables: Variables, meta: Meta, checked: bool = False
    ) -> None:
        """Add a result already split into named (dims, ndarray) pairs (internal)."""
        if self._added[window.index]:
            raise AggregationError(f"{window!r} was already added; each window is added once")
        if not checked:
            what = What(window)
            spatial_check(variables, dict(zip(self.dims, window.shape)), what)
            self._check_spec(variables, meta, what)
        self._add_checked(window, variables)

    def _add_checked(self, window: Window, variables: Variables, background: bool = False) -> None:
        touched = self._single if self._single is not None else list(self._touched(window.position))
        self._accumulate(window, variables, touched=touched, background=background)
        self._added[window.index] = True
        self._n_added += 1
        for cpos in touched:
            if self._finished[cpos]:
                continue
            self._outstanding[cpos] -= 1
            if self._outstanding[cpos] == 0:
                self._finish(cpos)

    def add_batch(
        self, windows: Sequence[Window], box: list[tuple[Variables, Meta]], batch_dim: Hashable
    ) -> None:
        """Add the results of a batch of equally shaped windows, stacked along ``batch_dim``.

        ``box`` holds the batch's (variables, meta), handed over as in
        :meth:`add_result`. The layout is checked once, on the first window; the
        others only need their place in the output. Where the batch allows it (one
        chunk, built-in weights, one variable whose spatial dims come last, small
        patches inside the array) the whole batch is added at once: windows that
        cannot overlap are added together through a strided view of the output,
        in the background when nothing but this method holds the batch.
        """
        variables, meta = box.pop()
        per = []
        for name, (dims, data) in variables.items():
            axis = dims.index(batch_dim)
            if axis:
                data = np.moveaxis(data, axis, 0)
            per.append((name, dims[:axis] + dims[axis + 1 :], data))
        del variables, data
        self.add_variables(windows[0], {name: (d, data[0]) for name, d, data in per}, meta)
        rest = windows[1:]
        for window in rest:
            if self._added[window.index]:
                raise AggregationError(f"{window!r} was already added; each window is added once")
        if len(rest) > 1 and len(per) == 1:
            name, dims, data = per.pop()
            background = sole_owner(data, BLOCK_BYTES)  # smaller: not worth another thread
            if self._add_at_once(rest, name, dims, data, background):
                return
            per.append((name, dims, data))
        for i, window in enumerate(rest, 1):
            self._add_checked(window, {n: (d, arr[i]) for n, d, arr in per})

    def _add_at_once(
        self,
        windows: Sequence[Window],
        name: Hashable,
        dims: tuple[Hashable, ...],
        data: Any,
        background: bool = False,
    ) -> bool:
        """Vectorised add of ``data[1:]`` for ``windows``; False if the batch does not qualify."""
        if self._single is None or self._custom or dims != self._spec[name][0]:
            return False
        cpos = self._single[0]
        buf = self._buffers.get(cpos, {}).get(name)
        axes = self._axes_of[name]
        k = len(axes)
        if buf is None or self._finished[cpos] or axes != list(range(buf.ndim - k, buf.ndim)):
            return False
        shape = windows[0].shape
        if np.prod(shape) * buf.itemsize > BATCH_BYTES:
            return False  # large patches: the per-window path shares them across threads
        positions = np.array([w.position for w in windows])
        starts = np.stack([self._starts_a[i][positions[:, i]] for i in range(k)], axis=1)
        code = self._weight_codes(positions.T)
        if (starts < 0).any() or (starts + np.array(shape) > self._lengths_a).any():
            return False  # windows reaching past the array (pad border) are clipped
        # windows inside the array whose normalised factors are equal share one weight
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        distinct = []
        for j in first:
            weights = self._weights_for(name, self._window_parts(windows[j].position, cpos), buf)
            distinct.append(
                weights[0] if len(weights) == 1 else np.prod(np.broadcast_arrays(*weights), axis=0)
            )
        stacked = np.stack(distinct) if len(distinct) > 1 else None
        view = np.lib.stride_tricks.sliding_window_view(buf, shape, axis=axes, writeable=True)
        lead = buf.ndim - k
        colour = np.zeros(len(windows), dtype=np.int64)
        for i in range(k):
            colour = colour * self._colours(i) + positions[:, i] % self._colours(i)

        def add() -> None:
            # one vectorised add per group of windows that cannot overlap (temporaries
            # of a group's size only)
            for c in np.unique(colour):
                sel = np.flatnonzero(colour == c)
                w = distinct[0] if stacked is None else stacked[inverse[sel]]
                contrib = np.multiply(data[sel + 1], w)  # promoted as in the per-window path
                index = (*(slice(None),) * lead, *(starts[sel, i] for i in range(k)))
                view[index] += np.moveaxis(contrib, 0, lead)

        self._blend.submit(add, background)
        self._added[[w.index for w in windows]] = True
        self._n_added += len(windows)
        self._outstanding[cpos] -= len(windows)
        if self._outstanding[cpos] == 0:
            self._finish(cpos)
        return True

    def _colours(self, i: int) -> int:
        """Along axis ``i``, windows whose positions differ by a multiple of this never overlap."""
        m = self._n_colours.get(i)
        if m is None:
            starts, sizes = np.asarray(self._starts_l[i]), np.asarray(self._sizes_l[i])
            m = 1
            while m < len(starts) and np.any(starts[m:] < starts[:-m] + sizes[:-m]):
                m += 1
            self._n_colours[i] = m
        return m

    @property
    def chunk_grid(self) -> tuple[int, ...]:
        """Number of chunks along each spatial dim."""
        return self._outstanding.shape

    def skip_finished(self, done: np.ndarray) -> np.ndarray:
        """Treat the chunks flagged in ``done`` as finished elsewhere (resume).

        Returns the mask of windows that touch only finished chunks: they need
        not be computed and count as added. Windows that also touch unfinished
        chunks must still be added; they contribute to those chunks only.
        """
        done = np.asarray(done, dtype=bool).reshape(self._outstanding.shape)
        self._finished |= done
        skip = np.zeros(len(self.grid), dtype=bool)
        for window in self.grid:
            if all(self._finished[c] for c in self._touched(window.position)):
                skip[window.index] = True
        self._added |= skip
        self._n_added = int(self._added.sum())
        return skip

    def _check_window(self, window: Any) -> Window:
        if not isinstance(window, Window):
            raise TypeError(f"window must be a Window from the grid, got {type(window).__name__}")
        if self.grid.owns(window):
            return window
        if not 0 <= window.index < len(self.grid) or self.grid[window.index] != window:
            raise AggregationError(f"{window!r} is not a window of this grid")
        return self.grid[window.index]

    def _locate(self, result: Any) -> Window:
        if not isinstance(result, (xr.DataArray, xr.Dataset)):
            raise AggregationError(
                "add(result) without a window needs a DataArray or Dataset result with the"
                f" spatial coords {self.dims}; got {type(result).__name__}: pass the window"
            )
        starts = {}
        for d, coords in self._start_coords.items():
            if coords is None or d not in result.coords or result.sizes.get(d, 0) == 0:
                raise AggregationError(
                    f"cannot locate the result: dim {d!r} has no coordinate to match;"
                    " pass the window"
                )
            value = result[d].values[0]
            hits = np.flatnonzero(coords == value)
            if not len(hits) and coords.dtype.kind == "f":
                hits = np.flatnonzero(np.isclose(coords, value, rtol=1e-9, atol=0))
            if not len(hits):
                raise AggregationError(
                    f"cannot locate the result: its coordinate {d}={value!r} is not the start of"
                    " any window of the grid"
                )
            if len(hits) > 1:
                raise AggregationError(
                    f"cannot locate the result: its coordinate {d}={value!r} starts"
                    f" {len(hits)} windows (the coordinate is not unique); pass the window"
                )
            starts[d] = int(self.grid.axes[self.dims.index(d)].starts[hits[0]])
        window = self.grid.locate(starts)
        if window is None:  # pragma: no cover - starts come from the grid
            raise AggregationError(f"no window starts at {starts}")
        return window

    def add_spec(self, window: Window, variables: Variables, meta: Meta) -> None:
        """Fix the result's layout from one (dry-run) result without adding it (dask path)."""
        spatial_check(variables, dict(zip(self.dims, window.shape)), f"the result for {window!r}")
        self._check_spec(variables, meta, f"the result for {window!r}")

    def check_variables(self, window: Window, variables: Variables) -> None:
        """Check one result against the layout fixed by earlier results."""
        what = What(window)
        spatial_check(variables, dict(zip(self.dims, window.shape)), what)
        assert self._meta is not None
        self._check_spec(variables, self._meta, what)

    @property
    def edges(self) -> list[np.ndarray]:
        """Chunk boundaries along each spatial dim."""
        return list(self._edges)

    def windows_touching(self, cpos: tuple[int, ...]) -> list[Window]:
        """Every window that overlaps chunk ``cpos``."""
        ranges = []
        for i, (ax, c) in enumerate(zip(self.grid.axes, cpos)):
            e0, e1 = self._edges[i][c], self._edges[i][c + 1]
            first, last = ax.touching(np.array([e0]), np.array([e1]))
            ranges.append(range(int(first[0]), int(last[0])))
        return [self.grid[self.grid.index_of(p)] for p in itertools.product(*ranges)]

    def _check_spec(self, variables: Variables, meta: Meta, what: Any) -> None:
        if self._meta is None:
            self._meta = meta
            for name, (dims, data) in variables.items():
                other = {d: n for d, n in zip(dims, data.shape) if d not in self.dims}
                self._spec[name] = (dims, other, data.dtype)
                self._axes_of[name] = [dims.index(d) for d in self.dims]
                self._plain[name] = tuple(dims) == tuple(self.dims)
            return
        if set(variables) != set(self._spec):
            raise ResultError(
                f"{what} has variables {sorted(map(str, variables))}, earlier results had"
                f" {sorted(map(str, self._spec))}"
            )
        for name, (dims, data) in variables.items():
            spec_dims, spec_other, _ = self._spec[name]
            if dims == spec_dims and all(
                data.shape[k] == spec_other[d] for k, d in enumerate(dims) if d in spec_other
            ):
                continue
            other = {d: n for d, n in zip(dims, data.shape) if d not in self.dims}
            if set(dims) != set(self._spec[name][0]) or other != self._spec[name][1]:
                raise ResultError(
                    f"{what} has dims {dict(zip(dims, data.shape))}; earlier results had"
                    f" non-spatial dims {self._spec[name][1]}"
                )

    def _touched(self, position: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        ranges = [range(lo[p], hi[p]) for lo, hi, p in zip(self._lo_l, self._hi_l, position)]
        return itertools.product(*ranges)

    def _accumulate(
        self,
        window: Window,
        variables: Variables,
        only: tuple[int, ...] | None = None,
        touched: Sequence[tuple[int, ...]] | None = None,
        background: bool = False,
    ) -> None:
        custom = self._custom
        full_w = self.kernel(dict(zip(self.dims, window.shape))) if custom else None
        position = window.position
        if only is not None:
            touched = [only]
        elif touched is None:
            touched = list(self._touched(position))
        for cpos in touched:
            if self._finished[cpos]:
                continue
            parts = self._window_parts(position, cpos)
            buffers = self._buffers.get(cpos)
            if buffers is None:
                buffers = self._buffers[cpos] = self._new_buffers(cpos)
            if custom:
                assert full_w is not None
                w_sp = full_w[tuple(pt[0] for pt in parts)]
                if cpos not in self._wmaps:
                    dtype = accumulation_dtype(next(iter(self._spec.values()))[2])
                    self._wmaps[cpos] = np.zeros(self._chunk_shape(cpos), dtype=dtype)
                self._wmaps[cpos][tuple(pt[1] for pt in parts)] += w_sp
            for name, (dims, data) in variables.items():
                buf = buffers[name]
                out_dims = self._spec[name][0]
                if dims != out_dims:
                    data = np.moveaxis(
                        data, [dims.index(d) for d in out_dims], range(len(out_dims))
                    )
                axes = self._axes_of[name]
                if custom:
                    weights = [_place(w_sp, axes, buf.ndim)]
                else:
                    weights = self._weights_for(name, parts, buf)
                if self._plain[name]:  # the buffer holds the spatial dims only, in order
                    sl_src = tuple(pt[0] for pt in parts)
                    sl_dst = tuple(pt[1] for pt in parts)
                else:
                    src = [slice(None)] * buf.ndim
                    dst = [slice(None)] * buf.ndim
                    for ax, pt in zip(axes, parts):
                        src[ax] = pt[0]
                        dst[ax] = pt[1]
                    sl_src, sl_dst = tuple(src), tuple(dst)
                self._blend(buf[sl_dst], data[sl_src], weights, background)

    def _weights_for(
        self, name: Hashable, parts: Sequence[_Part], buf: np.ndarray
    ) -> list[np.ndarray]:
        """The (cached) final weight of a window's part in ``buf`` (see :meth:`_weights`)."""
        key = (name, *[pt[2] for pt in parts])
        weights = self._weight_cache.get(key)
        if weights is None:
            weights = self._weights(key, [pt[3] for pt in parts], self._axes_of[name], buf)
        return weights

    def _weights(
        self,
        key: Any,
        cut: Sequence[tuple[int, int, int]],
        axes: Sequence[int],
        buf: np.ndarray,
    ) -> list[np.ndarray]:
        """The final weight of a patch's part, as arrays whose product is the weight.

        The weight is a product of normalised 1-D factors. Windows whose factors
        are equal (all interior windows of a regular grid) share one cached
        N-D weight. A weight too large to cache next to the output (a few
        percent of it) is given as its outermost factor times the (cached)
        product of the others, which the blender multiplies in turn.
        """
        facs = [self._factors[i][p][lo:hi] for i, (p, lo, hi) in enumerate(cut)]
        dtype = buf.dtype
        budget = max(self._buffer_bytes // 32, SMALL_BYTES)
        nbytes = int(np.prod([len(f) for f in facs])) * dtype.itemsize
        if len(facs) > 1 and nbytes * 4 > budget:
            outer = int(np.argmin(axes))
            first = _outer([facs[outer]], [axes[outer]], buf.ndim, dtype)
            rest_key = (key[0], *(k for i, k in enumerate(key[1:]) if i != outer), outer)
            rest = self._weight_cache.get(rest_key)
            if rest is None:
                others = [i for i in range(len(facs)) if i != outer]
                rest = self._cache(
                    rest_key,
                    [_outer([facs[i] for i in others], [axes[i] for i in others], buf.ndim, dtype)],
                    budget,
                )
            # kept as the pair (counted in full, though ``rest`` is shared): a small
            # output's budget is small, and patches must not rebuild their weight
            return self._cache(key, [first, *rest], budget)
        return self._cache(key, [_outer(facs, axes, buf.ndim, dtype)], budget)

    def _cache(self, key: Any, weights: list[np.ndarray], budget: int) -> list[np.ndarray]:
        """Keep ``weights`` for reuse, evicting the oldest beyond ``budget`` bytes."""
        nbytes = sum(w.nbytes for w in weights)
        while self._weight_cache and self._cache_bytes + nbytes > max(budget, nbytes):
            old = self._weight_cache.pop(next(iter(self._weight_cache)))
            self._cache_bytes -= sum(w.nbytes for w in old)
        self._weight_cache[key] = weights
        self._cache_bytes += nbytes
        return weights

    def _chunk_shape(self, cpos: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(e[c + 1] - e[c]) for e, c in zip(self._edges, cpos))

    def _chunk_region(self, cpos: tuple[int, ...]) -> dict[Hashable, slice]:
        return {d: slice(int(e[c]), int(e[c + 1])) for d, e, c in zip(self.dims, self._edges, cpos)}

    def _new_buffers(self, cpos: tuple[int, ...]) -> dict[Hashable, np.ndarray]:
        extent = dict(zip(self.dims, self._chunk_shape(cpos)))
        out = {}
        for name, (dims, other, dtype) in self._spec.items():
            shape = tuple(extent[d] if d in extent else other[d] for d in dims)
            out[name] = np.zeros(shape, dtype=accumulation_dtype(dtype))
        self._buffer_bytes = max(self._buffer_bytes, sum(b.nbytes for b in out.values()))
        return out

    def fork(self) -> Aggregator:
        """A copy sharing the plan, with fresh accumulation state (for one dask block)."""
        twin = copy.copy(self)
        twin._buffers = {}
        twin._wmaps = {}
        twin._set_flags(self._added, np.zeros(self._outstanding.shape, dtype=bool))
        twin._sink = _Capture()
        twin._weight_cache = {}
        twin._cache_bytes = 0
        twin._blend = Blender(threads=1)  # dask runs blocks in parallel already
        twin._stage = None
        return twin

    def region_template(self, cpos: tuple[int, ...]) -> xr.Dataset:
        """The coordinates of chunk ``cpos`` (what ``on_chunk`` sees)."""
        return self._template.isel(self._chunk_region(cpos), missing_dims="ignore")

    def detach_coords(self) -> None:
        """Drop the source's spatial coordinates (dask path: blocks get their own)."""
        spatial = set(self.dims)
        keep = {k: v for k, v in self._template.coords.items() if not spatial & set(v.dims)}
        self._template = xr.Dataset(coords=keep, attrs=self._template.attrs)

    def finish_block(
        self,
        cpos: tuple[int, ...],
        added: Sequence[tuple[Window, Variables]],
        template: xr.Dataset | None = None,
    ) -> Variables:
        """Blend the given results into chunk ``cpos`` only and return it (dask path)."""
        twin = self.fork()
        twin._block_template = template
        for window, variables in added:
            twin._accumulate(window, variables, only=cpos)
        twin._finish(cpos)
        return twin._sink.variables

    # --- finishing -------------------------------------------------------------
    def _finish(self, cpos: tuple[int, ...], partial: bool = False) -> None:
        """Normalise, fill, post-process and write one chunk, then free it."""
        self.settle()
        if self._finished[cpos]:
            return
        if partial:  # a preview: leave the chunk open for windows added later
            held = self._buffers.get(cpos)
            buffers = {k: v.copy() for k, v in held.items()} if held else self._new_buffers(cpos)
        else:
            buffers = self._buffers.pop(cpos, None) or self._new_buffers(cpos)
        region = self._chunk_region(cpos)
        uncovered = self._normalise(cpos, buffers, partial)
        variables: Variables = {}
        for name, buf in buffers.items():
            dims, _, dtype = self._spec[name]
            if uncovered is not None:
                _fill(buf, uncovered, dims, self.dims, np.nan)
            variables[name] = (dims, buf.astype(blended_dtype(dtype), copy=False))
        assert self._meta is not None
        meta = self._meta
        if self.on_chunk is not None:
            template = self._block_template
            if template is None:
                template = self._template.isel(region, missing_dims="ignore")
            chunk = assemble(variables, meta, template, default_name=self._name)
            try:
                processed = self.on_chunk(chunk)
            except Exception as err:
                err.add_note(f"xpatch: raised by on_chunk for the chunk {_fmt(region)}")
                raise
            variables, meta = split(
                processed,
                spatial=self.dims,
                default_dims=tuple(dims),
                output_dims=None,
                what=f"on_chunk for the chunk {_fmt(region)}",
            )
            spatial_check(
                variables,
                {d: s.stop - s.start for d, s in region.items()},
                f"on_chunk for the chunk {_fmt(region)}",
            )
            if uncovered is not None or self.fill_value is not _DEFAULT:
                variables = {
                    k: (dims, np.array(v, copy=True)) for k, (dims, v) in variables.items()
                }
        if uncovered is not None:
            for dims, data in variables.values():
                fill = default_fill(data.dtype) if self.fill_value is _DEFAULT else self.fill_value
                _fill(data, uncovered, dims, self.dims, fill)
        self._out_meta = meta
        self._sink.write(region, variables, meta)
        if partial:
            return
        self._finished[cpos] = True
        self._wmaps.pop(cpos, None)
        if hasattr(self._sink, "record"):
            self._sink.record(self._finished)

    def _normalise(
        self, cpos: tuple[int, ...], buffers: dict[Hashable, np.ndarray], partial: bool
    ) -> np.ndarray | None:
        """Divide by the weight sum where needed; return the mask of uncovered elements."""
        region = self._chunk_region(cpos)
        custom = isinstance(self.kernel, CustomWeights)
        if custom or partial:
            wsum = self._wmaps.get(cpos) if custom else self._added_weight_sum(cpos)
            if wsum is None:
                wsum = np.zeros(self._chunk_shape(cpos), dtype=np.float32)
            elif partial and custom:
                wsum = wsum.copy()
            covered = wsum > 0
            np.divide(1.0, wsum, out=wsum, where=covered)  # in place: the map is done with
            for name, buf in buffers.items():
                axes = self._axes_of[name]
                buf *= _place(wsum, axes, buf.ndim).astype(buf.dtype, copy=False)
            return None if covered.all() else ~covered
        cov = [c[s] for c, s in zip(self._covered, region.values())]
        if all(c.all() for c in cov):
            return None
        mask = np.zeros((), dtype=bool)
        for c in cov:
            mask = np.logical_or.outer(mask, ~c)
        return mask

    def _added_weight_sum(self, cpos: tuple[int, ...]) -> np.ndarray:
        """Sum of the normalised weights of the added windows over one chunk."""
        wsum = np.zeros(self._chunk_shape(cpos))
        per_axis = []
        for i, (ax, c) in enumerate(zip(self.grid.axes, cpos)):
            e0, e1 = int(self._edges[i][c]), int(self._edges[i][c + 1])
            first, last = ax.touching(np.array([e0]), np.array([e1]))
            per_axis.append(range(int(first[0]), int(last[0])))
        for position in itertools.product(*per_axis):
            if not self._added[self.grid.index_of(position)]:
                continue
            dst, facs = [], []
            for i, (ax, p, c) in enumerate(zip(self.grid.axes, position, cpos)):
                s = int(ax.starts[p])
                e0, e1 = int(self._edges[i][c]), int(self._edges[i][c + 1])
                a, b = max(s, e0), min(s + int(ax.sizes[p]), e1)
                dst.append(slice(a - e0, b - e0))
                facs.append(self._factors[i][p][a - s : b - s])
            wsum[tuple(dst)] += _outer(facs, list(range(len(facs))), len(facs), wsum.dtype)
        return wsum

    def settle(self) -> None:
        """Add what is gathered or still being blended in the background (internal).

        Every read of the output buffers comes after this.
        """
        self._flush_stage()
        self._blend.wait()

    def result(self, partial: bool = False) -> xr.DataArray | xr.Dataset:
        """The blended result, labeled with the source's coordinates.

        Parameters
        ----------
        partial : bool, default: False
            If True, normalise over the windows actually added and fill elements
            none of them covers; otherwise every window must have been added.

        Raises
        ------
        IncompleteError
            Some windows were never added (and ``partial`` is False).

        Examples
        --------
        >>> import numpy as np, xarray as xr, xpatch
        >>> da = xr.DataArray(np.ones(6), dims="x")
        >>> agg = da.patch.aggregator(x=3, weights="mean")
        >>> agg.add(np.full(3, 2.0), agg.grid[0])
        >>> agg.result(partial=True).values
        array([ 2.,  2.,  2., nan, nan, nan])
        """
        self.settle()
        missing = np.flatnonzero(~self._added)
        if len(missing) and not partial:
            first = ", ".join(repr(self.grid[int(i)]) for i in missing[:3])
            raise IncompleteError(
                f"{len(missing)} of {len(self.grid)} windows were never added (first: {first});"
                " add them, or call result(partial=True) to blend only what was added"
            )
        resumed = self._finished.all() and hasattr(self._sink, "result")
        if self._meta is None and not resumed:
            raise IncompleteError("no window was added: there is nothing to blend")
        for cpos in zip(*np.nonzero(~self._finished)):
            self._finish(tuple(int(c) for c in cpos), partial=bool(len(missing)))
        result = self._sink_result()
        # a preview must not change when more windows are added later
        return result.copy(deep=True) if len(missing) else result

    def _sink_result(self) -> xr.DataArray | xr.Dataset:
        if hasattr(self._sink, "result"):
            return self._sink.result()
        assert self._out_meta is not None
        return assemble(self._sink.arrays, self._out_meta, self._template, default_name=self._name)

    def __repr__(self) -> str:
        n_chunks = self._outstanding.size
        done = int(self._finished.sum())
        return (
            f"<Aggregator {self._n_added}/{len(self.grid)} windows added,"
            f" {done}/{n_chunks} chunks finished, weights={self.kernel!r}>"
        )


class _Stage:
    """Small results gathered to be weighted and added together (see
    :meth:`Aggregator._plan_stage`).

    Laid out as the output is: ``segments`` pieces of grid rows (``span`` windows of
    one row, the whole row where it fits), each as one block per colour of the last
    axis (see :meth:`Aggregator._colours`) in which the windows of that colour sit
    side by side along the last axis. Windows that tile the output along the last
    axis (the usual half-patch step) then add as one block of long rows: numpy loops
    over the block's rows, not over each patch's.
    """

    __slots__ = (
        "array",
        "colours",
        "data_dtype",
        "heads",
        "indices",
        "inside",
        "length",
        "local",
        "pieces",
        "places",
        "q",
        "segments",
        "size",
        "slots",
        "span",
        "tiles",
    )

    def __init__(
        self,
        *,
        inside: bytearray,
        shape: tuple[int, ...],
        data_dtype: np.dtype,
        dtype: np.dtype,
        segments: int,
        span: int,
        colours: int,
        length: int,
    ) -> None:
        self.inside = inside  # per window: inside the array (no part cut off)
        self.data_dtype = data_dtype  # of the results gathered (others are added at once)
        self.segments = segments  # pieces of grid rows held at a time
        self.span = span  # windows per piece
        self.colours = colours
        self.length = length  # windows per grid row
        self.pieces = -(-length // span)  # pieces per grid row
        self.q = q = -(-span // colours)  # places per colour and piece
        *head, self.size = shape
        last = self.size
        self.array = np.empty((segments, colours, *head, q * last), dtype=dtype)
        # the place of each window of a piece, as a view made once
        self.slots = [
            [
                piece[s % colours, ..., s // colours * last : (s // colours + 1) * last]
                for s in range(span)
            ]
            for piece in self.array
        ]
        self.local: dict[int, int] = {}  # piece key (see Aggregator._add_staged) -> segment
        self.heads: dict[tuple[int, ...], np.ndarray] = {}  # see Aggregator._head_factor
        self.tiles: dict[tuple[int, int], np.ndarray] = {}  # see Aggregator._last_factors
        self.indices: list[int] = []  # the gathered windows
        self.places: list[int] = []  # and where each is: segment * span + place in the piece

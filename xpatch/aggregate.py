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
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

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
        self._added = np.zeros(len(grid), dtype=bool)
        self._n_added = 0
        self._spec: dict[Hashable, tuple[tuple[Hashable, ...], dict[Hashable, int], np.dtype]] = {}
        self._axes_of: dict[Hashable, list[int]] = {}
        self._meta: Meta | None = None
        self._out_meta: Meta | None = None
        self._buffers: dict[tuple[int, ...], dict[Hashable, np.ndarray]] = {}
        self._wmaps: dict[tuple[int, ...], np.ndarray] = {}
        self._finished = np.zeros(self._outstanding.shape, dtype=bool)

    # --- planning ------------------------------------------------------------
    def _plan_weights(self) -> None:
        """Per-axis kernels normalised by their per-axis sums (separable normalisation)."""
        self._factors: list[list[np.ndarray]] = []
        self._factor_ids: list[list[int]] = []
        self._weight_cache: dict[Any, np.ndarray] = {}
        self._cache_bytes = 0
        self._buffer_bytes = 0
        self._scratch: dict[Any, np.ndarray] = {}
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
        self._outstanding = outstanding
        # with a single chunk every window touches chunk (0, ..., 0)
        self._single = [(0,) * len(counts)] if outstanding.size == 1 else None
        # plain-int copies for the per-patch hot path
        self._starts_l = [ax.starts.tolist() for ax in self.grid.axes]
        self._sizes_l = [ax.sizes.tolist() for ax in self.grid.axes]
        self._edges_l = [e.tolist() for e in self._edges]
        self._lengths_l = [ax.length for ax in self.grid.axes]
        self._lo_l = [lo.tolist() for lo, _ in self._chunk_ranges]
        self._hi_l = [hi.tolist() for _, hi in self._chunk_ranges]

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
        """
        if window is None:
            window = self._locate(result)
        else:
            window = self._check_window(window)
        if self._added[window.index]:
            raise AggregationError(f"{window!r} was already added; each window is added once")
        if self._meta is not None and type(result) is xr.DataArray:
            # the layout is fixed: only the data matters (the fast, common case)
            variables = {THIS: (result.dims, to_numpy(result.data))}
            self.add_variables(window, variables, self._meta)
            return
        variables, meta = split(
            result,
            spatial=self.dims,
            default_dims=self._default_dims,
            output_dims=self.output_dims,
            what=What(window),
        )
        self.add_variables(window, variables, meta)

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
        touched = self._single if self._single is not None else list(self._touched(window.position))
        self._accumulate(window, variables, touched=touched)
        self._added[window.index] = True
        self._n_added += 1
        for cpos in touched:
            if self._finished[cpos]:
                continue
            self._outstanding[cpos] -= 1
            if self._outstanding[cpos] == 0:
                self._finish(cpos)

    def add_batch(
        self, windows: Sequence[Window], variables: Variables, meta: Meta, batch_dim: Hashable
    ) -> None:
        """Add the results of a batch of equally shaped windows, stacked along ``batch_dim``.

        The layout is checked once, on the first window. With one chunk, built-in
        weights and one variable, the rest go through a lean loop: one weighted add
        per window into the output, with cached weights and a reused scratch array.
        """
        per = []
        for name, (dims, data) in variables.items():
            axis = dims.index(batch_dim)
            if axis:
                data = np.moveaxis(data, axis, 0)
            per.append((name, dims[:axis] + dims[axis + 1 :], data))
        self.add_variables(windows[0], {name: (d, data[0]) for name, d, data in per}, meta)
        rest = windows[1:]
        if not rest:
            return
        name, dims, data = per[0]
        lean = (
            self._single is not None
            and not self._custom
            and len(per) == 1
            and dims == self._spec[name][0]
            and not self._finished[self._single[0]]
        )
        if not lean:
            for i, window in enumerate(rest, 1):
                one = {n: (d, arr[i]) for n, d, arr in per}
                self.add_variables(window, one, meta, checked=True)
            return
        cpos = self._single[0]
        buf = self._buffers[cpos][name]
        axes = self._axes_of[name]
        ndim = buf.ndim
        plan = list(zip(self._starts_l, self._sizes_l, self._lengths_l, self._factor_ids, axes))
        for i, window in enumerate(rest, 1):
            if self._added[window.index]:
                raise AggregationError(f"{window!r} was already added; each window is added once")
            sl_src = [slice(None)] * ndim
            sl_dst = [slice(None)] * ndim
            wkey = []
            cut = []
            for (starts, sizes, length, ids, ax), p in zip(plan, window.position):
                s = starts[p]
                b = s + sizes[p]
                a = s if s > 0 else 0
                if b > length:
                    b = length
                sl_src[ax] = slice(a - s, b - s)
                sl_dst[ax] = slice(a, b)
                wkey.append((ids[p], a - s, b - s))
                cut.append((p, a - s, b - s))
            key = (name, tuple(wkey))
            w = self._weight_cache.get(key)
            if w is None:
                w = self._weight(key, cut, axes, ndim, buf.dtype)
            target = buf[tuple(sl_dst)]
            scratch = self._scratch_for(target.shape, buf.dtype)
            np.multiply(data[i][tuple(sl_src)], w, out=scratch, casting="unsafe")
            target += scratch
            self._added[window.index] = True
        self._n_added += len(rest)
        self._outstanding[cpos] -= len(rest)
        if self._outstanding[cpos] == 0:
            self._finish(cpos)

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
            src, dst, cut, wkey = [], [], [], []
            for starts, sizes, edges, ids, p, c in zip(
                self._starts_l, self._sizes_l, self._edges_l, self._factor_ids, position, cpos
            ):
                s = starts[p]
                e0 = edges[c]
                a = s if s > e0 else e0
                b = s + sizes[p]
                e1 = edges[c + 1]
                if e1 < b:
                    b = e1
                src.append(slice(a - s, b - s))
                dst.append(slice(a - e0, b - e0))
                cut.append((p, a - s, b - s))
                wkey.append((ids[p], a - s, b - s))
            wkey_t = tuple(wkey)
            buffers = self._buffers.get(cpos)
            if buffers is None:
                buffers = self._buffers[cpos] = self._new_buffers(cpos)
            if custom:
                assert full_w is not None
                w_sp = full_w[tuple(src)]
                if cpos not in self._wmaps:
                    dtype = accumulation_dtype(next(iter(self._spec.values()))[2])
                    self._wmaps[cpos] = np.zeros(self._chunk_shape(cpos), dtype=dtype)
                self._wmaps[cpos][tuple(dst)] += w_sp
            for name, (dims, data) in variables.items():
                buf = buffers[name]
                out_dims = self._spec[name][0]
                if dims != out_dims:
                    data = np.moveaxis(
                        data, [dims.index(d) for d in out_dims], range(len(out_dims))
                    )
                axes = self._axes_of[name]
                if custom:
                    w = _place(w_sp, axes, buf.ndim).astype(buf.dtype, copy=False)
                else:
                    w = self._weight_cache.get((name, wkey_t))
                    if w is None:
                        w = self._weight((name, wkey_t), cut, axes, buf.ndim, buf.dtype)
                sl_src = [slice(None)] * buf.ndim
                sl_dst = [slice(None)] * buf.ndim
                for k, ax in enumerate(axes):
                    sl_src[ax] = src[k]
                    sl_dst[ax] = dst[k]
                target = buf[tuple(sl_dst)]
                part = data[tuple(sl_src)]
                scratch = self._scratch_for(target.shape, buf.dtype)
                np.multiply(part, w, out=scratch, casting="unsafe")
                target += scratch

    def _weight(
        self,
        key: Any,
        cut: Sequence[tuple[int, int, int]],
        axes: Sequence[int],
        ndim: int,
        dtype: np.dtype,
    ) -> np.ndarray:
        """The final weight of a patch's part: a product of normalised 1-D factors, cached.

        Windows whose normalised factors are equal (all interior windows of a
        regular grid) share one cached N-D weight.
        """
        facs = [self._factors[i][p][lo:hi] for i, (p, lo, hi) in enumerate(cut)]
        w = _outer(facs, axes, ndim, dtype)
        # keep the cache small next to the output: a few patch-sized arrays at most
        budget = max(w.nbytes, self._buffer_bytes // 32)
        while self._weight_cache and self._cache_bytes + w.nbytes > budget:
            old = self._weight_cache.pop(next(iter(self._weight_cache)))
            self._cache_bytes -= old.nbytes
        self._weight_cache[key] = w
        self._cache_bytes += w.nbytes
        return w

    def _scratch_for(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A reused temporary for ``result * weight`` (no fresh allocation per patch)."""
        key = (shape, dtype)
        scratch = self._scratch.get(key)
        if scratch is None:
            if len(self._scratch) >= 4:
                self._scratch.clear()
            scratch = self._scratch[key] = np.empty(shape, dtype=dtype)
        return scratch

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
        twin._finished = np.zeros(self._outstanding.shape, dtype=bool)
        twin._added = self._added.copy()
        twin._sink = _Capture()
        twin._weight_cache = {}
        twin._cache_bytes = 0
        twin._scratch = {}
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

"""Weighted accumulation of patch results into chunks of the output.

The :class:`Aggregator` is the only place that adds patch results. It receives each
result once, multiplies it by its final weight (:mod:`xpatch._normalise`) and adds it
to every chunk of the output that the patch touches (:mod:`xpatch.layout`). A chunk
is finished the moment its last patch lands: it is filled where no patch covers it,
handed to ``on_chunk``, written to the sink (:mod:`xpatch._sinks`) and freed.

How a result reaches the buffers:

- the first result fixes the layout (:class:`~xpatch._structure.ResultSpec`);
- later results of the same type and dims take a lean path that skips the label
  checks; where the output is one chunk with built-in weights and the result holds
  only the spatial dims, straight to :meth:`Aggregator._add_single`;
- small single results may be gathered and added many at a time, and the results of
  a batch added through a strided view (:mod:`xpatch._gather`);
- every path ends in one bookkeeping call, :meth:`Aggregator._mark`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._accumulate import Accumulator
from xpatch._blend import BLOCK_BYTES, THREAD_BYTES, Blender, sole_owner
from xpatch._dtypes import DEFAULT
from xpatch._finish import ChunkFinisher
from xpatch._gather import Gathering
from xpatch._locate import LabelCheck, Locator, check_window
from xpatch._options import BlendOptions
from xpatch._outputs import for_aggregator
from xpatch._plan import BlendPlan
from xpatch._sinks import MemorySink, Sink
from xpatch._structure import (
    THIS,
    Meta,
    ResultSpec,
    Variables,
    What,
    source_dims,
    source_name,
    spatial_check,
    split,
    to_numpy,
)
from xpatch.errors import AggregationError, IncompleteError
from xpatch.grid import PatchGrid, Window
from xpatch.layout import ChunkPosition, Tally
from xpatch.weights import WeightsLike

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
    sink : Sink, optional
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
        fill_value: Any = DEFAULT,
        output_dims: Sequence[Hashable] | None = None,
        sink: Sink | None = None,
    ) -> None:
        options = BlendOptions(weights, chunks, on_chunk, fill_value, output_dims)  # type: ignore[arg-type]
        self._setup(BlendPlan.make(grid, options), template, sink)

    @classmethod
    def from_plan(
        cls,
        plan: BlendPlan,
        template: xr.DataArray | xr.Dataset,
        sink: Sink | None = None,
        *,
        spec: ResultSpec | None = None,
        threads: int | None = None,
        chunk_template: xr.Dataset | None = None,
    ) -> Aggregator:
        """An aggregator for a plan made beforehand (internal: the drivers' entry).

        ``spec``: the result layout, when already known (a dask block); ``threads``:
        helper threads for blending (1 inside a dask task, which runs in parallel);
        ``chunk_template``: the coordinates ``on_chunk`` sees, when the aggregator
        finishes one chunk only (a dask block), instead of ``template`` cut to it.
        """
        agg = cls.__new__(cls)
        agg._setup(plan, template, sink, spec=spec, threads=threads)
        agg._chunk_template = chunk_template
        return agg

    def _setup(
        self,
        plan: BlendPlan,
        template: xr.DataArray | xr.Dataset,
        sink: Sink | None,
        *,
        spec: ResultSpec | None = None,
        threads: int | None = None,
    ) -> None:
        self.plan = plan
        self.grid = grid = plan.grid
        self.dims = grid.dims
        self.kernel = plan.kernel
        self.layout = plan.layout
        self.output_dims = plan.options.output_dims
        self.on_chunk = plan.options.on_chunk
        self.fill_value = plan.options.fill_value
        self._weights = plan.weights
        self._custom = not plan.weights.separable
        self._blend = Blender(threads)
        self._template = xr.Dataset(coords=template.coords, attrs=template.attrs)
        self._name = source_name(template)
        self._default_dims = source_dims(template)
        self._default_sizes = {d: n for d, n in template.sizes.items() if d not in grid.dims}
        self._labels: LabelCheck | None = None
        self._dtype: np.dtype | None = None
        self._template_source = template
        self._locator: Locator | None = None
        self._finisher = ChunkFinisher(plan, self._template, self._name)
        self._sink: Sink = (
            sink if sink is not None else MemorySink(grid.lengths, self._template, self._name)
        )
        self._tally = Tally(len(grid), plan.layout.waiting())
        # windows a mask skips (the grid's) or a predicate dropped: not waited for, and
        # the chunks they touch are normalised over the windows actually added
        self._kept: np.ndarray | None = None if grid.kept is None else grid.kept.copy()
        self._single: ChunkPosition | None = (0,) * len(self.dims) if plan.layout.single else None
        self._spec = spec
        self._acc = Accumulator(plan, self._blend, spec)
        # fast paths, chosen once the first result fixed the layout (see _choose_paths)
        self._lean: tuple[type, tuple[Hashable, ...]] | None = None
        self._single_plain = False
        self._uniform: tuple[int, ...] | None = None
        self._gathering: Gathering | None = None

    # --- adding --------------------------------------------------------------
    @property
    def n_added(self) -> int:
        """How many windows have been added."""
        return self._tally.n_added

    def add(self, result: Any, window: Window | None = None) -> None:
        """Add one patch result.

        Parameters
        ----------
        result : DataArray, Dataset or array-like, or a tuple or dict of them
            The result for ``window``; it must hold every spatial dim at the
            window's size. A bare array takes ``output_dims`` (default: the source's dims).
            Several outputs (a tuple or dict) are blended as one Dataset, one variable
            per output (named and dimensioned as by ``apply``).
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
        result = for_aggregator(result, self)  # a tuple or dict of outputs: a Dataset
        window = self._locate(result) if window is None else check_window(self.grid, window)
        if self._kept is not None and not self._kept[window.index]:
            raise AggregationError(
                f"{window!r} is skipped by the mask (or was dropped): it takes no result"
            )
        self.add_result([result], window)

    def add_result(self, box: list[Any], window: Window) -> None:
        """Add the result in ``box`` for a window of this very grid (internal: no window check).

        The caller hands the result over in a one-item list and keeps no other
        reference to it, so that once its data is taken out nothing but this
        method may hold it: such a result (see :func:`~xpatch._blend.sole_owner`)
        is blended in the background while ``func`` makes the next one.
        """
        result = box.pop()
        if self._tally.added[window.index]:
            raise AggregationError(f"{window!r} was already added; each window is added once")
        lean = self._lean
        if lean is not None and type(result) is lean[0]:
            # the layout is fixed: only the data matters (the fast, common case)
            kind, dims = lean
            if kind is np.ndarray:
                data = result
            else:
                result = self._labels(result, window)  # type: ignore[misc]
                data = result.variable._data
                if type(data) is not np.ndarray:
                    data = to_numpy(result.data)
            if kind is np.ndarray or result.dims == dims:
                shape = self._uniform
                if shape is None:
                    shape = self._spec.single_shape(window.shape)  # type: ignore[union-attr]
                if data.shape == shape and data.dtype == self._dtype:
                    del result  # the data may now be ours alone
                    gathering = self._gathering
                    index = window.index
                    if gathering is not None and gathering.inside[index]:  # (of that dtype)
                        gathering.put(index, data)
                        self._mark_single(index)
                        return
                    # (smaller results are blended at once anyway)
                    background = sole_owner(data, THREAD_BYTES)
                    if self._single_plain and not self._tally.finished[0]:
                        self._add_single(window, data, background)
                    else:
                        self._add_checked(window, {THIS: (dims, data)}, background)
                    return
        if isinstance(result, (xr.DataArray, xr.Dataset)):
            result = self.align(result, window, What(window))
        variables, meta = split(
            result,
            spatial=self.dims,
            default_dims=self._default_dims,
            output_dims=self.output_dims,
            what=What(window),
            default_sizes=self._default_sizes,
        )
        first = self._spec is None
        self.add_variables(window, variables, meta)
        if first and list(variables) == [THIS] and type(result) in (xr.DataArray, np.ndarray):
            self._choose_paths(type(result), variables[THIS])

    def align(self, result: Any, window: Window | None, what: Any, batch_dim: Any = None) -> Any:
        """A labeled result aligned to its window (see :class:`~xpatch._locate.LabelCheck`);
        ``window`` None: a batch stacked along ``batch_dim``."""
        if self._labels is None:
            self._labels = LabelCheck(self._template_source, self.grid)
        return self._labels(result, window, what, batch_dim)

    def _choose_paths(self, kind: type, variable: tuple[tuple[Hashable, ...], np.ndarray]) -> None:
        """After the first result: the fast paths later results of its kind may take.

        - lean: a result of the same type and dims skips the label checks;
        - single_plain: one chunk, built-in weights, a result of the spatial dims
          only goes straight to :meth:`_add_single`;
        - uniform: every window has one shape, so the result's shape is known;
        - gathering: small results are added many at a time (:mod:`xpatch._gather`).
        """
        dims, data = variable
        self._lean = (kind, dims)
        self._dtype = data.dtype
        self._single_plain = (
            self._single is not None
            and not self._custom
            and not self._weights.has_zeros
            and dims == self.dims
        )
        if not all(len(np.unique(ax.sizes)) == 1 for ax in self.grid.axes):
            return
        self._uniform = self._spec.single_shape(tuple(int(ax.sizes[0]) for ax in self.grid.axes))  # type: ignore[union-attr]
        if self._single is None or self._custom or self._weights.has_zeros:
            return
        buf = self._acc.buffers.get(self._single, {}).get(THIS)
        k = len(self.dims)
        if buf is None or self._spec.axes[THIS] != list(range(buf.ndim - k, buf.ndim)):  # type: ignore[union-attr]
            return
        self._gathering = Gathering.plan(
            self.grid, self._weights, self._blend, buf, data, self._acc.buffer_bytes
        )

    def _mark(self, index: int, touched: Iterable[ChunkPosition]) -> None:
        """The one bookkeeping step of every add: window ``index`` is in ``touched``.

        Each chunk it touches waits for one window less; a chunk that waits for
        none is finished at once.
        """
        tally = self._tally
        tally.added[index] = 1
        tally.n_added += 1
        flats = tally.flats
        for cpos in touched:
            flat = flats.get(cpos)
            if flat is None:
                flat = tally.flat(cpos)
            if tally.finished[flat]:
                continue
            left = tally.waiting[flat] - 1
            tally.waiting[flat] = left
            if not left:
                self.finish_chunk(cpos)

    def _mark_single(self, index: int) -> None:
        """:meth:`_mark` for a run of one chunk (the hot path of small patches)."""
        tally = self._tally
        tally.added[index] = 1
        tally.n_added += 1
        if tally.finished[0]:
            return
        left = tally.waiting[0] - 1
        tally.waiting[0] = left
        if not left:
            self.finish_chunk(self._single)  # type: ignore[arg-type]

    def _mark_many(self, indices: Sequence[int], cpos: ChunkPosition) -> None:
        """:meth:`_mark` for windows that all touch the one chunk ``cpos``."""
        tally = self._tally
        for index in indices:
            tally.added[index] = 1
        tally.n_added += len(indices)
        flat = tally.flat(cpos)
        tally.waiting[flat] -= len(indices)
        if not tally.waiting[flat]:
            self.finish_chunk(cpos)

    def _add_single(self, window: Window, data: np.ndarray, background: bool = False) -> None:
        """One result holding only the spatial dims into the single chunk (the hot path)."""
        self._acc.add_single(window.position, data, background)
        self._mark_single(window.index)

    def add_variables(
        self,
        window: Window,
        variables: Variables,
        meta: Meta,
        only: ChunkPosition | None = None,
    ) -> None:
        """Add a result already split into named (dims, ndarray) pairs (internal).

        ``only``: add to that chunk alone (a dask block; no bookkeeping).
        """
        if self._tally.added[window.index]:
            raise AggregationError(f"{window!r} was already added; each window is added once")
        what = What(window)
        spatial_check(variables, dict(zip(self.dims, window.shape)), what)
        if self._spec is None:
            self._spec = self._acc.spec = ResultSpec(self.dims, variables, meta)
            if self._kept is not None:
                self.finish_idle()
        else:
            self._spec.check(variables, what)
        if only is not None:
            self._acc.add(window, variables, (only,), self._tally)
            return
        self._add_checked(window, variables)

    def _add_checked(self, window: Window, variables: Variables, background: bool = False) -> None:
        touched = (
            (self._single,)
            if self._single is not None
            else list(self.layout.touched(window.position))
        )
        self._acc.add(window, variables, touched, self._tally, background)  # type: ignore[arg-type]
        self._mark(window.index, touched)  # type: ignore[arg-type]

    def add_batch(
        self, windows: Sequence[Window], box: list[tuple[Variables, Meta]], batch_dim: Hashable
    ) -> None:
        """Add the results of a batch of equally shaped windows, stacked along ``batch_dim``.

        ``box`` holds the batch's (variables, meta), handed over as in
        :meth:`add_result`. The layout is checked once, on the first window; the
        others only need their place in the output. Where the batch allows it (one
        chunk, built-in weights, one variable whose spatial dims come last, small
        patches inside the array) the whole batch is added at once
        (:func:`~xpatch._gather.add_batch_at_once`), in the background when nothing
        but this method holds the batch.
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
            if self._tally.added[window.index]:
                raise AggregationError(f"{window!r} was already added; each window is added once")
        single = self._single
        if len(rest) > 1 and len(per) == 1 and single is not None and not self._tally.finished[0]:
            name, dims, data = per.pop()
            background = sole_owner(data, BLOCK_BYTES)  # smaller: not worth another thread
            if self._acc.add_batch(rest, name, dims, data, background):
                self._mark_many([w.index for w in rest], single)
                return
            per.append((name, dims, data))
        for i, window in enumerate(rest, 1):
            self._add_checked(window, {n: (d, arr[i]) for n, d, arr in per})

    def drop(self, window: Window) -> None:
        """Leave ``window`` out: no result comes for it (a predicate refused its patch).

        The chunks it touches stop waiting for it and are normalised over the windows
        actually added; where none covers, they get ``fill_value``.
        """
        window = check_window(self.grid, window)
        if self._tally.added[window.index]:
            raise AggregationError(f"{window!r} was already added; it cannot be dropped")
        if self._kept is None:
            self._kept = np.ones(len(self.grid), dtype=bool)
        if not self._kept[window.index]:
            return
        self._kept[window.index] = False
        tally = self._tally
        for cpos in self.layout.touched(window.position):
            flat = tally.flat(cpos)
            if tally.finished[flat]:
                continue
            tally.waiting[flat] -= 1
            if not tally.waiting[flat] and self._spec is not None:
                self.finish_chunk(cpos)

    def finish_idle(self) -> None:
        """Finish the chunks no window is left for (a mask skipped all of theirs), once
        the first result fixed the layout (internal)."""
        if self._spec is None:
            return
        tally = self._tally
        idle = (np.asarray(tally.waiting) == 0) & ~np.frombuffer(tally.finished, dtype=bool)
        for flat in np.flatnonzero(idle):
            self.finish_chunk(tuple(int(c) for c in np.unravel_index(flat, tally.shape)))

    def skip_finished(self, done: np.ndarray) -> np.ndarray:
        """Treat the chunks flagged in ``done`` as finished elsewhere (resume).

        Returns the mask of windows that touch only those chunks (see
        :meth:`~xpatch.layout.ChunkLayout.skipped`): they count as added.
        """
        done = np.asarray(done, dtype=bool).reshape(self.layout.shape)
        skip = self.layout.skipped(done)
        self._tally.skip(skip, done)
        return skip

    # --- locating --------------------------------------------------------------
    def _locate(self, result: Any) -> Window:
        if self._locator is None:
            self._locator = Locator(self._template_source, self.grid)
        return self._locator(result)

    # --- finishing -------------------------------------------------------------
    def finish_chunk(self, cpos: ChunkPosition, partial: bool = False) -> None:
        """Normalise, fill, post-process and write one chunk, then free it.

        ``partial``: a preview that leaves the chunk open for windows added later.
        """
        self.settle()
        flat = self._tally.flat(cpos)
        if self._tally.finished[flat]:
            return
        buffers, weight_sum = self._acc.take(cpos, partial)
        added = self._tally.added_mask() if partial or self._kept is not None else None
        assert self._spec is not None
        variables, meta = self._finisher(cpos, buffers, self._spec, weight_sum, added)
        self._sink.write(self.layout.region(cpos), variables, meta)
        if partial:
            return
        self._tally.finished[flat] = 1
        self._sink.record(self._tally.finished_mask())

    def settle(self) -> None:
        """Add what is gathered or still being blended in the background (internal).

        Every read of the output buffers comes after this.
        """
        if self._gathering is not None:
            self._gathering.flush()
        self._blend.wait()

    def abandon(self) -> None:
        """The run failed (internal): the open chunks waiting on disk are removed."""
        if self._acc.spill is not None:
            self._acc.spill.close()

    def result(self, partial: bool = False) -> xr.DataArray | xr.Dataset:
        """The blended result, labeled with the source's coordinates.

        Parameters
        ----------
        partial : bool, default: False
            If True, normalise over the windows actually added and fill elements
            none of them covers; otherwise every window must have been added.

        Returns
        -------
        DataArray or Dataset

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
        tally = self._tally
        wanted = ~tally.added_mask()
        if self._kept is not None:
            wanted &= self._kept
        missing = np.flatnonzero(wanted)
        if len(missing) and not partial:
            first = ", ".join(repr(self.grid[int(i)]) for i in missing[:3])
            raise IncompleteError(
                f"{len(missing)} of {len(self.grid)} windows were never added (first: {first});"
                " add them, or call result(partial=True) to blend only what was added"
            )
        finished = tally.finished_mask()
        resumed = finished.all() and self._sink.done is not None
        if self._spec is None and not resumed:
            raise IncompleteError("no window was added: there is nothing to blend")
        for cpos in zip(*np.nonzero(~finished)):
            self.finish_chunk(tuple(int(c) for c in cpos), partial=bool(len(missing)))
        result = self._sink.result()
        # a preview must not change when more windows are added later
        return result.copy(deep=True) if len(missing) else result

    def __repr__(self) -> str:
        done = int(self._tally.finished_mask().sum())
        return (
            f"<Aggregator {self.n_added}/{len(self.grid)} windows added,"
            f" {done}/{self.layout.size} chunks finished, weights={self.kernel!r}>"
        )

"""The eager driver of ``apply``: sample, call ``func``, aggregate."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._blend import default_threads
from xpatch._options import ApplyOptions
from xpatch._plan import BlendPlan
from xpatch._reader import ChunkReader
from xpatch._sampling import Sampler, stack
from xpatch._sinks import Sink
from xpatch._structure import THIS, Meta, source_dims, split
from xpatch.aggregate import Aggregator
from xpatch.errors import ResultError
from xpatch.grid import PatchGrid, Window


def batches(
    windows: Iterable[Window], batch_size: int, uniform: bool = False
) -> Iterator[list[Window]]:
    """Consecutive windows of equal shape, at most ``batch_size`` at a time.

    ``uniform``: every window has the same shape (no need to compare them).
    """
    if uniform:
        it = iter(windows)
        while batch := list(itertools.islice(it, batch_size)):
            yield batch
        return
    batch: list[Window] = []
    for w in windows:
        if batch and (len(batch) == batch_size or batch[0].shape != w.shape):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


class _BatchWhere:
    """Describes a batch for error messages, formatted only when needed."""

    def __init__(self, group: Sequence[Window]) -> None:
        self.group = group

    def __str__(self) -> str:
        g = self.group
        return f"the batch of {len(g)} windows from {g[0]!r} to {g[-1]!r}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError("progress=True needs tqdm: pip install 'xpatch[progress]'") from err
    return tqdm(total=total, desc="patches", unit="patch")


def _blame(err: BaseException, where: Any) -> None:
    err.add_note(f"xpatch: raised by func on {where}")


def _call(func: Callable[[Any], Any], arg: Any, where: Any) -> Any:
    try:
        return func(arg)
    except Exception as err:
        _blame(err, where)
        raise


def run(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    agg: Aggregator,
    options: ApplyOptions,
    skip: np.ndarray | None = None,
) -> Aggregator:
    """Run ``func`` over every window of the aggregator's grid and add the results.

    With ``chunks``, windows come in the chunk plan's order (chunks finish early);
    windows flagged in ``skip`` (resume) are left out.
    """
    grid = agg.grid
    sampler = Sampler(obj, grid)
    ordered = options.blend.chunks is not None
    order: Sequence[int] = agg.layout.order() if ordered else range(len(grid))
    if skip is not None:
        order = [i for i in order if not skip[i]]
    bar = _progress(len(order), options.progress)
    windows: Iterable[Window] = (
        iter(grid) if isinstance(order, range) else (grid[int(i)] for i in order)
    )
    batch_size, batch_dim = options.batch_size, options.batch_dim
    reader = ChunkReader.make(obj, grid, threads=min(2, default_threads() - 1))
    try:
        if reader is not None:
            _run_stream(reader.stream(windows), func, agg, options, bar, obj)
        elif batch_size is None:
            sample = sampler.cutter()
            add = agg.add_result
            for window in windows:
                try:  # (what _call does, without a call per patch)
                    result = func(sample(window))
                except Exception as err:
                    _blame(err, window)
                    raise
                # handed over: not alive here while func makes the next one
                box = [result]
                del result
                add(box, window)
                if bar is not None:
                    bar.update(1)
        else:
            dims = source_dims(obj)
            default = (batch_dim, *dims) if dims is not None else None
            uniform = all(len(np.unique(ax.sizes)) == 1 for ax in grid.axes)
            sizes = {d: n for d, n in obj.sizes.items() if d not in grid.dims}
            for group in batches(windows, batch_size, uniform):
                where = _BatchWhere(group)
                batch = sampler.batch(group, batch_dim)
                result = _call(func, batch, where)
                if isinstance(result, (xr.DataArray, xr.Dataset)):
                    result = agg.align(result, None, f"func's result for {where}", batch_dim)
                # windows of a batch share one shape: the layout is checked once per batch
                box = [
                    batched_variables(
                        result,
                        len(group),
                        batch_dim,
                        default,
                        options.batch_output_dims,
                        where,
                        sizes,
                    )
                ]
                del batch, result  # handed over: not alive here while func makes the next one
                agg.add_batch(group, box, batch_dim)
                if bar is not None:
                    bar.update(len(group))
        agg.settle()
    except BaseException as err:
        try:  # nothing may write to the buffers once the run is over
            agg.settle()
        except Exception as late:  # the first error is the one to see
            err.add_note(f"(blending the previous result also failed: {late!r})")
        raise
    finally:
        if bar is not None:
            bar.close()
    return agg


def _run_stream(
    stream: Iterator[tuple[Window, Any]],
    func: Callable[[Any], Any],
    agg: Aggregator,
    options: ApplyOptions,
    bar: Any,
    obj: xr.DataArray | xr.Dataset,
) -> None:
    """The run over patches read ahead (a lazy file source): one by one or in batches."""
    batch_size, batch_dim = options.batch_size, options.batch_dim
    if batch_size is None:
        for window, patch in stream:
            result = _call(func, patch, window)
            del patch
            box = [result]
            del result
            agg.add_result(box, window)
            if bar is not None:
                bar.update(1)
        return
    dims = source_dims(obj)
    default = (batch_dim, *dims) if dims is not None else None
    sizes = {d: n for d, n in obj.sizes.items() if d not in agg.grid.dims}
    group: list[Window] = []
    patches: list[Any] = []

    def flush() -> None:
        where = _BatchWhere(list(group))
        result = _call(func, stack(patches, group, batch_dim), where)
        if isinstance(result, (xr.DataArray, xr.Dataset)):
            result = agg.align(result, None, f"func's result for {where}", batch_dim)
        box = [
            batched_variables(
                result, len(group), batch_dim, default, options.batch_output_dims, where, sizes
            )
        ]
        del result
        agg.add_batch(list(group), box, batch_dim)
        if bar is not None:
            bar.update(len(group))
        group.clear()
        patches.clear()

    for window, patch in stream:
        if group and (len(group) == batch_size or group[0].shape != window.shape):
            flush()
        group.append(window)
        patches.append(patch)
    if group:
        flush()


def batched_variables(
    result: Any,
    n: int,
    batch_dim: Hashable,
    default_dims: Sequence[Hashable] | None,
    output_dims: Sequence[Hashable] | None,
    where: Any,
    default_sizes: Mapping[Hashable, int] | None = None,
) -> tuple[dict[Hashable, Any], Meta]:
    """A batched result as named arrays that all hold ``batch_dim`` of length ``n``.

    ``output_dims`` names the axes of a bare-array result, ``batch_dim`` included;
    ``default_sizes``: the source's non-spatial lengths (see :func:`split`).
    """
    variables, meta = split(
        result,
        spatial=(batch_dim,),
        default_dims=default_dims,
        output_dims=output_dims,
        what=f"func's result for {where}",
        default_sizes=default_sizes,
    )
    meta.coords = {k: v for k, v in meta.coords.items() if batch_dim not in v.dims}
    for name, (dims, data) in variables.items():
        label = "" if name == THIS else f" (variable {name!r})"
        if batch_dim not in dims or data.shape[dims.index(batch_dim)] != n:
            raise ResultError(
                f"func's result{label} for {where} must have the batch dim {batch_dim!r} of"
                f" length {n}; got dims {dict(zip(dims, data.shape))}"
            )
    return variables, meta


def unbatch(
    result: Any,
    n: int,
    batch_dim: Hashable,
    default_dims: Sequence[Hashable] | None,
    output_dims: Sequence[Hashable] | None,
    where: str,
    default_sizes: Mapping[Hashable, int] | None = None,
) -> Iterator[tuple[dict[Hashable, Any], Meta]]:
    """Split a batched result into one (variables, meta) per window."""
    variables, meta = batched_variables(
        result, n, batch_dim, default_dims, output_dims, where, default_sizes
    )
    for i in range(n):
        one = {}
        for name, (dims, data) in variables.items():
            axis = dims.index(batch_dim)
            index = (slice(None),) * axis + (i,)
            one[name] = (dims[:axis] + dims[axis + 1 :], data[index])
        yield one, meta


def apply(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
    sink: Sink | None = None,
) -> xr.DataArray | xr.Dataset:
    """Eager ``apply``: plan, run ``func`` over the grid, return the blended result.

    A ``sink`` that recorded finished chunks (``sink.done``, a resumed zarr store)
    makes the run skip the windows that touch only those chunks.
    """
    agg = Aggregator.from_plan(BlendPlan.make(grid, options.blend), obj, sink)
    skip = agg.skip_finished(sink.done) if sink is not None and sink.done is not None else None
    run(obj, func, agg, options, skip)
    return agg.result()

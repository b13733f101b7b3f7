"""The eager driver of ``apply``: sample, call ``func``, aggregate."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._sampling import Sampler
from xpatch._structure import THIS, Meta, split
from xpatch._validate import positive_int
from xpatch.aggregate import Aggregator
from xpatch.errors import DimensionError, ResultError
from xpatch.grid import PatchGrid, Window


def check_apply_args(
    obj: xr.DataArray | xr.Dataset,
    func: Any,
    batch_size: Any,
    batch_dim: Hashable,
    output_dims: Sequence[Hashable] | None,
) -> tuple[int | None, tuple[Hashable, ...] | None, tuple[Hashable, ...] | None]:
    """Validate the arguments of ``apply`` that the grid and aggregator do not check.

    Returns ``batch_size``, the dims of one window's result (for the aggregator)
    and, when batching, the dims of a batched result with ``batch_dim`` where the
    user put it.
    """
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size")
        if batch_dim in obj.dims:
            raise DimensionError(
                f"batch_dim {batch_dim!r} is already a dim of the array {tuple(obj.dims)};"
                " choose another name"
            )
    if output_dims is None:
        return batch_size, None, None
    output_dims = tuple(output_dims)
    if batch_size is None:
        return batch_size, output_dims, None
    if batch_dim not in output_dims:
        raise DimensionError(
            f"output_dims {output_dims} must name the batch dim {batch_dim!r} when"
            " batch_size is given"
        )
    return batch_size, tuple(d for d in output_dims if d != batch_dim), output_dims


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
    grid: PatchGrid,
    agg: Aggregator,
    *,
    batch_size: int | None,
    batch_dim: Hashable,
    batch_dims: tuple[Hashable, ...] | None,
    ordered: bool,
    progress: bool,
    skip: np.ndarray | None = None,
) -> Aggregator:
    """Run ``func`` over every window of ``grid`` and add the results to ``agg``."""
    sampler = Sampler(obj, grid)
    order: Sequence[int] = agg.chunk_order() if ordered else range(len(grid))
    if skip is not None:
        order = [i for i in order if not skip[i]]
    bar = _progress(len(order), progress)
    windows: Iterable[Window] = (
        iter(grid) if isinstance(order, range) else (grid[int(i)] for i in order)
    )
    try:
        if batch_size is None:
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
            default = (batch_dim, *obj.dims) if isinstance(obj, xr.DataArray) else None
            uniform = all(len(np.unique(ax.sizes)) == 1 for ax in grid.axes)
            for group in batches(windows, batch_size, uniform):
                where = _BatchWhere(group)
                batch = sampler.batch(group, batch_dim)
                result = _call(func, batch, where)
                # windows of a batch share one shape: the layout is checked once per batch
                box = [batched_variables(result, len(group), batch_dim, default, batch_dims, where)]
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


def batched_variables(
    result: Any,
    n: int,
    batch_dim: Hashable,
    default_dims: Sequence[Hashable] | None,
    output_dims: Sequence[Hashable] | None,
    where: Any,
) -> tuple[dict[Hashable, Any], Meta]:
    """A batched result as named arrays that all hold ``batch_dim`` of length ``n``.

    ``output_dims`` names the axes of a bare-array result, ``batch_dim`` included.
    """
    variables, meta = split(
        result,
        spatial=(batch_dim,),
        default_dims=default_dims,
        output_dims=output_dims,
        what=f"func's result for {where}",
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
) -> Iterator[tuple[dict[Hashable, Any], Meta]]:
    """Split a batched result into one (variables, meta) per window."""
    variables, meta = batched_variables(result, n, batch_dim, default_dims, output_dims, where)
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
    *,
    weights: Any,
    batch_size: Any,
    batch_dim: Hashable,
    output_dims: Sequence[Hashable] | None,
    chunks: int | Mapping[Hashable, int] | None,
    on_chunk: Callable[[Any], Any] | None,
    fill_value: Any,
    progress: bool,
    sink: Any = None,
) -> xr.DataArray | xr.Dataset:
    """Eager ``apply``: every argument is checked before ``func`` is first called.

    A ``sink`` that recorded finished chunks (``sink.done``, a resumed zarr store)
    makes the run skip the windows that touch only those chunks.
    """
    batch_size, agg_dims, batch_dims = check_apply_args(
        obj, func, batch_size, batch_dim, output_dims
    )
    agg = Aggregator(
        obj,
        grid,
        weights=weights,
        chunks=chunks,
        on_chunk=on_chunk,
        fill_value=fill_value,
        output_dims=agg_dims,
        sink=sink,
    )
    done = getattr(sink, "done", None)
    skip = agg.skip_finished(done) if done is not None else None
    run(
        obj,
        func,
        grid,
        agg,
        batch_size=batch_size,
        batch_dim=batch_dim,
        batch_dims=batch_dims,
        ordered=chunks is not None,
        progress=progress,
        skip=skip,
    )
    return agg.result()


def make_aggregator(
    obj: xr.DataArray | xr.Dataset,
    grid: PatchGrid,
    *,
    weights: Any,
    chunks: int | Mapping[Hashable, int] | None,
    on_chunk: Callable[[Any], Any] | None,
    fill_value: Any,
    output_dims: Sequence[Hashable] | None,
    out: Any,
) -> Aggregator:
    """The aggregator behind ``obj.patch.aggregator``."""
    sink = None
    if out is not None:
        from xpatch._chunks import chunk_sizes
        from xpatch.store import ZarrSink

        sink = ZarrSink(out, obj, grid, chunk_sizes(chunks, grid), resume=False)
    return Aggregator(
        obj,
        grid,
        weights=weights,
        chunks=chunks,
        on_chunk=on_chunk,
        fill_value=fill_value,
        output_dims=output_dims,
        sink=sink,
    )


def dispatch(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    *,
    out: Any,
    resume: bool,
    **kwargs: Any,
) -> xr.DataArray | xr.Dataset:
    """Pick the eager, out-of-core or lazy (dask) path of ``apply``."""
    if out is None:
        if resume:
            raise ValueError("resume=True needs out=, the zarr store of the interrupted run")
        from xpatch.parallel import apply_lazy, is_dask_backed

        if is_dask_backed(obj):
            return apply_lazy(obj, func, grid, **kwargs)
        return apply(obj, func, grid, **kwargs)
    from xpatch.store import apply_to_store

    return apply_to_store(obj, func, grid, out=out, resume=resume, **kwargs)

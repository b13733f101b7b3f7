"""The eager driver of ``apply``: sample, call ``func``, aggregate."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from xpatch._blend import default_threads
from xpatch._options import ApplyOptions
from xpatch._patchmap import PatchMap
from xpatch._plan import BlendPlan
from xpatch._reader import ChunkReader
from xpatch._rescale import scaled_template
from xpatch._sampling import Sampler, stack
from xpatch._sinks import Sink
from xpatch._structure import THIS, Meta, Variables, What, source_dims, split
from xpatch.aggregate import Aggregator
from xpatch.errors import IncompleteError, ResultError, WeightsError
from xpatch.grid import PatchGrid, Window


def batches(
    windows: Iterable[Window],
    batch_size: int,
    uniform: bool = False,
    key: Callable[[Window], Any] | None = None,
) -> Iterator[list[Window]]:
    """Consecutive windows of equal shape, at most ``batch_size`` at a time.

    ``uniform``: every window has the same shape (no need to compare them); ``key``:
    windows of a batch also share this (the crop of their results' halo).
    """
    if uniform:
        it = iter(windows)
        while batch := list(itertools.islice(it, batch_size)):
            yield batch
        return
    batch: list[Window] = []
    for w in windows:
        if batch and (
            len(batch) == batch_size
            or batch[0].shape != w.shape
            or (key is not None and key(batch[0]) != key(w))
        ):
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
    pm: PatchMap | None = None,
    keep: Callable[[Any], Any] | None = None,
    first: tuple[int, Any] | None = None,
) -> Aggregator:
    """Run ``func`` over every window of the aggregator's grid and add the results.

    With ``chunks``, windows come in the chunk plan's order (chunks finish early);
    windows flagged in ``skip`` (resume) are left out. ``pm``: what ``func`` sees and
    where its results go (halo, scale; the aggregator's grid is ``pm.target``);
    ``keep``: a predicate on the patch, False drops the window; ``first``: the result
    of the first window in order, already computed (index, result).
    """
    grid = agg.grid
    ordered = options.blend.chunks is not None
    order: Sequence[int] = agg.layout.order() if ordered else range(len(grid))
    if not ordered and grid.kept is not None:
        order = np.flatnonzero(grid.kept)
    if skip is not None:
        order = [i for i in order if not skip[i]]
    bar = _progress(len(order), options.progress)
    if pm is None:
        pm = PatchMap.make(grid)
    general = not pm.identity or keep is not None or first is not None
    # the first window (batch) goes through the general path: its result tells the
    # scale when none was given (see Rescaled); the rest takes the fast path below
    head = len(order) if general else (1 if options.scale is None else 0)
    if head and options.batch_size is not None and not general:
        head = options.batch_size
    if head and ChunkReader.make(obj, grid) is not None:  # a file: one reader for all
        head = len(order)
    if head:
        try:
            _run_mapped(obj, func, agg, options, pm, order[:head], bar, keep, first)
        except BaseException:
            if bar is not None:  # (a rescaled run shows a bar of its own)
                bar.leave = False
                bar.close()
            raise
        finally:
            if bar is not None and head >= len(order):
                bar.close()
        order = order[head:]
        if not len(order):
            return agg
    sampler = Sampler(obj, grid)
    windows: Iterable[Window] = (
        itertools.islice(iter(grid), order.start, None)
        if isinstance(order, range)
        else (grid[int(i)] for i in order)
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


class Rescaled(Exception):
    """The first result is at another resolution than planned (internal): the run
    starts again on the target grid of ``scale``, with this result kept."""

    def __init__(self, scale: dict[Hashable, Any], index: int, result: Any) -> None:
        super().__init__(scale)
        self.scale, self.index, self.result = scale, index, result


def _spatial_sizes(result: Any, agg: Aggregator, options: ApplyOptions, what: Any) -> dict:
    """The spatial sizes of a result (a bare array read as :func:`split` reads it)."""
    if isinstance(result, (xr.DataArray, xr.Dataset)):
        return {d: n for d, n in result.sizes.items() if d in agg.grid.dims}
    variables, _ = split(
        result,
        spatial=agg.grid.dims,
        default_dims=agg._default_dims,
        output_dims=options.blend.output_dims,
        what=what,
        default_sizes=agg._default_sizes,
    )
    dims, data = next(iter(variables.values()))
    return {d: n for d, n in zip(dims, data.shape) if d in agg.grid.dims}


def _cropped(
    result: Any,
    crop: dict[Hashable, slice],
    agg: Aggregator,
    options: ApplyOptions,
    what: Any,
    batch_dim: Hashable | None = None,
) -> tuple[Any, bool]:
    """The patch proper of a result (its halo cut off); True if split into variables."""
    if isinstance(result, (xr.DataArray, xr.Dataset)):
        return result.isel(crop, missing_dims="ignore"), False
    spatial = agg.grid.dims if batch_dim is None else (batch_dim,)
    default = agg._default_dims
    out_dims = options.blend.output_dims
    if batch_dim is not None:
        default = (batch_dim, *default) if default is not None else None
        out_dims = options.batch_output_dims
    variables, meta = split(
        result,
        spatial=spatial,
        default_dims=default,
        output_dims=out_dims,
        what=what,
        default_sizes=agg._default_sizes,
    )
    cut = {}
    for name, (dims, data) in variables.items():
        index = tuple(crop.get(d, slice(None)) for d in dims)
        cut[name] = (dims, data[index])
    return (cut, meta), True


def crop_variables(variables: Variables, pm: PatchMap, window: Window, what: Any) -> Variables:
    """The patch proper of a split result for the source ``window`` (halo cut off),
    after checking its spatial sizes (see :meth:`~xpatch._patchmap.PatchMap.check`)."""
    crop = dict(zip(pm.grid.dims, pm.crop(window)))
    out = {}
    for name, (dims, data) in variables.items():
        pm.check(dict(zip(dims, data.shape)), window, what)
        out[name] = (dims, data[tuple(crop.get(d, slice(None)) for d in dims)])
    return out


def _run_mapped(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    agg: Aggregator,
    options: ApplyOptions,
    pm: PatchMap,
    order: Sequence[int],
    bar: Any,
    keep: Callable[[Any], Any] | None,
    first: tuple[int, Any] | None,
) -> None:
    """The run where ``func`` sees other windows than those it fills (halo, scale), a
    predicate may drop windows, or the first result may ask for another scale."""
    source, target = pm.source, agg.grid
    dims = target.dims
    reader = ChunkReader.make(obj, source, threads=min(2, default_threads() - 1))
    wanted = (source[int(i)] for i in order)
    if reader is not None:
        stream: Iterator[tuple[Window, Any]] = reader.stream(wanted)
    else:
        cut = Sampler(obj, source).cutter()
        stream = ((w, cut(w)) for w in wanted)
    checked = first is not None
    batch_size, batch_dim = options.batch_size, options.batch_dim
    group: list[Window] = []
    patches: list[Any] = []

    def check(result: Any, w: Window, what: Any, n: int | None = None) -> None:
        nonlocal checked
        if checked:
            return
        checked = True
        sizes = _spatial_sizes(result, agg, options, what) if n is None else None
        if n is not None:  # a batch: read one window's sizes
            if isinstance(result, (xr.DataArray, xr.Dataset)):
                sizes = {d: k for d, k in result.sizes.items() if d in dims}
            else:
                variables, _ = batched_variables(
                    result,
                    n,
                    batch_dim,
                    (batch_dim, *(agg._default_dims or ())),
                    options.batch_output_dims,
                    what,
                    agg._default_sizes,
                )
                vd, data = next(iter(variables.values()))
                sizes = {d: k for d, k in zip(vd, data.shape) if d in dims}
        if options.scale is None:
            found = pm.infer_scale(sizes, w, what)
            if found is not None:
                raise Rescaled(found, w.index, result if n is None else None)
        pm.check(sizes, w, what)

    def one(w: Window, box: list[Any]) -> None:
        """Add the result in ``box`` (handed over: see Aggregator.add_result)."""
        if not checked:
            check(box[0], w, What(w, "func's result for"))
        if pm.identity:
            agg.add_result(box, w)
            return
        what = What(w, "func's result for")
        crop = dict(zip(dims, pm.crop(w)))
        piece, is_split = _cropped(box.pop(), crop, agg, options, what)
        if is_split:
            agg.add_variables(target[w.index], *piece)
        else:
            box.append(piece)
            del piece
            agg.add_result(box, target[w.index])

    def flush() -> None:
        where = _BatchWhere(list(group))
        result = _call(func, stack(patches, group, batch_dim), where)
        check(result, group[0], where, len(group))
        crop = dict(zip(dims, pm.crop(group[0])))
        targets = [target[w.index] for w in group]
        labeled = isinstance(result, (xr.DataArray, xr.Dataset))
        if labeled:
            result = result.isel(crop, missing_dims="ignore")
            result = agg.align(result, None, f"func's result for {where}", batch_dim)
            crop = {}
        box = [
            batched_variables(
                result,
                len(group),
                batch_dim,
                (batch_dim, *agg._default_dims) if agg._default_dims is not None else None,
                options.batch_output_dims,
                where,
                agg._default_sizes,
            )
        ]
        variables, meta = box.pop()
        variables = {
            name: (vd, data[tuple(crop.get(d, slice(None)) for d in vd)])
            for name, (vd, data) in variables.items()
        }
        agg.add_batch(targets, [(variables, meta)], batch_dim)
        if bar is not None:
            bar.update(len(group))
        group.clear()
        patches.clear()

    try:
        for w, patch in stream:
            if first is not None and w.index == first[0]:
                box, first = [first[1]], None
                one(w, box)
                if bar is not None:
                    bar.update(1)
                continue
            if keep is not None and not _keep(keep, patch, w):
                agg.drop(target[w.index])
                if bar is not None:
                    bar.update(1)
                continue
            if batch_size is None:
                box = [_call(func, patch, w)]
                del patch
                one(w, box)
                if bar is not None:
                    bar.update(1)
                continue
            key = (w.shape, pm.crop(w))
            if group and (len(group) == batch_size or (group[0].shape, pm.crop(group[0])) != key):
                flush()
            group.append(w)
            patches.append(patch)
        if group:
            flush()
        agg.settle()
    except BaseException as err:
        try:
            agg.settle()
        except Exception as late:
            err.add_note(f"(blending the previous result also failed: {late!r})")
        raise


def _keep(keep: Callable[[Any], Any], patch: Any, w: Window) -> bool:
    """The predicate's verdict on a patch (a bool, or a 0-d array of one)."""
    try:
        verdict = keep(patch)
    except Exception as err:
        err.add_note(f"xpatch: raised by mask (the predicate) on {w!r}")
        raise
    try:
        if verdict is None:  # (a predicate that forgot to return)
            raise TypeError
        return bool(np.asarray(verdict).item())
    except (ValueError, TypeError):
        raise ResultError(
            f"mask (the predicate) returned {type(verdict).__name__} for {w!r}: it must"
            " return True (sample the window) or False (skip it)"
        ) from None


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
    pm: PatchMap | None = None,
    keep: Callable[[Any], Any] | None = None,
) -> xr.DataArray | xr.Dataset:
    """Eager ``apply``: plan, run ``func`` over the grid, return the blended result.

    A ``sink`` that recorded finished chunks (``sink.done``, a resumed zarr store)
    makes the run skip the windows that touch only those chunks.
    """
    pm = pm if pm is not None else PatchMap.make(grid)
    try:
        agg = _aggregator(obj, pm, options, sink)
    except WeightsError as err:
        weights_hint(err, options)
        raise
    skip = agg.skip_finished(sink.done) if sink is not None and sink.done is not None else None
    try:
        run(obj, func, agg, options, skip, pm, keep)
    except Rescaled as again:
        agg.abandon()
        if sink is not None:
            raise ResultError(
                f"func's result for {grid[again.index]!r} has another resolution than the"
                f" patch (scale {_show(again.scale)}): with out=, say so up front with"
                f" scale={_show(again.scale)}"
            ) from None
        pm = PatchMap.make(grid, pm.halo, again.scale)
        agg = _aggregator(obj, pm, options, None)
        first = None if again.result is None else (again.index, again.result)
        try:
            run(obj, func, agg, options, None, pm, keep, first)
        except BaseException:
            agg.abandon()
            raise
    except BaseException:
        agg.abandon()  # its scratch files go now, not when the traceback is collected
        raise
    if keep is not None and not agg.n_added and (skip is None or not skip.any()):
        raise IncompleteError(
            f"mask (the predicate) returned False for every one of the {grid.n_kept} windows:"
            " func was never called, so there is no result to blend; check the predicate on"
            " a few patches of obj.patch.sample(...)"
        )
    return agg.result()


def weights_hint(err: WeightsError, options: ApplyOptions) -> None:
    """Say, on a weights array refused before the scale is known, how to give one."""
    if options.scale is None:
        err.add_note(
            "xpatch: if func returns patches at another resolution, give scale= as well:"
            " a weights array then has the shape of func's output patch"
        )


def _show(scale: Mapping[Hashable, Any]) -> str:
    return "{" + ", ".join(f"{d!r}: {_number(f)}" for d, f in scale.items()) + "}"


def _number(f: Any) -> str:
    return str(int(f)) if f.denominator == 1 else f"{float(f):g}"


def _aggregator(
    obj: xr.DataArray | xr.Dataset, pm: PatchMap, options: ApplyOptions, sink: Sink | None
) -> Aggregator:
    """The aggregator over the target grid of ``pm`` (the source's, unless scaled)."""
    if not pm.scaled:
        return Aggregator.from_plan(BlendPlan.make(pm.target, options.blend), obj, sink)
    blend = replace(options.blend, chunks=pm.target_chunks(options.blend.chunks))
    return Aggregator.from_plan(BlendPlan.make(pm.target, blend), scaled_template(obj, pm), sink)

"""The functional layer: what the ``.patch`` accessor does, as plain functions.

``xpatch.api.apply(obj, func, ...)`` is ``obj.patch.apply(func, ...)``, and so on for
every accessor method: the accessor delegates here in one line. This is where the
accessor's arguments arrive: the grid is planned, the options are validated once
(:class:`~xpatch._options.ApplyOptions`) and the work goes to the module that owns
it: the eager driver, the dask graph builder or the zarr store.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import xarray as xr

from xpatch import _apply, instances, parallel, store
from xpatch._dtypes import DEFAULT
from xpatch._mask import kept_by_mask
from xpatch._options import ApplyOptions, BlendOptions
from xpatch._outputs import prepare, refuse_with_merge
from xpatch._patchmap import PatchMap, as_scale, spatial_keys
from xpatch._plan import BlendPlan
from xpatch._sampling import Sampler
from xpatch._structure import data_variables, spatial_subset
from xpatch._types import Border, PadMode
from xpatch._units import Units, grid_elements, to_elements
from xpatch._validate import check_dims, flag, foreign_keywords, is_int, size_without_dims
from xpatch.aggregate import Aggregator
from xpatch.dataset import PatchDataset
from xpatch.errors import DimensionError, GridError
from xpatch.grid import PatchGrid
from xpatch.layout import chunk_edges, chunk_sizes
from xpatch.weights import WeightsLike

__all__ = ["aggregator", "apply", "dataset", "grid", "sample"]

Obj = xr.DataArray | xr.Dataset


def grid(
    obj: Obj,
    size: Mapping[Hashable, int] | None = None,
    /,
    *,
    step: int | Mapping[Hashable, int] | None = None,
    border: Border = "squeeze",
    pad_mode: PadMode | None = None,
    mask: xr.DataArray | None = None,
    units: Units = "index",
    overlap: float | Mapping[Hashable, float] | None = None,
    **size_kwargs: int,
) -> PatchGrid:
    """The grid of patches over the named dims of ``obj`` (``obj.patch.grid``).

    Spatial dims are ordered as in ``obj``, whatever the order of the sizes. A
    boolean ``mask`` over the spatial dims (any resolution, aligned by coordinates)
    marks the windows over which it holds no True as skipped (``grid.kept``).
    With ``units="coords"``, ``size`` and ``step`` are in the units of the spatial
    coordinates (converted with the spacing of their regular 1-D coordinates);
    ``overlap`` (a fraction of the patch, instead of ``step``) means
    ``step = int(size * (1 - overlap))`` per dim, MONAI's rule.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.zeros((100, 7)), dims=("y", "x"))
    >>> grid(da, y=30, step=20).starts["y"]
    array([ 0, 18, 36, 54, 70])
    """
    if size is not None and not isinstance(size, Mapping):
        raise size_without_dims(size, obj.dims)
    foreign_keywords(size_kwargs, obj.dims)
    if size is not None and size_kwargs:
        raise GridError("give the patch size either as a mapping or as keyword arguments, not both")
    sizes = dict(size if size is not None else size_kwargs)
    if not sizes:
        raise GridError("give the patch size of at least one spatial dim, e.g. y=256, x=256")
    check_dims(sizes, obj.dims, "size")
    dims = [d for d in obj.dims if d in sizes]
    if isinstance(obj, xr.Dataset) and not any(
        set(dims) <= set(v.dims) for v in obj.data_vars.values()
    ):
        raise DimensionError(f"no data variable of the Dataset has all the spatial dims {dims}")
    sizes, step = grid_elements(obj, dims, sizes, step, units, overlap)
    g = PatchGrid(
        {d: obj.sizes[d] for d in dims}, {d: sizes[d] for d in dims}, step, border, pad_mode
    )
    if mask is not None:
        g = g.with_kept(kept_by_mask(obj, g, mask))
    return g


def sample(
    obj: Obj,
    size: Mapping[Hashable, int] | None = None,
    /,
    *,
    step: int | Mapping[Hashable, int] | None = None,
    border: Border = "squeeze",
    pad_mode: PadMode | None = None,
    units: Units = "index",
    overlap: float | Mapping[Hashable, float] | None = None,
    **size_kwargs: int,
) -> Iterator[Obj]:
    """Each patch of ``obj`` as a labeled object, in grid order (``obj.patch.sample``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.arange(6), dims="x", coords={"x": np.arange(6) * 10})
    >>> [p.x.values.tolist() for p in sample(da, x=4, step=2)]
    [[0, 10, 20, 30], [20, 30, 40, 50]]
    """
    g = grid(
        obj, size, step=step, border=border, pad_mode=pad_mode, units=units, overlap=overlap,
        **size_kwargs,
    )  # fmt: skip
    sampler = Sampler(spatial_subset(obj, g.dims), g)
    return (sampler(w) for w in g.kept_windows())  # a mask's skipped windows: never sampled


def dataset(
    obj: Obj,
    size: Mapping[Hashable, int] | None = None,
    /,
    *,
    step: int | Mapping[Hashable, int] | None = None,
    border: Border = "squeeze",
    pad_mode: PadMode | None = None,
    transform: Callable[[Any], Any] | None = None,
    units: Units = "index",
    overlap: float | Mapping[Hashable, float] | None = None,
    **size_kwargs: int,
) -> PatchDataset:
    """A map-style dataset of the patches of ``obj`` (``obj.patch.dataset``).

    ``transform`` is called on each sample where it is loaded (see
    :class:`~xpatch.PatchDataset`).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = dataset(xr.DataArray(np.zeros((2, 64, 64)), dims=("band", "y", "x")), y=32, x=32)
    >>> len(ds), ds[3][0].shape
    (4, (2, 32, 32))
    """
    g = grid(
        obj, size, step=step, border=border, pad_mode=pad_mode, units=units, overlap=overlap,
        **size_kwargs,
    )  # fmt: skip
    if g.kept is not None:  # its items are indexed by window: it would serve skipped ones
        raise GridError(
            "dataset does not take mask=: take the kept windows of the full dataset instead,"
            " e.g. torch.utils.data.Subset(ds, np.flatnonzero(obj.patch.grid(..., mask=m).kept))"
        )
    return PatchDataset(spatial_subset(obj, g.dims), g, transform)


def apply(
    obj: Obj,
    func: Callable[[Any], Any],
    size: Mapping[Hashable, int] | None = None,
    /,
    *,
    step: int | Mapping[Hashable, int] | None = None,
    border: Border = "squeeze",
    pad_mode: PadMode | None = None,
    weights: WeightsLike = "gaussian",
    batch_size: int | None = None,
    batch_dim: Hashable = "patch",
    output_dims: Sequence[Hashable] | Mapping[Hashable, Sequence[Hashable]] | None = None,
    output_names: Sequence[Hashable] | None = None,
    chunks: int | Mapping[Hashable, int] | None = None,
    on_chunk: Callable[[Any], Any] | None = None,
    fill_value: Any = DEFAULT,
    out: Any = None,
    resume: bool = False,
    progress: bool = False,
    overwrite: bool = False,
    halo: int | Mapping[Hashable, int] | None = None,
    scale: float | Mapping[Hashable, float] | None = None,
    mask: xr.DataArray | Callable[[Any], Any] | None = None,
    merge: str | None = None,
    iou: float = 0.5,
    template: Obj | None = None,
    units: Units = "index",
    overlap: float | Mapping[Hashable, float] | None = None,
    **size_kwargs: int,
) -> Obj:
    """Run ``func`` on every patch of ``obj`` and blend the results (``obj.patch.apply``).

    The eager path runs at once; a dask-backed ``obj`` gives a lazy result; ``out``
    writes to a zarr store (resumable). Every argument is checked before ``func``
    is first called.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.random.rand(3, 64, 64), dims=("band", "y", "x"))
    >>> out = apply(da, lambda p: p.mean("band"), y=32, x=32, step=16)
    >>> bool(np.allclose(out, da.mean("band")))
    True
    """
    g = grid(
        obj, size, step=step, border=border, pad_mode=pad_mode, units=units, overlap=overlap,
        **size_kwargs,
    )  # fmt: skip
    _, _, halo, chunks = to_elements(obj, g.dims, units, halo=halo, chunks=chunks)
    _check_chunks(chunks, g, out)
    keep = None
    if callable(mask) and not isinstance(mask, xr.DataArray):
        keep = mask
    elif mask is not None:
        g = g.with_kept(kept_by_mask(obj, g, mask))
        if not g.n_kept:
            raise GridError(
                "mask holds no True over any window: every patch would be skipped, so there"
                " is nothing to compute (check that the mask's coordinates overlap the array's)"
            )
    pm = PatchMap.make(g, _halo(halo, g.dims), _scales(scale, g.dims))
    obj = spatial_subset(obj, g.dims)
    refuse_with_merge(merge, output_names)
    if merge is not None:  # instance labels are stitched, not blended (xpatch.instances)
        return instances.apply(
            obj, func, g, merge=merge, iou=iou, chunks=chunks, out=out, resume=resume,
            overwrite=overwrite, progress=progress, batch_size=batch_size, on_chunk=on_chunk,
            fill_value=fill_value, output_dims=output_dims, halo=halo, scale=scale, keep=keep,
        )  # fmt: skip
    options = ApplyOptions.make(
        tuple(obj.dims),
        func,
        weights=weights,
        batch_size=batch_size,
        batch_dim=batch_dim,
        output_dims=output_dims,
        chunks=chunks,
        on_chunk=on_chunk,
        fill_value=fill_value,
        out=out,
        resume=resume,
        progress=progress,
        overwrite=overwrite,
        scale=None if scale is None else dict(pm.scale),
        template=template,
        output_names=output_names,
    )
    func, options = prepare(func, options, obj, g.dims)  # several outputs: one Dataset
    if options.out is not None:
        return store.apply_to_store(obj, func, g, options, pm=pm, keep=keep)
    if parallel.is_dask_backed(obj):
        return parallel.apply_lazy(obj, func, g, options, pm=pm, keep=keep)
    return _apply.apply(obj, func, g, options, pm=pm, keep=keep)


def aggregator(
    obj: Obj,
    size: Mapping[Hashable, int] | None = None,
    /,
    *,
    step: int | Mapping[Hashable, int] | None = None,
    border: Border = "squeeze",
    pad_mode: PadMode | None = None,
    weights: WeightsLike = "gaussian",
    chunks: int | Mapping[Hashable, int] | None = None,
    on_chunk: Callable[[Any], Any] | None = None,
    fill_value: Any = DEFAULT,
    output_dims: Sequence[Hashable] | Mapping[Hashable, Sequence[Hashable]] | None = None,
    output_names: Sequence[Hashable] | None = None,
    out: Any = None,
    overwrite: bool = False,
    merge: str | None = None,
    iou: float = 0.5,
    units: Units = "index",
    overlap: float | Mapping[Hashable, float] | None = None,
    **size_kwargs: int,
) -> Aggregator | instances.InstanceAggregator:
    """An :class:`~xpatch.Aggregator` over the grid of ``obj`` (``obj.patch.aggregator``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.ones(8), dims="x")
    >>> agg = aggregator(da, x=4, weights="mean")
    >>> for window, patch in zip(agg.grid, sample(da, x=4)):
    ...     agg.add(patch * 2, window)
    >>> agg.result().values.tolist()
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    g = grid(
        obj, size, step=step, border=border, pad_mode=pad_mode, units=units, overlap=overlap,
        **size_kwargs,
    )  # fmt: skip
    chunks = to_elements(obj, g.dims, units, chunks=chunks).chunks
    _check_chunks(chunks, g, out)
    overwrite = flag(overwrite, "overwrite")
    obj = spatial_subset(obj, g.dims)
    refuse_with_merge(merge, output_names)
    if merge is not None:  # instance labels are stitched, not blended (xpatch.instances)
        return instances.aggregator(
            obj, g, merge=merge, iou=iou, chunks=chunks, out=out, overwrite=overwrite,
            on_chunk=on_chunk, fill_value=fill_value, output_dims=output_dims,
        )  # fmt: skip
    options = BlendOptions(weights, chunks, on_chunk, fill_value, output_dims, output_names)  # type: ignore[arg-type]
    sink = None
    if out is not None:
        sink = store.ZarrSink(
            out, obj, g, chunk_sizes(chunks, g), resume=False, overwrite=overwrite
        )
    return Aggregator.from_plan(BlendPlan.make(g, options), obj, sink)


def _halo(halo: Any, dims: Sequence[Hashable]) -> dict[Hashable, int]:
    """``halo`` as elements of context per spatial dim (an int applies to every one)."""
    if halo is None:
        return {d: 0 for d in dims}
    if isinstance(halo, Mapping):
        spatial_keys(halo, dims, "halo")
    per = halo if isinstance(halo, Mapping) else {d: halo for d in dims}
    out = {}
    for d in dims:
        h = per.get(d, 0)
        if not is_int(h) or h < 0:
            raise GridError(
                f"halo for dim {d!r} must be a whole number of elements >= 0, got {h!r}"
            )
        out[d] = int(h)
    return out


def _scales(scale: Any, dims: Sequence[Hashable]) -> dict[Hashable, Any] | None:
    """``scale`` as a factor per spatial dim (a number applies to every one)."""
    if scale is None:
        return None
    if isinstance(scale, Mapping):
        spatial_keys(scale, dims, "scale")
        return {d: as_scale(scale.get(d, 1), d) for d in dims}
    return {d: as_scale(scale, d) for d in dims}


def _check_chunks(chunks: Any, g: PatchGrid, out: Any) -> None:
    """Refuse bad ``chunks`` before any work (block lengths too; regular ones with ``out``)."""
    chunk_edges(chunks, g)
    if out is not None and chunks is not None:
        chunk_sizes(chunks, g)


_METHODS = (
    ("grid", "", "the windows (a PatchGrid): count, starts, coverage, plot"),
    ("sample", "", "each patch as a labeled object, in grid order"),
    ("dataset", "", "a map-style dataset of patches for a PyTorch DataLoader"),
    ("apply", "func, ", "run func on every patch and blend the results"),
    ("aggregator", "", "blend the results of a hand-written loop"),
)


def describe(obj: Obj) -> str:
    """What ``obj.patch`` shows: the object, its sizes and what the accessor offers.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.zeros((3, 64, 64), "float32"), dims=("band", "y", "x"), name="b")
    >>> print(describe(da))  # doctest: +NORMALIZE_WHITESPACE
    <xpatch.PatchAccessor>
    DataArray 'b' (band: 3, y: 64, x: 64) float32, in memory
      .grid(y=..., x=...)            the windows (a PatchGrid): count, starts, coverage, plot
      .sample(y=..., x=...)          each patch as a labeled object, in grid order
      .dataset(y=..., x=...)         a map-style dataset of patches for a PyTorch DataLoader
      .apply(func, y=..., x=...)     run func on every patch and blend the results
      .aggregator(y=..., x=...)      blend the results of a hand-written loop
    Patch sizes name the spatial dims, e.g. .apply(func, y=256, x=256); see help(da.patch.apply)
    """
    sizes = ", ".join(f"{d}: {n}" for d, n in obj.sizes.items())
    if parallel.is_dask_backed(obj):
        where = "dask-backed (lazy)"
    elif any(not getattr(v, "_in_memory", True) for v in data_variables(obj)):
        where = "lazy (read from its file)"
    else:
        where = "in memory"
    if isinstance(obj, xr.DataArray):
        name = "" if obj.name is None else f" {obj.name!r}"
        head = f"DataArray{name} ({sizes}) {obj.dtype}, {where}"
        short = "da"
    else:
        names = [str(k) for k in obj.data_vars]
        listed = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        head = f"Dataset ({sizes}), {where}, data variables: {listed}"
        short = "ds"
    example = [str(d) for d in obj.dims][-2:]
    dots = ", ".join(f"{d}=..." for d in example)
    lines = ["<xpatch.PatchAccessor>", head]
    for method, first, what in _METHODS:
        lines.append(f"  {f'.{method}({first}{dots})':<30} {what}")
    sized = ", ".join(f"{d}=256" for d in example)
    lines.append(
        f"Patch sizes name the spatial dims, e.g. .apply(func, {sized}); see"
        f" help({short}.patch.apply)"
    )
    return "\n".join(lines)

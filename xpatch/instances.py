"""Instance labels stitched across patches: ``apply(func, ..., merge="instances")``.

``func`` returns, per patch, an integer image: 0 is background and each object has
its own id, local to the patch (cellpose, StarDist, a watershed,
``skimage.measure.label(p > 0.5)``). Ids of different patches mean nothing to each
other and averaging them is meaningless, so instead of blending xpatch stitches:

- each window keeps the objects whose bounding-box centre lies in its *core*, the
  region nearer to its centre than to any other window's centre. With an overlap
  (size - step) at least the extent of the largest object, an object kept this way
  is whole in its window, so objects cut by a patch border are taken from the
  neighbour that sees them whole;
- each element takes the kept object of the nearest window centre that has one there;
- kept objects of two overlapping windows whose IoU, measured over the region the
  two windows share, is at least ``iou`` are one object (this joins objects larger
  than the overlap, seen in part by several windows);
- the result is numbered ``1..N`` (0 background) with the smallest unsigned dtype
  that holds ``N``.

This module is the front: :func:`apply` picks the path (eager, zarr store, dask) and
:func:`aggregator` serves hand-written loops. The numerics are in
:mod:`xpatch._instances`, the window-by-window driver in :mod:`xpatch._instances_agg`,
the zarr store in :mod:`xpatch._instances_store`, the dask graph in
:mod:`xpatch._instances_dask`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import xarray as xr

from xpatch import _instances_dask, _instances_store, parallel
from xpatch._instances import smallest_uint
from xpatch._instances_agg import InstanceAggregator, _run, check_options, labels_of
from xpatch._validate import flag
from xpatch.errors import PatchError
from xpatch.grid import PatchGrid

__all__ = [
    "InstanceAggregator",
    "aggregator",
    "apply",
    "check_options",
    "labels_of",
    "smallest_uint",
]


def apply(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    *,
    merge: Any = "instances",
    iou: Any = 0.5,
    chunks: int | Mapping[Hashable, Any] | None = None,
    out: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    **refused: Any,
) -> xr.DataArray:
    """``apply`` with ``merge="instances"``: eager, to a zarr store, or lazy on dask.

    Every argument is checked before ``func`` is first called.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from scipy import ndimage
    >>> img = np.zeros((20, 20)); img[2:6, 3:7] = 1; img[9:13, 8:12] = 1; img[15:18, 1:19] = 1
    >>> da = xr.DataArray(img, dims=("y", "x"))
    >>> grid = PatchGrid({"y": 20, "x": 20}, {"y": 10, "x": 10}, step=5)
    >>> labels = apply(da, lambda p: ndimage.label(p.values > 0.5)[0], grid)
    >>> sorted(np.unique(labels).tolist()), labels.dtype
    ([0, 1, 2, 3], dtype('uint8'))
    """
    iou = check_options(merge, iou, **refused)
    resume, overwrite = flag(resume, "resume"), flag(overwrite, "overwrite")
    progress = flag(progress, "progress")
    if resume and out is None:
        raise PatchError("resume=True needs out=, the zarr store of the interrupted run")
    if out is not None:
        return _instances_store.apply_to_store(
            obj, func, grid, iou=iou, chunks=chunks, out=out, resume=resume,
            overwrite=overwrite, progress=progress,
        )  # fmt: skip
    if parallel.is_dask_backed(obj):
        return _instances_dask.apply_lazy(obj, func, grid, iou=iou, chunks=chunks)
    agg = InstanceAggregator(obj, grid, iou=iou, chunks=chunks)
    _run(agg, func, obj, progress)
    return agg.result()


def aggregator(
    obj: xr.DataArray | xr.Dataset,
    grid: PatchGrid,
    *,
    merge: Any = "instances",
    iou: Any = 0.5,
    chunks: int | Mapping[Hashable, Any] | None = None,
    out: Any = None,
    overwrite: bool = False,
    **refused: Any,
) -> InstanceAggregator:
    """``aggregator`` with ``merge="instances"``: an :class:`InstanceAggregator`.

    With ``out``, painted chunks go to a scratch store beside it and ``result()``
    writes the relabelled store (``out``'s checks and lock are taken here, before
    anything is added).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.zeros((8, 8)), dims=("y", "x"))
    >>> agg = aggregator(da, PatchGrid({"y": 8, "x": 8}, {"y": 4, "x": 4}, step=2))
    >>> type(agg).__name__, len(agg.grid)
    ('InstanceAggregator', 9)
    """
    iou = check_options(merge, iou, **refused)
    overwrite = flag(overwrite, "overwrite")
    agg = InstanceAggregator(obj, grid, iou=iou, chunks=chunks)
    if out is not None:
        sink, root = _instances_store.make_sink(
            obj, grid, chunks, out, iou, resume=False, overwrite=overwrite
        )
        if root.exists() and not overwrite:
            sink.close()
            raise _instances_store.StoreError(
                f"out={sink.label}: {root} holds the scratch of an interrupted instance run;"
                " pass overwrite=True to start afresh"
            )
        paint = _instances_store.StorePaint(root, agg.layout, sink, agg.name)
        paint.create({"grid": grid.signature(), "iou": iou, "fingerprint": None})
        agg.paint = paint
    return agg

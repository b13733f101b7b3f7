"""The ``.patch`` accessor on DataArray and Dataset: each method delegates to :mod:`xpatch.api`.

One implementation serves both types; every method is one call of the function of
the same name in :mod:`xpatch.api`, with the accessor's object first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import xarray as xr

from xpatch import api
from xpatch._dtypes import DEFAULT
from xpatch._types import Border, PadMode
from xpatch._units import Units
from xpatch.aggregate import Aggregator
from xpatch.dataset import PatchDataset
from xpatch.grid import PatchGrid
from xpatch.instances import InstanceAggregator
from xpatch.weights import WeightsLike

Obj = xr.DataArray | xr.Dataset


@xr.register_dataset_accessor("patch")
@xr.register_dataarray_accessor("patch")
class PatchAccessor:
    """Patch-wise sampling and blended aggregation over named dims.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xpatch
    >>> da = xr.DataArray(np.ones((3, 100, 80)), dims=("band", "y", "x"))
    >>> grid = da.patch.grid(y=32, x=32, step=16)
    >>> grid.shape
    {'y': 6, 'x': 4}
    >>> out = da.patch.apply(lambda p: p * 2, y=32, x=32, step=16)
    >>> float(out.max())
    2.0
    """

    def __init__(self, obj: Obj) -> None:
        self._obj = obj

    def __repr__(self) -> str:
        return api.describe(self._obj)

    def grid(
        self,
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
        """Plan the grid of patches over the named spatial dims.

        Parameters
        ----------
        size : mapping of hashable to int, optional
            Patch size per spatial dim; or give it as keyword arguments (``y=256``).
        step : int or mapping of hashable to int, optional
            Distance between neighbouring patch starts; default: ``size`` (no overlap).
        border : {"squeeze", "edge", "adaptive", "crop", "pad"}, default: "squeeze"
            How the last patch along an axis is placed when the grid does not fit.
        pad_mode : {"constant", "edge", "reflect", "symmetric", "wrap"}, optional
            Virtual padding, only with ``border="pad"`` (default "constant").
        mask : DataArray of bool, optional
            Over the spatial dims, at any resolution (aligned by coordinates): the
            windows over which it holds no True are skipped (``grid.kept``;
            :meth:`PatchGrid.plot` draws them dashed).
        units : {"index", "coords"}, default: "index"
            What ``size`` and ``step`` count: elements, or the units of the spatial
            coordinates (metres, degrees, microns), converted with the spacing of each
            dim's regularly spaced 1-D coordinate (descending ones too). A coordinate
            that is missing or irregular, or a size that is not a whole number of
            elements, is refused (the message names the sizes that would be whole).
        overlap : float or mapping of hashable to float, optional
            Instead of ``step``: the fraction of the patch that neighbouring patches
            share, in [0, 1), for every dim or per dim. ``step = int(size * (1 -
            overlap))`` per dim, at least 1: MONAI's rule for its ``overlap``.
        **size_kwargs : int
            The patch sizes as keyword arguments.

        Returns
        -------
        PatchGrid

        Raises
        ------
        DimensionError, GridError
            An unknown dim, or a size, step, overlap, units, border or pad_mode that
            is not allowed.

        See Also
        --------
        xpatch.PatchGrid

        Examples
        --------
        >>> import numpy as np, xarray as xr, xpatch
        >>> da = xr.DataArray(np.zeros((100, 7)), dims=("y", "x"))
        >>> da.patch.grid(y=30, step=20).starts["y"]
        array([ 0, 18, 36, 54, 70])

        Sizes in metres (30 m pixels) and an overlap of a quarter of the patch:

        >>> scene = xr.DataArray(np.zeros((256, 256)), dims=("y", "x"),
        ...                      coords={"y": 4e6 - 30.0 * np.arange(256),
        ...                              "x": 5e5 + 30.0 * np.arange(256)})
        >>> grid = scene.patch.grid(y=3840, x=3840, units="coords", overlap=0.25)
        >>> grid.size, grid.step
        ({'y': 128, 'x': 128}, {'y': 96, 'x': 96})
        """
        return api.grid(
            self._obj, size, step=step, border=border, pad_mode=pad_mode, mask=mask, units=units,
            overlap=overlap, **size_kwargs,
        )  # fmt: skip

    def sample(
        self,
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
        """Yield each patch as a labeled object, in grid order.

        Patches keep their coordinates, attributes and every non-spatial dim. A
        lazy source stays lazy: only the patch is read, when its values are used.
        Patches of the pad border hold the values ``numpy.pad`` would give.

        Parameters
        ----------
        size, step, border, pad_mode, units, overlap, **size_kwargs
            As for :meth:`grid`.

        Yields
        ------
        DataArray or Dataset

        Examples
        --------
        >>> import numpy as np, xarray as xr, xpatch
        >>> da = xr.DataArray(np.arange(6), dims="x", coords={"x": np.arange(6) * 10})
        >>> [p.x.values.tolist() for p in da.patch.sample(x=4, step=2)]
        [[0, 10, 20, 30], [20, 30, 40, 50]]
        """
        return api.sample(
            self._obj, size, step=step, border=border, pad_mode=pad_mode, units=units,
            overlap=overlap, **size_kwargs,
        )  # fmt: skip

    def dataset(
        self,
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
        """A map-style dataset of patches for a PyTorch ``DataLoader``.

        Parameters
        ----------
        size, step, border, pad_mode, units, overlap, **size_kwargs
            As for :meth:`grid`.
        transform : callable, optional
            Called on each sample (the array, or for a Dataset the dict of arrays)
            where it is loaded, in the ``DataLoader``'s worker; it returns the sample.
            It sees a patch's variables together: a random flip of an ``image`` and
            its ``mask`` flips both alike.

        Returns
        -------
        PatchDataset
            ``ds[i]`` is ``(patch as a numpy array in the array's dim order, i)``;
            for a Dataset a dict of arrays, one per variable.

        Examples
        --------
        >>> import numpy as np, xarray as xr, xpatch
        >>> da = xr.DataArray(np.zeros((2, 64, 64)), dims=("band", "y", "x"))
        >>> ds = da.patch.dataset(y=32, x=32)
        >>> len(ds), ds[3][0].shape, ds[3][1]
        (4, (2, 32, 32), 3)

        Image/label pairs for training, from a Dataset with ``image`` and ``mask``:

        >>> scene = xr.Dataset({"image": (("band", "y", "x"), np.zeros((2, 64, 64))),
        ...                     "mask": (("y", "x"), np.zeros((64, 64), "uint8"))})
        >>> pairs = scene.patch.dataset(y=32, x=32, transform=lambda s: (s["image"], s["mask"]))
        >>> (image, mask), index = pairs[3]
        >>> image.shape, mask.shape, index
        ((2, 32, 32), (32, 32), 3)
        """
        return api.dataset(
            self._obj, size, step=step, border=border, pad_mode=pad_mode, transform=transform,
            units=units, overlap=overlap, **size_kwargs,
        )  # fmt: skip

    def apply(
        self,
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
        merge: str | None = None,
        iou: float = 0.5,
        halo: int | Mapping[Hashable, int] | None = None,
        scale: float | Mapping[Hashable, float] | None = None,
        mask: xr.DataArray | Callable[[Any], Any] | None = None,
        template: Obj | None = None,
        units: Units = "index",
        overlap: float | Mapping[Hashable, float] | None = None,
        **size_kwargs: int,
    ) -> Obj:
        """Run ``func`` on every patch and blend the results into one array.

        Parameters
        ----------
        func : callable
            Called with each patch (a DataArray or Dataset with coordinates), or
            with a batch of patches stacked along ``batch_dim``. Returns a
            DataArray/Dataset (its dims and non-spatial coords are used), an
            array-like (named by ``output_dims``), or several outputs as a tuple or
            dict of those (the result is then a Dataset, one variable per output,
            each blended). Non-spatial dims may change
            (bands in, classes out); spatial sizes must stay those of the patch.
            It is called on the calling thread, one patch or batch at a time. A
            large fresh result is blended on helper threads while ``func`` makes
            the next one; a result ``func`` may still write to (a reused buffer,
            a view of its input) is blended before ``func`` is called again.
        size, step, border, pad_mode, units, overlap, **size_kwargs
            The grid, as for :meth:`grid`. With ``units="coords"``, ``halo`` and
            ``chunks`` too are in the units of the coordinates.
        weights : {"gaussian", "mean", "hann"}, Kernel, array-like or callable
            How overlapping results are blended (see :mod:`xpatch.weights`).
        batch_size : int, optional
            Give ``func`` up to this many patches at a time, stacked along ``batch_dim``.
        batch_dim : hashable, default: "patch"
            Name of the dim along which batches are stacked.
        output_dims : sequence of hashable, or mapping of output name to dims, optional
            Dims of a bare-array result, in its axis order (with ``batch_dim``,
            at any position, when batching); default: the patch's dims. For
            several outputs, a mapping names each bare array's dims (the batch dim
            first unless placed); without it they are the spatial dims or the
            patch's, by the array's number of dims.
        output_names : sequence of hashable, optional
            Names of the outputs when ``func`` returns a tuple (default: the
            DataArrays' names, else ``output_0``, ``output_1``, ...).
        chunks : int or mapping of hashable to int, optional
            Aggregation regions per spatial dim. A chunk is finished, passed to
            ``on_chunk`` and written as soon as its last patch is added. Chunks
            may be smaller than the patch (a patch then feeds several chunks):
            with patches large next to the array, that is what bounds memory.
        on_chunk : callable, optional
            Called once per finished chunk with the normalised chunk (labeled);
            what it returns is written instead (e.g. ``lambda c: c.argmax("class")``).
        fill_value : scalar, optional
            Value of elements no patch covers (crop border); default NaN, or 0
            for an integer or bool result.
        out : str, path or zarr store, optional
            Write the result to this zarr store as chunks finish; the result is
            returned opened lazily from it.
        resume : bool, default: False
            With ``out``: keep the chunks an interrupted run already finished.
        overwrite : bool, default: False
            With ``out``: replace what is stored there. Without it, an ``out`` that
            holds anything is refused (unless ``resume`` continues xpatch's own run).
        progress : bool, default: False
            Show a progress bar (needs tqdm).
        merge : {"instances"}, optional
            ``"instances"``: ``func`` returns instance labels (integer ids local to
            the patch, 0 background); they are stitched instead of blended into
            globally unique ids ``1..N`` (see :mod:`xpatch.instances`; ``weights``
            is not used).
        iou : float, default: 0.5
            With ``merge="instances"``: objects of two overlapping patches whose IoU
            over the shared region reaches this are one object.
        halo : int or mapping of hashable to int, optional
            Context in elements per spatial dim and side: ``func`` sees every patch
            widened by it, and the halo of its result is cropped off before blending
            (the grid, ``size`` and ``step`` are those of the patch proper). At the
            array's border the context is the virtual padding of ``border="pad"``,
            else only the data there is (the widened patch is clipped to the array).
        scale : float or mapping of hashable to float, optional
            Output elements per input element along each spatial dim, for a ``func``
            whose result is at another resolution (2: super-resolution; 0.25: a
            feature map at 1/4). Default: found from the first result. The result's
            coordinates are the cell centres of the finer or coarser grid (regularly
            spaced coordinates only); with ``out=`` give it.
        mask : DataArray of bool or callable, optional
            Skip patches: a boolean DataArray over the spatial dims, at any
            resolution (aligned by coordinates), keeps the windows over which it
            holds a True; a callable receives each patch (as ``func`` would) and
            returns whether to keep it. Skipped windows are never passed to
            ``func``; where no kept window covers, the result is ``fill_value``.
        template : DataArray or Dataset, optional
            On dask-backed input: an example of ``func``'s result for one patch (its
            dims, non-spatial sizes and coords, dtype; spatial sizes do not matter),
            so that building the lazy graph calls ``func`` not even once. Without
            it, ``func`` is called once on a zero patch to learn that layout.

        Returns
        -------
        DataArray or Dataset
            The blended result with the source's spatial coordinates.

        Raises
        ------
        PatchError
            (a ValueError) for any bad argument, before ``func`` is first called.

        Examples
        --------
        >>> import numpy as np, xarray as xr, xpatch
        >>> da = xr.DataArray(np.random.rand(3, 64, 64), dims=("band", "y", "x"))
        >>> out = da.patch.apply(lambda p: p.mean("band"), y=32, x=32, step=16)
        >>> out.dims
        ('y', 'x')
        >>> bool(np.allclose(out, da.mean("band")))
        True
        """
        return api.apply(
            self._obj, func, size, step=step, border=border, pad_mode=pad_mode, weights=weights,
            batch_size=batch_size, batch_dim=batch_dim, output_dims=output_dims,
            output_names=output_names, chunks=chunks, on_chunk=on_chunk, fill_value=fill_value,
            out=out, resume=resume, progress=progress, overwrite=overwrite, merge=merge, iou=iou,
            halo=halo, scale=scale, mask=mask, template=template, units=units, overlap=overlap,
            **size_kwargs,
        )  # fmt: skip

    def aggregator(
        self,
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
    ) -> Aggregator | InstanceAggregator:
        """An :class:`~xpatch.Aggregator` for a hand-written loop over the grid.

        Parameters
        ----------
        size, step, border, pad_mode, units, overlap, **size_kwargs
            The grid, as for :meth:`grid` (``chunks`` too in coordinate units with
            ``units="coords"``).
        weights, chunks, on_chunk, fill_value, output_dims, output_names, out, overwrite, merge, iou
            As for :meth:`apply` (``merge="instances"`` gives an
            :class:`~xpatch.instances.InstanceAggregator` that stitches labels).

        Returns
        -------
        Aggregator
            ``agg.add(result, window)`` or ``agg.add(result_dataarray)``, then
            ``agg.result()``; ``agg.grid`` is its grid.

        Examples
        --------
        >>> import numpy as np, xarray as xr, xpatch
        >>> da = xr.DataArray(np.ones((40, 40)), dims=("y", "x"),
        ...                   coords={"y": np.arange(40), "x": np.arange(40)})
        >>> agg = da.patch.aggregator(y=16, x=16, step=8)
        >>> for patch in da.patch.sample(y=16, x=16, step=8):
        ...     agg.add(patch + 1)
        >>> float(agg.result().mean())
        2.0
        """
        return api.aggregator(
            self._obj, size, step=step, border=border, pad_mode=pad_mode, weights=weights,
            chunks=chunks, on_chunk=on_chunk, fill_value=fill_value, output_dims=output_dims,
            output_names=output_names, out=out, overwrite=overwrite, merge=merge, iou=iou,
            units=units, overlap=overlap, **size_kwargs,
        )  # fmt: skip

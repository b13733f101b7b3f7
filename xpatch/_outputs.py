"""Several outputs per call: a tuple or dict of results, read as one Dataset.

``func`` may return a tuple, a named tuple or a dict of DataArrays and bare arrays
(segmentation probabilities and a regression map, a prediction and its uncertainty).
Such a result is turned into an :class:`xarray.Dataset`, one variable per output,
right where it arrives: :class:`Outputs` wraps ``func`` once in ``api.apply`` (so the
eager, batched, chunked, ``out=`` and dask paths all receive a Dataset and need no
code of their own), and :func:`for_aggregator` does the same in ``Aggregator.add``.
A single result (DataArray, Dataset, array) passes through unchanged.

Names: the dict's keys; for a tuple, ``output_names`` if given (one per output), else
the field names of a named tuple, else each DataArray's name, else ``output_<i>``.
Names must be distinct. Dims of a bare array: ``output_dims[name]`` (``output_dims``
given as a mapping), else a sequence ``output_dims`` of the array's length, else
inferred: as many dims as the spatial dims -> the spatial dims; as many as the
source -> the source's dims (its non-spatial lengths must then match). A batched call
(``batch_size``) gives each bare array the batch dim first (or where the mapping puts it).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._structure import source_dims, to_numpy
from xpatch.errors import ResultError

__all__ = ["Outputs", "for_aggregator", "is_several", "prepare", "refuse_with_merge"]


def is_several(result: Any) -> bool:
    """True for a tuple or a mapping that is not a Dataset: several outputs.

    Examples
    --------
    >>> is_several((1, 2)), is_several({"a": 1}), is_several(xr.Dataset()), is_several([1])
    (True, True, False, False)
    """
    return isinstance(result, tuple) or (
        isinstance(result, Mapping) and not isinstance(result, xr.Dataset)
    )


_ONE = (np.ndarray, xr.DataArray)


class Outputs:
    """``func`` whose tuple or dict results come back as one Dataset (picklable).

    Parameters
    ----------
    func : callable
        The user's function.
    spatial : tuple of hashable
        The grid's dims, in the source's order.
    source : tuple of hashable or None
        The source DataArray's dims (None for a Dataset source).
    sizes : mapping of hashable to int
        The source's non-spatial lengths.
    names : tuple of hashable, optional
        ``output_names``.
    per_output : mapping of hashable to tuple, optional
        ``output_dims`` given per output.
    dims, batched_dims : tuple of hashable, optional
        ``output_dims`` given as a sequence: for one window, and for a batch.
    batch_dim : hashable, optional
        The batch dim when ``batch_size`` is given; a patch holding it is a batch.

    Examples
    --------
    >>> f = Outputs(lambda p: (p * 2, p.sum()), ("y", "x"), ("y", "x"), {})
    >>> ds = f(xr.DataArray(np.ones((2, 3)), dims=("y", "x")))
    >>> sorted(ds.data_vars), ds["output_1"].dims
    (['output_0', 'output_1'], ())
    """

    def __init__(
        self,
        func: Callable[[Any], Any],
        spatial: Sequence[Hashable],
        source: Sequence[Hashable] | None,
        sizes: Mapping[Hashable, int],
        names: Sequence[Hashable] | None = None,
        per_output: Mapping[Hashable, tuple[Hashable, ...]] | None = None,
        dims: Sequence[Hashable] | None = None,
        batched_dims: Sequence[Hashable] | None = None,
        batch_dim: Hashable | None = None,
    ) -> None:
        self.func = func
        self.spatial = tuple(spatial)
        self.source = None if source is None else tuple(source)
        self.sizes = dict(sizes)
        self.names = None if names is None else tuple(names)
        self.per_output = dict(per_output or {})
        self.dims = None if dims is None else tuple(dims)
        self.batched_dims = None if batched_dims is None else tuple(batched_dims)
        self.batch_dim = batch_dim
        # the store records func's name for information: the user's, not this wrapper's
        self.__qualname__ = getattr(func, "__qualname__", None) or type(func).__qualname__
        self.__module__ = getattr(func, "__module__", None) or type(func).__module__
        self.__wrapped__ = func
        # one result of these types needs nothing done (the check per patch is on the hot path)
        self._plain = () if self.names is not None or self.per_output else _ONE

    def __call__(self, patch: Any) -> Any:
        result = self.func(patch)
        if type(result) in self._plain:
            return result
        if is_several(result):
            batch_dim = self.batch_dim
            batched = batch_dim is not None and batch_dim in getattr(patch, "dims", ())
            return self.convert(result, batched)
        if self.names is not None or self.per_output:
            raise ResultError(
                f"func returned a single {type(result).__name__}, but"
                f" {'output_names' if self.names is not None else 'output_dims (a mapping)'}"
                " names several outputs: return a tuple or dict of outputs (a 1-tuple"
                " (out,) for one), or drop the argument"
            )
        return result

    def convert(self, result: Any, batched: bool = False) -> xr.Dataset:
        """A tuple or dict of outputs as a Dataset, one variable per output."""
        names, items = self._named(result)
        variables: dict[Hashable, Any] = {}
        for name, item in zip(names, items):
            if isinstance(item, xr.DataArray):
                variables[name] = item
            elif isinstance(item, (xr.Dataset, list)) or is_several(item):
                raise ResultError(
                    f"output {name!r} of func is a {type(item).__name__}: each output must be"
                    " a DataArray or an array (return a Dataset alone, not inside a"
                    f" {type(result).__name__})"
                )
            else:
                try:
                    data = to_numpy(item)
                except Exception as err:
                    raise ResultError(
                        f"output {name!r} of func is a {type(item).__name__}, which is not a"
                        " DataArray or an array-like"
                    ) from err
                variables[name] = xr.Variable(self._dims(name, data, batched), data)
        coords = _shared_coords(variables)
        try:
            if coords is not None:  # (no alignment to do: much cheaper than merging)
                plain = {
                    k: v.variable if isinstance(v, xr.DataArray) else v
                    for k, v in variables.items()
                }
                return xr.Dataset(plain, coords=coords)
            ds = xr.Dataset(variables)
        except ValueError as err:
            raise ResultError(
                f"the outputs {list(names)} of func do not fit together in one Dataset: {err}"
            ) from err
        for name, item in variables.items():
            if ds[name].shape != item.shape:  # aligned by other labels: never silently
                raise ResultError(
                    f"output {name!r} of func has labels that differ from another output's"
                    f" along a shared dim ({dict(zip(item.dims, item.shape))} became"
                    f" {dict(ds[name].sizes)} once aligned): outputs sharing a dim must"
                    " share its labels"
                )
        return ds

    def _named(self, result: Any) -> tuple[list[Hashable], list[Any]]:
        """The outputs' names (see the module's rule) and the outputs."""
        if isinstance(result, tuple):
            items = list(result)
            fields = getattr(type(result), "_fields", None)
            if self.names is not None:
                if len(self.names) != len(items):
                    raise ResultError(
                        f"func returned {len(items)} outputs, but output_names names"
                        f" {len(self.names)}: {self.names!r}; give one name per output"
                    )
                names = list(self.names)
                why = "output_names"
            elif fields:
                names, why = list(fields), "the named tuple's fields"
            else:
                names = [
                    item.name
                    if isinstance(item, xr.DataArray) and item.name is not None
                    else f"output_{i}"
                    for i, item in enumerate(items)
                ]
                why = "the DataArrays' names; one computed from the patch keeps its name"
        else:
            names, items = list(result.keys()), list(result.values())
            why = "the dict's keys"
            if self.names is not None and set(self.names) != set(names):
                raise ResultError(
                    f"func returned a dict with the outputs {names!r}, but output_names is"
                    f" {self.names!r}: a dict names its own outputs (drop output_names, or"
                    " make them the same names)"
                )
        if not items:
            raise ResultError(f"func returned an empty {type(result).__name__}: no output")
        repeated = [n for i, n in enumerate(names) if n in names[:i]]
        if repeated:
            raise ResultError(
                f"func returned several outputs named {repeated[0]!r} ({why}: {names!r}):"
                " each output needs its own name; rename them, return a dict, or pass"
                " output_names=(...)"
            )
        unknown = [k for k in self.per_output if k not in names]
        if unknown:
            raise ResultError(
                f"output_dims names the outputs {unknown}, but func's outputs are {names!r}"
            )
        return names, items

    def _dims(self, name: Hashable, data: np.ndarray, batched: bool) -> tuple[Hashable, ...]:
        """The dims of the bare-array output ``name`` (see the module's rule)."""
        batch = (self.batch_dim,) if batched else ()
        given = self.per_output.get(name)
        if given is not None:
            dims = given if not batched or self.batch_dim in given else (*batch, *given)
            if len(dims) != data.ndim:
                raise ResultError(
                    f"output {name!r} of func is an array of shape {data.shape}"
                    f" ({data.ndim} dims), but output_dims[{name!r}] names"
                    f" {len(dims)} dims {tuple(dims)}"
                )
            return tuple(dims)
        sequence = self.batched_dims if batched else self.dims
        if sequence is not None and len(sequence) == data.ndim:
            return sequence
        shape = data.shape[len(batch) :]
        if len(shape) == len(self.spatial):
            return (*batch, *self.spatial)
        if self.source is not None and len(shape) == len(self.source):
            for d, n in zip(self.source, shape):
                if d in self.sizes and n != self.sizes[d]:
                    raise ResultError(
                        f"output {name!r} of func is an array of shape {data.shape}: read"
                        f" with the patch's dims {self.source}, its length along {d!r} is"
                        f" {n}, but the patch has {d}={self.sizes[d]}; name its dims with"
                        f" output_dims={{{name!r}: (...)}} (e.g. ('class', 'y', 'x'))"
                    )
            return (*batch, *self.source)
        known = f"{len(self.spatial)} (the spatial dims {self.spatial})"
        if self.source is not None and len(self.source) != len(self.spatial):
            known += f" or {len(self.source)} (the patch's dims {self.source})"
        extra = " besides the batch dim" if batched else ""
        raise ResultError(
            f"output {name!r} of func is an array of shape {data.shape}, {len(shape)} dims"
            f"{extra}: its dims can be inferred only for {known}; name them with"
            f" output_dims={{{name!r}: (...)}} (e.g. ('class', 'y', 'x'))"
        )


def _shared_coords(variables: Mapping[Hashable, Any]) -> Any:
    """The coordinates of the DataArray outputs as one ``Coordinates`` object when one
    output holds them all (the common case: outputs of one patch), else None (they
    must be merged). Coordinates of the same name must be equal."""
    arrays = [v for v in variables.values() if isinstance(v, xr.DataArray)]
    if not arrays:
        return {}
    base = max(arrays, key=lambda a: len(a.coords)).coords
    known = base.variables
    whole = True
    for name, item in variables.items():
        if not isinstance(item, xr.DataArray):
            continue
        for key, var in item.coords.variables.items():
            have = known.get(key)
            if have is None:
                whole = False
            elif have is not var and not have.equals(var):
                raise ResultError(
                    f"output {name!r} of func has the coordinate {key!r} = {var.values!r}, but"
                    f" another output has {have.values!r}: outputs sharing a dim must share"
                    " its labels"
                )
    return base if whole else None


def prepare(
    func: Callable[[Any], Any], options: Any, obj: xr.DataArray | xr.Dataset, spatial: Any
) -> tuple[Outputs, Any]:
    """``func`` wrapped for several outputs, and ``options`` with a tuple or dict
    ``template`` made a Dataset (``api.apply``)."""
    from dataclasses import replace

    blend = options.blend
    wrapped = Outputs(
        func,
        spatial,
        source_dims(obj),
        {d: n for d, n in obj.sizes.items() if d not in spatial},
        names=blend.output_names,
        per_output=blend.per_output_dims,
        dims=blend.output_dims,
        batched_dims=options.batch_output_dims,
        batch_dim=options.batch_dim if options.batch_size is not None else None,
    )
    if is_several(options.template):
        options = replace(options, template=wrapped.convert(options.template))
    return wrapped, options


def refuse_with_merge(merge: Any, output_names: Any) -> None:
    """``output_names`` names blended outputs: ``merge="instances"`` makes one label
    image, so it is refused there (before ``func`` is called) rather than ignored."""
    if merge is not None and output_names is not None:
        raise ResultError(
            "output_names is not used with merge='instances': the result is one integer"
            " label image over the spatial dims; leave output_names out"
        )


def for_aggregator(result: Any, agg: Any) -> Any:
    """``Aggregator.add``'s hook: a tuple or dict of outputs as a Dataset; any other
    result as it is.

    Examples
    --------
    >>> import xpatch
    >>> da = xr.DataArray(np.ones((4, 4)), dims=("y", "x"))
    >>> agg = da.patch.aggregator(y=2, x=2, weights="mean")
    >>> for w in agg.grid:
    ...     agg.add({"a": np.ones((2, 2)), "b": np.zeros((2, 2))}, w)
    >>> sorted(agg.result().data_vars)
    ['a', 'b']
    """
    if not is_several(result):
        return result
    options = agg.plan.options
    return Outputs(
        None,  # type: ignore[arg-type]
        agg.dims,
        agg._default_dims,
        agg._default_sizes,
        names=options.output_names,
        per_output=options.per_output_dims,
        dims=options.output_dims,
    ).convert(result)

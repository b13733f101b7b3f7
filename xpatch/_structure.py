"""Labels of patch results: turning func outputs into named arrays and back.

A result (of ``func`` or ``on_chunk``) is a DataArray, a Dataset or a bare
array. Internally every result is a mapping name -> (dims, ndarray) plus the
metadata needed to rebuild a labeled object (non-spatial coords, attrs, name).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from xpatch.errors import ResultError

THIS = "<this-array>"  # key of a DataArray result in the mapping of variables

# a result as named arrays: name -> (dims, data)
Variables = dict[Hashable, tuple[tuple[Hashable, ...], np.ndarray]]


class What:
    """A description of a result for error messages, formatted only when needed."""

    __slots__ = ("prefix", "window")

    def __init__(self, window: Any, prefix: str = "the result for") -> None:
        self.window, self.prefix = window, prefix

    def __str__(self) -> str:
        return f"{self.prefix} {self.window!r}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


# --- labels in: the source ------------------------------------------------------
def source_name(obj: xr.DataArray | xr.Dataset) -> Hashable | None:
    """The name a result takes by default: the source DataArray's (a Dataset has none)."""
    return obj.name if isinstance(obj, xr.DataArray) else None


def source_dims(obj: xr.DataArray | xr.Dataset) -> tuple[Hashable, ...] | None:
    """The dims of a bare-array result by default: the source DataArray's (None for a
    Dataset, whose results must be labeled or named by ``output_dims``)."""
    return tuple(obj.dims) if isinstance(obj, xr.DataArray) else None


def data_variables(obj: xr.DataArray | xr.Dataset) -> list[xr.Variable]:
    """The data variables of a DataArray (itself) or Dataset, in order."""
    if isinstance(obj, xr.DataArray):
        return [obj.variable]
    return [obj.variables[k] for k in obj.data_vars]


def all_variables(obj: xr.DataArray | xr.Dataset, coords: bool = False) -> list[xr.Variable]:
    """The variables of ``obj`` (the object's own, not copies): a DataArray's own
    variable (and, with ``coords``, its coordinates'), or every variable of a Dataset."""
    if isinstance(obj, xr.DataArray):
        own = [obj.variable]
        return [*own, *(c.variable for c in obj.coords.values())] if coords else own
    return list(obj.variables.values())


def spatial_subset(obj: xr.DataArray | xr.Dataset, dims: Sequence[Hashable]) -> Any:
    """For a Dataset, the variables holding every spatial dim; a DataArray as is."""
    if isinstance(obj, xr.Dataset):
        keep = [k for k, v in obj.data_vars.items() if set(dims) <= set(v.dims)]
        return obj[keep]
    return obj


def as_dataset(obj: xr.DataArray | xr.Dataset, name: Hashable) -> xr.Dataset:
    """A Dataset: ``obj`` itself, or a DataArray as the one variable ``name``."""
    return obj.to_dataset(name=name) if isinstance(obj, xr.DataArray) else obj


# --- labels out: results ------------------------------------------------------------
def to_numpy(data: Any) -> np.ndarray:
    """Any array-like (numpy, dask, torch tensor on any device) as a numpy array."""
    if isinstance(data, np.ndarray):
        return data
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # torch, without importing it
        return data.detach().cpu().numpy()
    if hasattr(data, "compute") and not isinstance(data, (xr.DataArray, xr.Dataset)):
        data = data.compute()
    return np.asarray(data)


@dataclass
class Meta:
    """What is needed to rebuild a labeled object from its named arrays."""

    kind: str  # "dataarray" or "dataset"
    name: Hashable | None = None
    attrs: dict[Hashable, Any] = field(default_factory=dict)
    var_attrs: dict[Hashable, dict[Hashable, Any]] = field(default_factory=dict)
    coords: dict[Hashable, xr.Variable] = field(default_factory=dict)
    from_labeled: bool = True
    final: bool = False  # on_chunk's labeled result: its name is kept even when None


def result_name(meta: Meta, default: Hashable | None) -> Hashable | None:
    """The name of a DataArray result: its own, else ``default`` (the input's name);
    a final one (``on_chunk``'s) as it is. A bare array takes ``default``."""
    if meta.from_labeled and (meta.name is not None or meta.final):
        return meta.name
    return default


def split(
    result: Any,
    *,
    spatial: Sequence[Hashable],
    default_dims: Sequence[Hashable] | None,
    output_dims: Sequence[Hashable] | None,
    what: Any,
    default_sizes: Mapping[Hashable, int] | None = None,
) -> tuple[Variables, Meta]:
    """Split a result into named (dims, ndarray) pairs and its metadata.

    Non-spatial coords of a labeled result are kept in the metadata; spatial
    coords are dropped (the output takes them from the source array). A bare array
    takes ``output_dims``, else ``default_dims`` (the patch's), whose non-spatial
    lengths must then be those in ``default_sizes``: a model giving 4 classes for 3
    bands must say so with ``output_dims``.
    """
    spatial_set = set(spatial)
    if isinstance(result, xr.DataArray):
        variables = {THIS: (tuple(result.dims), to_numpy(result.data))}
        meta = Meta("dataarray", name=result.name, attrs=dict(result.attrs))
        source: xr.DataArray | xr.Dataset = result
    elif isinstance(result, xr.Dataset):
        variables = {k: (tuple(v.dims), to_numpy(v.data)) for k, v in result.data_vars.items()}
        meta = Meta(
            "dataset",
            attrs=dict(result.attrs),
            var_attrs={k: dict(v.attrs) for k, v in result.data_vars.items()},
        )
        source = result
    else:
        if isinstance(result, (Mapping, tuple, list)):
            raise ResultError(
                f"{what} returned a {type(result).__name__}: func may return several outputs"
                " as a tuple or dict (e.g. {'probs': probs, 'sigma': sigma}) or an"
                " xarray.Dataset with one variable per output, else one DataArray or array"
            )
        try:
            data = to_numpy(result)
        except Exception as err:
            raise ResultError(
                f"{what} returned a {type(result).__name__}, which is not a DataArray, a Dataset"
                " or an array-like"
            ) from err
        dims = tuple(output_dims) if output_dims is not None else default_dims
        if dims is None:
            raise ResultError(f"{what} returned a bare array; pass output_dims to name its dims")
        if data.ndim != len(dims):
            raise ResultError(
                f"{what} returned an array of shape {data.shape} ({data.ndim} dims), but"
                f" {'output_dims' if output_dims is not None else 'the patch dims'} name"
                f" {len(dims)} dims {tuple(dims)}"
            )
        if output_dims is None and default_sizes:
            for d, n in zip(dims, data.shape):
                if d in default_sizes and n != default_sizes[d]:
                    raise ResultError(
                        f"{what} returned an array of shape {data.shape}: read with the"
                        f" patch's dims {tuple(dims)}, its length along {d!r} is {n}, but the"
                        f" patch has {d}={default_sizes[d]}; name the result's dims with"
                        " output_dims=(...) (or return a DataArray)"
                    )
        return {THIS: (tuple(dims), data)}, Meta("dataarray", from_labeled=False)
    for name, coord in source.coords.items():
        if not spatial_set.intersection(coord.dims):
            meta.coords[name] = coord.variable
    return variables, meta


def assemble(
    variables: Mapping[Hashable, tuple[tuple[Hashable, ...], Any]],
    meta: Meta,
    template: xr.DataArray | xr.Dataset,
    *,
    default_name: Hashable | None,
) -> xr.DataArray | xr.Dataset:
    """Rebuild a labeled object from named arrays.

    Coordinates come from ``template`` (the source array, or its part covering a
    chunk) where all of a coord's dims survive with the same sizes, and from the
    result's own non-spatial coords, which take precedence.
    """
    sizes: dict[Hashable, int] = {}
    data_vars = {}
    for name, (dims, data) in variables.items():
        sizes.update(zip(dims, np.shape(data)))
        attrs = meta.var_attrs.get(name, {})
        # (numpy data skips xarray's duck-array checks, which import dask.array the
        # first time: 0.4-0.6 s on a first call that has not imported it yet)
        fast = type(data) is np.ndarray
        data_vars[name] = xr.Variable(dims, data, attrs=attrs, fastpath=fast)
    coords: dict[Hashable, xr.Variable] = {}
    for name, coord in template.coords.items():
        if all(sizes.get(d) == n for d, n in zip(coord.dims, coord.shape)):
            coords[name] = coord.variable
    for name, var in meta.coords.items():
        if all(sizes.get(d) == n for d, n in zip(var.dims, var.shape)):
            coords[name] = var
    if meta.kind == "dataarray":
        dims, _ = variables[THIS]
        da_coords = {k: v for k, v in coords.items() if set(v.dims) <= set(dims)}
        name = result_name(meta, default_name)
        attrs = meta.attrs  # a bare array has none: the input's describe the input
        return xr.DataArray(data_vars[THIS], coords=da_coords, name=name, attrs=attrs)
    return xr.Dataset(data_vars, coords=coords, attrs=meta.attrs)


def spatial_check(
    variables: Mapping[Hashable, tuple[tuple[Hashable, ...], np.ndarray]],
    expected: Mapping[Hashable, int],
    what: Any,
) -> None:
    """Every variable must hold every spatial dim with the expected size."""
    for name, (dims, data) in variables.items():
        shape = data.shape
        ok = len(shape) == len(dims)
        if ok:
            for d, n in expected.items():
                if d not in dims or shape[dims.index(d)] != n:
                    ok = False
                    break
        if ok and len(set(dims)) == len(dims):
            continue
        label = "" if name == THIS else f" (variable {name!r})"
        if len(set(dims)) != len(dims):
            raise ResultError(f"{what}{label} has repeated dims {dims}")
        missing = [d for d in expected if d not in dims]
        if missing:
            raise ResultError(
                f"{what}{label} lacks the spatial dims {missing}: it has dims {dims}; every"
                " result must keep the patch's spatial dims"
            )
        sizes = dict(zip(dims, shape))
        wrong = {d: sizes[d] for d in expected if sizes[d] != expected[d]}
        raise ResultError(
            f"{what}{label} has spatial sizes {wrong}, expected {dict(expected)} (the patch's size)"
        )


class ResultSpec:
    """The layout of results, fixed by the first one: variables, dims, sizes and dtypes.

    A later result that differs is a :class:`~xpatch.errors.ResultError` naming the
    window. Results may give their dims in any order; the output takes the first's.

    Parameters
    ----------
    spatial : tuple of hashable
        The grid's dims.
    variables : Variables
        The first result, split.
    meta : Meta
        Its labels.
    """

    def __init__(self, spatial: tuple[Hashable, ...], variables: Variables, meta: Meta) -> None:
        self.spatial = spatial
        self.meta = meta
        self.dims: dict[Hashable, tuple[Hashable, ...]] = {}
        self.other: dict[Hashable, dict[Hashable, int]] = {}
        self.dtype: dict[Hashable, np.dtype] = {}
        self.axes: dict[Hashable, list[int]] = {}  # where the spatial dims are, grid order
        self.plain: dict[Hashable, bool] = {}  # holds the spatial dims only, in grid order
        for name, (dims, data) in variables.items():
            if data.dtype.kind in "mMUSV":
                raise ResultError(
                    f"the first result has dtype {data.dtype}{_label(name)}: only numbers"
                    " (bool, int, float, complex, or objects that add and multiply) can be"
                    " blended; convert in func, e.g. a timedelta to seconds with"
                    " p / np.timedelta64(1, 's')"
                )
            self.dims[name] = dims
            self.other[name] = {d: n for d, n in zip(dims, data.shape) if d not in spatial}
            self.dtype[name] = data.dtype
            self.axes[name] = [dims.index(d) for d in spatial]
            self.plain[name] = tuple(dims) == tuple(spatial)
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}

    def check(self, variables: Variables, what: Any) -> None:
        """Raise unless ``variables`` have this layout (spatial sizes are checked apart)."""
        if set(variables) != set(self.dims):
            raise ResultError(
                f"{what} has variables {sorted(map(str, variables))}, earlier results had"
                f" {sorted(map(str, self.dims))}"
            )
        for name, (dims, data) in variables.items():
            other = self.other[name]
            self.check_dtype(name, data.dtype, what)
            if dims == self.dims[name] and all(
                data.shape[k] == other[d] for k, d in enumerate(dims) if d in other
            ):
                continue
            found = {d: n for d, n in zip(dims, data.shape) if d not in self.spatial}
            if set(dims) != set(self.dims[name]) or found != other:
                raise ResultError(
                    f"{what} has dims {dict(zip(dims, data.shape))}; earlier results had"
                    f" non-spatial dims {other}"
                )

    def check_dtype(self, name: Hashable, dtype: np.dtype, what: Any) -> None:
        """A later result may change dtype only to one the first's holds exactly."""
        first = self.dtype[name]
        if dtype != first and not np.can_cast(dtype, first, "safe"):
            raise ResultError(
                f"{what}{_label(name)} has dtype {dtype}, earlier results had {first}: it"
                f" cannot be blended with them without loss; return {first} from every"
                " patch (or cast the first result)"
            )

    def shape(self, name: Hashable, extent: Mapping[Hashable, int]) -> tuple[int, ...]:
        """The shape of variable ``name`` over a spatial ``extent`` (dim -> length)."""
        other = self.other[name]
        return tuple(extent[d] if d in extent else other[d] for d in self.dims[name])

    def single_shape(self, window_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of a single-variable result for windows of ``window_shape`` (cached)."""
        shape = self._shapes.get(window_shape)
        if shape is None:
            (name,) = self.dims
            shape = self._shapes[window_shape] = self.shape(
                name, dict(zip(self.spatial, window_shape))
            )
        return shape


def padded_coordinate(values: np.ndarray, before: int, after: int) -> np.ndarray:
    """A 1-D coordinate extended by ``before``/``after`` elements.

    Numeric and datetime coordinates are extrapolated linearly with the spacing
    of their first (last) two values; other coordinates repeat their edge value.

    Examples
    --------
    >>> padded_coordinate(np.array([10.0, 10.5, 11.0]), 2, 1)
    array([ 9. ,  9.5, 10. , 10.5, 11. , 11.5])
    """
    values = np.asarray(values)
    if before == 0 and after == 0:
        return values
    if values.dtype.kind == "u":
        values = values.astype(np.int64)
    if values.dtype.kind in "ifmM":
        if len(values) >= 2:
            lo, hi = values[1] - values[0], values[-1] - values[-2]
        elif values.dtype.kind in "if":
            lo = hi = values.dtype.type(1)
        else:
            return np.pad(values, (before, after), mode="edge")
        head = values[0] - lo * np.arange(before, 0, -1)
        tail = values[-1] + hi * np.arange(1, after + 1)
        return np.concatenate([head, values, tail]).astype(values.dtype, copy=False)
    return np.pad(values, (before, after), mode="edge")


def _label(name: Hashable) -> str:
    return "" if name == THIS else f" (variable {name!r})"

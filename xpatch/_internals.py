"""The one place xpatch relies on xarray's internals, each with a public fallback.

Building a labeled patch through ``isel`` costs more than the rest of a small patch's
work, so in-memory patches are built from parts cached per window position:

- :func:`dataarray` stores a DataArray's slots directly (what ``Variable(...,
  fastpath=True)`` and ``DataArray._construct_direct`` store, without their checks);
- :func:`index_coordinate` builds the coordinate of a sliced pandas index from the
  index itself, as ``isel`` does, without slicing the pandas index twice.

Both are used only while xarray's classes look exactly as expected (:data:`LEAN`);
otherwise xarray's own constructors are used. ``tests/test_internals.py`` fails
loudly when a new xarray changes what they rely on.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["LEAN", "dataarray", "index_coordinate", "index_values", "indexes_of"]


def _slots(cls: type) -> set[str]:
    return {s for c in cls.__mro__ for s in c.__dict__.get("__slots__", ())}


def _lean() -> bool:
    """True if Variable and DataArray hold exactly the slots :func:`dataarray` fills
    (and Variable stores attributes as any object does)."""
    return (
        _slots(xr.Variable) == {"_dims", "_data", "_attrs", "_encoding"}
        and xr.Variable.__setattr__ is object.__setattr__
        and _slots(xr.DataArray)
        == {"__weakref__", "_cache", "_close", "_coords", "_indexes", "_name", "_variable"}
    )


LEAN = _lean()

try:
    from xarray.core.indexing import PandasIndexingAdapter
except ImportError:  # pragma: no cover - a future xarray
    PandasIndexingAdapter = None  # type: ignore[assignment,misc]

_new = object.__new__
_set = object.__setattr__


def dataarray(
    dims: tuple[Hashable, ...],
    data: np.ndarray,
    attrs: dict[Hashable, Any],
    coords: dict[Hashable, Any],
    name: Hashable,
    indexes: dict[Hashable, Any],
) -> xr.DataArray:
    """A DataArray from valid parts (the source's dims, data, coords and indexes)."""
    if not LEAN:  # pragma: no cover - a future xarray with other internals
        variable = xr.Variable(dims, data, attrs=attrs, fastpath=True)
        return xr.DataArray._construct_direct(variable, coords, name, indexes)
    variable = _new(xr.Variable)
    # plain stores into the slots (Variable has no __setattr__ of its own: checked)
    variable._dims = dims
    variable._data = data
    variable._attrs = attrs
    variable._encoding = None
    out = _new(xr.DataArray)  # its __setattr__ is xarray's: go around it
    _set(out, "_variable", variable)
    _set(out, "_coords", coords)
    _set(out, "_name", name)
    _set(out, "_indexes", indexes)
    _set(out, "_close", None)
    return out


def index_coordinate(index: Any, var: xr.Variable) -> xr.Variable:
    """The coordinate variable of ``index`` (a sliced ``PandasIndex``) for ``var``'s labels."""
    if PandasIndexingAdapter is None:  # pragma: no cover - a future xarray
        (created,) = index.create_variables({var.dims[0]: var}).values()
        return created
    data = PandasIndexingAdapter(index.index, dtype=index.coord_dtype)
    return xr.IndexVariable(
        var.dims, data, copy.copy(var.attrs), copy.copy(var.encoding), fastpath=True
    )


def is_memory_coordinate(var: xr.Variable) -> bool:
    """True if a coordinate's values are in memory (numpy, or a pandas index)."""
    allowed = (
        (np.ndarray,) if PandasIndexingAdapter is None else (np.ndarray, PandasIndexingAdapter)
    )
    return isinstance(var._data, allowed)


def indexes_of(obj: xr.DataArray | xr.Dataset) -> Mapping[Hashable, Any]:
    """The indexes of ``obj`` by coordinate name (xarray's own mapping, not a copy)."""
    indexes = getattr(obj, "_indexes", None)
    if not isinstance(indexes, dict):  # pragma: no cover - a future xarray
        return dict(obj.xindexes)
    return indexes


def index_values(index: Any) -> np.ndarray:
    """The labels of a pandas-backed xarray index as a numpy array."""
    pd_index = getattr(index, "index", None)
    if pd_index is None:  # pragma: no cover - a custom index type
        (var,) = index.create_variables().values()
        return np.asarray(var.values)
    return np.asarray(pd_index.values)

"""Helpers of the aggregator: dtype rules, chunk planning, sinks and array placement.

Plain numpy (and, for coordinates, xarray) functions with no state of their own;
:mod:`xpatch.aggregate` holds the :class:`~xpatch.aggregate.Aggregator` that uses them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._structure import Meta
from xpatch._validate import is_int, positive_int
from xpatch.errors import AggregationError, DimensionError, GridError
from xpatch.grid import PatchGrid


class _Default:
    """Marks "fill_value not given"; pickles as a reference, so it stays a singleton."""

    def __repr__(self) -> str:
        return "<default>"

    def __reduce__(self) -> str:
        return "_DEFAULT"


_DEFAULT = _Default()

Variables = dict[Hashable, tuple[tuple[Hashable, ...], np.ndarray]]


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    """float64 (complex128) results accumulate in double precision, all others in float32."""
    if dtype.kind == "f" and dtype.itemsize >= 8:
        return np.dtype(np.float64)
    if dtype.kind == "c":
        return np.dtype(np.complex128 if dtype.itemsize >= 16 else np.complex64)
    return np.dtype(np.float32)


def blended_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype of a blended result: floats keep theirs, integers and bools become float32."""
    return dtype if dtype.kind in "fc" else np.dtype(np.float32)


def default_fill(dtype: np.dtype) -> Any:
    """NaN for inexact dtypes, 0 for integers and bools."""
    return np.nan if dtype.kind in "fc" else 0


def chunk_sizes(
    chunks: int | Mapping[Hashable, int] | None, grid: PatchGrid
) -> dict[Hashable, int]:
    """Validate ``chunks``: one positive chunk length per spatial dim (at most the dim's length)."""
    if chunks is None:
        return dict(grid.lengths)
    if isinstance(chunks, Mapping):
        unknown = [d for d in chunks if d not in grid.dims]
        if unknown:
            raise DimensionError(
                f"chunks: dims {unknown} are not spatial dims; the spatial dims are {grid.dims}"
            )
        raw = {d: chunks.get(d, grid.lengths[d]) for d in grid.dims}
    elif is_int(chunks):
        raw = dict.fromkeys(grid.dims, chunks)
    else:
        raise GridError(f"chunks must be an int or a mapping dim -> int, got {chunks!r}")
    out = {}
    for d in grid.dims:
        # a chunk may be smaller than the patch (a patch then feeds several chunks):
        # with patches large next to the array, only small chunks bound the memory
        out[d] = min(positive_int(raw[d], "chunks", d), grid.lengths[d])
    return out


def chunk_edges(
    chunks: int | Mapping[Hashable, Any] | None, grid: PatchGrid
) -> dict[Hashable, np.ndarray]:
    """Chunk boundaries per spatial dim.

    ``chunks`` is an int, a mapping dim -> int (regular chunks from 0), or a
    mapping dim -> tuple of ints (explicit chunk lengths, as dask gives them).
    """
    if isinstance(chunks, Mapping) and any(isinstance(v, tuple) for v in chunks.values()):
        out = {}
        for d in grid.dims:
            value = chunks.get(d, grid.lengths[d])
            if not isinstance(value, tuple):
                value = chunk_sizes({d: value}, grid).get(d, grid.lengths[d])
                out[d] = np.append(np.arange(0, grid.lengths[d], value), grid.lengths[d])
                continue
            if sum(value) != grid.lengths[d]:
                raise GridError(
                    f"chunks for dim {d!r} sum to {sum(value)}, not the dim's length"
                    f" {grid.lengths[d]}"
                )
            out[d] = np.concatenate([[0], np.cumsum(value)]).astype(np.int64)
        return out
    sizes = chunk_sizes(chunks, grid)
    return {
        d: np.append(np.arange(0, grid.lengths[d], c), grid.lengths[d]) for d, c in sizes.items()
    }


class _Capture:
    """Keeps the last chunk written (for dask blocks and dry runs)."""

    def __init__(self) -> None:
        self.variables: Variables = {}
        self.meta: Meta | None = None

    def write(self, region: Mapping[Hashable, slice], variables: Variables, meta: Meta) -> None:
        self.variables, self.meta = dict(variables), meta


class _MemorySink:
    """Output held in memory: one numpy array per variable."""

    def __init__(self, lengths: Mapping[Hashable, int]) -> None:
        self.lengths = dict(lengths)
        self.arrays: dict[Hashable, tuple[tuple[Hashable, ...], np.ndarray]] = {}

    def write(self, region: Mapping[Hashable, slice], variables: Variables, meta: Meta) -> None:
        for name, (dims, data) in variables.items():
            whole = all(region[d].start == 0 and region[d].stop == self.lengths[d] for d in region)
            if name not in self.arrays:
                if whole:
                    self.arrays[name] = (dims, data)
                    continue
                shape = tuple(self.lengths.get(d, n) for d, n in zip(dims, data.shape))
                self.arrays[name] = (dims, np.empty(shape, dtype=data.dtype))
            out_dims, out = self.arrays[name]
            if set(out_dims) != set(dims):
                raise AggregationError(
                    f"on_chunk returned dims {dims} for one chunk and {out_dims} for another"
                )
            data = np.moveaxis(data, [dims.index(d) for d in out_dims], range(len(dims)))
            out[tuple(region.get(d, slice(None)) for d in out_dims)] = data


def _outer(
    facs: Sequence[np.ndarray], axes: Sequence[int], ndim: int, dtype: np.dtype
) -> np.ndarray:
    """Product of 1-D factors, each placed on its axis of an ``ndim``-D array."""
    w: np.ndarray | None = None
    for f, ax in zip(facs, axes):
        shape = [1] * ndim
        shape[ax] = len(f)
        term = f.astype(dtype, copy=False).reshape(shape)
        w = term if w is None else w * term
    assert w is not None
    return w


def _place(arr: np.ndarray, axes: Sequence[int], ndim: int) -> np.ndarray:
    """Put the axes of a spatial array (grid dim order) on ``axes`` of an ``ndim``-D array."""
    order = np.argsort(axes)
    moved = np.transpose(arr, order)
    shape = [1] * ndim
    for k, ax in enumerate(sorted(axes)):
        shape[ax] = moved.shape[k]
    return moved.reshape(shape)


def _fill(
    data: np.ndarray,
    mask: np.ndarray,
    dims: Sequence[Hashable],
    spatial: Sequence[Hashable],
    value: Any,
) -> None:
    """Set the masked spatial elements (mask in grid dim order) across every other dim."""
    axes = [list(dims).index(d) for d in spatial]
    where = np.broadcast_to(_place(mask, axes, data.ndim), data.shape)
    np.copyto(data, np.asarray(value).astype(data.dtype), where=where)


def _fmt(region: Mapping[Hashable, slice]) -> str:
    return ", ".join(f"{d}={s.start}:{s.stop}" for d, s in region.items())


def _start_coordinates(
    template: xr.DataArray | xr.Dataset, grid: PatchGrid
) -> dict[Hashable, np.ndarray | None]:
    """Coordinate value at every per-axis window start (extrapolated under pad)."""
    from xpatch._sampling import padded_coordinate

    out: dict[Hashable, np.ndarray | None] = {}
    for ax in grid.axes:
        if ax.dim not in template.coords:
            out[ax.dim] = None
            continue
        before, after = ax.pad_width
        coord = padded_coordinate(template[ax.dim].values, before, after)
        out[ax.dim] = coord[ax.starts + before]
    return out

"""Where finished chunks go: the :class:`Sink` protocol and the in-memory sinks.

The aggregator hands each finished chunk (normalised, filled, through ``on_chunk``)
to its sink and never looks inside it. :class:`MemorySink` keeps the output in
memory, :class:`CaptureSink` keeps only the last chunk (a dask block), and
:class:`xpatch.store.ZarrSink` writes to a zarr store.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from xpatch._structure import Meta, Variables, assemble
from xpatch.errors import AggregationError

__all__ = ["CaptureSink", "MemorySink", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """What the aggregator writes finished chunks to.

    Attributes
    ----------
    done : ndarray of bool or None
        Chunks an earlier, interrupted run already finished (resume), else None.
    """

    done: np.ndarray | None

    def write(self, region: Mapping[Hashable, slice], variables: Variables, meta: Meta) -> None:
        """Store one finished chunk (``region``: index-space slices per spatial dim)."""

    def record(self, finished: np.ndarray) -> None:
        """Note which chunks are finished; called after their data is written."""

    def result(self) -> xr.DataArray | xr.Dataset:
        """The whole output, labeled."""


class MemorySink:
    """Output held in memory: one numpy array per variable.

    Parameters
    ----------
    lengths : mapping of hashable to int
        The length of every spatial dim.
    template : Dataset
        Coordinates and attributes of the source, to label the result.
    name : hashable, optional
        The result's default name (the source DataArray's).
    """

    done = None

    def __init__(
        self, lengths: Mapping[Hashable, int], template: xr.Dataset, name: Hashable | None
    ) -> None:
        self.lengths = dict(lengths)
        self.template = template
        self.name = name
        self.arrays: Variables = {}
        self.meta: Meta | None = None

    def write(self, region: Mapping[Hashable, slice], variables: Variables, meta: Meta) -> None:
        self.meta = meta
        for name, (dims, data) in variables.items():
            whole = all(region[d].start == 0 and region[d].stop == self.lengths[d] for d in region)
            if name not in self.arrays:
                if whole:
                    self.arrays[name] = (dims, data)
                    continue
                shape = tuple(self.lengths.get(d, n) for d, n in zip(dims, data.shape))
                self.arrays[name] = (dims, np.empty(shape, dtype=data.dtype))
            out_dims, out = self.arrays[name]
            where = ", ".join(f"{d}={s.start}:{s.stop}" for d, s in region.items())
            if set(out_dims) != set(dims):
                raise AggregationError(
                    f"on_chunk returned dims {dims} for the chunk {where} and {out_dims} for"
                    " earlier chunks"
                )
            sizes, earlier = dict(zip(dims, data.shape)), dict(zip(out_dims, out.shape))
            other = {d: n for d, n in sizes.items() if d not in region and n != earlier[d]}
            if other:
                raise AggregationError(
                    f"on_chunk returned {other} for the chunk {where}, earlier chunks had"
                    f" { ({d: earlier[d] for d in other}) }: every chunk must keep the same"
                    " non-spatial lengths"
                )
            if data.dtype != out.dtype and not np.can_cast(data.dtype, out.dtype, "safe"):
                raise AggregationError(
                    f"the chunk {where} has dtype {data.dtype}, earlier chunks had {out.dtype}:"
                    " on_chunk must return one dtype for every chunk"
                )
            data = np.moveaxis(data, [dims.index(d) for d in out_dims], range(len(dims)))
            out[tuple(region.get(d, slice(None)) for d in out_dims)] = data

    def record(self, finished: np.ndarray) -> None:
        pass

    def result(self) -> xr.DataArray | xr.Dataset:
        assert self.meta is not None, "no chunk was written"
        return assemble(self.arrays, self.meta, self.template, default_name=self.name)


class CaptureSink:
    """Keeps the last chunk written (a dask block, or the layout of a dry run)."""

    done = None

    def __init__(self) -> None:
        self.variables: Variables = {}
        self.meta: Meta | None = None

    def write(self, region: Mapping[Hashable, slice], variables: Variables, meta: Meta) -> None:
        self.variables, self.meta = dict(variables), meta

    def record(self, finished: np.ndarray) -> None:
        pass

    def result(self) -> Any:  # pragma: no cover - a block is read through .variables
        raise NotImplementedError("a captured block is read through .variables")

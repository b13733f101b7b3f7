"""Out-of-core output: finished chunks written to a zarr store as they complete.

The store is laid out as ``to_zarr`` would write the result (readable with
``xr.open_zarr`` or ``xr.open_dataarray(engine="zarr")``), with zarr chunks equal
to the aggregation chunks, so no two chunks ever share a zarr chunk. Which chunks
are complete is recorded in the group's attributes (key ``"xpatch"``), always
after the chunk's data, so a crash never leaves a chunk marked complete that was
not fully written. ``resume=True`` reads that record and recomputes only the
unfinished chunks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from xpatch import _apply
from xpatch._options import ApplyOptions
from xpatch._structure import THIS, Meta, as_dataset, assemble, source_name
from xpatch.errors import PatchError
from xpatch.grid import PatchGrid
from xpatch.layout import chunk_sizes

RECORD = "xpatch"


class StoreError(PatchError):
    """The zarr store cannot be used: it belongs to another run, or has the wrong layout."""


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("out= needs zarr: pip install 'xpatch[zarr]'") from err
    return zarr


def _describe(obj: Any) -> str:
    if obj is None:
        return "None"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return f"{module}.{name}"


class ZarrSink:
    """Writes finished chunks of the result into a zarr store or array."""

    def __init__(
        self,
        out: Any,
        template: xr.DataArray | xr.Dataset,
        grid: PatchGrid,
        chunks: Mapping[Hashable, int],
        *,
        resume: bool,
        config: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        zarr = _zarr()
        self.zarr = zarr
        self.overwrite = overwrite
        self.grid = grid
        self.chunks = dict(chunks)
        self.template = template
        self.name = source_name(template)
        self.record_value = {"grid": grid.signature(), "chunks": [chunks[d] for d in grid.dims]}
        self.record_value.update(config or {})
        from collections.abc import MutableMapping

        from zarr.abc.store import Store

        if not isinstance(out, (str, os.PathLike, zarr.Array, Store, MutableMapping)):
            raise TypeError(
                f"out must be a path, a zarr store or a zarr array, got {out!r}"
                f" ({type(out).__name__})"
            )
        self.array = out if isinstance(out, zarr.Array) else None
        self.store = (
            None
            if self.array is not None
            else (os.fspath(out) if isinstance(out, (str, os.PathLike)) else out)
        )
        self.done: np.ndarray | None = None
        self.meta: Meta | None = None
        self.created = False
        self.kind = "dataarray"
        self.var_names: dict[Hashable, str] = {}
        if self.array is not None:
            self._check_array()
        if resume:
            self.done = self._read_record()

    # --- existing store -----------------------------------------------------
    def _group(self, mode: str = "r+") -> Any:
        return self.zarr.open_group(self.store, mode=mode)

    def _read_record(self) -> np.ndarray | None:
        try:
            attrs = self.array.attrs if self.array is not None else self._group("r").attrs
        except (FileNotFoundError, KeyError, ValueError, OSError):
            return None  # nothing to resume: start afresh
        record = attrs.get(RECORD)
        if record is None and self.array is not None:
            return None  # an output array of the caller's, never written: start afresh
        if record is None:
            raise StoreError(
                f"out={self.store!r} exists but holds no xpatch run record; it was not written"
                " by apply(out=...): refusing to resume into it (use resume=False to overwrite)"
            )
        expected = {k: v for k, v in self.record_value.items()}
        found = {k: record.get(k) for k in expected}
        if _jsonable(found) != _jsonable(expected):
            diff = [k for k in expected if _jsonable(found[k]) != _jsonable(expected[k])]
            raise StoreError(
                f"out={self.store!r} was written by a different run configuration ({diff} differ:"
                f" store has {[found[k] for k in diff]}, this run has"
                f" {[expected[k] for k in diff]}); refusing to mix results"
            )
        self.created = True
        self.kind = record.get("kind", "dataarray")
        self.var_names = {
            (THIS if k == THIS else k): v for k, v in record.get("variables", {}).items()
        }
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(record["done"]), dtype=np.uint8))
        n = int(np.prod(record["chunk_grid"]))
        return bits[:n].astype(bool).reshape(record["chunk_grid"])

    def _check_array(self) -> None:
        assert self.array is not None
        dims = _array_dims(self.array)
        if dims is None:
            raise StoreError(
                "out: a zarr array needs dimension names (zarr v3 dimension_names or the"
                " _ARRAY_DIMENSIONS attribute) so that its dims can be matched by name"
            )
        for d in self.grid.dims:
            if d not in dims:
                raise StoreError(f"out: the zarr array's dims {dims} lack the spatial dim {d!r}")
            n = self.array.shape[dims.index(d)]
            if n != self.grid.lengths[d]:
                raise StoreError(
                    f"out: the zarr array has length {n} along {d!r}, the source has"
                    f" {self.grid.lengths[d]}"
                )
            zc = self.array.chunks[dims.index(d)]
            if self.chunks[d] % zc and self.chunks[d] != self.grid.lengths[d]:
                raise StoreError(
                    f"out: chunks for dim {d!r} ({self.chunks[d]}) must be a multiple of the"
                    f" zarr array's chunks ({zc}) so that no two chunks share a zarr chunk"
                )

    # --- writing --------------------------------------------------------------
    def _create(
        self, variables: Mapping[Hashable, tuple[tuple[Hashable, ...], np.ndarray]], meta: Meta
    ) -> None:
        import dask.array as dsa

        self.meta = meta
        if self.array is not None:
            ((name, (dims, data)),) = variables.items()
            adims = _array_dims(self.array)
            if set(adims or ()) != set(dims):
                raise StoreError(f"out: the zarr array has dims {adims}, the result has {dims}")
            self.var_names = {name: ""}
            self.created = True
            return
        lazy = {}
        encoding = {}
        self.kind = meta.kind
        for name, (dims, data) in variables.items():
            shape = tuple(self.grid.lengths.get(d, n) for d, n in zip(dims, data.shape))
            chunks = tuple(self.chunks.get(d, n) for d, n in zip(dims, shape))
            lazy[name] = (dims, dsa.zeros(shape, dtype=data.dtype, chunks=chunks))
            key = _var_name(name, meta, self.name)
            self.var_names[name] = key
            encoding[key] = {"chunks": chunks}
        obj = assemble(lazy, meta, self.template, default_name=self.name)
        ds = as_dataset(obj, self.var_names.get(THIS))
        ds.attrs = dict(ds.attrs)
        for key in encoding:
            ds[key].encoding = {}
        chunk_grid = [len(range(0, self.grid.lengths[d], self.chunks[d])) for d in self.grid.dims]
        # the record goes in with the layout, so a store is never without one
        ds.attrs[RECORD] = self._record(np.zeros(chunk_grid, dtype=bool))
        ds.to_zarr(self.store, mode="w", compute=False, encoding=encoding, consolidated=False)
        self.created = True

    def write(
        self,
        region: Mapping[Hashable, slice],
        variables: Mapping[Hashable, tuple[tuple[Hashable, ...], np.ndarray]],
        meta: Meta,
    ) -> None:
        if not self.created:
            self._create(variables, meta)
        for name, (dims, data) in variables.items():
            if name not in self.var_names:
                raise StoreError(
                    f"the result variable {name!r} is not in the store (it has"
                    f" {sorted(map(str, self.var_names))})"
                )
            target = (
                self.array
                if self.array is not None
                else self.zarr.open_array(self.store, path=self.var_names[name], mode="r+")
            )
            tdims = _array_dims(target) or dims
            if set(tdims) != set(dims):
                raise StoreError(f"the store's {name!r} has dims {tdims}, the result has {dims}")
            data = np.moveaxis(data, [dims.index(d) for d in tdims], range(len(dims)))
            index = tuple(region.get(d, slice(None)) for d in tdims)
            expected = tuple(
                (s.stop - s.start) if isinstance(s, slice) and s.stop is not None else n
                for s, n in zip(index, target.shape)
            )
            if data.shape != expected:
                raise StoreError(
                    f"the result's {name!r} has shape {data.shape} for the chunk, the store"
                    f" expects {expected}"
                )
            target[index] = data.astype(target.dtype, copy=False)

    def record(self, finished: np.ndarray) -> None:
        """Mark chunks complete: called after their data is written."""
        self._write_record(finished)

    def _write_record(self, finished: np.ndarray) -> None:
        attrs = self.array.attrs if self.array is not None else self._group().attrs
        attrs[RECORD] = self._record(finished)
        if finished.all() and self.array is None:
            # consolidated metadata lets xr.open_zarr open the finished store quietly
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr 3 notes it is outside the spec
                self.zarr.consolidate_metadata(self.store)

    def _record(self, finished: np.ndarray) -> dict[str, Any]:
        value = dict(self.record_value)
        value.update(
            kind=self.kind,
            variables={
                ("<this-array>" if k == THIS else str(k)): v for k, v in self.var_names.items()
            },
            chunk_grid=list(finished.shape),
            done=np.packbits(finished.ravel()).tobytes().hex(),
            complete=bool(finished.all()),
        )
        return value

    def result(self) -> xr.DataArray | xr.Dataset:
        """The result, opened lazily from the store."""
        if self.array is not None:
            import dask.array as dsa

            dims = _array_dims(self.array)
            assert dims is not None
            meta = self.meta or Meta("dataarray", from_labeled=False)
            data = {THIS: (dims, dsa.from_zarr(self.array))}
            return assemble(data, meta, self.template, default_name=self.name)
        ds = xr.open_zarr(self.store, consolidated=False)
        ds.attrs.pop(RECORD, None)
        if self.kind == "dataarray":
            da = ds[self.var_names[THIS]]
            if self.var_names[THIS] == "result" and self.name is None:
                da.name = None
            return da
        return ds


def _var_name(name: Hashable, meta: Meta, default: Hashable | None) -> str:
    if name != THIS:
        return str(name)
    chosen = meta.name if meta.from_labeled and meta.name is not None else default
    return "result" if chosen is None else str(chosen)


def _array_dims(array: Any) -> tuple[Hashable, ...] | None:
    names = getattr(getattr(array, "metadata", None), "dimension_names", None)
    if names:
        return tuple(names)
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(dims) if dims else None


def _is_zarr_array(out: Any) -> bool:
    return type(out).__module__.startswith("zarr") and type(out).__name__ == "Array"


def _array_chunks(array: Any, grid: PatchGrid) -> dict[Hashable, int]:
    """Aggregation chunks for an existing zarr array: its own chunks, at least a patch."""
    dims = _array_dims(array) or ()
    out = {}
    for d in grid.dims:
        if d not in dims:
            continue  # refused with a clear message by the sink
        c = int(array.chunks[dims.index(d)])
        out[d] = min(grid.lengths[d], -(-grid.size[d] // c) * c)
    return out


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def apply_to_store(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
) -> xr.DataArray | xr.Dataset:
    """``apply`` writing finished chunks to ``options.out``; resumable."""
    blend = options.blend
    if blend.chunks is None and _is_zarr_array(options.out):
        blend = replace(blend, chunks=_array_chunks(options.out, grid))
        options = replace(options, blend=blend)
    weights = blend.weights
    config = {
        "func": _describe(func),
        "on_chunk": _describe(blend.on_chunk),
        "weights": weights if isinstance(weights, str) else repr(weights),
    }
    sink = ZarrSink(
        options.out,
        obj,
        grid,
        chunk_sizes(blend.chunks, grid),
        resume=options.resume,
        config=config,
        overwrite=options.overwrite,
    )
    return _apply.apply(obj, func, grid, options, sink)

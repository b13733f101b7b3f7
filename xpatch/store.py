"""Out-of-core output: finished chunks written to a zarr store as they complete.

The store is laid out as ``to_zarr`` would write the result (readable with
``xr.open_zarr`` or ``xr.open_dataarray(engine="zarr")``), with zarr chunks equal
to the aggregation chunks, so no two chunks ever share a zarr chunk. Which chunks
are complete is recorded in the group's attributes (key ``"xpatch"``), always
after the chunk's data, so a crash never leaves a chunk marked complete that was
not fully written. ``resume=True`` reads that record and recomputes only the
unfinished chunks.

Nothing is lost: an ``out`` that holds anything is refused before ``func`` is first
called (unless ``overwrite=True``, or ``resume=True`` continues xpatch's own run), and
the store the input is read from is refused always. A lock file beside a local store
(``<store>.xpatch-lock``: pid, host, start time, state) keeps a second writer out; the
kernel's ``flock`` on it dies with its process, so a killed run's lock is taken over.
The lock's state says when the store was being created: a run killed then is started
afresh by ``resume=True``. The record keeps a fingerprint of one window's result, and
a resume recomputes that window: a function that computes something else is refused.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xpatch import _apply, parallel
from xpatch._cluster_store import write_to_store
from xpatch._options import ApplyOptions
from xpatch._patchmap import PatchMap
from xpatch._rescale import scaled_template
from xpatch._store_safety import (
    LOCK_SUFFIX,
    Fingerprinting,
    StoreLock,
    check_func,
    done_bits,
    encode_record,
    input_locations,
    is_zarr_array,
    jsonable,
    local_path,
    overlaps,
    read_record,
)
from xpatch._structure import THIS, Meta, as_dataset, assemble, result_name, source_name
from xpatch.errors import PatchError
from xpatch.grid import PatchGrid
from xpatch.layout import ChunkLayout, chunk_sizes

RECORD = "xpatch"
COMPARED = ("grid", "chunks", "weights", "halo")  # func, on_chunk: by the fingerprint
PASS = (
    "pass overwrite=True to replace it (deleting what is there), or choose another path"
    " (resume=True continues only an interrupted xpatch run)"
)


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


# --- the sink -------------------------------------------------------------------------------
class ZarrSink:
    """Writes finished chunks of the result into a zarr store or array.

    Every check of ``out`` runs here, before ``func`` is first called; call
    :meth:`close` when the run is over (it releases the lock).
    """

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
        self.local = local_path(out)
        self.label = repr(self.store if self.store is not None else out)
        self.done: np.ndarray | None = None
        self.meta: Meta | None = None
        self.created = False
        self.fingerprint: dict[str, Any] | None = None
        self.kind, self.unnamed = "dataarray", False  # unnamed: on_chunk's result had no name
        self.var_names: dict[Hashable, str] = {}
        self.lock: StoreLock | None = None
        self._made: list[Path] = []
        self._check_input(out)
        if self.array is None:
            self._check_names()
            if self.local is not None:
                self._check_path()
        try:
            previous: dict[str, Any] = {}
            if self.local is not None:
                self.lock = StoreLock(Path(str(self.local) + LOCK_SUFFIX))
                try:
                    holder, previous = self.lock.acquire()
                except OSError as err:
                    raise StoreError(
                        f"out={self.label} cannot be written: its lock file {self.lock.path}"
                        f" cannot be made ({err.strerror or err})"
                    ) from err
                if holder is not None:
                    raise StoreError(f"out={self.label} {self.lock.busy(holder)}")
                weakref.finalize(self, self.lock.release)
            if self.array is not None:
                self._check_array()
                if resume:
                    self.done = self._read_record(self.array.attrs.get(RECORD), overwrite)
            else:
                self._check_existing(resume, overwrite, previous.get("state") == "creating")
        except BaseException:
            self.close()
            raise

    # --- checks, before func is first called -------------------------------------------
    def _check_input(self, out: Any) -> None:
        paths, stores = input_locations(self.template)
        target = self.array.store if self.array is not None else out
        clash = [str(p.resolve()) for p in paths if self.local and overlaps(self.local, p)]
        if clash or id(target) in stores:
            where = clash[0] if clash else "the same zarr store object"
            raise StoreError(
                f"out={self.label} is where the input is read from ({where}): writing there"
                " would destroy the input while it is read. Write to another path (this is"
                " refused even with overwrite=True)"
            )

    def _check_names(self) -> None:
        import pandas as pd

        t = self.template
        names = [*t.dims, *t.coords, *(t.data_vars if isinstance(t, xr.Dataset) else ())]
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise StoreError(
                f"out= writes a zarr store, whose dims and variables need string names; the"
                f" input has {sorted(set(map(repr, bad)))}: rename them first, e.g."
                f" obj.rename({{{bad[0]!r}: {str(bad[0])!r}}})"
            )
        for name, index in t.indexes.items():
            if isinstance(index, pd.MultiIndex):
                raise StoreError(
                    f"out=: the input's dim {name!r} has a MultiIndex"
                    f" ({list(index.names)}), which a zarr store cannot hold: call"
                    f" obj.reset_index({name!r}) first, or write the result without out="
                )

    def _check_path(self) -> None:
        assert self.local is not None
        p = self.local
        if p.exists() and not p.is_dir():
            raise StoreError(
                f"out={self.label} is a regular file, not a directory: a zarr store is a"
                " directory; choose another path (a file is never replaced)"
            )
        missing = [a for a in [p, *p.parents] if not a.exists()]
        above = p.parents[len(missing) - 1] if missing else p
        if not above.is_dir():
            raise StoreError(
                f"out={self.label} is under {above}, which is a regular file: a zarr store"
                " cannot be made there; choose another path"
            )
        try:
            for d in reversed(missing[1:]):  # the store's parents: the lock file goes there
                d.mkdir()
                self._made.append(d)
        except OSError as err:
            self.close()
            raise StoreError(
                f"out={self.label} cannot be created: {err.strerror} ({err.filename})"
            ) from err
        for d in (p.parent, p) if p.exists() else (p.parent,):
            if not os.access(d, os.W_OK | os.X_OK):
                self.close()
                raise StoreError(f"out={self.label} cannot be written: {d} is not writable")

    def _check_existing(self, resume: bool, overwrite: bool, creating: bool) -> None:
        what, record = self._inspect()
        if what == "empty":
            return
        if what == "xpatch" and record.get("state") == "creating":
            what, creating = "creating", True
        if creating:
            if resume or overwrite:
                return  # creation was interrupted: start afresh
            raise StoreError(
                f"out={self.label} holds an xpatch store whose creation was interrupted"
                " (its run was killed before it finished a chunk); pass resume=True (it starts"
                " afresh) or overwrite=True to replace it"
            )
        if what == "xpatch":
            if resume:
                self.done = self._read_record(record, overwrite)
                return
            if overwrite:
                return
            done = done_bits(record)
            state = "finished" if done.all() else f"{int(done.sum())} of {done.size} chunks done"
            raise StoreError(
                f"out={self.label} already holds the store of an earlier xpatch run ({state});"
                f" refusing to replace it: pass resume=True to continue it, or overwrite=True"
                " to replace it"
            )
        if overwrite:
            self._check_not_precious()
            return
        if resume:
            raise StoreError(
                f"out={self.label} exists but holds no xpatch run record ({what}); it was not"
                " written by apply(out=...): refusing to resume into it (pass overwrite=True to"
                " replace it)"
            )
        raise StoreError(f"out={self.label} already holds {what}; refusing to replace it: {PASS}")

    def _check_not_precious(self) -> None:
        if self.local is None:
            return
        p, cwd = self.local.resolve(), Path.cwd().resolve()
        if p in (Path.home().resolve(), cwd, *cwd.parents):
            raise StoreError(
                f"out={self.label}: overwrite=True would delete {p.resolve()}, which is the"
                " home or the current directory or holds it; choose another path"
            )

    def _inspect(self) -> tuple[str, dict[str, Any]]:
        """What is at ``out``: "empty", "xpatch" (with its record) or a description."""
        if self.local is not None:
            if not self.local.exists():
                return "empty", {}
            entries = sorted(os.listdir(self.local))
            if not entries:
                return "empty", {}
        try:
            group = self.zarr.open_group(self.store, mode="r")
            attrs = group.attrs.asdict()
            record = read_record(attrs.get(RECORD))
            if record is not None:
                return "xpatch", record
            names = sorted(group.array_keys())
        except Exception:
            if self.local is None:
                return "empty", {}  # nothing a zarr group can be opened from
            zarrish = {"zarr.json", ".zgroup", ".zarray"} & set(entries)
            listed = ", ".join(entries[:5]) + (
                f" and {len(entries) - 5} more" if len(entries) > 5 else ""
            )
            kind = "a zarr store that cannot be opened, with" if zarrish else "a directory with"
            n = len(entries)
            return f"{kind} {n} entr{'y' if n == 1 else 'ies'} ({listed})", {}
        if not names and not attrs:
            return "empty", {}  # a bare group: a creation killed early (a store object)
        return f"a zarr store with the variables {names}", {}

    def _read_record(self, record: Any, overwrite: bool) -> np.ndarray | None:
        """The finished chunks of the store's run, if this run may continue it."""
        if record is None:
            return None  # a caller's array never written, or nothing to resume: afresh
        record = read_record(record)  # a JSON string, or the dict older runs wrote
        if record is None:
            raise StoreError(f"out={self.label} holds an unreadable xpatch record")
        found = {k: record.get(k) for k in COMPARED}
        expected = {k: self.record_value.get(k) for k in COMPARED}
        diff = [k for k in COMPARED if jsonable(found[k]) != jsonable(expected[k])]
        if diff:
            if overwrite:
                return None
            raise StoreError(
                f"out={self.label} was written by a different run configuration ({diff} differ:"
                f" store has {[found[k] for k in diff]}, this run has"
                f" {[expected[k] for k in diff]}); refusing to mix results (pass overwrite=True"
                " to replace it)"
            )
        var_names = {
            (THIS if k == "<this-array>" else k): v for k, v in record.get("variables", {}).items()
        }
        if self.array is None:
            for key in var_names.values():
                try:
                    arr = self.zarr.open_array(self.store, path=key, mode="r")
                except Exception:
                    return None  # the layout is incomplete: nothing usable, start afresh
                if len(arr.shape) < len(self.grid.dims):
                    return None
        self.created = True
        self.kind, self.unnamed = record.get("kind", "dataarray"), bool(record.get("unnamed"))
        self.var_names = var_names
        self.fingerprint = record.get("fingerprint")
        return done_bits(record)

    def keep_fingerprint(self, fingerprint: dict[str, Any] | None) -> None:
        self.fingerprint = fingerprint

    def start_afresh(self) -> None:
        """Forget the store's run: the first chunk recreates the store."""
        self.done, self.created, self.fingerprint, self.var_names = None, False, None, {}

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

    def close(self) -> None:
        """The run is over: release the lock; remove the directories made for nothing."""
        if self.lock is not None:
            self.lock.release()
        if self.local is not None and not self.local.exists():
            for d in reversed(self._made):
                try:
                    d.rmdir()
                except OSError:
                    break
        self._made = []

    # --- writing --------------------------------------------------------------
    def _create(
        self, variables: Mapping[Hashable, tuple[tuple[Hashable, ...], np.ndarray]], meta: Meta
    ) -> None:
        import dask.array as dsa

        self.meta = meta
        self.unnamed = meta.kind == "dataarray" and result_name(meta, self.name) is None
        if self.array is not None:
            if len(variables) != 1:  # several outputs need a store (a path or a group)
                raise StoreError(f"out: a zarr array holds one output, not {len(variables)}")
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
        nothing = np.zeros(chunk_grid, dtype=bool)
        # until the layout is complete, the lock (or, without one, the record) says
        # "creating": a run killed in between is started afresh by resume=True
        if self.lock is not None:
            self.lock.set_state("creating")
        ds.attrs[RECORD] = encode_record(dict(self._record(nothing), state="creating"))
        ds.to_zarr(self.store, mode="w", compute=False, encoding=encoding, consolidated=False)
        self.created = True
        self._write_record(nothing)
        if self.lock is not None:
            self.lock.set_state("running")

    def prepare(
        self, variables: Mapping[Hashable, tuple[tuple[Hashable, ...], Any]], meta: Meta
    ) -> None:
        """Make the store's layout for results like ``variables`` (the dask path, whose
        workers then write the chunks)."""
        if not self.created:
            self._create(variables, meta)

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
        attrs[RECORD] = encode_record(self._record(finished))
        if finished.all() and self.array is None:
            # consolidated metadata lets xr.open_zarr open the finished store quietly
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr 3 notes it is outside the spec
                self.zarr.consolidate_metadata(self.store)
        if finished.all():
            self.close()  # nothing more to write (an Aggregator's run ends here)

    def _group(self, mode: str = "r+") -> Any:
        return self.zarr.open_group(self.store, mode=mode)

    def _record(self, finished: np.ndarray) -> dict[str, Any]:
        value = dict(self.record_value)
        value.update(
            kind=self.kind,
            unnamed=self.unnamed,
            variables={
                ("<this-array>" if k == THIS else str(k)): v for k, v in self.var_names.items()
            },
            chunk_grid=list(finished.shape),
            done=np.packbits(finished.ravel()).tobytes().hex(),
            complete=bool(finished.all()),
        )
        if self.fingerprint is not None:
            value["fingerprint"] = self.fingerprint
        return value

    def result(self) -> xr.DataArray | xr.Dataset:
        """The result, opened lazily from the store."""
        if self.array is not None:
            import dask.array as dsa

            dims = _array_dims(self.array)
            assert dims is not None
            meta = self.meta or Meta("dataarray", final=self.unnamed)
            data = {THIS: (dims, dsa.from_zarr(self.array))}
            return assemble(data, meta, self.template, default_name=self.name)
        ds = xr.open_zarr(self.store, consolidated=False)
        ds.attrs.pop(RECORD, None)
        if self.kind == "dataarray":
            da = ds[self.var_names[THIS]]
            if self.unnamed or (self.var_names[THIS] == "result" and self.name is None):
                da.name = None
            return da
        return ds


def _var_name(name: Hashable, meta: Meta, default: Hashable | None) -> str:
    if name != THIS:
        return str(name)
    chosen = result_name(meta, default)
    return "result" if chosen is None else str(chosen)


def _array_dims(array: Any) -> tuple[Hashable, ...] | None:
    names = getattr(getattr(array, "metadata", None), "dimension_names", None)
    if names:
        return tuple(names)
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(dims) if dims else None


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


def apply_to_store(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
    pm: PatchMap | None = None,
    keep: Callable[[Any], Any] | None = None,
) -> xr.DataArray | xr.Dataset:
    """``apply`` writing finished chunks to ``options.out``; resumable (``pm``: halo, scale).

    A resumed store that records a fingerprint has its window recomputed once, and
    a different result is refused (or, with ``overwrite=True``, the run starts afresh).
    """
    blend = options.blend
    if blend.chunks is None and is_zarr_array(options.out):
        blend = replace(blend, chunks=_array_chunks(options.out, grid))
        options = replace(options, blend=blend)
    elif blend.chunks is None and parallel.is_dask_backed(obj):
        # the workers write the blocks: regular ones, as long as the input's first blocks
        first = {d: c[0] for d, c in parallel.default_chunks(obj, grid).items()}
        options = replace(options, blend=replace(blend, chunks=first))
        blend = options.blend
    weights = blend.weights
    pm = pm if pm is not None else PatchMap.make(grid)
    config = {
        "func": _describe(func),  # for information only: func is known by its results
        "on_chunk": _describe(blend.on_chunk),
        "weights": weights if isinstance(weights, str) else repr(weights),
        "halo": {str(d): h for d, h in pm.halo.items() if h} or None,  # (None: older runs)
    }
    if pm.scaled and options.scale is None:
        raise StoreError(
            "an output at another resolution (scale) with out= must be declared up front:"
            " pass scale= (e.g. scale={'y': 2, 'x': 2})"
        )
    template = scaled_template(obj, pm) if pm.scaled else obj
    sink = ZarrSink(
        options.out,
        template,
        pm.target,
        chunk_sizes(pm.target_chunks(blend.chunks), pm.target),
        resume=options.resume,
        config=config,
        overwrite=options.overwrite,
    )
    try:
        if sink.created and sink.fingerprint is not None:
            diff = check_func(obj, func, pm.source, options, sink.fingerprint, sink.label)
            if diff is not None and options.overwrite:
                sink.start_afresh()
            elif diff is not None:
                raise StoreError(
                    f"out={sink.label} was written by a different run configuration: func"
                    f" gives another result on {diff}. Resuming would mix the results of two"
                    " functions (or of a model whose weights changed): resume with the function"
                    " that wrote the store, or pass overwrite=True to start afresh"
                )
        if parallel.is_dask_backed(obj) and sink.array is None and isinstance(sink.store, str):
            return write_to_store(obj, func, grid, options, sink, pm, keep)
        if not sink.created and keep is None:  # (a predicate may drop the first window)
            first = ChunkLayout(pm.target, pm.target_chunks(blend.chunks)).order()[0]
            func = Fingerprinting(func, sink.keep_fingerprint, options, int(first))
        return _apply.apply(obj, func, grid, options, sink, pm, keep)
    finally:
        sink.close()

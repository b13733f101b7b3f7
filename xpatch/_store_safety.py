"""What keeps ``out=`` safe: where the input lives, one writer at a time, what func computes.

Used by :mod:`xpatch.store`, which turns what these find into ``StoreError``:

- :func:`input_locations`: the files and stores an object is read from (its
  ``encoding["source"]``, the backend arrays behind its variables, the original arrays
  in its dask graph), so that ``out=`` never writes into them;
- :class:`StoreLock`: a lock file beside a local store, held with ``flock`` (the kernel
  drops it when its process dies, so a killed run's lock is taken over); its content
  says who holds it (pid, host, start) and how far the run got (``state``);
- :func:`fingerprint` / :func:`difference`: a small summary of ``func``'s result for one
  window, kept in the run record, and what differs between two such summaries;
- :func:`encode_record` / :func:`read_record`: the run record as a JSON string
  attribute (netCDF-safe), read back in that form or as the nested dict of old stores.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xpatch._options import ApplyOptions
from xpatch._sampling import Sampler
from xpatch._structure import THIS, to_numpy
from xpatch.grid import PatchGrid

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lock falls back to pid liveness
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".xpatch-lock"
RTOL = 1e-5  # a resumed func's result may differ by this much (GPU nondeterminism)
SAMPLES = 32  # values of the fingerprint window kept in the record, per variable


def is_zarr_array(out: Any) -> bool:
    return type(out).__module__.startswith("zarr") and type(out).__name__ == "Array"


# --- where things are on disk ----------------------------------------------------------------
def local_path(out: Any) -> Path | None:
    """The directory of a local store (a path, a LocalStore, an array in one), else None."""
    if isinstance(out, (str, os.PathLike)):
        s = os.fsdecode(os.fspath(out))
        return None if "://" in s or s.startswith("memory:") else Path(os.path.abspath(s))
    store = getattr(out, "store", out) if is_zarr_array(out) else out  # an array: its store
    root = getattr(store, "root", None) if type(store).__name__ == "LocalStore" else None
    return None if root is None else Path(os.path.abspath(root))


def input_locations(obj: xr.DataArray | xr.Dataset) -> tuple[list[Path], list[int]]:
    """The files and stores ``obj`` is read from: local paths, and ids of store objects."""
    paths: list[Path] = []
    stores: list[int] = []

    def source(s: Any) -> None:
        if isinstance(s, (str, os.PathLike)) and "://" not in os.fsdecode(os.fspath(s)):
            paths.append(Path(os.path.abspath(os.fspath(s))))

    def walk(o: Any) -> None:
        for _ in range(16):  # backend wrappers: MemoryCachedArray -> ... -> zarr Array
            if o is None:
                return
            if is_zarr_array(o):
                stores.append(id(o.store))
                local = local_path(o.store)
                if local is not None:
                    paths.append(local)
                return
            datastore = getattr(o, "datastore", None)
            if datastore is not None:  # netCDF and friends
                source(getattr(datastore, "_filename", None))
            try:
                o = o.array if hasattr(o, "array") else getattr(o, "_array", None)
            except Exception:  # an adapter without one backing array (a MultiIndex)
                return

    source(obj.encoding.get("source"))
    for var in (
        obj.variables.values()
        if isinstance(obj, xr.Dataset)
        else [obj.variable, *(c.variable for c in obj.coords.values())]
    ):
        source(var.encoding.get("source"))
        data = getattr(var, "_data", None)
        graph = getattr(data, "dask", None) if hasattr(data, "__dask_graph__") else None
        if graph is None:
            walk(data)
            continue
        for name, layer in getattr(graph, "layers", {}).items():
            # the source array is one key of a small materialized layer ("original-...");
            # other layers are never materialized here (a large graph would be built)
            mapping = getattr(layer, "mapping", None)
            if "original" in str(name) and isinstance(mapping, dict) and len(mapping) <= 8:
                for value in mapping.values():
                    walk(getattr(value, "value", value))
    return paths, stores


def overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


# --- one writer at a time -------------------------------------------------------------------
class StoreLock:
    """A lock file beside the store: who writes it (pid, host, start, state), held with
    ``flock`` so that it dies with its process; a dead holder's lock is taken over."""

    SIZE = 1024  # the content is rewritten in place, padded: one write, never truncated

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "store": str(path)[: -len(LOCK_SUFFIX)],
            "state": "open",
        }

    def acquire(self) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Take the lock: ``(None, what a dead holder left)``, or ``(holder, {})`` if a
        live process holds it. Raises OSError if the lock file cannot be made."""
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                held = self._held_by_other(fd)
                if held is not None:
                    os.close(fd)
                    return held, {}
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # released and removed while we opened it: try again
                    os.close(fd)
                    continue
                previous = read_lock(fd)
                self.fd = fd
                self.set_state("open")
                return None, previous
            except BaseException:
                if self.fd is None:
                    os.close(fd)
                raise
        raise OSError(f"could not take the lock file {self.path}")

    def _held_by_other(self, fd: int) -> dict[str, Any] | None:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                return read_lock(fd)
            except OSError:  # a file system without flock: judge by the pid
                pass
        info = read_lock(fd)
        if not info:
            return None
        if info.get("host") != socket.gethostname():
            return info  # whether it still runs cannot be told from here
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return None
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
        return info

    def busy(self, info: dict[str, Any]) -> str:
        """Who holds the lock, and what to do."""
        pid, host = info.get("pid", "?"), info.get("host", "?")
        who = (
            "another run in this process (an Aggregator with out= still open?)"
            if pid == os.getpid() and host == socket.gethostname()
            else "another process"
        )
        return (
            f"is being written by {who}: pid {pid} on host {host}, since"
            f" {info.get('started', '?')} (lock file {self.path}); two runs writing one store"
            " would mix their results. Wait for it to finish (then resume=True continues"
            " its store), or write to another path"
        )

    def set_state(self, state: str) -> None:
        if self.fd is None:
            return
        self.info["state"] = state
        data = json.dumps(self.info).encode()
        os.pwrite(self.fd, data.ljust(max(self.SIZE, len(data))) + b"\n", 0)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)


def read_lock(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
    return info if isinstance(info, dict) else {}


# --- what func computes --------------------------------------------------------------------
def numbers(a: np.ndarray) -> np.ndarray | None:
    if a.dtype.kind == "c":
        return np.stack([a.real, a.imag], axis=-1).astype(np.float64).ravel()
    if a.dtype.kind in "mM":
        return a.view(np.int64).astype(np.float64).ravel()
    if a.dtype.kind in "biuf":
        return a.astype(np.float64).ravel()
    return None


def fingerprint(
    result: Any,
    window: int,
    batch_dim: Hashable | None,
    batch_axis: int,
    dims: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A small summary of ``func``'s raw result for one window: per variable its dims,
    shape, dtype, ``SAMPLES`` values spread over it, and the sum of its values.

    ``batch_dim``: the result is a batch whose first element is the window's (at
    ``batch_axis`` for a bare array). ``dims``: per variable, the dims order to use.
    """
    if isinstance(result, xr.DataArray):
        items = {THIS: result}
    elif isinstance(result, xr.Dataset):
        items = dict(result.data_vars)
    else:
        items = {THIS: result}
    out: dict[str, Any] = {}
    for name, value in items.items():
        key = "<this-array>" if name == THIS else str(name)
        if isinstance(value, xr.DataArray):
            if batch_dim is not None and batch_dim in value.dims:
                value = value.isel({batch_dim: 0})
            want = (dims or {}).get(key, {}).get("dims")
            if want and set(want) == set(map(str, value.dims)):
                value = value.transpose(*[d for w in want for d in value.dims if str(d) == w])
            vdims: list[str] | None = [str(d) for d in value.dims]
            a = np.asarray(to_numpy(value.data))
        else:
            a = np.asarray(to_numpy(value))
            if batch_dim is not None:
                a = np.take(a, 0, axis=batch_axis)
            vdims = None
        entry: dict[str, Any] = {"dims": vdims, "shape": list(a.shape), "dtype": str(a.dtype)}
        num = numbers(a)
        if num is None:
            flat = a.ravel()
            entry["samples"] = [str(flat[i]) for i in spread(flat.size)]
        else:
            finite = np.isfinite(num)
            entry["samples"] = [v if np.isfinite(v) else str(v) for v in num[spread(num.size)]]
            entry["sum"] = float(num[finite].sum())
            entry["abs_sum"] = float(np.abs(num[finite]).sum())
            entry["nonfinite"] = int(num.size - finite.sum())
        out[key] = entry
    return {"windows": [int(window)], "variables": out}


def spread(n: int) -> list[int]:
    return np.unique(np.linspace(0, n - 1, min(SAMPLES, n)).astype(np.int64)).tolist() if n else []


def encode_record(record: Mapping[str, Any]) -> str:
    """The run record as the store keeps it: one JSON string attribute.

    A string is what every format takes (a nested dict stops ``to_netcdf``).

    Examples
    --------
    >>> encode_record({"done": "80", "chunk_grid": [1]})
    '{"done": "80", "chunk_grid": [1]}'
    """
    return json.dumps(dict(record))


def read_record(value: Any) -> dict[str, Any] | None:
    """The run record from the store's attribute: a JSON string, or the nested dict
    older versions wrote; None when there is none or it is not a record.

    Examples
    --------
    >>> read_record('{"done": "80"}'), read_record({"done": "80"}), read_record("[1]")
    ({'done': '80'}, {'done': '80'}, None)
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, Mapping) else None


def done_bits(record: Mapping[str, Any]) -> np.ndarray:
    """The record's finished chunks, as a boolean array of the chunk grid's shape."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(record["done"]), dtype=np.uint8))
    n = int(np.prod(record["chunk_grid"]))
    return bits[:n].astype(bool).reshape(record["chunk_grid"])


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (to compare a record with this run's)."""
    return json.loads(json.dumps(value, default=str))


def difference(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints (None: the same, within ``RTOL``)."""
    a, b = recorded["variables"], now["variables"]
    if set(a) != set(b):
        return f"variables {sorted(a)} recorded, {sorted(b)} now"
    for name in a:
        ra, rb = a[name], b[name]
        label = "" if name == "<this-array>" else f"variable {name!r}: "
        for what in ("dims", "shape", "dtype"):
            if ra.get(what) != rb.get(what):
                return f"{label}{what} {ra.get(what)} recorded, {rb.get(what)} now"
        if "sum" not in ra:
            if ra["samples"] != rb["samples"]:
                return (
                    f"{label}values differ ({ra['samples'][:3]} recorded, {rb['samples'][:3]} now)"
                )
            continue
        x = np.array([float(v) for v in ra["samples"]])
        y = np.array([float(v) for v in rb["samples"]])
        n = int(np.prod(ra["shape"], dtype=np.int64)) * (2 if "complex" in ra["dtype"] else 1)
        scale = max(ra["abs_sum"], rb["abs_sum"])
        tol = RTOL * (np.maximum(np.abs(x), np.abs(y)) + scale / max(n - ra["nonfinite"], 1))
        bad = ~((np.abs(x - y) <= tol) | (np.isnan(x) & np.isnan(y)) | (x == y))
        if bad.any():
            k = int(np.argmax(bad))
            return (
                f"{label}values differ: element {spread(n)[k]} of the window's"
                f" result is {x[k]:.7g} in the store's run and {y[k]:.7g} now"
            )
        if ra["nonfinite"] != rb["nonfinite"]:
            return (
                f"{label}NaN/inf count differs ({ra['nonfinite']} recorded, {rb['nonfinite']} now)"
            )
        if abs(ra["sum"] - rb["sum"]) > RTOL * scale + 1e-300:
            return (
                f"{label}values differ: their sum is {ra['sum']:.9g} recorded, {rb['sum']:.9g} now"
            )
    return None


class Fingerprinting:
    """``func``, handing the fingerprint of its first result to ``keep`` (a fresh store:
    the first call of a fresh run is window 0; a batch labels its windows)."""

    def __init__(
        self,
        func: Callable[[Any], Any],
        keep: Callable[[Any], None],
        options: ApplyOptions,
        first: int = 0,
    ) -> None:
        self.func, self.keep, self.armed, self.first = func, keep, True, first
        self.batch_dim = options.batch_dim if options.batch_size is not None else None
        self.axis = _batch_axis(options, self.batch_dim)

    def __call__(self, patch: Any) -> Any:
        result = self.func(patch)
        if self.armed:
            self.armed = False
            try:
                window = (
                    self.first if self.batch_dim is None else int(patch[self.batch_dim].values[0])
                )
                fp = fingerprint(result, window, self.batch_dim, self.axis, None)
                fp["batched"] = self.batch_dim is not None
                self.keep(fp)
            except Exception:  # a result xpatch refuses anyway: the run says why
                self.keep(None)
        return result


def _batch_axis(options: ApplyOptions, batch_dim: Hashable | None) -> int:
    dims = options.batch_output_dims
    return dims.index(batch_dim) if dims and batch_dim in dims else 0


def check_func(
    obj: Any,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
    recorded: dict[str, Any],
    label: str,
) -> str | None:
    """Recompute the recorded window once: what differs from the record (None: same)."""
    window = grid[int(recorded["windows"][0])]
    sampler = Sampler(obj, grid)
    batch_dim = options.batch_dim if options.batch_size is not None else None
    patch = sampler(window) if batch_dim is None else sampler.batch([window], batch_dim)
    try:
        result = func(patch)
    except Exception as err:
        err.add_note(
            f"xpatch: raised by func on {window!r}, called once to check that it gives the"
            f" result recorded in out={label} before resuming"
        )
        raise
    axis = _batch_axis(options, batch_dim)
    now = fingerprint(result, window.index, batch_dim, axis, recorded["variables"])
    diff = difference(recorded, now)
    return None if diff is None else f"{window!r}: {diff}"

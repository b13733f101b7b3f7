"""Instance stitching out of core: ``apply(..., merge="instances", out=path)``.

Two passes, both chunk by chunk, so memory is bounded by a chunk (with the pieces of
the windows touching it) plus the equivalence table, not by the volume:

1. windows are computed in the order that finishes chunks; each finished chunk is
   painted with provisional ids (uint64) into a scratch zarr array beside the store,
   ``<store>.xpatch-instances/painted``, and how its objects meet is saved next to
   it (``stats/<chunk>.npz``, written after the chunk's data: a chunk is done in this
   pass iff its file exists);
2. the table is resolved (``map.npz``) and every chunk is relabelled to ``1..N``
   and written to the store through :class:`~xpatch.store.ZarrSink`, which records
   finished chunks as for blended results.

The store's own checks, lock and refusal to overwrite are the sink's, made before
``func`` is first called. ``resume=True`` continues either pass; the scratch records
the grid, chunks, ``iou`` and a fingerprint of ``func`` (the partition it gives on
window 0, ids up to a permutation), and a resume that differs is refused. The
scratch is removed when the store is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xpatch._apply import _call
from xpatch._instances import Stats, relabel
from xpatch._instances_agg import InstanceAggregator, _run, labels_of
from xpatch._locate import LabelCheck
from xpatch._sampling import Sampler
from xpatch._store_safety import is_zarr_array, local_path
from xpatch._structure import THIS, Meta
from xpatch.grid import PatchGrid
from xpatch.layout import ChunkLayout, chunk_sizes
from xpatch.store import StoreError, ZarrSink, _zarr

SUFFIX = ".xpatch-instances"


def digest(labels: np.ndarray) -> str:
    """A fingerprint of the partition ``labels`` makes (the same for permuted ids).

    Examples
    --------
    >>> digest(np.array([0, 5, 5, 2])) == digest(np.array([0, 1, 1, 9]))
    True
    """
    flat = np.asarray(labels).ravel()
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    canonical = rank[inverse.ravel()]
    if flat.size:  # background stays distinguishable from objects
        canonical = np.where(flat == 0, -1, canonical)
    h = hashlib.sha1(repr(labels.shape).encode())
    h.update(np.ascontiguousarray(canonical).tobytes())
    return h.hexdigest()


class StorePaint:
    """Painted chunks in a scratch zarr array; the final pass writes through the sink."""

    def __init__(self, root: Path, layout: ChunkLayout, sink: ZarrSink, name: Hashable) -> None:
        self.root, self.layout, self.sink, self.name = root, layout, sink, name
        self.zarr = _zarr()
        self._array: Any = None

    def create(self, meta: dict[str, Any]) -> None:
        """Start the scratch afresh (its record written last)."""
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "stats").mkdir(parents=True)
        shape = tuple(int(e[-1]) for e in self.layout.edges)
        chunks = tuple(int(e[1] - e[0]) if len(e) > 1 else 1 for e in self.layout.edges)
        self.zarr.create_array(
            str(self.root / "painted"), shape=shape, chunks=chunks, dtype="uint64", fill_value=0
        )
        _atomic_json(self.root / "meta.json", meta)

    def meta(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    @property
    def array(self) -> Any:
        if self._array is None:
            self._array = self.zarr.open_array(str(self.root / "painted"), mode="r+")
        return self._array

    def _stats_path(self, cpos: tuple[int, ...]) -> Path:
        return self.root / "stats" / ("_".join(map(str, cpos)) + ".npz")

    def put(self, cpos: tuple[int, ...], painted: np.ndarray, stats: Stats) -> None:
        self.array[tuple(self.layout.region(cpos).values())] = painted
        path = self._stats_path(cpos)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **stats.arrays())
        os.replace(tmp, path)  # after the data: the chunk is done in the first pass

    def load(self) -> tuple[np.ndarray, list[Stats]]:
        """The chunks the first pass finished, and what they said."""
        done = np.zeros(self.layout.shape, dtype=bool)
        stats = []
        for cpos in self.layout.chunks():
            path = self._stats_path(cpos)
            if path.exists():
                with np.load(path) as f:
                    stats.append(Stats(**{k: f[k] for k in f.files}))
                done[cpos] = True
        return done, stats

    def result(self, keys: np.ndarray, values: np.ndarray) -> xr.DataArray:
        """The second pass: relabel every chunk into the store; the result opened from it."""
        table = self.root / "map.npz"
        if not table.exists():
            tmp = self.root / "map.tmp.npz"
            np.savez(tmp, keys=keys, values=values)
            os.replace(tmp, table)
        sink, layout = self.sink, self.layout
        finished = (
            sink.done.copy() if sink.done is not None else np.zeros(layout.shape, dtype=bool)
        ).reshape(layout.shape)
        meta = Meta("dataarray", name=self.name, from_labeled=self.name is not None)
        dims = layout.grid.dims
        for cpos in layout.chunks():
            if finished[cpos]:
                continue
            region = layout.region(cpos)
            data = relabel(np.asarray(self.array[tuple(region.values())]), keys, values)
            sink.write(region, {THIS: (dims, data)}, meta)
            finished[cpos] = True
            sink.record(finished)
        sink.close()
        shutil.rmtree(self.root, ignore_errors=True)
        return sink.result()  # type: ignore[return-value]


def _atomic_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _local(out: Any) -> Path:
    path = local_path(out)
    if path is None or is_zarr_array(out):
        raise StoreError(
            f"out={out!r}: merge='instances' writes a new zarr store at a local path (the"
            " stitching keeps a scratch store beside it); pass a directory path"
        )
    return path


def make_sink(
    obj: xr.DataArray | xr.Dataset,
    grid: PatchGrid,
    chunks: Any,
    out: Any,
    iou: float,
    *,
    resume: bool,
    overwrite: bool,
) -> tuple[ZarrSink, Path]:
    """The store's sink (every check of ``out``, the lock) and the scratch's path."""
    path = _local(out)
    config = {"weights": f"instances(iou={iou})", "merge": "instances", "iou": iou}
    sink = ZarrSink(
        out, obj, grid, chunk_sizes(chunks, grid), resume=resume, config=config,
        overwrite=overwrite,
    )  # fmt: skip
    return sink, Path(str(path) + SUFFIX)


def apply_to_store(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    *,
    iou: float,
    chunks: int | Mapping[Hashable, Any] | None,
    out: Any,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> xr.DataArray:
    """Stitch to the zarr store ``out`` in two passes; resumable (see the module)."""
    from xpatch import parallel

    if chunks is None and parallel.is_dask_backed(obj):
        chunks = {d: c[0] for d, c in parallel.default_chunks(obj, grid).items()}
    sink, root = make_sink(obj, grid, chunks, out, iou, resume=resume, overwrite=overwrite)
    try:
        if sink.done is not None and sink.done.all():
            shutil.rmtree(root, ignore_errors=True)
            return sink.result()  # type: ignore[return-value]
        agg = InstanceAggregator(obj, grid, iou=iou, chunks=chunks)
        paint = StorePaint(root, agg.layout, sink, agg.name)
        agg.paint = paint
        config = {"grid": grid.signature(), "chunks": [list(e) for e in _edges(agg)], "iou": iou}
        kept = grid.kept  # the fingerprint is taken on the first window computed
        first = grid[0 if kept is None else int(np.flatnonzero(kept)[0])]
        check = LabelCheck(obj, grid)
        found = paint.meta() if root.exists() else None
        if root.exists() and not (resume or overwrite):
            raise StoreError(
                f"out={sink.label}: {root} holds the scratch of an interrupted instance run;"
                " pass resume=True to continue it, or overwrite=True to start afresh"
            )
        if sink.done is not None and (found is None or not (root / "map.npz").exists()):
            if not overwrite:
                raise StoreError(
                    f"out={sink.label} was being relabelled, but its scratch {root} is gone or"
                    " incomplete: it cannot be continued; pass overwrite=True to start afresh"
                )
            sink.start_afresh()
            found = None
        labels = None
        if resume and found is not None:
            same = {k: found.get(k) for k in config} == json.loads(json.dumps(config))
            if same:
                labels = labels_of(_call(func, Sampler(obj, grid)(first), first), first, check)
                same = digest(labels) == found.get("fingerprint")
                if not same and not overwrite:
                    raise StoreError(
                        f"out={sink.label} was stitched from another func: its labels on"
                        f" {first!r} are another partition. Resume with the function that"
                        " wrote it, or pass overwrite=True to start afresh"
                    )
            elif not overwrite:
                raise StoreError(
                    f"out={sink.label} was stitched with another configuration (grid,"
                    f" chunks or iou: {found} vs {config}); pass overwrite=True to start afresh"
                )
            if not same:
                found = None
                sink.start_afresh()
        if found is None:
            if labels is None:
                labels = labels_of(_call(func, Sampler(obj, grid)(first), first), first, check)
            paint.create({**config, "fingerprint": digest(labels)})
        else:
            agg.skip(*paint.load())
        if labels is not None and not agg.added[first.index]:
            agg.add(labels, first)
        _run(agg, func, obj, progress)
        return agg.result()
    finally:
        sink.close()


def _edges(agg: InstanceAggregator) -> list[list[int]]:
    return [[int(x) for x in e] for e in agg.layout.edges]

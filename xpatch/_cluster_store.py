"""``apply(out=...)`` on dask-backed input: the workers write the blocks to zarr.

The graph of :mod:`xpatch.parallel` up to the finished blocks, plus one write task per
block that is not done yet: the worker that finishes a block writes it to its region
of the store (one block is one zarr chunk: no two writers share one) and leaves a
marker file beside the store. ``resume=True`` skips the marked blocks. Used by
:func:`xpatch.store.apply_to_store` for a store given as a path.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from xpatch._options import ApplyOptions
from xpatch._patchmap import PatchMap
from xpatch._sampling import Sampler
from xpatch._structure import Meta, ResultSpec, Variables
from xpatch.grid import PatchGrid
from xpatch.parallel import _GraphBuilder

__all__ = ["write_to_store"]


def write_to_store(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    options: ApplyOptions,
    sink: Any,
    pm: PatchMap | None = None,
    keep: Callable[[Any], Any] | None = None,
) -> xr.DataArray | xr.Dataset:
    """``apply(out=...)`` on dask-backed input: the workers compute and write the blocks.

    The store's layout is made here (from the one dry call of ``func``), with the
    fingerprint of ``func``'s result on the run's first window for a fresh store (one
    more call, on the real patch; none with a predicate ``mask``). Each block task's
    result is written to its region of the store by the worker that finished it, and a
    marker file beside the store records it, so an interrupted run resumes
    (``resume=True``) with the blocks not yet marked. The result is returned opened
    lazily from the store.
    """
    import os
    import shutil

    from xpatch._store_safety import Fingerprinting

    builder = _GraphBuilder(obj, func, grid, options, pm, keep)
    layout = builder.learn_layout()
    marks = os.fspath(sink.store).rstrip("/") + ".xpatch-done"
    if not sink.created:
        # as the eager path: the first window of the run's order (a masked grid's first
        # kept one), none under a predicate (which may drop any window): func is never
        # called on a window the mask skips
        if keep is None:
            first = builder.grid[int(builder.layout.order()[0])]
            sampler = Sampler(obj, builder.grid)
            batched = options.batch_size is not None
            patch = sampler.batch([first], options.batch_dim) if batched else sampler(first)
            Fingerprinting(func, sink.keep_fingerprint, options, first.index)(patch.compute())
        # a fresh store (overwrite=True, or the old one gone): the markers an interrupted
        # run left beside the old store are not this run's blocks (removed before the
        # store is replaced, so a run killed in between leaves none to trust)
        shutil.rmtree(marks, ignore_errors=True)
        sink.prepare(layout[1], layout[2])
    os.makedirs(marks, exist_ok=True)
    done = np.zeros(builder.layout.shape, dtype=bool)
    if sink.done is not None:
        done |= np.asarray(sink.done, dtype=bool).reshape(builder.layout.shape)
    for name in os.listdir(marks):  # blocks an interrupted run of this path finished
        done[tuple(int(c) for c in name.split("_"))] = True
    paths = {name: (sink.var_names[name], dims) for name, (dims, _) in layout[1].items()}
    write_blocks(builder, layout, os.fspath(sink.store), paths, done, marks)
    sink.record(np.ones(builder.layout.shape, dtype=bool))
    shutil.rmtree(marks, ignore_errors=True)
    return sink.result()


def write_blocks(
    builder: _GraphBuilder,
    layout: tuple[ResultSpec, Variables, Meta],
    store: str,
    paths: Mapping[Hashable, tuple[str, tuple[Hashable, ...]]],
    done: np.ndarray,
    marks: str,
) -> None:
    """Compute every block not ``done`` and have it written to its region of the zarr
    ``store`` by the worker that finishes it, a marker file in ``marks`` after it."""
    import dask
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    dsk, _, _ = builder.graph(layout)
    write_name = f"xpatch-write-{builder.token}"
    keys = []
    for cpos in builder.layout.chunks():
        if done[cpos]:
            continue
        key = (write_name, *cpos)
        dsk[key] = (
            _write_block,
            store,
            dict(paths),
            builder.layout.region(cpos),
            marks,
            cpos,
            (builder.block_name, *cpos),
            *builder.cut_from.get(cpos, ()),  # (see _tasks._take)
        )
        keys.append(key)
    if not keys:
        return
    graph = HighLevelGraph.from_collections(write_name, dsk, dependencies=builder.arrays)
    dask.compute(*[Delayed(k, graph, layer=write_name) for k in keys])


def _write_block(
    store: str,
    paths: Mapping[Hashable, tuple[str, tuple[Hashable, ...]]],
    region: Mapping[Hashable, slice],
    marks: str,
    cpos: tuple[int, ...],
    blocks: Mapping[Hashable, np.ndarray],
    *cut: Any,
) -> bool:
    """Write one finished block into its region of the zarr store (its own zarr chunk:
    no two writers share one), then leave a marker that it is done."""
    import os

    import zarr

    for name, data in blocks.items():
        path, dims = paths[name]  # the block's dims are the store's, in its order
        target = zarr.open_array(store, path=path, mode="r+")
        index = tuple(region.get(d, slice(None)) for d in dims)
        target[index] = data.astype(target.dtype, copy=False)
    with open(os.path.join(marks, "_".join(map(str, cpos))), "w"):
        pass
    return True

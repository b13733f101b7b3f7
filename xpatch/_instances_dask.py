"""Instance stitching on dask-backed input: a lazy graph in three stages.

As dask-image's ``label`` does, and with the same three steps as the eager path
(:mod:`xpatch._instances`):

- a *group task* per output block computes the windows whose first touched block it
  is (each window once), calling ``func`` on each patch (read lazily from the input:
  only the blocks it needs), and returns the kept labels cut per touched block;
  each cut travels alone (one small ``getitem`` task per group and block), so a block
  task receives only its own part;
- a *block task* paints its block with provisional ids and counts how objects meet;
- one *resolve task* gathers the counts of every block (a few numbers per object,
  never the labels) and gives the final numbering; a *relabel task* per block turns
  the painted block into ``1..N``.

The result's dtype is fixed when the graph is built, before ``N`` is known: the
smallest unsigned integer that holds the number of elements (an upper bound of
``N``). The graph has one slicing task per window, and a handful per block.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xpatch._apply import _call
from xpatch._instances import (
    Cores,
    Equivalence,
    Piece,
    Stats,
    keep,
    pieces_of,
    relabel,
    smallest_uint,
    stitch_chunk,
)
from xpatch._instances_agg import labels_of
from xpatch._locate import LabelCheck
from xpatch._sampling import Sampler
from xpatch._structure import source_name
from xpatch.grid import PatchGrid, Window
from xpatch.layout import ChunkLayout

Position = tuple[int, ...]


def _group_task(
    func: Callable[[Any], Any],
    windows: Sequence[Window],
    layout: ChunkLayout,
    cores: Cores,
    check: LabelCheck,
    patches: Sequence[Any],
) -> dict[Position, list[Piece]]:
    out: dict[Position, list[Piece]] = {}
    for window, patch in zip(windows, patches):
        result = _call(func, patch, window)
        if isinstance(result, xr.DataArray) and not isinstance(result.data, np.ndarray):
            result = result.compute()
        kept = keep(labels_of(result, window, check), window, cores)
        touched = list(layout.touched(window.position))
        centre = cores.centre(window)
        for cpos, piece in pieces_of(kept, window, touched, layout.edges, centre).items():
            out.setdefault(cpos, []).append(piece)
    return out


def _part(group: dict[Position, list[Piece]], cpos: Position) -> list[Piece]:
    return group.get(cpos, [])


def _block_task(
    origin: Sequence[int], shape: Sequence[int], *parts: list[Piece]
) -> tuple[np.ndarray, Stats]:
    return stitch_chunk(origin, shape, [p for part in parts for p in part])


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _resolve_task(iou: float, *stats: Stats) -> tuple[np.ndarray, np.ndarray]:
    eq = Equivalence(iou)
    for s in stats:
        eq.add(s)
    return eq.resolve()


def _relabel_task(
    painted: np.ndarray, table: tuple[np.ndarray, np.ndarray], dtype: np.dtype
) -> np.ndarray:
    keys, values = table
    return relabel(painted, keys, values).astype(dtype)


def default_chunks(obj: xr.DataArray | xr.Dataset, grid: PatchGrid) -> dict[Hashable, Any]:
    from xpatch import parallel

    return parallel.default_chunks(obj, grid)


def apply_lazy(
    obj: xr.DataArray | xr.Dataset,
    func: Callable[[Any], Any],
    grid: PatchGrid,
    *,
    iou: float,
    chunks: int | Mapping[Hashable, Any] | None,
) -> xr.DataArray:
    """The lazy stitched labels of a dask-backed ``obj`` (nothing is computed here)."""
    import dask.array as dsa
    from dask import delayed

    layout = ChunkLayout(grid, chunks if chunks is not None else default_chunks(obj, grid))
    cores = Cores(grid)
    sampler = Sampler(obj, grid)
    token = uuid.uuid4().hex[:12]
    check = LabelCheck(obj, grid)
    kept = grid.kept  # windows a mask skips are never computed: no objects there
    groups: dict[Position, list[Window]] = {}
    for i in range(len(grid)) if kept is None else np.flatnonzero(kept):
        w = grid[int(i)]
        first = tuple(int(f[p]) for f, p in zip(layout.first, w.position))
        groups.setdefault(first, []).append(w)
    fn = delayed(func, pure=True, traverse=False)
    reaching: dict[Position, list[Any]] = {c: [] for c in layout.chunks()}
    for g, windows in groups.items():
        patches = [sampler(w) for w in windows]
        key = f"xpatch-instances-group-{token}-{g}"
        task = delayed(_group_task, pure=True)(
            fn, windows, layout, cores, check, patches, dask_key_name=key
        )
        touched = {c for w in windows for c in layout.touched(w.position)}
        for cpos in sorted(touched):
            reaching[cpos].append(
                delayed(_part, pure=True)(
                    task, cpos, dask_key_name=f"xpatch-instances-part-{token}-{g}-{cpos}"
                )
            )
    painted, stats = {}, []
    for cpos in layout.chunks():
        origin = [int(e[c]) for e, c in zip(layout.edges, cpos)]
        block = delayed(_block_task, pure=True)(
            origin, layout.chunk_shape(cpos), *reaching[cpos],
            dask_key_name=f"xpatch-instances-block-{token}-{cpos}",
        )  # fmt: skip
        painted[cpos] = delayed(_first, pure=True)(block)
        stats.append(delayed(_second, pure=True)(block))
    table = delayed(_resolve_task, pure=True)(
        iou, *stats, dask_key_name=f"xpatch-instances-resolve-{token}"
    )
    dtype = smallest_uint(int(np.prod([grid.lengths[d] for d in grid.dims])))
    blocks = np.empty(layout.shape, dtype=object)
    for cpos in layout.chunks():
        out = delayed(_relabel_task, pure=True)(painted[cpos], table, dtype)
        blocks[cpos] = dsa.from_delayed(out, shape=layout.chunk_shape(cpos), dtype=dtype)
    data = dsa.block(blocks.tolist())
    dims = grid.dims
    coords = {
        k: c.variable
        for k, c in obj.coords.items()
        if set(c.dims) <= set(dims) and all(c.sizes[d] == grid.lengths[d] for d in c.dims)
    }
    return xr.DataArray(data, dims=dims, coords=coords, name=source_name(obj))

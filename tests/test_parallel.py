"""Tests of the lazy dask path of ``obj.patch.apply`` (``xpatch/parallel.py``).

What is checked, against the contract in DESIGN.md (section Scale):

- laziness: building the graph computes nothing (a scheduler that raises, as in
  flox's ``raise_if_dask_computes``); the result is dask-backed with the input's
  spatial chunks, or ``chunks``;
- the plan: each block task depends only on the patch tasks whose windows touch
  the block, each patch task only on the input blocks its window reads; one patch
  task per window; the graph grows linearly; no task holds the full array;
- every patch is computed once (plus the one dry run that learns the output);
- dask == eager to float32 rounding (hypothesis over borders, pad modes, weights,
  batching, ``on_chunk`` and irregular input chunks), for DataArrays and Datasets;
- a real ``distributed.LocalCluster`` (closures shipped to worker processes,
  errors with the window that raised them, ``to_zarr`` streaming);
- inputs opened lazily from a zarr store and a netCDF file.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading

import cloudpickle
import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from dask.core import get_dependencies
from dask.sizeof import sizeof
from hypothesis import given, settings
from hypothesis import strategies as st

import xpatch  # noqa: F401  (registers the accessor)
from xpatch import parallel

BORDERS = ("squeeze", "edge", "adaptive", "crop", "pad")
PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")
WEIGHTS = ("mean", "gaussian", "hann")


# --- helpers -----------------------------------------------------------------------
def _raise_on_compute(*args, **kwargs):
    raise RuntimeError("dask computed something while the graph was being built")


@contextlib.contextmanager
def raise_if_dask_computes():
    """Any dask compute inside the block raises (flox's idea)."""
    with dask.config.set(scheduler=_raise_on_compute):
        yield


class Counter:
    """A func that counts its calls, safely across threads."""

    def __init__(self, func=lambda p: p * 2.0 + 1.0):
        self.func = func
        self.calls = 0
        self.patches = 0  # windows seen (a batch counts its windows)
        self._lock = threading.Lock()

    def __call__(self, patch):
        with self._lock:
            self.calls += 1
            self.patches += patch.sizes.get("patch", 1)
        return self.func(patch)


class MaxResultSize(Callback):
    """Records the largest in-memory size of any task result (threaded/sync scheduler)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self._lock = threading.Lock()

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith("xpatch"):  # not the input's own tasks
            with self._lock:
                self.largest = max(self.largest, sizeof(result))


def image(shape=(48, 40), dims=("y", "x"), seed=0, dtype=np.float32, name="img"):
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 4 - 1).astype(dtype)
    coords = {d: np.arange(n, dtype=np.float64) * 0.5 + 10 for d, n in zip(dims, shape)}
    if "band" in dims:
        coords["band"] = ["red", "green", "nir"][: shape[dims.index("band")]]
    return xr.DataArray(data, dims=dims, coords=coords, name=name, attrs={"units": "K"})


def graph_of(result):
    """Tasks of a lazy result: (dict of all tasks, group keys, block keys).

    A group task computes a box of windows (the windows whose first touched output
    block is its block); a block task finishes one output block.
    """
    dsk = dict(result.data.__dask_graph__())
    group = [k for k in dsk if isinstance(k, tuple) and str(k[0]).startswith("xpatch-group-")]
    block = [k for k in dsk if isinstance(k, tuple) and str(k[0]).startswith("xpatch-block-")]
    return dsk, group, block


def windows_in(task, grid):
    """The windows a group task computes (its box of grid positions)."""
    args = list(task.args) if hasattr(task, "args") else list(task[1:])
    (ranges,) = [a for a in args if isinstance(a, tuple) and a and isinstance(a[0], range)]
    return [grid[grid.index_of(p)] for p in itertools.product(*ranges)]


def edges_of(chunks):
    return np.concatenate([[0], np.cumsum(chunks)]).astype(int)


def blocks_hit(indices, edges):
    """Block numbers holding any of ``indices`` along one axis."""
    return {int(b) for b in np.searchsorted(edges, np.asarray(indices), side="right") - 1}


def read_indices(window_slice, length, border, pad_mode):
    """Source indices a window reads along one axis (as numpy.pad would give)."""
    s = window_slice
    if s.start >= 0 and s.stop <= length:
        return np.arange(s.start, s.stop)
    if border != "pad" or (pad_mode or "constant") == "constant":
        return np.arange(max(s.start, 0), min(s.stop, length))
    before = -min(s.start, 0)
    after = max(s.stop - length, 0)
    padded = np.pad(np.arange(length), (before, after), mode=pad_mode)
    return padded[s.start + before : s.stop + before]


def assert_same(lazy, eager):
    """dask result (computed) equals the eager one: values, dims, coords, dtype, name."""
    if isinstance(lazy, xr.DataArray):
        assert lazy.dims == eager.dims
        assert lazy.dtype == eager.dtype
        assert lazy.name == eager.name
        np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-5, atol=1e-6, equal_nan=True)
        for k in eager.coords:
            assert lazy[k].dims == eager[k].dims, k
            np.testing.assert_array_equal(lazy[k].values, eager[k].values)
        assert set(lazy.coords) == set(eager.coords)
        return
    assert set(lazy.data_vars) == set(eager.data_vars)
    for k in eager.data_vars:
        assert_same(lazy[k], eager[k])


# --- laziness ------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 3])
def test_apply_on_dask_input_builds_lazily_with_input_chunks(batch_size):
    da = image((3, 48, 40), ("band", "y", "x")).chunk({"band": 1, "y": 16, "x": (10, 20, 10)})
    with raise_if_dask_computes():
        out = da.patch.apply(lambda p: p.mean("band") * 2, y=12, x=8, step=6, batch_size=batch_size)
    assert isinstance(out.data, dsa.Array)
    assert out.dims == ("y", "x")
    assert out.chunks == ((16, 16, 16), (10, 20, 10))
    assert out.dtype == np.float32


def test_apply_with_chunks_gives_those_chunks_lazily():
    da = image((50, 41)).chunk({"y": 7, "x": 9})
    with raise_if_dask_computes():
        out = da.patch.apply(lambda p: p, y=12, x=8, step=6, chunks=20)
        out2 = da.patch.apply(lambda p: p, y=12, x=8, step=6, chunks={"y": 13, "x": 17})
    assert out.chunks == ((20, 20, 10), (20, 20, 1))
    assert out2.chunks == ((13, 13, 13, 11), (17, 17, 7))
    eager = da.compute().patch.apply(lambda p: p, y=12, x=8, step=6)
    assert_same(out.compute(scheduler="sync"), eager)
    assert_same(out2.compute(scheduler="sync"), eager)


def test_apply_with_on_chunk_builds_lazily():
    da = image((40, 40)).chunk(10)

    def classes(p):
        return xr.concat([p, 1 - p, p**2], dim="class")

    with raise_if_dask_computes():
        out = da.patch.apply(
            classes, y=8, x=8, step=4, on_chunk=lambda c: c.argmax("class"), weights="hann"
        )
    assert isinstance(out.data, dsa.Array)
    assert out.dims == ("y", "x")
    assert out.chunks == ((10,) * 4, (10,) * 4)
    computed = out.compute(scheduler="sync")
    assert out.dtype == computed.dtype
    eager = da.compute().patch.apply(
        classes, y=8, x=8, step=4, on_chunk=lambda c: c.argmax("class"), weights="hann"
    )
    np.testing.assert_array_equal(computed.values, eager.values)


def test_dataset_input_builds_lazily():
    ds = xr.Dataset(
        {"a": image((32, 24)), "b": image((2, 32, 24), ("band", "y", "x"), seed=1)}
    ).chunk({"y": 8, "x": 12})
    with raise_if_dask_computes():
        out = ds.patch.apply(lambda p: p * 3, y=8, x=8, step=4)
    assert isinstance(out, xr.Dataset)
    for v in out.data_vars.values():
        assert isinstance(v.data, dsa.Array)
    assert out["a"].chunks == ((8,) * 4, (12, 12))


def test_integer_input_declares_the_computed_dtype():
    da = xr.DataArray(np.arange(32 * 32, dtype=np.int16).reshape(32, 32), dims=("y", "x"))
    out = da.chunk(16).patch.apply(lambda p: p, y=8, x=8, step=4)
    computed = out.compute(scheduler="sync")
    assert out.dtype == computed.dtype == np.float32
    assert_same(computed, da.patch.apply(lambda p: p, y=8, x=8, step=4))


# --- graph structure -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("border", "pad_mode", "chunks"),
    [
        ("squeeze", None, {"y": 16, "x": 10}),
        ("edge", None, {"y": (5, 20, 23), "x": 7}),
        ("adaptive", None, {"y": 12, "x": 40}),
        ("crop", None, {"y": 9, "x": 11}),
        ("pad", "constant", {"y": 10, "x": 6}),
        ("pad", "reflect", {"y": 10, "x": 6}),
        ("pad", "wrap", {"y": 10, "x": 6}),
    ],
)
@pytest.mark.parametrize("thin_tasks", [True, False])
def test_graph_dependencies_follow_the_geometry(border, pad_mode, chunks, thin_tasks, monkeypatch):
    # thin_tasks: cuts get tasks of their own however little they save (large blocks);
    # else (small blocks, as here) whole blocks and group results travel
    if thin_tasks:
        monkeypatch.setattr(parallel, "THIN_BYTES", 0)
    da = image((2, 48, 40), ("band", "y", "x")).chunk({"band": 1, **chunks})
    kw = {"border": border, "pad_mode": pad_mode} if pad_mode else {"border": border}
    out = da.patch.apply(lambda p: p, y=12, x=9, step=7, **kw)
    grid = da.patch.grid(y=12, x=9, step=7, **kw)
    dsk, group_keys, block_keys = graph_of(out)
    # each window in exactly one group task; a group task reads only the input blocks
    # its windows read
    input_name = da.data.name
    in_edges = {d: edges_of(c) for d, c in zip(da.dims, da.chunks)}
    windows_of = {}
    for key in group_keys:
        windows = windows_in(dsk[key], grid)
        windows_of[key] = windows
        deps = get_dependencies(dsk, key)
        # a part of a block is cut by a strip task where the block is (only it travels)
        strips = {k for k in deps if isinstance(k, tuple) and k[0].startswith("xpatch-strip")}
        deps = (deps - strips) | {dsk[k][1] for k in strips}
        # with thin tasks, the groups behind along one dim run first: the parts they cut
        # for this block are its (unused) arguments
        behind = {k for k in deps if isinstance(k, tuple) and k[0].startswith("xpatch-part")}
        assert thin_tasks or not behind
        for k in behind:
            g, target = k[1:3], k[3:5]
            assert target == key[1:] and sum(a != b for a, b in zip(g, target)) == 1, (key, k)
        deps -= behind
        inputs = {k for k in deps if isinstance(k, tuple) and k[0] == input_name}
        others = deps - inputs
        # anything else must be a constant (func, the plan), never data or other tasks
        for k in others:
            assert not isinstance(k, tuple), (key, k)
            assert not get_dependencies(dsk, k)
        expected = set()
        for window in windows:
            per_dim = []
            for d in da.dims:
                if d in grid.dims:
                    idx = read_indices(window[d], da.sizes[d], border, pad_mode)
                    per_dim.append(sorted(blocks_hit(idx, in_edges[d])))
                else:
                    per_dim.append(range(len(in_edges[d]) - 1))
            expected |= {(input_name, *b) for b in itertools.product(*per_dim)}
        extra = sorted(k[1:] for k in inputs - expected)
        missing = sorted(k[1:] for k in expected - inputs)
        assert not extra and not missing, f"{key}: extra {extra}, missing {missing}"
    indices = sorted(w.index for ws in windows_of.values() for w in ws)
    assert indices == list(range(len(grid)))
    # O(blocks): at most one group task per output block
    assert len(group_keys) <= len(block_keys)

    # each block task: only the group tasks whose windows touch the block
    out_edges = {d: edges_of(c) for d, c in zip(out.dims, out.chunks)}
    assert len(block_keys) == math.prod(len(out_edges[d]) - 1 for d in grid.dims)
    for key in block_keys:
        cpos = dict(zip(grid.dims, key[1:]))
        deps = get_dependencies(dsk, key)
        # a neighbour group's thin part is taken by a part task from what the block task
        # of the group's own block cut (where the group ran): the part stands for the group
        parts = {k for k in deps if isinstance(k, tuple) and k[0].startswith("xpatch-part")}
        for k in parts:
            assert dsk[k][1][0] == key[0]  # from another block task
        group_name = next(iter(group_keys))[0]
        deps = (deps - parts) | {(group_name, *dsk[k][1][1:]) for k in parts}
        groups = {k for k in deps if k in windows_of}
        for k in deps - groups:
            assert not isinstance(k, tuple), (key, k)  # no input block, no other block
            assert not get_dependencies(dsk, k)
        expected = set()
        for g, ws in windows_of.items():
            for w in ws:
                touches = True
                for d in grid.dims:
                    e0, e1 = out_edges[d][cpos[d]], out_edges[d][cpos[d] + 1]
                    lo, hi = max(w[d].start, 0), min(w[d].stop, da.sizes[d])
                    touches &= lo < e1 and hi > e0
                if touches:
                    expected.add(g)
        assert groups == expected, key


def test_batched_graph_has_one_task_per_group_of_windows():
    """With batches the graph is the same: a task per output block that windows start
    in (the batches are made inside it), every window in exactly one."""
    da = image((40, 40)).chunk(10)
    out = da.patch.apply(lambda b: b, y=8, x=8, step=4, batch_size=5)
    grid = da.patch.grid(y=8, x=8, step=4)
    dsk, group_keys, block_keys = graph_of(out)
    per_task = [windows_in(dsk[k], grid) for k in group_keys]
    assert len(group_keys) <= len(block_keys)
    assert sorted(w.index for ws in per_task for w in ws) == list(range(len(grid)))
    xr.testing.assert_allclose(out.compute(), da.patch.apply(lambda b: b, y=8, x=8, step=4))


def test_graph_size_grows_linearly():
    def n_tasks(ny):
        da = image((ny, 64)).chunk(16)
        out = da.patch.apply(lambda p: p, y=16, x=16, step=8)
        dsk, group_keys, block_keys = graph_of(out)
        return len(dsk), len(group_keys), len(block_keys)

    small, big = n_tasks(128), n_tasks(256)
    assert 1.9 <= big[1] / small[1] <= 2.1  # groups of patches
    assert big[2] == 2 * small[2]  # blocks
    assert 1.8 <= big[0] / small[0] <= 2.2  # all tasks


def assert_no_task_larger_than(out, da, limit):
    """No task of ``out``'s graph (beyond the input's own) pickles to ``limit`` bytes."""
    dsk, _, _ = graph_of(out)
    input_keys = set(dict(da.data.__dask_graph__()))
    for key, task in dsk.items():
        if key not in input_keys:
            assert len(cloudpickle.dumps(task)) < limit, key


def test_no_task_holds_the_full_array():
    da = image((256, 256)).chunk(64)
    out = da.patch.apply(lambda p: p * 2, y=32, x=32, step=24)
    assert_no_task_larger_than(out, da, da.nbytes / 4)
    with MaxResultSize() as cb:
        out.compute(scheduler="threads")
    assert 0 < cb.largest < da.nbytes / 4


def test_no_task_holds_full_size_two_dimensional_coordinates():
    # A satellite scene with 2-D lat/lon coordinates: the graph may carry each
    # block's slice of them, but no literal as large as the whole array.
    da = image((256, 256)).chunk(64)
    da = da.assign_coords(lat=(("y", "x"), np.random.default_rng(1).random((256, 256))))
    out = da.patch.apply(lambda p: p * 2, y=32, x=32, step=24)
    assert_no_task_larger_than(out, da, da.nbytes / 4)


# --- every patch once ---------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 4])
def test_every_patch_is_computed_once(batch_size):
    # output chunks (12) smaller than the overlap of neighbouring patches (32 - 8 = 24)
    da = image((96, 60)).chunk(12)
    grid = da.patch.grid(y=32, x=20, step=8)
    func = Counter()
    out = da.patch.apply(func, y=32, x=20, step=8, batch_size=batch_size)
    assert func.calls == 1  # the dry run
    out.compute(scheduler="threads")
    assert func.patches == len(grid) + 1  # every window once, and the dry run


def test_one_block_computes_only_the_patches_touching_it():
    da = image((80, 80)).chunk(20)
    grid = da.patch.grid(y=16, x=16, step=8)
    func = Counter()
    out = da.patch.apply(func, y=16, x=16, step=8)
    func.calls = 0
    out.isel(y=slice(0, 20), x=slice(20, 40)).compute(scheduler="threads")
    # the windows computed are those of the groups that reach the block: windows that
    # start in it, or in the block before it along x (which reach into it)
    groups = [w for w in grid if w["y"].start < 20 and w["x"].start < 40]
    touching = [w for w in groups if w["x"].stop > 20]
    assert len(touching) <= func.calls == len(groups) < len(grid)


# --- dask == eager -----------------------------------------------------------------------
@st.composite
def lazy_cases(draw):
    ndim = draw(st.sampled_from([2, 3]))
    spatial = ("z", "y", "x")[-ndim:]
    border = draw(st.sampled_from(BORDERS))
    pad_mode = draw(st.sampled_from(PAD_MODES)) if border == "pad" else None
    lengths, size, step, chunks, out_chunks = {}, {}, {}, {}, {}
    for d in spatial:
        L = draw(st.integers(3, 18 if ndim == 2 else 9))
        P = draw(st.integers(1, L + 3 if border == "pad" else L))
        S = draw(st.integers(max(1, P // 3), P))
        lengths[d], size[d], step[d] = L, P, S
        # irregular input chunks, some smaller than the patch
        cuts = draw(st.lists(st.integers(1, L - 1), max_size=3, unique=True))
        chunks[d] = tuple(int(n) for n in np.diff([0, *sorted(cuts), L]))
        out_chunks[d] = draw(st.integers(min(P, L), L + 2))
    band = ndim == 2 and draw(st.booleans())
    dims = ("band", *spatial) if band else spatial
    shape = tuple(2 if d == "band" else lengths[d] for d in dims)
    return {
        "dims": dims,
        "shape": shape,
        "spatial": spatial,
        "size": size,
        "step": step,
        "border": border,
        "pad_mode": pad_mode,
        "chunks": chunks,
        "out_chunks": out_chunks,
        "weights": draw(st.sampled_from(WEIGHTS)),
        "batch_size": draw(st.sampled_from([None, 3])),
        "on_chunk": draw(st.booleans()),
        "explicit_chunks": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
    }


@settings(max_examples=25, deadline=None)
@given(case=lazy_cases())
def test_dask_equals_eager(case):
    da = image(case["shape"], case["dims"], dtype=case["dtype"])
    spatial = case["spatial"]

    def func(p):  # non-local within the patch, so a mis-assembled patch shows
        centred = p - p.mean(spatial) + p**2
        if case["on_chunk"]:
            return xr.concat([centred, 1 - centred, 0.5 * p], dim="class")
        return centred

    kw = {
        "step": case["step"],
        "border": case["border"],
        "weights": case["weights"],
        "batch_size": case["batch_size"],
        **case["size"],
    }
    if case["pad_mode"] is not None:
        kw["pad_mode"] = case["pad_mode"]
    if case["on_chunk"]:
        kw["on_chunk"] = lambda c: c.fillna(0).argmax("class")
    if case["explicit_chunks"]:
        kw["chunks"] = case["out_chunks"]
    eager = da.patch.apply(func, **kw)
    lazy_input = da.chunk(case["chunks"])
    with raise_if_dask_computes():
        lazy = lazy_input.patch.apply(func, **kw)
    assert isinstance(lazy.data, dsa.Array)
    expected_chunks = {
        d: tuple(np.diff(np.append(np.arange(0, da.sizes[d], case["out_chunks"][d]), da.sizes[d])))
        if case["explicit_chunks"]
        else case["chunks"][d]
        for d in spatial
    }
    for d in spatial:
        assert lazy.chunksizes[d] == expected_chunks[d], d
    computed = lazy.compute(scheduler="sync")
    assert lazy.dtype == computed.dtype
    assert_same(computed, eager)


def test_dask_equals_eager_threaded_with_custom_weight_array():
    da = image((2, 40, 36), ("band", "y", "x")).chunk({"y": 9, "x": 13})
    w = np.random.default_rng(3).random((10, 12)) + 0.1
    kw = {"y": 10, "x": 12, "step": 5, "weights": w}
    eager = da.compute().patch.apply(lambda p: p.sum("band"), **kw)
    lazy = da.patch.apply(lambda p: p.sum("band"), **kw)
    assert_same(lazy.compute(scheduler="threads"), eager)


def _stack_bare(p):
    return np.stack([p.values, -p.values])


@pytest.mark.parametrize(
    ("func", "kw", "dtype"),
    [
        (lambda p: p, {"border": "crop", "step": 8, "fill_value": -1.0}, np.float64),
        (lambda p: p, {"step": 4}, np.float16),
        (_stack_bare, {"step": 4, "output_dims": ("c", "y", "x")}, np.float32),
        (lambda b: b.values * 2, {"step": 4, "batch_size": 3}, np.float32),
    ],
    ids=["crop-fill_value", "float16", "bare-array-output_dims", "bare-array-batched"],
)
def test_dask_equals_eager_result_variants(func, kw, dtype):
    da = image((30, 26), dtype=dtype)
    eager = da.patch.apply(func, y=8, x=8, **kw)
    lazy = da.chunk(8).patch.apply(func, y=8, x=8, **kw)
    assert lazy.dtype == eager.dtype
    assert_same(lazy.compute(scheduler="sync"), eager)


# --- Dataset -------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 2])
def test_dataset_dask_equals_eager(batch_size):
    ds = xr.Dataset(
        {
            "a": image((30, 26)),
            "b": image((2, 30, 26), ("band", "y", "x"), seed=1, dtype=np.float64),
            "meta": ("band", np.array([1.0, 2.0])),  # no spatial dim: not in the patch
        },
        attrs={"title": "scene"},
    )

    def func(p):
        assert "meta" not in p.data_vars
        return xr.Dataset({"a2": p["a"] * 2, "ab": p["b"] * p["a"]})

    kw = {"y": 10, "x": 8, "step": 6, "border": "pad", "pad_mode": "reflect"}
    eager = ds.patch.apply(func, batch_size=batch_size, **kw)
    lazy_input = ds.chunk({"y": 7, "x": 13})
    with raise_if_dask_computes():
        lazy = lazy_input.patch.apply(func, batch_size=batch_size, **kw)
    assert all(isinstance(v.data, dsa.Array) for v in lazy.data_vars.values())
    assert lazy["ab"].chunksizes["y"] == (7, 7, 7, 7, 2)
    assert_same(lazy.compute(scheduler="threads"), eager)


def test_mixed_dataset_takes_the_chunks_of_its_dask_variables():
    ds = xr.Dataset({"a": image((30, 26)), "b": image((30, 26), seed=1)})
    mixed = ds.assign(b=ds["b"].chunk({"y": 7, "x": 13}))  # "a" stays numpy
    assert dict(mixed.chunksizes) == {"y": (7, 7, 7, 7, 2), "x": (13, 13)}
    kw = {"y": 10, "x": 8, "step": 6}
    lazy = mixed.patch.apply(lambda p: p["a"] + p["b"], **kw)
    assert isinstance(lazy.data, dsa.Array)
    assert lazy.chunksizes == mixed.chunksizes
    assert_same(lazy.compute(scheduler="sync"), ds.patch.apply(lambda p: p["a"] + p["b"], **kw))


def test_dataset_func_returning_dataarray():
    ds = xr.Dataset({"a": image((24, 24)), "b": image((24, 24), seed=2)}).chunk(8)
    kw = {"y": 8, "x": 8, "step": 4}
    eager = ds.compute().patch.apply(lambda p: p["a"] - p["b"], **kw)
    lazy = ds.patch.apply(lambda p: p["a"] - p["b"], **kw)
    assert isinstance(lazy, xr.DataArray)
    assert_same(lazy.compute(scheduler="sync"), eager)


# --- errors ----------------------------------------------------------------------------------
def test_error_in_func_names_its_window_threaded():
    da = image((40, 40)).chunk(10)
    grid = da.patch.grid(y=10, x=10, step=5)
    bad = grid[7]

    def func(p):
        if float(p["y"][0]) == float(da["y"][bad["y"].start]) and float(p["x"][0]) == float(
            da["x"][bad["x"].start]
        ):
            raise KeyError("model failed")
        return p

    out = da.patch.apply(func, y=10, x=10, step=5)
    with pytest.raises(KeyError, match="model failed") as info:
        out.compute(scheduler="threads")
    notes = getattr(info.value, "__notes__", [])
    assert any(f"raised by func on {bad!r}" in n for n in notes), notes


def test_error_in_the_dry_run_names_func():
    da = image((16, 16)).chunk(8)

    def func(p):
        raise ZeroDivisionError("bad model")

    with pytest.raises(ZeroDivisionError, match="bad model") as info:
        da.patch.apply(func, y=8, x=8)
    notes = getattr(info.value, "__notes__", [])
    assert any("raised by func on <Window" in n for n in notes), notes


# --- zarr and netCDF sources -------------------------------------------------------------------
def test_input_from_zarr_store(tmp_path):
    da = image((2, 50, 44), ("band", "y", "x"))
    path = tmp_path / "in.zarr"
    da.chunk({"band": 1, "y": 16, "x": 16}).to_zarr(path)
    src = xr.open_dataarray(path, engine="zarr", chunks={})
    assert isinstance(src.data, dsa.Array)
    kw = {"y": 12, "x": 12, "step": 8, "border": "edge"}
    with raise_if_dask_computes():
        lazy = src.patch.apply(lambda p: p.mean("band"), **kw)
    assert lazy.chunks == ((16, 16, 16, 2), (16, 16, 12))
    assert_same(lazy.compute(scheduler="threads"), da.patch.apply(lambda p: p.mean("band"), **kw))


def netcdf_engine():
    for module, engine in (("h5py", "h5netcdf"), ("netCDF4", "netcdf4")):
        with contextlib.suppress(ImportError):
            __import__(module)
            return engine
    pytest.skip("needs h5py (h5netcdf) or netCDF4")


def test_input_from_netcdf_file(tmp_path):
    da = image((45, 38))
    path = tmp_path / "in.nc"
    engine = netcdf_engine()
    da.to_netcdf(path, engine=engine)
    with xr.open_dataarray(path, engine=engine, chunks={"y": 20, "x": 15}) as src:
        assert isinstance(src.data, dsa.Array)
        kw = {"y": 10, "x": 10, "step": 7, "border": "pad", "pad_mode": "symmetric"}
        with raise_if_dask_computes():
            lazy = src.patch.apply(lambda p: p * p, **kw)
        assert lazy.chunks == ((20, 20, 5), (15, 15, 8))
        assert_same(lazy.compute(scheduler="threads"), da.patch.apply(lambda p: p * p, **kw))


def test_to_zarr_streams_blocks(tmp_path):
    da = image((128, 128)).chunk(32)
    lazy = da.patch.apply(lambda p: p + 1, y=24, x=24, step=16)
    with MaxResultSize() as cb:
        lazy.to_zarr(tmp_path / "out.zarr")
    assert cb.largest < da.nbytes / 4
    back = xr.open_dataarray(tmp_path / "out.zarr", engine="zarr", chunks={})
    assert_same(back.compute(), da.compute().patch.apply(lambda p: p + 1, y=24, x=24, step=16))


# --- a real distributed cluster ------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as c,
    ):
        c.run(lambda: __import__("xpatch"))  # warm the workers up once
        yield c


def test_cluster_runs_a_model_closure(client):
    class Model:  # defined here, so workers get it by value
        def __init__(self, n_in, n_out, seed):
            self.weights = np.random.default_rng(seed).random((n_out, n_in))
            self.bias = np.linspace(-1, 1, n_out)

        def __call__(self, patch):
            w = xr.DataArray(self.weights, dims=("class", "band"))
            logits = xr.dot(w, patch, dim="band") + xr.DataArray(self.bias, dims="class")
            return logits.transpose(..., "class", "y", "x")

    model = Model(3, 4, seed=5)
    da = image((3, 40, 40), ("band", "y", "x"))
    kw = {"y": 16, "x": 16, "step": 12, "weights": "gaussian"}
    eager = da.patch.apply(model, **kw)
    lazy = da.chunk({"y": 20, "x": 15}).patch.apply(model, **kw)
    result = client.compute(lazy).result()
    assert_same(result, eager)
    # and batched, with on_chunk
    on_chunk = lambda c: c.argmax("class")  # noqa: E731
    eager = da.patch.apply(model, on_chunk=on_chunk, **kw)
    lazy = da.chunk({"y": 20, "x": 15}).patch.apply(model, batch_size=4, on_chunk=on_chunk, **kw)
    np.testing.assert_array_equal(client.compute(lazy).result().values, eager.values)


def test_cluster_error_names_its_window(client):
    da = image((32, 32))
    grid = da.patch.grid(y=8, x=8, step=8)
    bad = grid[5]
    y0, x0 = float(da["y"][bad["y"].start]), float(da["x"][bad["x"].start])

    def func(p):
        if float(p["y"][0]) == y0 and float(p["x"][0]) == x0:
            raise ValueError("the model blew up")
        return p

    lazy = da.chunk(16).patch.apply(func, y=8, x=8, step=8)
    with pytest.raises(ValueError, match="the model blew up") as info:
        client.compute(lazy).result()
    notes = getattr(info.value, "__notes__", [])
    assert any(f"raised by func on {bad!r}" in n for n in notes), notes


def test_cluster_to_zarr(client, tmp_path):
    da = image((2, 60, 60), ("band", "y", "x"))
    kw = {"y": 16, "x": 16, "step": 10, "border": "crop"}
    lazy = da.chunk({"y": 20, "x": 30}).patch.apply(lambda p: p.max("band"), **kw)
    path = tmp_path / "out.zarr"
    delayed = lazy.to_dataset(name="pred").to_zarr(path, compute=False)
    client.compute(delayed).result()
    back = xr.open_zarr(path)["pred"]
    assert back.chunks == ((20, 20, 20), (30, 30))
    assert_same(back.compute(), da.patch.apply(lambda p: p.max("band"), **kw).rename("pred"))


# --- worker memory: a group task holds what its windows reach --------------------------
def _eight_classes(p):
    return np.stack([p.values * (k + 1) for k in range(8)]).astype("float32")


def test_a_group_task_allocates_only_the_boxes_its_windows_reach(monkeypatch):
    # windows starting in block (0, 0) (starts 0, 24, 48 of size 32) reach 16 into the
    # blocks right of and below it: the task must not hold those blocks whole (8 classes
    # x 64 x 64 float32 = 128 KiB each), only their covered margins
    from xpatch._accumulate import Accumulator

    da = image((128, 128)).chunk(64)
    out = da.patch.apply(_eight_classes, y=32, x=32, step=24, output_dims=("class", "y", "x")).data
    dsk = dict(out.__dask_graph__())
    (group,) = [
        k for k in dsk if isinstance(k, tuple) and "xpatch-group" in k[0] and k[1:] == (0, 0)
    ]
    inputs = {k: dask.get(dsk, k) for k in get_dependencies(dsk, group)}
    task = dsk[group]
    args = [
        inputs.get(a, dsk.get(a, a)) if isinstance(a, (str, tuple)) and a in dsk else a
        for a in task[1:]
    ]
    allocated = []
    new = Accumulator.new

    def recording(self, cpos):
        buffers = new(self, cpos)
        allocated.extend((cpos, b.shape) for b in buffers.values())
        return buffers

    monkeypatch.setattr(Accumulator, "new", recording)
    partials = task[0](*args)
    boxes = {
        c: part[0] for c, part in partials.items() if isinstance(c, tuple) and c != ("dropped",)
    }
    assert boxes == {
        (0, 0): (slice(0, 64), slice(0, 64)),
        (0, 1): (slice(0, 64), slice(0, 16)),
        (1, 0): (slice(0, 16), slice(0, 64)),
        (1, 1): (slice(0, 16), slice(0, 16)),
    }
    assert sorted(allocated) == [
        ((0, 0), (8, 64, 64)),
        ((0, 1), (8, 64, 16)),
        ((1, 0), (8, 16, 64)),
        ((1, 1), (8, 16, 16)),
    ]


def test_a_groups_sums_feed_only_its_own_block_which_cuts_the_parts(monkeypatch):
    monkeypatch.setattr(parallel, "THIN_BYTES", 0)  # parts as tasks, as for large blocks
    # the parts of a group's sums that the blocks ahead need are cut by the block task of
    # the group's own block: the group's sums have that one task as their only user, so
    # they are released as soon as it runs (cut from the group, they waited for the part
    # tasks, which dask orders next to the blocks ahead: a slab of blocks later)
    da = image((192, 192)).chunk(64)
    out = da.patch.apply(lambda p: p * 2, y=32, x=32, step=24).data
    dsk = dict(out.__dask_graph__())
    parts = [k for k in dsk if isinstance(k, tuple) and "xpatch-part" in k[0]]
    groups = [k for k in dsk if isinstance(k, tuple) and "xpatch-group" in k[0]]
    assert parts and groups
    for part in parts:
        source = dsk[part][1]
        assert "xpatch-block" in source[0] and source[1:] == part[1:3], part
    users: dict = {g: set() for g in groups}
    for key in dsk:
        for dep in get_dependencies(dsk, key):
            if dep in users:
                users[dep].add(key)
    for g, used_by in users.items():
        assert {u[0].split("-")[1] for u in used_by} == {"block"}, (g, used_by)
        assert [u[1:] for u in used_by] == [g[1:]], (g, used_by)


def _most_held_in_dask_order(dsk, kind: str = "group") -> int:
    """Results of ``xpatch-<kind>`` tasks held at once when the tasks run one by one in
    ``dask.order``'s order (the priorities a distributed scheduler hands to its workers)."""
    from dask.order import order

    priority = order(dsk)
    users: dict = {k: set() for k in dsk}
    for key in dsk:
        for dep in get_dependencies(dsk, key):
            users[dep].add(key)
    done, held, most = set(), set(), 0
    for key in sorted(dsk, key=priority.get):
        done.add(key)
        held.add(key)
        for dep in get_dependencies(dsk, key):
            if users[dep] <= done:
                held.discard(dep)
        most = max(most, sum(1 for h in held if isinstance(h, tuple) and f"xpatch-{kind}-" in h[0]))
    return most


def test_in_dask_order_only_a_few_group_results_are_held(monkeypatch):
    monkeypatch.setattr(parallel, "THIN_BYTES", 0)  # parts as tasks, as for large blocks
    # 6^3 blocks, the geometry of a 768^3 volume in blocks of 128 with patch 64 step 48:
    # with the parts cut from the groups, dask.order held 46 groups' sums at once (an
    # 8-class 2-worker run at 768^3 grew a worker past 11 GB and was killed)
    arr = dsa.zeros((96, 96, 96), chunks=16, dtype="float32")
    da = xr.DataArray(arr, dims=("z", "y", "x"))
    out = da.patch.apply(lambda p: p * 2, z=8, y=8, x=8, step=6, weights="gaussian")
    dsk = dict(out.data.__dask_graph__())
    assert _most_held_in_dask_order(dsk) <= 2
    # and a finished block is not held until the blocks ahead take their parts from it
    # (82 of 216 were, when only those parts depended on the block's cuts): the block's
    # output depends on them, so they are taken first
    assert _most_held_in_dask_order(dsk, "block") <= 6


class _LiveGroups(Callback):
    """The most group results held at once while dask computes."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        held = sum(1 for k in state["cache"] if isinstance(k, tuple) and "xpatch-group" in k[0])
        self.peak = max(self.peak, held)


def test_group_results_are_released_as_the_groups_run(monkeypatch):
    monkeypatch.setattr(parallel, "THIN_BYTES", 0)  # parts as tasks, as for large blocks
    # 6^3 blocks: a group's partial sums (its block and the margins of the blocks ahead)
    # are released once its own block is finished; groups run in a wavefront (each after
    # the groups behind it), so only a few are held at once, whatever the volume (they
    # were held until the farthest neighbour's block ran: 45 of 216 here)
    arr = dsa.random.RandomState(0).random_sample((96, 96, 96), chunks=16).astype("float32")
    da = xr.DataArray(arr, dims=("z", "y", "x")).persist(scheduler="sync")
    out = da.patch.apply(lambda p: p * 2, z=8, y=8, x=8, step=6, weights="gaussian")
    with _LiveGroups() as live:
        got = out.compute(scheduler="sync")
    assert live.peak <= 3, live.peak
    expected = da.compute().patch.apply(lambda p: p * 2, z=8, y=8, x=8, step=6, weights="gaussian")
    xr.testing.assert_allclose(got, expected)


def test_small_blocks_make_no_thin_cut_tasks():
    # cutting a strip of a 48 KiB block, or a part of a small group's sums, saves less
    # than scheduling the cut costs: whole blocks travel, and the graph stays small
    da = image((192, 192)).chunk(64)
    dsk = dict(da.patch.apply(lambda p: p * 2, y=32, x=32, step=24).data.__dask_graph__())
    names = {k[0].split("-")[1] for k in dsk if isinstance(k, tuple)}
    assert "strip" not in names and "part" not in names, names


def test_large_blocks_cut_thin_strips_and_parts():
    # 8 MiB input blocks and 8-class output blocks: only the thin parts travel
    arr = dsa.zeros((256, 256, 256), chunks=128, dtype="float32")
    da = xr.DataArray(arr, dims=("z", "y", "x"))
    out = da.patch.apply(
        _eight_classes, z=64, y=64, x=64, step=48, output_dims=("class", "z", "y", "x")
    )
    dsk = dict(out.data.__dask_graph__())
    names = {k[0].split("-")[1] for k in dsk if isinstance(k, tuple)}
    assert {"strip", "part"} <= names, names

"""Tests of xpatch.grid: pure geometry (per-axis starts, PatchGrid, Window).

This file imports no xarray: the grid is numpy-only by contract.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import math
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    BORDERS,
    PAD_MODES,
    GridGeometry,
    axis_geometry,
    borders,
    grid_geometry,
    reference_starts,
)

from xpatch.errors import DimensionError, GridError, PatchError
from xpatch.grid import PatchGrid, Window, axis_starts

PACKAGE_DIR = Path(importlib.util.find_spec("xpatch").submodule_search_locations[0])
FORBIDDEN = {"xarray", "dask", "scipy", "pandas", "zarr", "torch"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def boxes(grid: PatchGrid) -> list[tuple[tuple[int, int], ...]]:
    """Each window as ((start, stop), ...) per dim, in iteration order."""
    return [tuple((s.start, s.stop) for s in w.slices) for w in grid]


def strictly_contained(bxs: Sequence[tuple[tuple[int, int], ...]]) -> np.ndarray:
    """Mask of boxes that lie wholly inside another, different box."""
    arr = np.asarray(bxs, dtype=np.int64).reshape(len(bxs), -1, 2)
    lo, hi = arr[..., 0], arr[..., 1]
    out = np.zeros(len(arr), dtype=bool)
    for start in range(0, len(arr), 256):
        lo_i, hi_i = lo[start : start + 256, None], hi[start : start + 256, None]
        inside = np.all((lo[None] <= lo_i) & (hi_i <= hi[None]), axis=-1)
        same = np.all((lo[None] == lo_i) & (hi_i == hi[None]), axis=-1)
        out[start : start + 256] = np.any(inside & ~same, axis=1)
    return out


def brute_force_count(grid: PatchGrid) -> np.ndarray:
    """Mark every window (clipped to the array) on an N-D counter."""
    shape = tuple(grid.lengths[d] for d in grid.dims)
    count = np.zeros(shape, dtype=np.int64)
    for w in grid:
        region = tuple(
            slice(max(0, s.start), min(length, s.stop)) for s, length in zip(w.slices, shape)
        )
        count[region] += 1
    return count


def patchly_boxes(geom: GridGeometry, border: str) -> list[tuple[tuple[int, int], ...]]:
    """Patchly 0.0.19's windows for the same geometry, in its order."""
    sampler_mod = pytest.importorskip("patchly.sampler")
    mode = {
        "squeeze": sampler_mod.SamplingMode.SAMPLE_SQUEEZE,
        "edge": sampler_mod.SamplingMode.SAMPLE_EDGE,
        "adaptive": sampler_mod.SamplingMode.SAMPLE_ADAPTIVE,
        "crop": sampler_mod.SamplingMode.SAMPLE_CROP,
    }[border]
    dims = geom.dims
    with warnings.catch_warnings():
        # Patchly divides by (n - 1) when an axis has a single patch.
        warnings.simplefilter("ignore", RuntimeWarning)
        sampler = sampler_mod.GridSampler(
            None,
            tuple(geom.shape[d] for d in dims),
            tuple(geom.size[d] for d in dims),
            tuple(geom.step[d] for d in dims),
            mode=mode,
        )
        return [
            tuple((int(a), int(b)) for a, b in np.asarray(sampler.get_bbox(i)).reshape(-1, 2))
            for i in range(len(sampler))
        ]


def names(*tokens: object) -> str:
    """A regex matching a message that contains every token (any order)."""
    parts = []
    for t in tokens:
        text = re.escape(str(t))
        # word boundaries where the token starts/ends with a word character
        left = r"(?<![\w.])" if re.match(r"[\w-]", str(t)) else ""
        right = r"(?!\w)" if re.search(r"\w$", str(t)) else ""
        parts.append(f"(?=.*{left}{text}{right})")
    return "(?s)^" + "".join(parts)


# --------------------------------------------------------------------------
# numpy only
# --------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add("xpatch." + (node.module or ""))
    return found


def test_grid_module_closure_imports_numpy_only():
    """grid.py and every xpatch module it (transitively) imports stay numpy-only."""
    todo, seen = ["xpatch.grid"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = PACKAGE_DIR / (module.split(".", 1)[1].replace(".", "/") + ".py")
        assert path.exists(), module
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{module} imports {name}"
            if top == "xpatch" and name != "xpatch":
                todo.append(name)
            assert name != "xpatch", f"{module} imports the package (its __init__ needs xarray)"
    assert {"xpatch.grid", "xpatch._validate", "xpatch._types", "xpatch.errors"} <= seen


def test_grid_module_loads_without_xarray():
    """Load xpatch.grid under a bare stand-in package: no xarray, dask or scipy."""
    script = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("xpatch")
        pkg.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["xpatch"] = pkg
        import xpatch.grid
        shape, size, step = {{"y": 100, "x": 7}}, {{"y": 30, "x": 7}}, {{"y": 20, "x": 7}}
        grid = xpatch.grid.PatchGrid(shape, size, step=step)
        assert grid.starts["y"].tolist() == [0, 18, 36, 54, 70], grid.starts
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(FORBIDDEN)!r})
        assert not bad, bad
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# exact examples from DESIGN.md
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "size", "step", "border", "starts", "sizes"),
    [
        (100, 30, 20, "squeeze", [0, 18, 36, 54, 70], [30] * 5),
        (103, 32, 16, "squeeze", [0, 15, 30, 45, 60, 71], [32] * 6),
        (90, 30, 20, "squeeze", [0, 20, 40, 60], [30] * 4),  # exact fit: no squeeze
        (30, 30, 20, "squeeze", [0], [30]),
        (100, 30, 20, "edge", [0, 20, 40, 60, 70], [30] * 5),
        (90, 30, 20, "edge", [0, 20, 40, 60], [30] * 4),  # kS == L - P: no extra patch
        (100, 30, 20, "adaptive", [0, 20, 40, 60, 80], [30, 30, 30, 30, 20]),
        (7, 7, 1, "adaptive", [0], [7]),  # Patchly gives 7 nested patches
        (10, 4, 3, "adaptive", [0, 3, 6], [4, 4, 4]),  # Patchly adds [9, 10)
        (11, 4, 3, "adaptive", [0, 3, 6, 9], [4, 4, 4, 2]),
        (100, 30, 20, "crop", [0, 20, 40, 60], [30] * 4),
        # pad: n = ceil((L-P)/S) + 1, padding floor(pad/2) before, the rest after
        (100, 30, 20, "pad", [-5, 15, 35, 55, 75], [30] * 5),
        (10, 4, 3, "pad", [0, 3, 6], [4] * 3),  # pad = 0
        (10, 4, 4, "pad", [-1, 3, 7], [4] * 3),  # pad = 2: 1 before, 1 after
        (11, 4, 4, "pad", [0, 4, 8], [4] * 3),  # pad = 1: 0 before, 1 after
        (5, 5, 2, "pad", [0], [5]),  # P == L
        (5, 8, 3, "pad", [-1], [8]),  # P > L: one patch, 3 of padding
        (5, 9, 9, "pad", [-2], [9]),
        (1, 1, 1, "pad", [0], [1]),
    ],
)
def test_design_examples(length, size, step, border, starts, sizes):
    got_starts, got_sizes = axis_starts(length, size, step, border)
    assert got_starts.tolist() == starts
    assert got_sizes.tolist() == sizes
    grid = PatchGrid({"x": length}, {"x": size}, step=step, border=border)
    assert grid.starts["x"].tolist() == starts
    assert grid.sizes["x"].tolist() == sizes
    assert [(w["x"].start, w["x"].stop) for w in grid] == [
        (a, a + b) for a, b in zip(starts, sizes)
    ]


def test_crop_leaves_tail_uncovered():
    grid = PatchGrid({"x": 100}, {"x": 30}, step=20, border="crop")
    coverage = grid.coverage()["x"]
    assert np.all(coverage[:90] > 0)
    assert np.all(coverage[90:] == 0)


def test_docstring_grid_example():
    grid = PatchGrid({"y": 100, "x": 7}, {"y": 30, "x": 7}, step={"y": 20, "x": 7})
    assert len(grid) == 5
    assert grid.shape == {"y": 5, "x": 1}
    assert dict(grid[1]) == {"y": slice(18, 48), "x": slice(0, 7)}


def test_pad_width_and_default_pad_mode():
    grid = PatchGrid({"y": 10, "x": 100}, {"y": 4, "x": 30}, step={"y": 4, "x": 20}, border="pad")
    assert grid.pad_mode == "constant"
    assert grid.pad_width == {"y": (1, 1), "x": (5, 5)}
    assert PatchGrid({"x": 11}, {"x": 4}, border="pad").pad_width == {"x": (0, 1)}
    assert PatchGrid({"x": 100}, {"x": 30}, step=20).pad_width == {"x": (0, 0)}


@pytest.mark.parametrize("mode", PAD_MODES)
def test_pad_modes_accepted(mode):
    grid = PatchGrid({"x": 10}, {"x": 4}, border="pad", pad_mode=mode)
    assert grid.pad_mode == mode
    assert f"pad_mode={mode!r}" in repr(grid)


# --------------------------------------------------------------------------
# per-axis plans: the DESIGN.md formulas, and Patchly as an oracle
# --------------------------------------------------------------------------
@given(border=borders, data=st.data())
def test_axis_starts_match_design_formulas(border, data):
    length, size, step = data.draw(axis_geometry(border, max_length=200))
    starts, sizes = axis_starts(length, size, step, border)
    assert starts.dtype.kind == "i" and sizes.dtype.kind == "i"
    assert (starts.tolist(), sizes.tolist()) == reference_starts(length, size, step, border)


@pytest.mark.parametrize("border", ["squeeze", "edge", "crop"])
@given(data=st.data())
def test_same_windows_as_patchly(border, data):
    geom = data.draw(grid_geometry(border=border))
    assert boxes(geom.grid()) == patchly_boxes(geom, border)


@pytest.mark.parametrize("border", ["squeeze", "edge", "crop", "adaptive"])
@given(data=st.data())
def test_long_axis_matches_patchly(border, data):
    length, size, step = data.draw(axis_geometry(border, max_length=400))
    geom = GridGeometry({"x": length}, {"x": size}, {"x": step}, border)
    reference = patchly_boxes(geom, border)
    if border == "adaptive":
        reference = [b for b, drop in zip(reference, strictly_contained(reference)) if not drop]
    assert boxes(geom.grid()) == reference


@given(geom=grid_geometry(border="adaptive"))
def test_adaptive_is_patchly_less_nested_windows(geom):
    reference = patchly_boxes(geom, "adaptive")
    nested = strictly_contained(reference)
    expected = [b for b, drop in zip(reference, nested) if not drop]
    got = boxes(geom.grid())
    assert set(got) == set(expected)
    assert got == expected  # same order: Patchly's, filtered


# --------------------------------------------------------------------------
# invariants
# --------------------------------------------------------------------------
@given(geom=grid_geometry())
def test_coverage_matches_brute_force(geom):
    grid = geom.grid()
    coverage = grid.coverage()
    assert list(coverage) == list(geom.dims)
    expected = np.ones((), dtype=np.int64)
    for d in grid.dims:
        assert coverage[d].shape == (geom.shape[d],)
        expected = np.multiply.outer(expected, coverage[d])
    np.testing.assert_array_equal(brute_force_count(grid), expected)


@given(geom=grid_geometry(border=st.sampled_from(["squeeze", "edge", "adaptive", "pad"])))
def test_every_element_covered(geom):
    grid = geom.grid()
    for d, cov in grid.coverage().items():
        assert np.all(cov > 0), d
    assert brute_force_count(grid).min() > 0


@given(geom=grid_geometry(border="crop"))
def test_crop_covers_exactly_the_whole_steps(geom):
    grid = geom.grid()
    inside = []
    for d in grid.dims:
        length, size, step = geom.axis(d)
        end = (length - size) // step * step + size
        cov = grid.coverage()[d]
        assert np.all(cov[:end] > 0) and np.all(cov[end:] == 0), d
        assert grid.starts[d].tolist() == list(range(0, end - size + 1, step))
        inside.append(slice(0, end))
    count = brute_force_count(grid)
    covered = np.zeros(count.shape, dtype=bool)
    covered[tuple(inside)] = True
    np.testing.assert_array_equal(count > 0, covered)


@given(geom=grid_geometry(max_length=200, max_elements=40_000))
def test_starts_and_sizes(geom):
    grid = geom.grid()
    for d in grid.dims:
        length, size, step = geom.axis(d)
        starts, sizes = grid.starts[d], grid.sizes[d]
        assert len(starts) == len(sizes) == grid.shape[d] >= 1
        assert np.all(np.diff(starts) > 0), "starts strictly increasing"
        assert np.all(np.diff(starts) <= step), "no gap larger than the step"
        stops = starts + sizes
        assert np.all(np.diff(stops) > 0), "stops strictly increasing"
        if geom.border == "adaptive":
            assert np.all(sizes[:-1] == size)
            assert 1 <= sizes[-1] <= size
            assert stops[-1] == length
        else:
            assert np.all(sizes == size), "every patch has the full size"
        if geom.border in ("squeeze", "edge"):
            assert starts[0] == 0 and stops[-1] == length
        if geom.border in ("squeeze", "edge", "adaptive", "crop"):
            assert starts[0] == 0 and stops[-1] <= length


@given(geom=grid_geometry(border="pad", max_length=200, max_elements=40_000, pad_mode=True))
def test_pad_invariants(geom):
    grid = geom.grid()
    assert grid.pad_mode == (geom.pad_mode or "constant")
    for d in grid.dims:
        length, size, step = geom.axis(d)
        n = 1 if size >= length else math.ceil((length - size) / step) + 1
        pad = (n - 1) * step + size - length
        starts, sizes = grid.starts[d], grid.sizes[d]
        assert len(starts) == n
        assert starts[0] == -(pad // 2)
        assert np.all(sizes == size)
        np.testing.assert_array_equal(np.diff(starts), step)
        assert starts[-1] + size - length == pad - pad // 2
        assert grid.pad_width[d] == (pad // 2, pad - pad // 2)
        # every window intersects the array
        assert np.all(starts < length) and np.all(starts + size > 0)


@given(geom=grid_geometry(border="adaptive"))
def test_no_adaptive_window_inside_another(geom):
    grid = geom.grid()
    assert not strictly_contained(boxes(grid)).any()
    assert len(set(boxes(grid))) == len(grid)


# --------------------------------------------------------------------------
# the Sequence protocol
# --------------------------------------------------------------------------
@given(geom=grid_geometry())
def test_sequence_protocol(geom):
    grid = geom.grid()
    windows = list(grid)
    n = len(grid)
    assert n == math.prod(grid.shape.values()) == len(windows)
    assert isinstance(grid, Sequence)
    for i, w in enumerate(windows):
        assert w.index == i
        assert grid[w.index] == w
        assert vars(grid[i]) == vars(w)  # every field, position included
        assert grid[i - n] == w
        assert grid[np.int64(i)] == w
    assert grid[-1] == windows[-1]
    assert grid[1:3] == windows[1:3]
    assert grid[::-1] == windows[::-1]


@given(geom=grid_geometry())
def test_iteration_order_last_dim_fastest(geom):
    grid = geom.grid()
    assert grid.dims == geom.dims  # the shape's order, not the size keys' order
    assert list(grid.shape) == list(geom.dims)
    firsts = [tuple(s.start for s in w.slices) for w in grid]
    expected = itertools.product(*(grid.starts[d].tolist() for d in grid.dims))
    assert firsts == list(expected)
    positions = itertools.product(*(range(grid.shape[d]) for d in grid.dims))
    for w, pos in zip(grid, positions):
        assert grid.index_of(pos) == w.index


@given(geom=grid_geometry())
def test_locate(geom):
    grid = geom.grid()
    for w in grid:
        starts = {d: w[d].start for d in reversed(grid.dims)}  # key order does not matter
        assert grid.locate(starts) == w
    far = {d: geom.shape[d] + 1000 for d in grid.dims}
    assert grid.locate(far) is None
    d0 = grid.dims[0]
    first = {d: int(grid.starts[d][0]) for d in grid.dims}
    missing = sorted(set(range(-5, geom.shape[d0] + 5)) - set(grid.starts[d0].tolist()))
    assert grid.locate({**first, d0: missing[0]}) is None


@pytest.mark.parametrize("index", [5, -6, 100])
def test_index_out_of_range(index):
    grid = PatchGrid({"x": 100}, {"x": 30}, step=20)
    with pytest.raises(IndexError, match=names(index, 5)):
        grid[index]


def test_index_wrong_type():
    grid = PatchGrid({"x": 100}, {"x": 30}, step=20)
    with pytest.raises(TypeError, match="str"):
        grid["x"]


def test_grid_equality_and_starts_are_copies():
    a = PatchGrid({"y": 10, "x": 12}, {"y": 4, "x": 5}, step=2)
    assert a == PatchGrid({"y": 10, "x": 12}, {"x": 5, "y": 4}, step={"y": 2, "x": 2})
    assert a != PatchGrid({"y": 10, "x": 12}, {"y": 4, "x": 5}, step=2, border="edge")
    assert a != PatchGrid({"y": 10, "x": 12}, {"y": 4, "x": 5}, step=3)
    a.starts["y"][:] = 99
    assert a.starts["y"][0] == 0


def test_step_int_mapping_and_default():
    shape, size = {"y": 20, "x": 30}, {"y": 4, "x": 6}
    default = PatchGrid(shape, size)
    assert default.step == size
    assert default.starts["x"].tolist() == [0, 6, 12, 18, 24]
    assert PatchGrid(shape, size, step=2).step == {"y": 2, "x": 2}
    partial = PatchGrid(shape, size, step={"x": 3})
    assert partial.step == {"y": 4, "x": 3}


def test_numpy_integers_and_hashable_dims():
    dims = (0, ("band", 1))
    grid = PatchGrid(
        {dims[0]: np.int64(10), dims[1]: 7}, {dims[0]: np.int32(4), dims[1]: 7}, step=np.int64(3)
    )
    assert grid.dims == dims
    assert grid.starts[dims[0]].tolist() == [0, 3, 6]
    assert grid[0][dims[1]] == slice(0, 7)


# --------------------------------------------------------------------------
# Window
# --------------------------------------------------------------------------
def test_window_is_a_mapping():
    grid = PatchGrid({"y": 10, "x": 12}, {"y": 4, "x": 5}, step=3)
    w = grid[4]
    assert isinstance(w, Mapping)
    assert list(w) == ["y", "x"]
    assert len(w) == 2
    assert dict(w) == {"y": w.slices[0], "x": w.slices[1]}
    assert w["x"] == w.slices[1]
    assert w.shape == (4, 5)
    assert "y" in w and "z" not in w
    with pytest.raises(KeyError, match="z"):
        w["z"]
    assert str(w.index) in repr(w)


def test_window_equality_and_hash():
    grid = PatchGrid({"y": 10, "x": 12}, {"y": 4, "x": 5}, step=3)
    w = grid[4]
    same = Window(dims=("y", "x"), slices=w.slices, index=4)
    assert w == same and hash(w) == hash(same)
    assert w != Window(dims=("y", "x"), slices=w.slices, index=5)
    assert w != grid[5]
    assert (w == 4) is False
    assert len(set(grid)) == len(grid)
    assert {w: 1}[same] == 1


# --------------------------------------------------------------------------
# repr
# --------------------------------------------------------------------------
@given(geom=grid_geometry())
def test_repr_names_the_patch_count(geom):
    grid = geom.grid()
    text = repr(grid)
    assert re.search(rf"\b{len(grid)} patches", text)
    assert repr(geom.border) in text
    for d in grid.dims:
        assert str(d) in text


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
SHAPE = {"lat": 10, "lon": 12}


def test_errors_are_value_errors():
    assert issubclass(GridError, PatchError) and issubclass(DimensionError, PatchError)
    assert issubclass(PatchError, ValueError)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0"), (-3, "-3"), (2.0, "2.0"), (True, "True"), (np.float64(4.0), "4.0"), ("4", "4")],
)
def test_bad_size(value, shown):
    with pytest.raises(GridError, match=names("size", "lon", shown)):
        PatchGrid(SHAPE, {"lat": 4, "lon": value})


@pytest.mark.parametrize(
    ("value", "shown"), [(0, "0"), (-1, "-1"), (1.5, "1.5"), (2.0, "2.0"), (False, "False")]
)
def test_bad_step(value, shown):
    with pytest.raises(GridError, match=names("step", "lon", shown)):
        PatchGrid(SHAPE, {"lat": 4, "lon": 4}, step={"lon": value})
    with pytest.raises(GridError, match=names("step", shown)):
        PatchGrid(SHAPE, {"lat": 4, "lon": 4}, step=value)


@pytest.mark.parametrize(("size", "step"), [(3, 5), (3, 4), (1, 2), (12, 13)])
def test_step_larger_than_size(size, step):
    with pytest.raises(GridError, match=names("step", "lon", step, size)):
        PatchGrid(SHAPE, {"lat": 4, "lon": size}, step={"lat": 2, "lon": step})
    with pytest.raises(GridError, match=names("step", "lon", step, size)):
        PatchGrid(SHAPE, {"lat": 4, "lon": size}, step={"lat": 2, "lon": step}, border="pad")


@pytest.mark.parametrize("border", ["squeeze", "edge", "adaptive", "crop"])
def test_size_larger_than_dim(border):
    with pytest.raises(GridError, match=names("size", "lon", 13, 12, "pad")):
        PatchGrid(SHAPE, {"lat": 4, "lon": 13}, border=border)
    grid = PatchGrid(SHAPE, {"lat": 4, "lon": 13}, border="pad")
    assert grid.shape["lon"] == 1


@pytest.mark.parametrize("border", ["reflect", "Squeeze", "", None, "wrap"])
def test_unknown_border(border):
    with pytest.raises(GridError, match=names("border", repr(border), "squeeze")):
        PatchGrid(SHAPE, {"lat": 4, "lon": 4}, border=border)


@pytest.mark.parametrize("mode", ["mean", "median", "linear_ramp", "maximum", "empty", "foo"])
def test_unknown_pad_mode(mode):
    with pytest.raises(GridError, match=names("pad_mode", repr(mode), "constant")):
        PatchGrid(SHAPE, {"lat": 4, "lon": 4}, border="pad", pad_mode=mode)


@pytest.mark.parametrize("border", ["squeeze", "edge", "adaptive", "crop"])
@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_pad_mode_needs_pad_border(border, mode):
    with pytest.raises(GridError, match=names("pad_mode", repr(mode), "border", repr(border))):
        PatchGrid(SHAPE, {"lat": 4, "lon": 4}, border=border, pad_mode=mode)


def test_size_names_unknown_dim():
    with pytest.raises(DimensionError, match=names("size", "depth", "lat", "lon")):
        PatchGrid(SHAPE, {"lat": 4, "lon": 4, "depth": 2})


def test_step_names_unknown_dim():
    with pytest.raises(DimensionError, match=names("step", "depth", "lat", "lon")):
        PatchGrid(SHAPE, {"lat": 4, "lon": 4}, step={"depth": 2})


def test_size_misses_a_grid_dim():
    with pytest.raises(DimensionError, match=names("size", "lat")):
        PatchGrid(SHAPE, {"lon": 4})


@pytest.mark.parametrize("size", [{}, None, 4])
def test_size_required(size):
    with pytest.raises(GridError, match="size"):
        PatchGrid(SHAPE, size)


def test_empty_dim_with_pad():
    with pytest.raises(GridError, match=names("lon", 0)):
        PatchGrid({"lat": 10, "lon": 0}, {"lat": 4, "lon": 4}, border="pad")


@given(geom=grid_geometry(max_dims=2, max_length=20), border=st.sampled_from(BORDERS))
def test_valid_geometry_never_raises(geom, border):
    if border != "pad" and any(geom.size[d] > geom.shape[d] for d in geom.dims):
        return
    PatchGrid(geom.shape, geom.size, step=geom.step, border=border)

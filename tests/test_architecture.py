"""The layout of the package: imports flow one way, the planners stay pure, the
accessor only delegates.

These tests read the source (``ast``); they import no xarray themselves.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "xpatch"
FORBIDDEN = {"xarray", "dask", "scipy", "pandas", "zarr", "torch", "distributed"}
# geometry, planning and the numerics of blending: numpy only
PURE = [
    "grid",
    "layout",
    "weights",
    "_normalise",
    "_placement",
    "_gather",
    "_blend",
    "_dtypes",
    "_options",
    "_plan",
    "_tiles",
    "_patchmap",
    "_validate",
    "_types",
    "errors",
    "_plot",  # numpy at import; matplotlib only when drawing; labeled images duck-typed
]


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> set[str]:
    """Every module ``xpatch.<module>`` imports, at any depth of its code (lazy ones too)."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "xpatch":  # from xpatch import _apply, api
                found.update(f"xpatch.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    """xpatch module -> the xpatch modules it imports (that are modules, not the package)."""
    modules = set(_modules())
    graph = {}
    for m in modules:
        deps = set()
        for name in _imports(m):
            parts = name.split(".")
            if parts[0] == "xpatch" and len(parts) > 1 and parts[1] in modules:
                deps.add(parts[1])
        graph[m] = deps
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_among_xpatch_modules():
    """Data flows one way: no module imports one that imports it (lazy imports count)."""
    cycle = _find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("module", PURE)
def test_pure_module_closure_imports_numpy_only(module):
    """A pure module, and every xpatch module it imports, imports no xarray, dask, scipy..."""
    todo, seen = [module], set()
    graph = _graph()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        assert m in PURE, f"{module} imports xpatch.{m}, which is not pure"
        for name in _imports(m):
            assert name.split(".")[0] not in FORBIDDEN, f"xpatch.{m} imports {name}"
            assert name != "xpatch", f"xpatch.{m} imports the package (its __init__ needs xarray)"
        todo.extend(graph[m])


def test_pure_modules_load_and_plan_without_xarray():
    """Load the planners under a bare stand-in package and plan a chunked, blended run."""
    script = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("xpatch")
        pkg.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["xpatch"] = pkg
        import numpy as np
        for name in {PURE!r}:
            __import__("xpatch." + name)
        from xpatch._options import BlendOptions
        from xpatch._plan import BlendPlan
        from xpatch.grid import PatchGrid
        grid = PatchGrid({{"y": 100, "x": 60}}, {{"y": 30, "x": 20}}, step=10)
        plan = BlendPlan.make(grid, BlendOptions(weights="hann", chunks=32))
        assert plan.layout.shape == (4, 2)
        # the final weights of all windows sum to 1 along each axis
        for ax, factors in zip(grid.axes, plan.weights.factors):
            acc = np.zeros(ax.length)
            for s, f in zip(ax.starts, factors):
                acc[s : s + len(f)] += f
            assert np.allclose(acc, 1), acc
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(FORBIDDEN)!r})
        assert not bad, bad
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_accessor_methods_delegate_in_one_statement():
    """Every public accessor method is one call of the function of the same name in
    xpatch.api (the accessor holds no logic of its own)."""
    tree = ast.parse((PACKAGE_DIR / "accessor.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name[0] != "_"]
    assert {m.name for m in methods} == {"grid", "sample", "dataset", "apply", "aggregator"}
    for method in methods:
        body = [n for n in method.body if not isinstance(n, ast.Expr)]  # minus the docstring
        assert len(body) == 1 and isinstance(body[0], ast.Return), method.name
        call = body[0].value
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        assert ast.unparse(call.func) == f"api.{method.name}", method.name


def test_one_module_per_concern_stays_small():
    """No module over ~600 lines (see STYLE.md)."""
    for path in PACKAGE_DIR.glob("*.py"):
        n = len(path.read_text().splitlines())
        assert n <= 620, f"{path.name} has {n} lines"


def test_import_xpatch_loads_no_heavy_library_beyond_xarray():
    # import xpatch must stay cheap (issue 21: < 100 ms over import xarray): scipy's
    # ndimage/sparse/signal, dask.array, distributed, zarr, torch and matplotlib are
    # imported where first needed, never at import time
    import subprocess

    code = (
        "import sys, xarray\n"
        "before = set(sys.modules)\n"
        "import xpatch\n"
        "new = sorted(set(sys.modules) - before)\n"
        "heavy = ('scipy', 'dask.array', 'distributed', 'zarr', 'torch', 'matplotlib',"
        " 'netCDF4', 'h5py')\n"
        "print([m for m in new if m.startswith(heavy)])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout

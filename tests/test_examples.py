"""Every script in examples/, and the code on every docs page, runs as a user would run it.

Each script runs in its own Python process with a temporary folder as working
directory and, as its first argument, the path it should write its output to.
A script added to examples/ is picked up without changing this file; one that
writes a file of another kind than those below gets a path ending in ``.out``
unless it is added to ``OUTPUTS``.

The ```` ```python ```` blocks of each page of the user documentation (docs/*.md)
run the same way, top to bottom, as one script per page, so the docs cannot drift
from the code; so do its ```` ```{plot} ```` blocks (the code that draws the page's
figure at build time, matplotlib's plot directive), in their place among the others,
less their ``:option:`` lines. Blocks meant to be read only (other libraries' code)
use another fence, such as ```` ```{code-block} python ````.

The examples are also the documentation's gallery (sphinx-gallery runs them during
the build); these tests run them as plain scripts.

A script or page that imports an optional package of ``OPTIONAL`` (PyTorch, which
the ``test`` extra does not install) is skipped where that package is missing.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
DOCS = ROOT / "docs"
# Pages written by hand; design.md is prose and benchmarks.md is generated.
PAGES = sorted(p for p in DOCS.glob("*.md") if p.name not in {"design.md", "benchmarks.md"})
# The output each script is asked to write (its first argument).
OUTPUTS = {
    "quickstart.py": "quickstart.png",
    "geoscience.py": "ndvi.tif",
    "microscopy.py": "labels.zarr",
    "pytorch_dataloader.py": "prediction.nc",
}
TIMEOUT = 300  # seconds: a hung script fails instead of stalling CI
# Packages a script or page may import that the ``test`` extra does not install:
# where one is missing, the script or page is skipped instead of failing.
OPTIONAL = {"torch", "rioxarray", "rasterio"}


def python_blocks(page: Path) -> list[str]:
    """The code of every ```` ```python ```` and ```` ```{plot} ```` block of a Markdown
    page, in order (a plot block less its leading ``:option:`` lines)."""
    blocks: list[str] = []
    current: list[str] | None = None
    options = False
    for line in page.read_text().splitlines():
        if current is None:
            if line.strip() in ("```python", "```{plot}"):
                current = []
                options = line.strip() == "```{plot}"
        elif options and line.startswith(":") and line.count(":") >= 2:
            continue  # an option of the plot directive
        elif line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        else:
            options = False
            current.append(line)
    assert current is None, f"{page.name}: unclosed code block"
    return blocks


def skip_without_optional(code: str) -> None:
    """Skip the calling test unless every ``OPTIONAL`` package that ``code`` imports is there."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    for name in sorted(imported & OPTIONAL):
        pytest.importorskip(name)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a Python script in a fresh process, as a user would."""
    env = os.environ | {"MPLBACKEND": "Agg", "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def test_every_example_is_known() -> None:
    assert SCRIPTS, f"no example scripts found in {EXAMPLES}"
    assert set(OUTPUTS) <= {p.name for p in SCRIPTS}, "OUTPUTS names a script that is gone"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    skip_without_optional(script.read_text())
    output = tmp_path / OUTPUTS.get(script.name, f"{script.stem}.out")
    start = time.perf_counter()
    proc = run([str(script), str(output)], cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (
        f"{script.name} exited with {proc.returncode} after {seconds:.1f} s\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    if script.name in OUTPUTS:
        assert output.exists(), f"{script.name} did not write {output.name}\n{proc.stdout}"


def test_docs_have_code() -> None:
    assert any(python_blocks(page) for page in PAGES), f"no python blocks in {DOCS}/*.md"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_page_code_runs(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    skip_without_optional("\n".join(blocks))
    script = tmp_path / f"{page.stem}.py"
    # Each block starts on a line of its own; a comment says where it came from.
    script.write_text(
        "".join(f"# --- {page.name}, block {i + 1}\n{code}\n\n" for i, code in enumerate(blocks))
    )
    proc = run([str(script)], cwd=tmp_path)
    assert proc.returncode == 0, (
        f"the code of {page.name} failed ({len(blocks)} blocks)\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )

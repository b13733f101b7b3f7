"""Helpers for the sphinx-gallery of ``examples/`` (named by string in ``conf.py``).

- :func:`reset_argv`: each example gets, as its only argument, the path of its output
  file in a fresh temporary folder (as ``tests/test_examples.py`` does), so the build
  never writes into the source tree and never meets a store from an earlier build.
- :class:`ExampleOrder`: the quick start first, then the others by name.
- :func:`runnable_pattern`: the examples whose imports are all installed are run;
  one that needs a package missing here (PyTorch, say) is shown without its output
  instead of failing the build.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import tempfile
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The file each example is asked to write; others get ``<name>.out``.
OUTPUTS = {
    "quickstart": "quickstart.png",
    "geoscience": "ndvi.tif",
    "microscopy": "labels.zarr",
    "pytorch_dataloader": "prediction.nc",
}
FIRST = ("quickstart", "geoscience", "microscopy", "pytorch_dataloader")


def reset_argv(gallery_conf: dict[str, Any], script_vars: dict[str, Any]) -> list[str]:
    """``sys.argv[1:]`` of an example: its output path in a new temporary folder."""
    stem = Path(script_vars["src_file"]).stem
    folder = Path(tempfile.mkdtemp(prefix=f"xpatch-gallery-{stem}-"))
    return [str(folder / OUTPUTS.get(stem, f"{stem}.out"))]


class ExampleOrder:
    """Sort key of the gallery: the examples of ``FIRST`` in that order, then by name."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        stem = Path(filename).stem
        return (FIRST.index(stem) if stem in FIRST else len(FIRST), stem)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def _imports(path: Path) -> set[str]:
    """Top-level package names a script imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def runnable_pattern(folder: Path = EXAMPLES) -> tuple[str, list[str]]:
    """sphinx-gallery's ``filename_pattern`` for the examples that can run here, and
    the names of those that cannot (a package they import is missing)."""
    skipped = sorted(
        p.name
        for p in folder.glob("*.py")
        if any(importlib.util.find_spec(name) is None for name in _imports(p))
    )
    if not skipped:
        return r"\.py$", []
    names = "|".join(re.escape(name) for name in skipped)
    return rf"^(?!.*[\\/]({names})$).*\.py$", skipped

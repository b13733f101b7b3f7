"""Sphinx configuration of the xpatch documentation.

Build (from the repository root, warnings are errors)::

    sphinx-build -W -b html docs docs/_build/html

The figures under ``_static/figures/`` are drawn by ``make_figures.py`` at the
start of every build (a few seconds), so they always show what the code does.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

import sphinx_autosummary_accessors

import xpatch

HERE = Path(__file__).resolve().parent

# -- figures --------------------------------------------------------------------
# Draw the pictures from code before reading the pages that show them.
_start = time.perf_counter()
runpy.run_path(str(HERE / "make_figures.py"), run_name="make_figures").get("main")(
    HERE / "_static" / "figures"
)
print(f"make_figures.py: {time.perf_counter() - _start:.1f} s", file=sys.stderr)

# -- project --------------------------------------------------------------------
project = "xpatch"
author = "the xpatch developers"
copyright = "the xpatch developers"
release = xpatch.__version__
version = ".".join(release.split(".")[:2])

# -- general --------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_autosummary_accessors",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]

# -- autodoc / autosummary / numpydoc ---------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"  # numpydoc's Parameters sections say it better
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # methods are listed on the API page instead
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False

# -- MyST -----------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- HTML -----------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"xpatch {release}"
html_static_path = ["_static"]
html_css_files = ["xpatch.css"]
html_theme_options = {
    "navigation_depth": 3,
    "show_toc_level": 2,
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# Pages without sub-pages need no section navigation.
html_sidebars = {
    page: []
    for page in ("index", "getting-started", "examples", "coming-from", "design", "benchmarks")
}
html_show_sourcelink = False

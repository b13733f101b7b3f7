"""Sphinx configuration of the xpatch documentation.

Build (from the repository root, warnings are errors)::

    sphinx-build -W -b html docs docs/_build/html

Every picture is drawn by code during the build, so it shows what the code does:

- the figures under ``_static/figures/`` by ``make_figures.py``, at the start;
- the figure of each user-guide page by its own ```` ```{plot} ```` blocks
  (``_plot_blocks.py``), which run on with the page's code;
- the gallery (``generated/gallery/``) by running every script of ``examples/``
  (sphinx-gallery), with the figures and printed output of each block;
- the chart atop the benchmarks page from ``benchmarks/peers-results.json``
  (``_benchmark_chart.py``).

Links to other projects (xarray, numpy, dask...) come from their intersphinx
inventories, fetched online; where the network is out of reach a small inventory
written by ``_offline_inventories.py`` stands in, so the build still passes.
"""

from __future__ import annotations

import runpy
import sys
import tempfile
import time
from pathlib import Path

import sphinx_autosummary_accessors

import xpatch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the _*.py helpers and extensions beside this file

import _gallery  # noqa: E402
import _offline_inventories  # noqa: E402

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
    "sphinx.ext.intersphinx",
    "_plot_blocks",  # ```{plot} blocks of the guide pages
    "_benchmark_chart",  # the chart and verdict atop benchmarks.md
    "sphinx_gallery.gen_gallery",
    "numpydoc",
    "sphinx_autosummary_accessors",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "generated/gallery/*.ipynb"]
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]

# -- autodoc / autosummary / numpydoc ---------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"  # numpydoc's Parameters sections say it better
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # methods are listed on the API page instead
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False

# -- intersphinx ----------------------------------------------------------------
# Online inventory first, the stand-in second (see _offline_inventories.py).
_INVENTORIES = _offline_inventories.write(Path(tempfile.mkdtemp(prefix="xpatch-inv-")))
_PROJECTS = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "scipy": "https://docs.scipy.org/doc/scipy/",
    "xarray": "https://docs.xarray.dev/en/stable/",
    "dask": "https://docs.dask.org/en/stable/",
    "distributed": "https://distributed.dask.org/en/stable/",
    "zarr": "https://zarr.readthedocs.io/en/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "matplotlib": "https://matplotlib.org/stable/",
    "rioxarray": "https://corteva.github.io/rioxarray/stable/",
}
intersphinx_mapping = {
    name: (url, (None, str(_INVENTORIES[name]))) for name, url in _PROJECTS.items()
}
intersphinx_timeout = 10  # seconds per inventory; then the stand-in is used

# -- the gallery: sphinx-gallery --------------------------------------------------
_RUN, _NOT_RUN = _gallery.runnable_pattern()
if _NOT_RUN:
    print(f"gallery: shown without running (a package is missing): {_NOT_RUN}", file=sys.stderr)
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "generated/gallery",  # generated at build time, not committed
    "filename_pattern": _RUN,
    "ignore_pattern": r"__init__\.py|^_",
    "within_subsection_order": "_gallery.ExampleOrder",
    "reset_argv": "_gallery.reset_argv",
    "abort_on_example_error": True,  # an example that raises fails the build
    "write_computation_times": False,  # no sg_execution_times.rst in the sources
    "download_all_examples": False,
    "show_signature": False,
    "remove_config_comments": True,
    "min_reported_time": 3600,  # no "Total running time" noise on the pages
    "capture_repr": (),
    "image_srcset": ["2x"],
    "matplotlib_animations": False,
}

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
    "footer_start": ["copyright", "footer-source"],
    "footer_end": ["sphinx-version"],
    "icon_links": [
        {
            "name": "Source on GitHub",
            "url": "https://github.com/xpatch-dev/xpatch",
            "icon": "fa-brands fa-github",
        }
    ],
}
# The source link and the licence, in the footer of every page (footer-source.html).
html_context = {
    "source_url": "https://github.com/xpatch-dev/xpatch",
    "licence": "BSD-3-Clause",
    "licence_url": "https://github.com/xpatch-dev/xpatch/blob/main/LICENSE",
}
# Pages without sub-pages need no section navigation.
html_sidebars = {
    page: [] for page in ("index", "getting-started", "coming-from", "design", "benchmarks")
}
html_show_sourcelink = False

"""A ``plot`` directive for the Markdown pages: run the block, show its code and figures.

matplotlib's own plot directive cannot run inside MyST pages (it needs a docutils
state machine that MyST does not provide), so the guide pages use this one, with the
same spelling and the options they need::

    ```{plot}
    :context: reset
    :nofigs:

    import numpy as np
    ...
    ```

- ``:context:`` runs the block in the namespace of the page's earlier ``context``
  blocks; ``:context: reset`` starts that namespace afresh; ``:context: close-figs``
  keeps it but closes the figures left open. Without ``:context:`` the block runs
  alone.
- ``:nofigs:`` shows the code only (the figures stay open for a later block).

Each block runs during the build, in a temporary folder (pages write zarr stores and
netCDF files there), with ``__name__ == "__main__"``. Its code is shown as a Python
code block, followed by every figure it left open, saved as PNG under
``generated/plots/`` and closed. An exception fails the build, naming the page and
the block. ``tests/test_examples.py`` runs the same blocks as part of each page's
script.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

DPI = 100
_NAMESPACES: dict[str, dict[str, Any]] = {}
_WORKDIR = Path(tempfile.mkdtemp(prefix="xpatch-plots-"))


class PlotBlock(SphinxDirective):
    """Run a block of Python, then show its code and the figures it drew."""

    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {
        "context": directives.unchanged,
        "nofigs": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        docname = self.env.docname
        code = "\n".join(self.content)
        context = self.options.get("context")
        if context is None:
            namespace: dict[str, Any] = {}
            plt.close("all")
        else:
            if context.strip() == "reset" or docname not in _NAMESPACES:
                _NAMESPACES[docname] = {}
                plt.close("all")
            elif context.strip() == "close-figs":
                plt.close("all")
            namespace = _NAMESPACES[docname]
        namespace.setdefault("__name__", "__main__")

        serial = self.env.new_serialno("xpatch-plot")
        cwd = Path.cwd()
        try:
            os.chdir(_WORKDIR)
            with matplotlib.rc_context({"figure.dpi": DPI, "font.size": 11}):
                exec(compile(code, f"<{docname}.md, plot block {serial + 1}>", "exec"), namespace)
        except Exception:
            plt.close("all")
            raise self.error(
                f"the plot block at line {self.lineno} of {docname} raised:\n"
                + traceback.format_exc(limit=-3)
            ) from None
        finally:
            os.chdir(cwd)

        shown: list[nodes.Node] = [
            nodes.literal_block(code, code, language="python", classes=["plot-code"])
        ]
        if "nofigs" in self.options:
            return shown
        folder = Path(self.env.srcdir) / "generated" / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        for k, number in enumerate(plt.get_fignums()):
            name = f"{docname.replace('/', '-')}-{serial}-{k}.png"
            figure = plt.figure(number)
            figure.savefig(folder / name, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
            image = nodes.image(uri=f"/generated/plots/{name}", alt=f"figure drawn by {docname}")
            image["classes"].append("plot-figure")
            shown.append(nodes.figure("", image, classes=["plot-figure"]))
        plt.close("all")
        return shown


def _forget(app: Sphinx, env: Any, docname: str) -> None:
    _NAMESPACES.pop(docname, None)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("plot", PlotBlock)
    app.connect("env-purge-doc", _forget)
    return {"parallel_read_safe": False, "parallel_write_safe": True}

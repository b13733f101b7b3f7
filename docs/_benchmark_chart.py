"""The top of the benchmarks page: a chart and a short verdict, from the results file.

``benchmarks/peers.py`` writes ``docs/benchmarks.md`` (the lab notes: every table,
the profiles, the reading of the numbers) and ``benchmarks/peers-results.json`` (the
summarised results). At build time this module draws, from the results file, the
wall time of xpatch and of every peer on each workload, and puts the chart and a
verdict computed from the same numbers above the lab notes (Sphinx's
``source-read`` event: the generated page itself is not edited).

Run by hand to look at the chart::

    python docs/_benchmark_chart.py [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "peers-results.json"
CHART = "generated/benchmarks-chart.png"  # relative to docs/


def load(path: Path = RESULTS) -> dict[str, dict[str, dict[str, Any]]]:
    """workload -> peer -> summary (runs that were skipped or failed left out)."""
    raw = json.loads(path.read_text())["results"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, summary in raw.items():
        workload, peer = key.split("|", 1)
        if summary.get("seconds") is not None and "error" not in summary:
            out.setdefault(workload, {})[peer] = summary
    return out


def draw(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path:
    """One panel per workload: warm wall seconds per peer, xpatch highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = list(results)
    cols = 3
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(11, 2.55 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for ax, workload in zip(axes, names):
        peers = sorted(results[workload].items(), key=lambda item: item[1]["seconds"])
        ref = results[workload].get("xpatch", {}).get("seconds")
        labels = [p for p, _ in peers]
        seconds = [s["seconds"] for _, s in peers]
        colors = ["C0" if p.startswith("xpatch") else "0.65" for p in labels]
        ax.barh(range(len(peers)), seconds, color=colors)
        ax.set_yticks(range(len(peers)), labels, fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, max(seconds) * 1.32)
        for i, s in enumerate(seconds):
            ratio = f"  {s:.2g} s" + (f" ({s / ref:.1f}x)" if ref and labels[i] != "xpatch" else "")
            ax.text(s, i, ratio, va="center", fontsize=8)
        ax.set_title(workload, fontsize=11, loc="left")
        ax.tick_params(axis="x", labelsize=8)
    for ax in list(axes):
        ax.set_visible(False)
    fig.suptitle(
        "Warm wall time per workload, shortest first (blue: xpatch; in brackets: time over "
        "xpatch's)",
        fontsize=11,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path


def verdict(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A few lines computed from the results: per workload, the fastest xpatch row
    against the fastest other tool, and where xpatch needs the least memory."""
    ahead, behind, leanest = [], [], 0
    for workload, peers in results.items():
        mine = {p: s for p, s in peers.items() if p.startswith("xpatch")}
        others = {p: s for p, s in peers.items() if not p.startswith("xpatch")}
        if not mine or not others:
            continue
        me, me_s = min(((p, s["seconds"]) for p, s in mine.items()), key=lambda item: item[1])
        best, best_s = min(((p, s["seconds"]) for p, s in others.items()), key=lambda i: i[1])
        who = me  # the fastest xpatch row: xpatch, or a variant such as xpatch[batch=256]
        if me_s <= best_s:
            ahead.append(f"{workload}: {who} {best_s / me_s:.1f}x faster than {best}")
        else:
            behind.append(f"{workload}: {best} takes {best_s / me_s:.2f}x the time of {who}")
        work = {p: s.get("work") for p, s in peers.items() if s.get("work") is not None}
        if work and min(work, key=work.get).startswith("xpatch"):
            leanest += 1
    n = len(ahead) + len(behind)
    names = ", ".join(item.split(":")[0] for item in behind)
    text = (
        f"**Verdict.** xpatch is the fastest tool on {len(ahead)} of {n} workloads and needs"
        f" the least working memory above its input on {leanest} of {n}"
        + (f"; another tool is faster on {names}." if behind else ".")
        + "\n\n"
        + "".join(f"- {item}\n" for item in ahead + behind)
        + "\nThe tables, the profiles and the reading of every number follow: the lab notes"
        " of the run, with the workloads W1 to W7 described."
    )
    return text


def lead(docs: Path) -> str:
    """The Markdown put above the lab notes: the chart (drawn now) and the verdict."""
    results = load()
    draw(results, docs / CHART)
    return (
        f"![Wall time of xpatch and its peers per workload]({CHART})\n\n"
        f"{verdict(results)}\n\n"
        "*The chart and the verdict are drawn at build time from "
        "`benchmarks/peers-results.json`, which `python benchmarks/peers.py` writes "
        "together with this page.*\n\n"
    )


def prepend(app: Any, docname: str, source: list[str]) -> None:
    """Sphinx ``source-read`` handler: the chart and verdict under the page's title."""
    if docname != "benchmarks":
        return
    title, _, rest = source[0].partition("\n")
    source[0] = f"{title}\n\n{lead(Path(app.srcdir))}{rest}"


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", prepend)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks-chart.png")
    print(draw(load(), out))
    print(verdict(load()))

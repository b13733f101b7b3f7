"""Speed of xpatch now against an earlier commit of itself, on the workloads of peers.py.

Usage (from the repository root, venv active)::

    python benchmarks/compare_versions.py --baseline REF [--rounds R] [--in-process N]
                                          [--only W1,W2,...] [--quick]
    python benchmarks/compare_versions.py --baseline 0b909db             # 1.5-2.5 min, 2 cores
    python benchmarks/compare_versions.py --baseline 0b909db --rounds 6  # 3-5.5 min, steadier
    python benchmarks/compare_versions.py --baseline HEAD~3 --only W1,W5
    python benchmarks/compare_versions.py --baseline-dir D --current-dir D  # noise floor

``--baseline REF`` checks REF out (detached) with ``git worktree add`` in
``$TMPDIR/xpatch-baseline-<sha>`` and reuses that checkout on later runs (drop it with
``git worktree remove PATH``); ``--baseline-dir PATH`` uses an existing checkout instead.
The current side is this checkout's working tree, uncommitted changes included, or
``--current-dir PATH``. Pointing both sides at the same checkout measures the noise floor.

Method. For R rounds (default 3), alternating which side goes first (ABBA), one fresh
process per (side, round) runs ``peers.py --in-process N --peers xpatch`` (default N = 5)
on each selected workload: xpatch and its variants (``xpatch[batch=256]`` on W5,
``xpatch[chunks=48]`` on W4), one warm-up call each on the real input, then N calls in
shuffled rounds. Both sides use the peers.py beside this script, so only the xpatch
package differs: the child runs with ``PYTHONPATH`` set to the side's root, imports xpatch
before peers.py, checks that every loaded ``xpatch`` module comes from that root and
reports the file, printed in the header. Each call's wall time is taken by wrapping
peers.py's runners; the warm-up call is dropped.

Output: a markdown table on stdout with, per workload and variant, the min and median
wall seconds of each side over all N x R calls and current / baseline of both (> 1:
slower now). Progress goes to stderr. Nothing is asserted: read the ratios against the
noise floor of a self-comparison.

Noise floor (both sides one checkout of 0b909db; 2 CPUs shared with other jobs): at
load average ~3, median ratios 0.70-1.05 with the defaults (3 x 5) and 0.94-0.99 with
``--rounds 6``; at load ~5 (every time doubled), 0.65-1.08 and 0.77-1.23, min ratios down
to 0.50. A whole process runs fast or slow there and W2/W3 calls are bimodal (~0.12 or
~0.20 s at load 3), so prefer more rounds of few calls, read differences under ~10 %
(load 3) or ~25 % (load 5) as noise, and rerun on an idle machine before quoting one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def baseline_worktree(ref: str) -> Path:
    """A detached ``git worktree`` of ``ref`` in the temporary directory, reused if present."""
    sha = git(ROOT, "rev-parse", "--verify", f"{ref}^{{commit}}")
    path = Path(tempfile.gettempdir()) / f"xpatch-baseline-{sha[:12]}"
    if not path.exists():
        git(ROOT, "worktree", "prune")  # forget a checkout whose directory was deleted
        git(ROOT, "worktree", "add", "--detach", str(path), sha)
    elif git(path, "rev-parse", "HEAD") != sha:
        raise SystemExit(f"{path} exists but is not at {sha}; remove it or use --baseline-dir")
    return path


def describe(tree: Path) -> str:
    sha = git(tree, "rev-parse", "--short", "HEAD")
    dirty = git(tree, "status", "--porcelain", "--untracked-files=no", "--", "xpatch")
    return f"{sha}{' + uncommitted changes in xpatch/' if dirty else ''}"


def child(tree: Path, n: int, workloads: list[str], quick: bool) -> dict:
    """In the fresh process: time xpatch from ``tree`` with peers.py's in-process mode."""
    import xpatch  # from PYTHONPATH=tree, before peers.py puts this checkout on sys.path

    spec = importlib.util.spec_from_file_location("peers", HERE / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    times: dict[str, list[float]] = defaultdict(list)
    make_runner = peers.make_runner

    def timed_runner(peer, img, wl, counter):
        go = make_runner(peer, img, wl, counter)

        def timed():
            t0 = time.perf_counter()
            out = go()
            times[peer].append(time.perf_counter() - t0)
            return out

        return timed

    peers.make_runner = timed_runner  # in_process looks it up at call time
    result: dict[str, dict[str, list[float]]] = {}
    for w in workloads:
        times.clear()
        args = argparse.Namespace(only=w, peers="xpatch", quick=quick, in_process=n)
        with contextlib.redirect_stdout(io.StringIO()):  # its own table: not needed here
            peers.in_process(args)
        result[w] = {p: t[-n:] for p, t in times.items()}  # drop the warm-up call
    files = {m.__file__ for k, m in sys.modules.items() if k.split(".")[0] == "xpatch"}
    stray = [f for f in files if f and not Path(f).resolve().is_relative_to(tree.resolve())]
    if stray:
        raise SystemExit(f"xpatch modules loaded from outside {tree}: {stray}")
    return {"xpatch": str(Path(xpatch.__file__).resolve()), "times": result}


def run_child(tree: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree)]
    cmd += ["--in-process", str(args.in_process), "--only", ",".join(args.workloads)]
    cmd += ["--quick"] * args.quick
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child for {tree} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", metavar="REF", help="git commit, tag or branch to compare to")
    ap.add_argument("--baseline-dir", type=Path, help="existing checkout to use as baseline")
    ap.add_argument("--current-dir", type=Path, default=ROOT, help="default: this checkout")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per side")
    ap.add_argument("--in-process", type=int, default=5, metavar="N", help="calls per process")
    ap.add_argument("--only", default="W1,W2,W3,W4,W5", help="comma-separated workloads")
    ap.add_argument("--quick", action="store_true", help="peers.py's small inputs (smoke test)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.workloads = [w.strip() for w in args.only.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.in_process, args.workloads, args.quick)))
        return 0
    if (args.baseline is None) == (args.baseline_dir is None):
        ap.error("give exactly one of --baseline REF and --baseline-dir PATH")
    sides = {
        "baseline": (args.baseline_dir or baseline_worktree(args.baseline)).resolve(),
        "current": args.current_dir.resolve(),
    }
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    times: dict[str, dict] = {s: defaultdict(lambda: defaultdict(list)) for s in sides}
    files: dict[str, set[str]] = {s: set() for s in sides}
    for r in range(args.rounds):
        for side in list(sides)[:: 1 if r % 2 == 0 else -1]:  # ABBA: drift hits both
            t0 = time.perf_counter()
            res = run_child(sides[side], args)
            files[side].add(res["xpatch"])
            for w, per_peer in res["times"].items():
                for p, t in per_peer.items():
                    times[side][w][p] += t
            print(
                f"round {r + 1}/{args.rounds} {side}: {time.perf_counter() - t0:.0f} s"
                f" (xpatch from {res['xpatch']})",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - t_start
    print(f"# xpatch: current vs baseline ({args.rounds} rounds x {args.in_process} calls)\n")
    for side, tree in sides.items():
        print(f"- {side}: {tree} @ {describe(tree)}; imported {', '.join(sorted(files[side]))}")
    print(
        f"- wall {wall / 60:.1f} min; load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}"
        f" on {os.cpu_count()} CPUs{'; --quick sizes' if args.quick else ''}\n"
    )
    print(
        "| workload | variant | base min s | base median s | cur min s | cur median s"
        " | cur/base min | cur/base median |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in args.workloads:
        for p, tb in times["baseline"][w].items():
            tc = times["current"][w][p]
            b = (min(tb), statistics.median(tb))
            c = (min(tc), statistics.median(tc))
            print(
                f"| {w} | {p} | {b[0]:.3f} | {b[1]:.3f} | {c[0]:.3f} | {c[1]:.3f}"
                f" | {c[0] / b[0]:.3f} | {c[1] / b[1]:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

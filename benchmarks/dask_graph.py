"""Size and build time of the lazy dask graph as the number of patches grows.

Usage (from the repository root, venv active)::

    python benchmarks/dask_graph.py                 # 30k, 261k and 1.03M patches, ~1 min
    python benchmarks/dask_graph.py --lengths 1504  # one size

A 3-D float32 dask array of zeros (nothing is computed), chunks of 128, patch 64,
step 48, a func returning its patch: ``apply`` builds the graph (with its one dry
call of func) and returns. Reported: patches, output blocks, tasks, build seconds,
the peak memory a second build took (tracemalloc, which slows Python, so timed
apart) and the graph's pickled size. Each size runs in a fresh process. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, tracemalloc
import cloudpickle, dask.array as dsa, numpy as np, xarray as xr
import xpatch
n = int(sys.argv[1])
da = xr.DataArray(dsa.zeros((n, n, n), chunks=128, dtype="float32"), dims=("z", "y", "x"))
grid = da.patch.grid(z=64, y=64, x=64, step=48)
t = time.perf_counter()
out = da.patch.apply(lambda p: p, z=64, y=64, x=64, step=48)
elapsed = time.perf_counter() - t
del out
tracemalloc.start()  # (a second build, traced: tracing slows Python down a few times)
out = da.patch.apply(lambda p: p, z=64, y=64, x=64, step=48)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
graph = dict(out.data.__dask_graph__())
size = len(cloudpickle.dumps(graph))
print(json.dumps({"patches": len(grid), "blocks": out.data.npartitions, "tasks": len(graph),
                  "s": elapsed, "peak_mb": peak / 1e6, "pickled_mb": size / 1e6}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1504, 3088, 4864])
    args = ap.parse_args()
    print("| patches | output blocks | tasks | build s | build peak MB | pickled graph MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.lengths:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=False
        )
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {r['patches']:,} | {r['blocks']:,} | {r['tasks']:,} | {r['s']:.2f} |"
            f" {r['peak_mb']:.0f} | {r['pickled_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()

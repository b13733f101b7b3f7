"""Peak memory of the eager out-of-core run as the volume grows (spilled open chunks).

Usage (from the repository root, venv active)::

    python benchmarks/memory_scaling.py                       # 256^3 .. 512^3, ~2 min
    python benchmarks/memory_scaling.py --sizes 256 512 768 1024 --budget 512MiB

Workload (the scale issue's): a 3-D float32 volume, patch 64, step 48, a func giving
8 classes, ``chunks=128``, ``on_chunk=argmax``, ``out=`` a zarr store. The input is
generated lazily (an xarray lazy backend array computing each requested region from
its indices), so the input never sits in memory. Each size runs in a fresh process;
peak memory is the process's ``VmHWM`` minus its RSS just before the run.
``--budget`` sets ``XPATCH_MEMORY_BUDGET`` (how many bytes of open chunks stay in
memory; the rest wait on disk). The fitted slope (MiB per million voxels) says
whether memory grows with the volume. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, sys, time, tempfile
import numpy as np, xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing
import xpatch

n = int(sys.argv[1])

class Generated(BackendArray):
    def __init__(self, shape):
        self.shape, self.dtype = shape, np.dtype("float32")
    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._raw)
    def _raw(self, key):
        grids = np.ogrid[tuple(slice(*k.indices(s)) for k, s in zip(key, self.shape))]
        z, y, x = grids
        return (np.sin(z * 0.05) + np.cos(y * 0.07) + np.sin(x * 0.03)).astype("float32")

data = indexing.LazilyIndexedArray(Generated((n, n, n)))
da = xr.DataArray(xr.Variable(("z", "y", "x"), data), name="v")

def model(p):
    v = p.values
    return np.stack([v * k for k in range(8)]).astype("float32")

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

open("/proc/self/clear_refs", "w").write("5")
before = rss()
out = tempfile.mkdtemp() + "/out.zarr"
t = time.perf_counter()
da.patch.apply(model, z=64, y=64, x=64, step=48, chunks=128, output_dims=("class", "z", "y", "x"),
               on_chunk=lambda c: c.argmax("class", skipna=False).astype("uint8"), out=out)
elapsed = time.perf_counter() - t
peak = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"n": n, "s": elapsed, "before": before, "peak": peak, "working": peak - before}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    ap.add_argument("--budget", default="256MiB", help="XPATCH_MEMORY_BUDGET for the runs")
    args = ap.parse_args()
    env = dict(os.environ, XPATCH_MEMORY_BUDGET=args.budget)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(n)], env=env, cwd=tmp,
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{n}^3 done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(f"budget {args.budget}\n")
    print("| size | voxels (M) | s | RSS before MiB | peak MiB | working MiB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['n']}^3 | {r['n'] ** 3 / 1e6:.0f} | {r['s']:.1f} | {r['before']:.0f} |"
            f" {r['peak']:.0f} | {r['working']:.0f} |"
        )
    if len(rows) >= 2:
        import numpy as np

        v = np.array([r["n"] ** 3 / 1e6 for r in rows])
        w = np.array([r["working"] for r in rows])
        slope, intercept = np.polyfit(v, w, 1)
        print(f"\nfit: working MiB = {intercept:.0f} + {slope:.3f} * Mvoxels")


if __name__ == "__main__":
    main()

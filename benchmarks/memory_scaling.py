"""Peak memory of the eager out-of-core run as the volume grows (spilled open chunks).

Usage (from the repository root, venv active; prefix with ``nice -n 10`` on a shared
machine)::

    python benchmarks/memory_scaling.py                       # 256^3 .. 512^3, ~2 min
    python benchmarks/memory_scaling.py --sizes 512 768 1024 --budget 256MiB
    python benchmarks/memory_scaling.py --sizes 2048 --budget 1GiB --workdir /tmp/xpatch-bench
    python benchmarks/memory_scaling.py --source zarr --sizes 256 384 512

Workload (the scale issue's): a 3-D float32 volume, patch 64, step 48, a func giving
8 classes, ``chunks=128``, ``on_chunk=argmax``, ``out=`` a zarr store.

Sources (``--source``), neither ever held in memory whole:

- ``generated`` (default): an xarray lazy backend array computing each requested
  region from its indices (``sin(0.05 z) + cos(0.07 y) + sin(0.03 x)``); costs no
  disk, so it reaches 2048^3.
- ``zarr``: the same values written chunk by chunk (128^3, one chunk in memory at a
  time) to ``<workdir>/in-<N>.zarr`` and opened with ``xr.open_zarr(chunks=None)``
  (lazy, no dask), which takes apply's reader of stored chunks (rows of them along
  z where they fit a quarter of the budget, else tiles: the stored chunks themselves).
  4 N^3 bytes of disk before compression (4 GiB at 1024^3); kept between runs unless
  ``--clean``.

Each size runs in a fresh process; peak memory is the process's ``VmHWM`` minus its
RSS just before the run (``working``). ``--budget`` sets ``XPATCH_MEMORY_BUDGET`` (how
many bytes of open chunks stay in memory; the rest wait on disk). Stores and the
spill scratch go under ``--workdir`` (``TMPDIR`` of the child); the output store is
removed after each size. Also reported: chunks written to the scratch (``spills``,
``spill GiB``: the bytes that went to disk), the output store's size and, for the
zarr source, apply's reader: which (``rows`` or ``tiles``), the most units (tiles or
rows) it held at once (``held at most``, read-ahead included), the most bytes of
decoded units alive at once (``reader MiB``: held by the reader or by a patch that is
a view of one) and how many times each unit was decoded (``decodes per chunk``: a
tile is one stored chunk; a row's decodes are those of each stored chunk in it).
The fitted slope (MiB per million voxels) says whether memory grows with the volume.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
import numpy as np, xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing
import xpatch
from xpatch import _accumulate

n, source, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
CHUNK = 128

def values(z, y, x):
    return (np.sin(z * 0.05) + np.cos(y * 0.07) + np.sin(x * 0.03)).astype("float32")

class Generated(BackendArray):
    def __init__(self, shape):
        self.shape, self.dtype = shape, np.dtype("float32")
    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._raw)
    def _raw(self, key):
        return values(*np.ogrid[tuple(slice(*k.indices(s)) for k, s in zip(key, self.shape))])

def write_zarr(path):
    import zarr
    if os.path.exists(path + ".complete"):
        return
    shutil_rm(path)
    arr = zarr.open_group(path, mode="w").create_array(
        "v", shape=(n, n, n), chunks=(CHUNK,) * 3, dtype="float32",
        dimension_names=("z", "y", "x"))
    for i in range(0, n, CHUNK):
        for j in range(0, n, CHUNK):
            for k in range(0, n, CHUNK):
                arr[i:i + CHUNK, j:j + CHUNK, k:k + CHUNK] = values(
                    *np.ogrid[i:min(i + CHUNK, n), j:min(j + CHUNK, n), k:min(k + CHUNK, n)])
    open(path + ".complete", "w").close()

def shutil_rm(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)

if source == "zarr":
    path = f"{workdir}/in-{n}.zarr"
    t = time.perf_counter()
    write_zarr(path)
    written = time.perf_counter() - t
    da = xr.open_zarr(path, chunks=None, consolidated=False)["v"]
else:
    written = 0.0
    da = xr.DataArray(
        xr.Variable(("z", "y", "x"), indexing.LazilyIndexedArray(Generated((n, n, n)))), name="v")

# what apply's reader holds (zarr source): the decoded units (tiles, or rows where
# they fit) alive at once, what its schedule accounted, and how often each was decoded
from xpatch import _reader
import weakref
held = {"now": 0, "max": 0}
def track(arr):
    held["now"] += arr.nbytes
    held["max"] = max(held["max"], held["now"])
    weakref.finalize(arr, lambda b=arr.nbytes: held.__setitem__("now", held["now"] - b))
    return arr
readers = []
make = _reader.ChunkReader.make.__func__
def recorded(cls, *args, **kwargs):
    out = make(cls, *args, **kwargs)
    readers.append(out)
    return out
_reader.ChunkReader.make = classmethod(recorded)
for kind in (_reader.TileReader, _reader.RowReader):
    def reading(self, k, unit, read=kind._read):
        return track(read(self, k, unit))
    kind._read = reading

spills = {"count": 0, "bytes": 0}
write = _accumulate.Spill._write
def counting(self, cpos, buffers, weight_sum):
    spills["count"] += 1
    spills["bytes"] += sum(b.nbytes for b in buffers.values())
    return write(self, cpos, buffers, weight_sum)
_accumulate.Spill._write = counting

def model(p):
    v = p.values
    return np.stack([v * k for k in range(8)]).astype("float32")

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

out = f"{workdir}/out-{n}.zarr"
shutil_rm(out)
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
t = time.perf_counter()
da.patch.apply(model, z=64, y=64, x=64, step=48, chunks=CHUNK, output_dims=("class", "z", "y", "x"),
               on_chunk=lambda c: c.argmax("class", skipna=False).astype("uint8"), out=out)
elapsed = time.perf_counter() - t
peak = status("VmHWM")
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
shutil_rm(out)
stats = {"reader": "", "units_max": 0, "budget_mib": 0.0, "accounted_mib": 0.0,
         "decodes_max": 0, "decodes_mean": 0.0}
streamed = [r for r in readers if r is not None and r.schedule is not None]
if streamed:
    r = streamed[-1]
    s = r.schedule
    # a row of stored chunks holds many chunks, each decoded with it: per stored chunk,
    # a row's decodes
    reads = np.array(list(s.reads.values()))
    stats = {"reader": "tiles" if isinstance(r, _reader.TileReader) else "rows",
             "units_max": s.peak_tiles, "budget_mib": min(s.budget, 2**62) / 2**20,
             "accounted_mib": s.peak_bytes / 2**20, "decodes_max": int(reads.max()),
             "decodes_mean": float(reads.mean())}
print(json.dumps({"n": n, "source": source, "s": elapsed, "write_s": written, "before": before,
                  "peak": peak, "working": peak - before, "spills": spills["count"],
                  "spill_gib": spills["bytes"] / 2**30, "out_mib": size / 2**20,
                  "reader_mib": held["max"] / 2**20, **stats}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    ap.add_argument("--budget", default="256MiB", help="XPATCH_MEMORY_BUDGET for the runs")
    ap.add_argument("--source", choices=["generated", "zarr"], default="generated")
    ap.add_argument("--workdir", default="/tmp/xpatch-bench", help="stores and spill scratch")
    ap.add_argument("--clean", action="store_true", help="remove zarr inputs after each size")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    env = dict(os.environ, XPATCH_MEMORY_BUDGET=args.budget, TMPDIR=args.workdir)
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), args.source, args.workdir], env=env,
            cwd=args.workdir, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if args.clean:
            shutil.rmtree(f"{args.workdir}/in-{n}.zarr", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{args.workdir}/in-{n}.zarr.complete")
        if done.returncode:
            print(f"{n}^3 failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{n}^3 done in {time.perf_counter() - t:.0f} s: {rows[-1]}", file=sys.stderr)
    print(f"source {args.source}, budget {args.budget}\n")
    print(
        "| size | voxels (M) | s | RSS before MiB | peak MiB | working MiB"
        " | spills | spill GiB | out MiB | reader | held at most | reader MiB | decodes per chunk |"
    )
    print("|" + " ---: |" * 9 + " :--- |" + " ---: |" * 3)
    for r in rows:
        print(
            f"| {r['n']}^3 | {r['n'] ** 3 / 1e6:.0f} | {r['s']:.1f} | {r['before']:.0f} |"
            f" {r['peak']:.0f} | {r['working']:.0f} | {r['spills']} | {r['spill_gib']:.1f} |"
            f" {r['out_mib']:.0f} | {r.get('reader', '')} | {r.get('units_max', 0)} |"
            f" {r['reader_mib']:.0f} | {r.get('decodes_max', 0)} max,"
            f" {r.get('decodes_mean', 0):.2f} mean |"
        )
    if len(rows) >= 2:
        import numpy as np

        v = np.array([r["n"] ** 3 / 1e6 for r in rows])
        w = np.array([r["working"] for r in rows])
        slope, intercept = np.polyfit(v, w, 1)
        print(f"\nfit: working MiB = {intercept:.0f} + {slope:.3f} * Mvoxels")


if __name__ == "__main__":
    main()

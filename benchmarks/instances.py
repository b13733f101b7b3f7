"""Stitching instance labels of a large volume from patches, next to labelling it whole.

A synthetic label volume (balls of diameters 3..30 on a jittered lattice, never
touching) is segmented with ``func = skimage.measure.label(p > 0.5)`` per patch and
stitched with ``apply(..., merge="instances")``; the reference labels the whole
volume at once. The variants:

* ``scipy-whole``: ``scipy.ndimage.label`` on the whole volume (26-connectivity,
  as skimage's default), the lower bound of time, its memory the volume's labels.
* ``dask-image``: ``dask_image.ndmeasure.label`` on the volume chunked like the
  patches (optional: skipped if dask-image is not installed).
* ``xpatch-chunked``: eager ``apply(chunks=C)``: in memory, chunk by chunk.
* ``xpatch-zarr``: ``apply(chunks=C, out=store)``: both passes out of core; the
  input is a memory-mapped ``.npy``, so nothing the size of the volume is in memory.
* ``xpatch-dask``: the lazy graph on the volume chunked by C, computed with the
  threaded scheduler (2 threads) into a zarr store (``to_zarr``).

Each variant runs in a fresh process reading the volume from a memory-mapped file;
"peak" is the process's peak RSS (``VmHWM``, reset before the run) minus its RSS before the run
(interpreter and libraries), i.e. the memory the run itself needs. Every variant's
result is checked to be the same partition as ``scipy-whole``'s. Ratios are to
``scipy-whole``.

Usage (from the repository root; the 2-core machine of this project)::

    nice -n 10 python benchmarks/instances.py --size 256           # patch 128, step 96
    nice -n 10 python benchmarks/instances.py --size 512 --chunks 128
    nice -n 10 python benchmarks/instances.py --size 1024          # the issue's size: long

Measured (2 shared cores, ``nice -n 10 python benchmarks/instances.py --size 512``:
512^3, patch 128^3, step 96, chunks 128^3, ~3,400 balls on a 15^3 lattice), ratios to scipy-whole
(2.24 s, 768 MiB peak: the bool mask and the int32 labels):

=============== ====== ====== ====== ======
variant          time   x     peak   x
=============== ====== ====== ====== ======
scipy-whole      2.2 s  1.0    768    1.00
dask-image       511 s  228    1742   2.27
xpatch-chunked   7.9 s  3.5    1596   2.08
xpatch-zarr     10.9 s  4.9    340    0.44
xpatch-dask      7.8 s  3.5    1545   2.01
=============== ====== ====== ====== ======

Every variant gives the same partition as scipy-whole. xpatch-zarr's memory is a
chunk and the windows around it (the volume is 128 MiB); the eager and dask variants
hold the painted provisional ids (uint64) of the whole volume until the equivalence
table is resolved. At 256^3 (``--size 256``): time x6.4 / x9.1 / x9.3 and peak x2.68
/ x1.81 / x3.68 for chunked / zarr / dask, dask-image x31.5 and x2.43 (scipy 0.31 s,
96 MiB: at this size the fixed costs dominate).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from _memory import reset_peak, rss_now, rss_peak

VARIANTS = ("scipy-whole", "dask-image", "xpatch-chunked", "xpatch-zarr", "xpatch-dask")
MiB = 2**20


def make_volume(n: int, seed: int = 0, spacing: int = 34) -> np.ndarray:
    """Balls of diameters 3..30 on a jittered lattice (at least 2 voxels apart)."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((n, n, n), dtype=np.uint8)
    centres = np.arange(spacing // 2, n, spacing)
    for cz in centres:
        for cy in centres:
            for cx in centres:
                r = rng.uniform(1.5, 15)
                slack = (spacing - 2 * r - 2) / 2
                c = np.array([cz, cy, cx]) + rng.uniform(-slack, slack, 3) * (slack > 0)
                lo = np.maximum(np.floor(c - r).astype(int), 0)
                hi = np.minimum(np.ceil(c + r).astype(int) + 1, n)
                box = tuple(slice(a, b) for a, b in zip(lo, hi))
                g = np.ogrid[box]
                ball = sum((gi - ci) ** 2 for gi, ci in zip(g, c)) <= r * r
                vol[box][ball] = 1
    return vol


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if not np.array_equal(a == 0, b == 0):
        return False
    nz = a != 0
    key = a[nz].astype(np.uint64) << np.uint64(32) | b[nz].astype(np.uint64)
    pairs = np.unique(key)
    first, second = pairs >> np.uint64(32), pairs & np.uint64(0xFFFFFFFF)
    return len(np.unique(first)) == len(pairs) == len(np.unique(second))


def run_variant(name: str, path: str, patch: int, step: int, chunks: int, workdir: str) -> dict:
    """One variant in this (fresh) process: the labels go to ``workdir/<name>.npy``."""
    import xarray as xr
    from scipy import ndimage
    from skimage.measure import label

    import xpatch  # noqa: F401

    vol = np.load(path, mmap_mode="r")
    func = lambda p: label(np.asarray(p) > 0)  # noqa: E731
    reset_peak()
    base = rss_now()
    t0 = time.perf_counter()
    if name == "scipy-whole":
        out, n = ndimage.label(np.asarray(vol) > 0, structure=np.ones((3, 3, 3)))
    elif name == "dask-image":
        import dask
        import dask.array as dsa
        from dask_image import ndmeasure

        with dask.config.set(scheduler="threads", num_workers=2):
            lazy, n = ndmeasure.label(dsa.from_array(vol, chunks=chunks) > 0, np.ones((3,) * 3))
            out, n = dask.compute(lazy, n)
    else:
        da = xr.DataArray(vol, dims=("z", "y", "x"))
        sizes = dict(z=patch, y=patch, x=patch)
        store = os.path.join(workdir, f"{name}.zarr")
        if name == "xpatch-chunked":
            out = da.patch.apply(func, step=step, chunks=chunks, merge="instances", **sizes)
            out = out.values
        elif name == "xpatch-zarr":
            da.patch.apply(func, step=step, chunks=chunks, merge="instances", out=store, **sizes)
            out = None
        else:
            import dask

            lazy = da.chunk(chunks).patch.apply(func, step=step, merge="instances", **sizes)
            with dask.config.set(scheduler="threads", num_workers=2):
                lazy.to_dataset(name="labels").to_zarr(store, mode="w")
            out = None
    wall = time.perf_counter() - t0
    peak = rss_peak() - base
    if out is None:
        import zarr

        group = zarr.open_group(store, mode="r")
        out = np.asarray(group[next(iter(group.array_keys()))])
    np.save(os.path.join(workdir, f"{name}.npy"), out)
    return {"variant": name, "wall_s": wall, "peak_MiB": peak / MiB, "dtype": str(out.dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="volume edge (default 256)")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--step", type=int, default=96)
    parser.add_argument("--chunks", type=int, default=128)
    parser.add_argument("--only", nargs="*", choices=VARIANTS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, workdir = args.child
        path = os.path.join(workdir, "volume.npy")
        res = run_variant(name, path, args.patch, args.step, args.chunks, workdir)
        print(json.dumps(res))
        return
    workdir = tempfile.mkdtemp(prefix="xpatch-instances-")
    vol = make_volume(args.size)
    np.save(os.path.join(workdir, "volume.npy"), vol)
    print(
        f"volume {args.size}^3 uint8 ({vol.nbytes / MiB:.0f} MiB), patch {args.patch}^3,"
        f" step {args.step}, chunks {args.chunks}^3, {os.cpu_count()} CPUs"
    )
    del vol
    rows = []
    for name in args.only or VARIANTS:
        if name == "dask-image":
            try:
                import dask_image  # noqa: F401
            except ImportError:
                print("dask-image not installed: skipped")
                continue
        cmd = [sys.executable, __file__, "--child", name, workdir]
        cmd += ["--patch", str(args.patch), "--step", str(args.step), "--chunks", str(args.chunks)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{name} failed:\n{done.stderr[-2000:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ref = np.load(os.path.join(workdir, "scipy-whole.npy"), mmap_mode="r")
    base = next((r for r in rows if r["variant"] == "scipy-whole"), None)
    head = f"{'variant':16} {'wall s':>8} {'x time':>7} {'peak MiB':>9} {'x mem':>6}"
    print(f"\n{head}  dtype   same")
    for r in rows:
        same = same_partition(np.load(os.path.join(workdir, f"{r['variant']}.npy")), ref)
        tr = r["wall_s"] / base["wall_s"] if base else float("nan")
        mr = r["peak_MiB"] / base["peak_MiB"] if base else float("nan")
        print(
            f"{r['variant']:16} {r['wall_s']:8.2f} {tr:7.1f} {r['peak_MiB']:9.0f} {mr:6.2f}"
            f"  {r['dtype']:7} {same}"
        )
    del ref
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

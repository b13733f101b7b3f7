"""Peak memory of 3-D segmentation-style inference: blend 8 class scores, then argmax.

A volume is tiled with overlapping patches; the "model" returns 8 class scores per
voxel (a fresh float32 array, 8x the patch); the scores are blended with gaussian
weights and turned into uint8 labels. The variants:

* ``xpatch-unchunked``: ``apply`` then ``argmax("class")``: the full 8-class float32
  score volume is held in memory.
* ``xpatch-chunked``: ``apply(chunks=C, on_chunk=argmax)``: each chunk is reduced to
  labels the moment its last patch lands, then freed.
* ``xpatch-zarr``: the same, writing the labels to a zarr store (``out=``) as
  chunks finish; the labels are read back only to compare them.
* ``patchly-chunked``: Patchly 0.0.19's chunk mode (``GridSampler(chunk_size=...)``,
  ``Aggregator(softmax_dim=0, chunk_postprocess_func=argmax)``); its
  ``chunk_postprocess_func`` only runs when ``softmax_dim`` is set, and receives the
  un-normalised weighted sums (fine for an argmax).

Each variant runs in a fresh Python process: one run for wall time and peak RSS
(``ru_maxrss``), then the same run again under ``tracemalloc`` for the peak of the
allocations made during it (numpy reports its buffers to tracemalloc; caches warmed
by the first run are not counted again). "working" is the peak RSS minus the child's
RSS just before the first run (interpreter, libraries and input), i.e. the memory
the run itself needs; the ratio column divides it by xpatch-chunked's.

The model is per-voxel affine, ``score_k = a_k * v + b_k`` with the lines tangent
to a parabola, so each class wins on its own interval of the voxel value and the
blended scores equal the per-voxel scores: every variant must give the exact
labels ``argmax_k(a_k * v + b_k)`` except where two classes tie to rounding.

A second table times chunk planning for a 2-D grid of ~29,000 patches and 64
chunks: xpatch's ``Aggregator`` + ``chunk_order``, and with ``--patchly-planning``
Patchly's chunked ``GridSampler`` (an O(patches x chunks) Python loop: minutes).

Usage (from the repository root)::

    python benchmarks/memory_chunked.py                 # 160^3, patch 48, step 24, chunks 64
    python benchmarks/memory_chunked.py --size 192 --no-tracemalloc
    python benchmarks/memory_chunked.py --only xpatch-chunked --patchly-planning
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from _memory import reset_peak, rss_now, rss_peak, ru_maxrss

VARIANTS = ("xpatch-unchunked", "xpatch-chunked", "xpatch-zarr", "patchly-chunked")
N_CLASSES = 8
MiB = 2**20


def lines() -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of N_CLASSES lines tangent to -(v - 0.5)^2 at (k + 0.5) / N."""
    t = (np.arange(N_CLASSES) + 0.5) / N_CLASSES
    a = -2.0 * (t - 0.5)
    b = -((t - 0.5) ** 2) - a * t
    return a.astype("float32"), b.astype("float32")


def make_volume(n: int) -> np.ndarray:
    """A smooth-ish volume in [0, 1): sums of sines, so labels form regions."""
    z, y, x = np.ogrid[:n, :n, :n]
    v = np.sin(z / 9.0) + np.sin(y / 7.0 + 1) + np.sin(x / 11.0 + 2) + np.sin((x + y + z) / 13.0)
    return ((v + 4) / 8).astype("float32")


def expected_labels(vol: np.ndarray) -> np.ndarray:
    """Per-voxel argmax, one z-slice at a time (the parent stays small)."""
    a, b = lines()
    out = np.empty(vol.shape, dtype="uint8")
    for k, plane in enumerate(vol):
        out[k] = (plane[None] * a[:, None, None] + b[:, None, None]).argmax(0)
    return out


# --- children ------------------------------------------------------------------------------
def run_variant(variant: str, vol: np.ndarray, args: argparse.Namespace, tag: str) -> np.ndarray:
    """One complete inference run; returns the labels (numpy or lazily opened)."""
    a, b = lines()
    a4, b4 = a[:, None, None, None], b[:, None, None, None]

    def model(patch: np.ndarray) -> np.ndarray:
        CALLS[0] += 1
        return patch[None] * a4 + b4  # fresh float32 (8, P, P, P)

    size, step, chunk = args.patch, args.step, args.chunk
    if variant.startswith("xpatch"):
        import xarray as xr

        import xpatch  # noqa: F401  (registers .patch)

        n = vol.shape[0]
        # with coordinates: on_chunk fails on a coordinate-less DataArray (see README)
        coords = {d: np.arange(n) for d in ("z", "y", "x")}
        da = xr.DataArray(vol, dims=("z", "y", "x"), coords=coords, name="vol")
        kw = dict(z=size, y=size, x=size, step=step, weights="gaussian")
        kw["output_dims"] = ("class", "z", "y", "x")

        def func(p: xr.DataArray) -> np.ndarray:
            return model(p.values)

        def to_labels(c: xr.DataArray) -> xr.DataArray:
            return c.argmax("class").astype("uint8")

    if variant == "xpatch-unchunked":
        scores = da.patch.apply(func, **kw)
        return scores.argmax("class").astype("uint8").values
    if variant == "xpatch-chunked":
        return da.patch.apply(func, chunks=chunk, on_chunk=to_labels, **kw).values
    if variant == "xpatch-zarr":
        store = Path(args.workdir) / f"labels-{tag}.zarr"
        return da.patch.apply(func, chunks=chunk, on_chunk=to_labels, out=store, **kw)
    if variant == "patchly-chunked":
        from patchly.aggregator import Aggregator
        from patchly.sampler import GridSampler

        sampler = GridSampler(  # single-use in chunk mode: one per run
            image=vol,
            spatial_size=vol.shape,
            patch_size=(size,) * 3,
            step_size=(step,) * 3,
            chunk_size=(chunk,) * 3,
        )
        agg = Aggregator(
            sampler=sampler,
            output=np.zeros(vol.shape, dtype="uint8"),
            weights="gaussian",
            softmax_dim=0,  # without it chunk_postprocess_func is never called
            spatial_first=False,
            chunk_postprocess_func=lambda c: c.argmax(axis=0).astype("uint8"),
        )
        for patch, bbox in sampler:
            agg.append(model(patch), bbox)
        return np.asarray(agg.get_output())
    raise SystemExit(f"unknown variant {variant}")


CALLS = [0]


def child(args: argparse.Namespace) -> None:
    """Run one variant in this fresh process: time and peak RSS, then a traced rerun."""
    import gc

    import xarray  # noqa: F401  (imported before the baseline, for every variant alike)

    if args.variant.startswith("patchly"):
        import patchly.aggregator  # noqa: F401
    else:
        import xpatch  # noqa: F401
    vol = np.load(Path(args.workdir) / "volume.npy")  # made by the parent: no temporaries here
    gc.collect()
    reset = reset_peak()  # forget the peaks of the imports
    baseline = rss_now()
    t0 = time.perf_counter()
    labels = run_variant(args.variant, vol, args, "timed")
    seconds = time.perf_counter() - t0
    peak = rss_peak()
    maxrss = ru_maxrss()
    calls = CALLS[0]
    np.save(Path(args.workdir) / f"{args.variant}.npy", np.asarray(labels))
    del labels
    gc.collect()
    traced = None
    if args.trace:  # the same run again, under tracemalloc (RSS is already measured)
        tracemalloc.start()
        labels = run_variant(args.variant, vol, args, "traced")
        np.asarray(labels)  # the zarr variant: count reading the labels back too
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    row = dict(seconds=seconds, baseline=baseline, peak=peak, maxrss=maxrss, reset=reset)
    print(json.dumps(dict(row, traced=traced, calls=calls)))


def planning_child(args: argparse.Namespace) -> None:
    """Time chunk planning: 2720^2, patch 32, step 16 (~29k patches), chunks 340 (8x8)."""
    n, size, step, chunk = 2720, 32, 16, 340
    t0 = time.perf_counter()
    if args.variant == "xpatch":
        import xarray as xr

        import xpatch

        template = xr.DataArray(np.zeros((n, n), dtype="float32"), dims=("y", "x"))
        grid = template.patch.grid(y=size, x=size, step=step)
        t0 = time.perf_counter()
        agg = xpatch.Aggregator(template, grid, chunks=chunk)
        agg.layout.order()
        patches = len(grid)
    else:
        from patchly.sampler import GridSampler

        t0 = time.perf_counter()
        sampler = GridSampler(
            image=None,
            spatial_size=(n, n),
            patch_size=(size, size),
            step_size=(step, step),
            chunk_size=(chunk, chunk),
        )
        patches = len(sampler)
    print(json.dumps(dict(seconds=time.perf_counter() - t0, patches=patches)))


# --- parent --------------------------------------------------------------------------------
def run_child(argv: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=160, help="volume edge length")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--step", type=int, default=24)
    parser.add_argument("--chunk", type=int, default=64, help="Patchly needs chunk > patch")
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--no-tracemalloc", action="store_true")
    parser.add_argument("--no-planning", action="store_true")
    parser.add_argument(
        "--patchly-planning", action="store_true", help="also time Patchly's planning (slow)"
    )
    parser.add_argument("--child", dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--planning-child", dest="planning", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.planning:
        args.variant = args.planning
        planning_child(args)
        return
    if args.variant:
        child(args)
        return

    started = time.perf_counter()
    n, p, s, c = args.size, args.patch, args.step, args.chunk
    vol = make_volume(n)
    truth = expected_labels(vol)
    n_chunks = math.ceil(n / c) ** 3
    print(
        f"volume {n}^3 float32 = {vol.nbytes / MiB:.1f} MiB; patch {p}, step {s}, chunks {c}"
        f" ({n_chunks} chunks); {N_CLASSES} classes: scores {N_CLASSES * vol.nbytes / MiB:.1f}"
        f" MiB float32, labels {truth.nbytes / MiB:.1f} MiB uint8;"
        f" one patch result {N_CLASSES * 4 * p**3 / MiB:.1f} MiB"
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load avg {os.getloadavg()}")
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        np.save(Path(workdir) / "volume.npy", vol)
        for variant in args.only.split(","):
            base = ["--child", variant, "--workdir", workdir]
            base += ["--size", str(n), "--patch", str(p), "--step", str(s), "--chunk", str(c)]
            row = run_child(base + ([] if args.no_tracemalloc else ["--trace"]), timeout=600)
            if "error" not in row:
                labels = np.load(Path(workdir) / f"{variant}.npy")
                row["truth"] = float((labels == truth).mean())
                row["labels"] = labels
            rows[variant] = row

    ref = rows.get("xpatch-chunked", {})
    ref_work = ref.get("peak", 0) - ref.get("baseline", 0)
    header = (
        f"{'variant':<18} {'seconds':>8} {'RSS before':>10} {'peak RSS':>9} {'working':>8}"
        f" {'ratio':>6} {'traced':>8} {'ratio':>6} {'ru_maxrss':>9} {'patches':>7}"
        f" {'=truth':>9} {'=xp-chunked':>11}"
    )
    print()
    print(
        "memory in MiB. peak RSS: VmHWM of the child during the run (reset before it);"
        " working = peak RSS - RSS before;\ntraced = tracemalloc peak of the run;"
        " ratio = working (or traced) / xpatch-chunked's; ru_maxrss: getrusage of the child"
        " (includes imports and, on Linux, the parent's peak at fork)"
    )
    print(header)
    print("-" * len(header))
    for variant, row in rows.items():
        if "error" in row:
            print(f"{variant:<18} failed: {row['error']}")
            continue
        work = row["peak"] - row["baseline"]
        traced = row.get("traced")
        same = "-"
        if "labels" in ref:
            same = f"{(row['labels'] == ref['labels']).mean():.6f}"
        ratio = f"{work / ref_work:.2f}" if ref_work > 0 else "-"
        t_ratio = (
            "-" if traced is None or not ref.get("traced") else f"{traced / ref['traced']:.2f}"
        )
        t_text = "-" if traced is None else f"{traced / MiB:.1f}"
        print(
            f"{variant:<18} {row['seconds']:>8.2f} {row['baseline'] / MiB:>10.1f}"
            f" {row['peak'] / MiB:>9.1f} {work / MiB:>8.1f} {ratio:>6} {t_text:>8} {t_ratio:>6}"
            f" {row['maxrss'] / MiB:>9.1f} {row['calls']:>7} {row['truth']:>9.6f} {same:>11}"
        )
        if not row.get("reset"):
            print(f"{'':<18} (peak RSS not reset: it includes the imports)")

    if not args.no_planning:
        print()
        print("chunk planning, 2720^2, patch 32, step 16, chunks 340 (8x8 = 64 chunks)")
        peers = ["xpatch"] + (["patchly"] if args.patchly_planning else [])
        for peer in peers:
            row = run_child(["--planning-child", peer], timeout=600)
            if "error" in row:
                print(f"  {peer:<8} failed: {row['error']}")
            else:
                print(f"  {peer:<8} {row['patches']} patches: {row['seconds']:.3f} s")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

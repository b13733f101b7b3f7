"""The scale issue's dask workload on a distributed ``LocalCluster``: 1 vs 2 workers.

A 3-D float32 volume (``--size`` cubed, default 512; the issue measured 768), chunked
``--chunk`` (128), patch 64, step 48, a func giving 8 classes (class k: how close
each value lies to k / 8), gaussian weights and ``on_chunk=argmax`` (uint8 labels per block, as a
segmentation run keeps them). Next to it, on the same clusters and input:
``dask.array.map_overlap`` with ``depth = (patch - step) / 2``, the same 8-class func on
each block plus its margins, cropped (``trim=True``), then the argmax per block; it is
not the same computation (cropping, not blending), but the same job done the way a dask
user would.

A 1-worker and a 2-worker cluster (processes, 1 thread each) are up for the whole run;
the input is persisted on both before timing; runs are interleaved (``--rounds``, order
shuffled). Per run: wall seconds (graph build + ``persist`` + wait), bytes moved between
workers (``transfer_outgoing_bytes_total`` deltas), each worker's peak RSS above its RSS
before the run (``VmHWM`` after a reset through ``/proc/self/clear_refs``), the graph's
keys, and a sha1 of the labels (xpatch's 1- and 2-worker labels must be identical). The
moved bytes are compared with the size of the full 8-class scores (never held whole by
either tool), the issue's yardstick.

Usage (from the repository root, venv active; prefix ``nice -n 10`` on a shared box)::

    python benchmarks/dask_volume.py                         # 512^3, ~5 min
    python benchmarks/dask_volume.py --size 768 --rounds 1   # the issue's size, ~10 min
    python benchmarks/dask_volume.py --size 256 --rounds 1   # smoke run, ~30 s

With ``--frontier``, one 1-worker cluster per size and memory limit instead: the input
is generated on the worker block by block (not persisted), and the worker's peak RSS
above its RSS after a small warm-up run is reported with what it spilled to disk. The
parts of the groups' sums that wait for blocks ahead form a frontier that grows with the
volume's cross-section; a ``memory_limit`` makes the worker spill them (dask's own
spilling), which bounds its memory::

    python benchmarks/dask_volume.py --frontier 256 384 512 640 --memory-limit 0 1GiB  # ~6 min

Nothing is asserted; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dask_scaling import local_cluster, peak_reset, sent_bytes, vm_hwm_mib

CLASSES = 8


def classes8(values):
    """8 class scores from one patch, float32: class k scores how close a value (in
    [0, 1)) lies to k / 8, so the argmax is the value's bin."""
    import numpy as np

    centre = (np.arange(CLASSES, dtype=np.float32) / CLASSES).reshape(
        (CLASSES,) + (1,) * values.ndim
    )
    return 1 - np.abs(values[None].astype(np.float32) - centre)


def argmax_u8(scores):
    return scores.argmax(0).astype("uint8")


def segment(image, args):
    """xpatch's lazy run of the workload: 8 class scores per patch, blended, argmax per
    block (uint8); the dask array of labels."""
    return image.patch.apply(
        lambda p: classes8(p.values),
        dict.fromkeys(image.dims, args.patch),
        step=args.step,
        weights="gaussian",
        output_dims=("class", *image.dims),
        chunks=args.chunk,
        on_chunk=lambda c: c.argmax("class", skipna=False).astype("uint8"),
    ).data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--step", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="xpatch,map_overlap")
    parser.add_argument("--frontier", type=int, nargs="+", metavar="SIZE")
    parser.add_argument("--memory-limit", nargs="+", default=["0", "1GiB"])
    args = parser.parse_args()
    if args.frontier:
        frontier(args)
        return

    import dask.array as dsa
    import numpy as np
    import xarray as xr
    from distributed import futures_of, wait

    import xpatch  # noqa: F401

    n = args.size
    arr = dsa.random.RandomState(0).random_sample((n,) * 3, chunks=args.chunk).astype("float32")
    image = xr.DataArray(arr, dims=("z", "y", "x"), name="volume")
    depth = (args.patch - args.step) // 2
    scores_mib = CLASSES * n**3 * 4 / 2**20

    def block_func(block):
        return argmax_u8(classes8(block)[(slice(None),) + (slice(depth, -depth),) * 3])

    clusters, clients, inputs = {}, {}, {}
    rows = []
    try:
        for w in (1, 2):
            clusters[w], clients[w] = local_cluster(w, memory_limit=0)
            with clients[w].as_current():
                persisted = clients[w].persist(image)
                wait(futures_of(persisted))
            inputs[w] = persisted

        def one(variant: str, w: int) -> dict:
            client = clients[w]
            persisted = inputs[w]
            with client.as_current():
                base = client.run(peak_reset)
                sent0 = sum(client.run(sent_bytes).values())
                t0 = time.perf_counter()
                if variant == "xpatch":
                    lazy = segment(persisted, args)
                else:
                    lazy = persisted.data.map_overlap(
                        block_func, depth=depth, boundary="reflect", trim=False, dtype="uint8"
                    )
                keys = len(lazy.__dask_graph__())
                done = client.persist(lazy)
                wait(futures_of(done))
                wall = time.perf_counter() - t0
                sent = sum(client.run(sent_bytes).values()) - sent0
                peaks = client.run(vm_hwm_mib)
                labels = done.compute()
            return {
                "variant": variant,
                "workers": w,
                "wall_s": wall,
                "moved_mib": sent / 2**20,
                "peak_mib": [round(peaks[k] - base[k]) for k in sorted(peaks)],
                "keys": keys,
                "sha1": hashlib.sha1(np.ascontiguousarray(labels).tobytes()).hexdigest()[:10],
            }

        variants = args.variants.split(",")
        plan = [(v, w) for v in variants for w in (1, 2)]
        for v, w in plan:  # warm-up: imports and first-call costs on every worker
            one(v, w)
        rng = random.Random(0)
        for _ in range(args.rounds):
            rng.shuffle(plan)
            for v, w in plan:
                rows.append(one(v, w))
                print(rows[-1], flush=True)
    finally:
        for c in clients.values():
            c.close()
        for c in clusters.values():
            c.close()

    print(
        f"\n{n}^3 float32 ({n**3 * 4 / 2**20:.0f} MiB), chunks {args.chunk}, patch "
        f"{args.patch} step {args.step}, {CLASSES} classes: full scores {scores_mib:.0f} MiB"
    )
    print(
        "| variant | workers | wall s, median (all) | speed-up 2 vs 1 | moved MiB "
        "(x scores) | worker peak MiB above start | keys | labels sha1 |"
    )
    print("| --- | ---: | --- | ---: | ---: | --- | ---: | --- |")
    for v in variants:
        med = {}
        for w in (1, 2):
            rs = [r for r in rows if r["variant"] == v and r["workers"] == w]
            walls = [r["wall_s"] for r in rs]
            med[w] = statistics.median(walls)
            moved = statistics.median(r["moved_mib"] for r in rs)
            peak = [max(r["peak_mib"][i] for r in rs) for i in range(w)]
            speed = f"{med[1] / med[2]:.2f}x" if w == 2 else "-"
            print(
                f"| {v} | {w} | {med[w]:.2f} ({', '.join(f'{t:.2f}' for t in walls)}) | "
                f"{speed} | {moved:.1f} ({moved / scores_mib:.3f}) | "
                f"{', '.join(map(str, peak))} | {rs[0]['keys']} | "
                f"{', '.join(sorted({r['sha1'] for r in rs}))} |"
            )


def spilled(dask_worker) -> tuple[float, float]:
    """Keys and bytes this worker has written to its spill directory since it started."""
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    count = sum(
        v for (label, unit), v in metrics.items() if label == "disk-write" and unit == "count"
    )
    nbytes = sum(
        v for (label, unit), v in metrics.items() if label == "disk-write" and unit == "bytes"
    )
    return count, nbytes


def frontier(args) -> None:
    """One worker's peak memory against the volume's size, with and without a memory limit."""
    import dask.array as dsa
    import xarray as xr
    from distributed import futures_of, wait

    import xpatch  # noqa: F401

    def run(client, n: int) -> tuple[float, float, tuple[float, float]]:
        arr = dsa.random.RandomState(0).random_sample((n,) * 3, chunks=args.chunk)
        image = xr.DataArray(arr.astype("float32"), dims=("z", "y", "x"), name="volume")
        with client.as_current():
            base = client.run(peak_reset)
            spill0 = client.run(spilled)
            t0 = time.perf_counter()
            lazy = segment(image, args)
            done = client.persist(lazy)
            wait(futures_of(done))
            wall = time.perf_counter() - t0
            peak = client.run(vm_hwm_mib)
            spill1 = client.run(spilled)
        (k,) = peak
        moved = tuple(b - a for a, b in zip(spill0[k], spill1[k]))
        return wall, peak[k] - base[k], moved

    rows = []
    for limit in args.memory_limit:
        for n in args.frontier:
            cluster, client = local_cluster(1, memory_limit=0 if limit == "0" else limit)
            try:
                run(client, 2 * args.chunk)  # warm-up: imports and first-call costs
                wall, peak, (keys, nbytes) = run(client, n)
            finally:
                client.close()
                cluster.close()
            rows.append((limit, n, wall, peak, keys, nbytes))
            print(rows[-1], flush=True)
    print(
        f"\n1 worker, chunks {args.chunk}, patch {args.patch} step {args.step}, {CLASSES}"
        " classes, on_chunk=argmax"
    )
    print("| memory_limit | size | wall s | worker peak MiB above start | spilled keys (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for limit, n, wall, peak, keys, nbytes in rows:
        print(
            f"| {'none' if limit == '0' else limit} | {n}^3 | {wall:.1f} | {peak:,.0f} |"
            f" {keys:.0f} ({nbytes / 2**20:,.0f}) |"
        )


if __name__ == "__main__":
    main()

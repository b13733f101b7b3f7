"""How ``apply`` scales from eager numpy to dask threads and a distributed cluster.

One CPU-bound workload (a 2-D float32 image; ``scipy.ndimage.gaussian_filter`` on
every patch, blended with gaussian weights) runs in four variants, each in a fresh
subprocess so that imports, caches and peak memory do not leak between them:

- ``eager``     numpy input, the eager path of ``apply``;
- ``threads``   dask input (chunked), dask's threaded scheduler;
- ``cluster1``  dask input, ``distributed.LocalCluster`` with 1 worker x 1 thread;
- ``cluster2``  dask input, ``distributed.LocalCluster`` with 2 workers x 1 thread.

Every variant builds the same input (``dask.array.random.RandomState(0)``, chunked,
held in memory before timing starts: computed to numpy for eager, persisted for the
others), so their checksums must agree. Reported: wall seconds of ``apply`` plus
compute (graph building included, cluster start-up excluded), speed-up against
eager, and peak resident memory (of the process for eager and threads; of each
worker process, via ``getrusage``, for the clusters; with the resident memory
just before the run in brackets).

``--compare`` runs a second benchmark instead: xpatch's lazy ``apply`` next to
``dask.array.map_overlap`` doing the equivalent job, and a bare process pool as
the reference, each with 1 and with 2 worker processes (1 thread each). The func
sleeps ``--sleep`` seconds (default 20 ms) per patch plus a light numpy op, so that
2 workers can show a speed-up even on a busy 2-core box. The input (2304x2304
float32, chunked ``--step``) is persisted on both clusters before timing;
``map_overlap`` gets ``depth = (patch - step) / 2``, ``boundary="reflect"``,
``trim=True``, so each of its blocks is one patch (12x12 = 144 func calls, as many
as xpatch's windows). A 1-worker and a 2-worker ``LocalCluster`` are both up for
the whole run and the runs are interleaved (``--rounds`` rounds, each order
shuffled), so load on a shared box hits both alike. Per run: wall seconds of build
+ ``persist`` + wait (results stay on the workers; gathering them for the checksum
is not timed), bytes moved between workers (``transfer_outgoing_bytes_total``
deltas, ``sizeof`` estimates; 0 with 1 worker), peak RSS of each worker (VmHWM,
reset through ``/proc/self/clear_refs`` just before the run) and the result
checksum. xpatch blends, ``map_overlap`` crops, so their checksums differ; xpatch's
1- and 2-worker results must be identical (a sha1 of the bytes is compared).

Usage::

    python benchmarks/dask_scaling.py              # the full workload (~1-2 min)
    python benchmarks/dask_scaling.py --quick      # a smaller image, for CI smoke runs
    python benchmarks/dask_scaling.py --child threads --size 1024   # one variant, JSON
    python benchmarks/dask_scaling.py --compare    # xpatch vs map_overlap vs pool (~2 min)
    python benchmarks/dask_scaling.py --compare --rounds 1 --size 1152   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("eager", "threads", "cluster1", "cluster2")
COMPARE = ("xpatch", "map_overlap", "pool")


def rss_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc; else peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return peak_mib()


def peak_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def make_input(size: int, chunk: int):
    import dask.array as dsa
    import numpy as np
    import xarray as xr

    data = dsa.random.RandomState(0).random_sample((size, size), chunks=chunk)
    data = data.astype(np.float32)
    coords = {"y": np.arange(size) * 10.0, "x": np.arange(size) * 10.0}
    return xr.DataArray(data, dims=("y", "x"), coords=coords, name="image")


def make_func(sigma: float):
    from scipy import ndimage

    def smooth(patch):
        return patch.copy(data=ndimage.gaussian_filter(patch.values, sigma=sigma))

    return smooth


def child(args: argparse.Namespace) -> dict:
    """Run one variant in this process and return its measurements."""
    import dask
    import numpy as np

    import xpatch  # noqa: F401

    image = make_input(args.size, args.chunk)
    func = make_func(args.sigma)
    kw = {"y": args.patch, "x": args.patch, "step": args.step, "weights": "gaussian"}
    out: dict = {"variant": args.child}
    if args.child == "eager":
        image = image.compute(scheduler="sync")
        base = rss_mib()
        t0 = time.perf_counter()
        result = image.patch.apply(func, **kw)
        out["wall_s"] = time.perf_counter() - t0
        out["base_mib"] = [base]
        out["peak_mib"] = [peak_mib()]
    elif args.child == "threads":
        image = image.persist(scheduler="threads")  # input in memory, as for eager
        base = rss_mib()
        t0 = time.perf_counter()
        lazy = image.patch.apply(func, **kw)
        out["build_s"] = time.perf_counter() - t0
        with dask.config.set(scheduler="threads", num_workers=args.threads):
            result = lazy.compute()
        out["wall_s"] = time.perf_counter() - t0
        out["base_mib"] = [base]
        out["peak_mib"] = [peak_mib()]
    else:
        from distributed import Client, LocalCluster, wait

        n_workers = int(args.child[-1])
        with (
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(lambda: __import__("xpatch") and __import__("scipy.ndimage"))
            image = client.persist(image)  # input in worker memory, as for eager
            wait(image)
            base = client.run(rss_mib)
            t0 = time.perf_counter()
            lazy = image.patch.apply(func, **kw)
            out["build_s"] = time.perf_counter() - t0
            result = client.compute(lazy).result()
            out["wall_s"] = time.perf_counter() - t0
            out["base_mib"] = list(base.values())
            out["peak_mib"] = list(client.run(peak_mib).values())
            out["client_peak_mib"] = peak_mib()
    values = result.values
    out["checksum"] = float(np.nansum(values.astype(np.float64)))
    out["n_patches"] = len(image.patch.grid(y=args.patch, x=args.patch, step=args.step))
    out["result_mib"] = values.nbytes / 2**20
    return out


def light(values):
    """The light numpy part of the compare func (elementwise, same shape)."""
    import numpy as np

    return np.sqrt(values) * 2.0 + 1.0


def slow_patch(values, sleep: float):
    """The compare func on a bare array: ``sleep`` seconds plus :func:`light`."""
    time.sleep(sleep)
    return light(values)


def peak_reset() -> float:
    """Reset this process's VmHWM to its current RSS; return that RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not Linux / not permitted
        pass
    return rss_mib()


def vm_hwm_mib() -> float:
    """Peak RSS since the last :func:`peak_reset` (VmHWM), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:  # pragma: no cover - not Linux
        pass
    return peak_mib()


def local_cluster(n: int, **extra):
    """A ``LocalCluster`` of ``n`` one-thread worker processes and its client, with
    xpatch imported on every worker."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=40,
        **extra,
    )
    client = Client(cluster, set_as_default=False)
    client.run(lambda: __import__("xpatch"))
    return cluster, client


def sent_bytes(dask_worker) -> int:
    """Bytes this worker has sent (``get_data``) since it started."""
    return dask_worker.transfer_outgoing_bytes_total


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Window starts along one axis with the last one pushed back to fit (squeeze)."""
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def pool_run(pool, image, args: argparse.Namespace):
    """Cut every window, run the func in ``pool``, mean-blend in this process."""
    import numpy as np

    starts = window_starts(args.size, args.patch, args.step)
    slices = [(slice(y, y + args.patch), slice(x, x + args.patch)) for y in starts for x in starts]
    patches = [image[sl] for sl in slices]
    out = np.zeros(image.shape, np.float64)
    count = np.zeros(image.shape, np.float32)
    results = pool.map(slow_patch, patches, [args.sleep] * len(patches))
    for sl, res in zip(slices, results):
        out[sl] += res
        count[sl] += 1
    return (out / count).astype(np.float32), 2 * sum(p.nbytes for p in patches)


def compare(args: argparse.Namespace) -> dict:
    """xpatch lazy apply vs map_overlap vs a bare pool, 1 and 2 workers, interleaved."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    from distributed import futures_of, wait

    import xpatch  # noqa: F401

    image = make_input(args.size, args.chunk)
    depth = (args.patch - args.step) // 2
    sleep = args.sleep

    def patch_func(patch):
        time.sleep(sleep)
        return patch.copy(data=light(patch.values))

    def block_func(block):
        time.sleep(sleep)
        return light(block)

    kw = {"y": args.patch, "x": args.patch, "step": args.step, "weights": "gaussian"}
    n_patches = len(image.patch.grid(y=args.patch, x=args.patch, step=args.step))
    clusters, clients, inputs, pools = {}, {}, {}, {}
    ctx = multiprocessing.get_context("spawn")
    try:
        for n in (1, 2):
            clusters[n], clients[n] = local_cluster(n)
            with clients[n].as_current():
                persisted = clients[n].persist(image)
                overlap_in = clients[n].persist(image.data.rechunk(args.step))
                wait(futures_of(persisted) + futures_of(overlap_in))
            inputs[n] = (persisted, overlap_in)
            pools[n] = ProcessPoolExecutor(n, mp_context=ctx)
            list(pools[n].map(slow_patch, [np.ones(4)] * n, [0.0] * n))  # start them
        numpy_image = image.values

        def one(variant: str, n: int) -> dict:
            client = clients[n]
            if variant == "pool":
                t0 = time.perf_counter()
                values, moved = pool_run(pools[n], numpy_image, args)
                wall = time.perf_counter() - t0
                return {"wall_s": wall, "moved": moved, "values": values}
            persisted, overlap_in = inputs[n]
            with client.as_current():
                base = client.run(peak_reset)
                sent0 = sum(client.run(sent_bytes).values())
                t0 = time.perf_counter()
                if variant == "xpatch":
                    lazy = persisted.patch.apply(patch_func, **kw)
                    tasks = len(lazy.__dask_graph__())
                else:
                    lazy = overlap_in.map_overlap(
                        block_func,
                        depth=depth,
                        boundary=args.boundary,
                        trim=True,
                        dtype=np.float32,
                    )
                    tasks = len(lazy.__dask_graph__())
                build = time.perf_counter() - t0
                done = client.persist(lazy)
                wait(futures_of(done))
                wall = time.perf_counter() - t0
                moved = sum(client.run(sent_bytes).values()) - sent0
                peak = client.run(vm_hwm_mib)
                values = np.asarray(client.compute(done).result())
                del done
            return {
                "wall_s": wall,
                "build_s": build,
                "tasks": tasks,
                "moved": moved,
                "base_mib": list(base.values()),
                "peak_mib": list(peak.values()),
                "values": values,
            }

        runs: dict[tuple[str, int], list[dict]] = {}
        order = [(v, n) for v in args.compare_variants.split(",") for n in (1, 2)]
        rng = random.Random(0)
        for v, n in order:  # warm-up: first-call costs (imports, caches), not recorded
            one(v, n)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for v, n in order:
                runs.setdefault((v, n), []).append(one(v, n))
    finally:
        for pool in pools.values():
            pool.shutdown()
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()

    rows = []
    for (v, n), rs in sorted(runs.items(), key=lambda kv: (COMPARE.index(kv[0][0]), kv[0][1])):
        values = rs[-1]["values"]
        walls = [r["wall_s"] for r in rs]
        row = {
            "variant": v,
            "workers": n,
            "walls": walls,
            "wall_s": statistics.median(walls),
            "moved_mib": statistics.median(r["moved"] for r in rs) / 2**20,
            "checksum": float(np.nansum(values.astype(np.float64))),
            "sha1": hashlib.sha1(np.ascontiguousarray(values).tobytes()).hexdigest(),
            "same_each_round": all(np.array_equal(r["values"], values) for r in rs),
        }
        if v != "pool":
            row["build_s"] = statistics.median(r["build_s"] for r in rs)
            row["tasks"] = rs[-1]["tasks"]
            row["base_mib"] = [min(b) for b in zip(*(r["base_mib"] for r in rs))]
            row["peak_mib"] = [max(p) for p in zip(*(r["peak_mib"] for r in rs))]
        rows.append(row)
    # The func is elementwise, so blending (xpatch, pool) and cropping (map_overlap)
    # agree up to float32 rounding of the weights: a cross-check of all three.
    last = {v: rs[-1]["values"] for (v, n), rs in runs.items() if n == 2}
    ref_name = "map_overlap" if "map_overlap" in last else "pool"
    ref = last.get(ref_name)
    diffs = {
        v: float(np.nanmax(np.abs(x.astype(np.float64) - ref))) if ref is not None else None
        for v, x in last.items()
    }
    return {
        "rows": rows,
        "max_abs_diff": diffs,
        "diff_reference": ref_name,
        "n_patches": n_patches,
        "n_blocks": int(np.prod(inputs[1][1].numblocks)),
        "depth": depth,
        "input_mib": image.nbytes / 2**20,
    }


def compare_table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "| variant | workers | wall s, median (all rounds) | speed-up 2 vs 1 | graph build s"
        " | graph keys | moved between workers MiB | worker peak RSS MiB (before) | checksum |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    names = {
        "xpatch": "xpatch lazy apply",
        "map_overlap": "dask.array.map_overlap",
        "pool": "bare process pool",
    }
    by = {(r["variant"], r["workers"]): r for r in rows}
    for r in rows:
        one = by.get((r["variant"], 1))
        speed = f"{one['wall_s'] / r['wall_s']:.2f}x" if r["workers"] == 2 and one else "-"
        walls = ", ".join(f"{w:.2f}" for w in r["walls"])
        if r["variant"] == "pool":
            build = tasks = mem = "-"
            moved = f"({r['moved_mib']:.1f} to/from parent)"
        else:
            build, tasks = f"{r['build_s']:.2f}", str(r["tasks"])
            mem = ", ".join(f"{p:.0f} ({b:.0f})" for p, b in zip(r["peak_mib"], r["base_mib"]))
            moved = f"{r['moved_mib']:.1f}"
        lines.append(
            f"| {names[r['variant']]} | {r['workers']} | {r['wall_s']:.2f} ({walls}) | {speed}"
            f" | {build} | {tasks} | {moved} | {mem} | {r['checksum']:.6g} |"
        )
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "compare"]
    for name in ("size", "patch", "step", "chunk", "sleep", "rounds", "boundary"):
        cmd += [f"--{name}", str(getattr(args, name))]
    cmd += ["--compare-variants", args.compare_variants]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.timeout * 3, check=False
    )
    total = time.perf_counter() - t0
    load1 = os.getloadavg()
    if done.returncode != 0:
        raise RuntimeError(f"compare failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"image {args.size}x{args.size} float32 ({result['input_mib']:.0f} MiB), chunks"
        f" {args.chunk} ({result['n_blocks']} blocks); xpatch patch {args.patch} step"
        f" {args.step} ({result['n_patches']} patches, weights='gaussian'); map_overlap depth"
        f" {result['depth']}, boundary={args.boundary!r}, trim; func = sleep"
        f" {args.sleep * 1e3:.0f} ms + sqrt; {args.rounds} interleaved rounds after a warm-up;"
        f" {os.cpu_count()} CPUs, load average {load0[0]:.1f} before, {load1[0]:.1f} after;"
        f" whole run {total:.0f} s"
    )
    print()
    print(compare_table(result))
    by = {(r["variant"], r["workers"]): r for r in result["rows"]}
    print()
    for v in ("xpatch", "map_overlap", "pool"):
        if (v, 1) in by and (v, 2) in by:
            same = by[(v, 1)]["sha1"] == by[(v, 2)]["sha1"]
            rounds = by[(v, 1)]["same_each_round"] and by[(v, 2)]["same_each_round"]
            print(
                f"{v}: 1-worker and 2-worker results {'identical' if same else 'DIFFER'}"
                f" (sha1 {by[(v, 1)]['sha1'][:12]}); every round the same: {rounds}"
            )
    diffs = {v: d for v, d in result["max_abs_diff"].items() if d is not None}
    if len(diffs) > 1:
        print(
            f"max |result - {result['diff_reference']}'s| (2 workers): "
            + ", ".join(f"{v} {d:.2g}" for v, d in diffs.items())
        )


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        variant,
        "--size",
        str(args.size),
        "--patch",
        str(args.patch),
        "--step",
        str(args.step),
        "--chunk",
        str(args.chunk),
        "--sigma",
        str(args.sigma),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    eager = next(r for r in rows if r["variant"] == "eager")
    lines = [
        "| variant | wall s | graph build s | speed-up vs eager | peak RSS per process MiB"
        " (before run) | checksum |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    names = {
        "eager": "eager (numpy input)",
        "threads": "dask threaded scheduler",
        "cluster1": "LocalCluster 1 worker x 1 thread",
        "cluster2": "LocalCluster 2 workers x 1 thread",
    }
    for r in rows:
        mem = ", ".join(f"{p:.0f} ({b:.0f})" for p, b in zip(r["peak_mib"], r["base_mib"]))
        build = f"{r['build_s']:.2f}" if "build_s" in r else "-"
        lines.append(
            f"| {names[r['variant']]} | {r['wall_s']:.2f} | {build} |"
            f" {eager['wall_s'] / r['wall_s']:.2f}x | {mem} | {r['checksum']:.6g} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--child", choices=(*VARIANTS, "compare"), help="run one variant, print JSON"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--size", type=int, help="image side (2048; --compare: 2304)")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--step", type=int, default=192)
    parser.add_argument("--chunk", type=int, help="input chunk side (512; --compare: step)")
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2, help="threads of the threaded run")
    parser.add_argument("--timeout", type=float, default=170.0, help="per variant, seconds")
    parser.add_argument("--quick", action="store_true", help="1024x1024 image")
    parser.add_argument(
        "--compare", action="store_true", help="xpatch vs map_overlap vs pool, 1 and 2 workers"
    )
    parser.add_argument("--compare-variants", default=",".join(COMPARE))
    parser.add_argument("--sleep", type=float, default=0.02, help="--compare: s per patch")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: timed rounds")
    parser.add_argument("--boundary", default="reflect", help="--compare: map_overlap's")
    args = parser.parse_args()
    compare_mode = args.compare or args.child == "compare"
    if args.size is None:
        args.size = 1024 if args.quick else 2304 if compare_mode else 2048
    if args.chunk is None:
        args.chunk = args.step if compare_mode else 512
    if args.child == "compare":
        result = compare(args)
        for row in result["rows"]:
            row.pop("values", None)
        print(json.dumps(result))
        return
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.compare:
        run_compare(args)
        return
    rows = [run_variant(v, args) for v in args.variants.split(",")]
    n = rows[0]["n_patches"]
    load = os.getloadavg()
    print(
        f"image {args.size}x{args.size} float32, patch {args.patch} step {args.step}"
        f" ({n} patches), input chunks {args.chunk}, gaussian_filter(sigma={args.sigma}),"
        f" weights='gaussian'; {os.cpu_count()} CPUs, load average {load[0]:.1f}"
    )
    print()
    print(table(rows))
    sums = [r["checksum"] for r in rows]
    if max(sums) - min(sums) > 1e-6 * max(abs(s) for s in sums):
        print(f"\nWARNING: checksums differ between variants: {sums}")


if __name__ == "__main__":
    main()

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

Usage::

    python benchmarks/dask_scaling.py              # the full workload (~1-2 min)
    python benchmarks/dask_scaling.py --quick      # a smaller image, for CI smoke runs
    python benchmarks/dask_scaling.py --child threads --size 1024   # one variant, JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("eager", "threads", "cluster1", "cluster2")


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
    parser.add_argument("--child", choices=VARIANTS, help="run one variant, print JSON")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--size", type=int, default=2048, help="image side (elements)")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--step", type=int, default=192)
    parser.add_argument("--chunk", type=int, default=512, help="dask chunk side of the input")
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2, help="threads of the threaded run")
    parser.add_argument("--timeout", type=float, default=170.0, help="per variant, seconds")
    parser.add_argument("--quick", action="store_true", help="1024x1024 image")
    args = parser.parse_args()
    if args.quick:
        args.size = 1024
    if args.child:
        print(json.dumps(child(args)))
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

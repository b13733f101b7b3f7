"""Side-by-side benchmark of xpatch against its peers.

One command runs every (peer, workload) pair several times, each run in a fresh
Python process, and prints (and writes to ``docs/benchmarks.md``) a table of

* the median wall time of the run (sampling + model + blending + final result),
* working memory: peak RSS of the child (``ru_maxrss``) minus its RSS right after
  the input was created, i.e. the memory the tool needs above the input,
* patches per second (patches actually given to the model, counted per tool),
* the max abs error of the blended result against the input (the model is the
  identity), or for W4 the fraction of voxels whose label differs from the
  reference argmax,
* the time relative to xpatch, measured in the same run.

Usage (from the repository root)::

    python benchmarks/peers.py                       # full run, 5 repeats, median
    python benchmarks/peers.py --quick               # small sizes, 1 repeat
    python benchmarks/peers.py --only W1,W3 --peers xpatch,numpy
    python benchmarks/peers.py --profile W1,W5       # cProfile of xpatch (top 15)

Peers: xpatch, a hand-written numpy loop, Patchly (GridSampler + Aggregator),
tiler (Tiler + Merger), MONAI ``sliding_window_inference`` and TorchIO
(GridSampler + GridAggregator, 3-D only). Peers that are not installed are
reported as skipped. Every peer gets the same identity "model" that returns a
fresh float32 array (never a view), and gaussian weights with sigma = size/8
where it has them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import itertools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # xpatch from this checkout even when not installed
    sys.path.insert(1, str(ROOT))
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"

# --------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------
# shape: positional, channel-first (C, *spatial). dims: xpatch DataArray dims; a
# single-channel workload drops the channel for xpatch (the DataArray is a view).
WORKLOADS: dict[str, dict] = {
    "W1": dict(
        title="2-D 4096x4096, size 256, step 128",
        shape=(1, 4096, 4096),
        quick=(1, 1024, 1024),
        dims=("y", "x"),
        size=256,
        step=128,
        classes=None,
    ),
    "W2": dict(
        title="2-D 3x4096x4096 (band, y, x), size 512, step 384 (squeeze border)",
        shape=(3, 4096, 4096),
        quick=(3, 1024, 1024),
        dims=("band", "y", "x"),
        size=512,
        step=384,
        classes=None,
    ),
    "W3": dict(
        title="3-D 256^3, size 96, step 48",
        shape=(1, 256, 256, 256),
        quick=(1, 160, 160, 160),
        dims=("z", "y", "x"),
        size=96,
        step=48,
        classes=None,
    ),
    "W4": dict(
        title="3-D 192^3, size 96, step 48, 8 classes (repeat), gaussian blend then argmax",
        shape=(1, 192, 192, 192),
        quick=(1, 144, 144, 144),
        dims=("z", "y", "x"),
        size=96,
        step=48,
        classes=8,
    ),
    "W5": dict(
        title="2-D 2048x2048, size 32, step 16 (~16,000 patches)",
        shape=(1, 2048, 2048),
        quick=(1, 512, 512),
        dims=("y", "x"),
        size=32,
        step=16,
        classes=None,
    ),
}

# Peer variants: name -> (workloads it runs on, or None for all).
PEERS: dict[str, tuple[str, ...] | None] = {
    "xpatch": None,
    "xpatch[batch=256]": ("W5",),
    "xpatch[chunks=48]": ("W4",),
    "numpy": None,
    "patchly": None,
    "tiler": None,
    "monai": None,
    "monai[batch=256]": ("W5",),
    "torchio": ("W3", "W4"),
    "floor": None,
}
SKIP_NOTES = {
    ("torchio", "W1"): "TorchIO is 3-D only",
    ("torchio", "W2"): "TorchIO is 3-D only",
    ("torchio", "W5"): "TorchIO is 3-D only",
}
BASE_PEER = "xpatch"
MODULES = {  # import name of each peer's package (for "not installed" skips)
    "patchly": "patchly",
    "tiler": "tiler",
    "monai": "monai",
    "torchio": "torchio",
}


def base(peer: str) -> str:
    return peer.split("[")[0]


def runs_on(peer: str, wl: str) -> bool:
    only = PEERS[peer]
    return (only is None or wl in only) and (peer, wl) not in SKIP_NOTES


# --------------------------------------------------------------------------------------
# Geometry and weights shared by the hand-written peers
# --------------------------------------------------------------------------------------
def squeeze_starts(length: int, size: int, step: int) -> list[int]:
    """Patch starts of the squeeze border (Patchly's positions), written out independently."""
    k = (length - size) // step
    starts = [i * step for i in range(k + 1)]
    if k * step + size < length:
        n = k + 2
        shrink = ((n - 1) * step + size - length) // (n - 1)
        starts = [i * (step - shrink) for i in range(n - 1)] + [length - size]
    return starts


def gaussian_nd(size: int, ndim: int) -> np.ndarray:
    """Product of 1-D gaussians with sigma = size/8.

    Equal to ``scipy.signal.windows.gaussian(size, std=size / 8)``, written out so
    that the hand-written peers do not pay scipy.signal's import time.
    """
    i = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(i**2) / (2 * (size / 8) ** 2))
    w = np.ones((), dtype=np.float64)
    for _ in range(ndim):
        w = np.multiply.outer(w, g)
    return w.astype(np.float32)


def n_patches(shape: tuple[int, ...], size: int, step: int) -> int:
    n = 1
    for length in shape[1:]:
        n *= len(squeeze_starts(length, size, step))
    return n


def floor_bytes(shape: tuple[int, ...], size: int, step: int, classes: int | None) -> int:
    """Bytes that any patch blender must move: read each input patch once and
    read + write the accumulator region it lands on (float32)."""
    c_in = shape[0]
    c_out = classes or c_in
    nd = len(shape) - 1
    return n_patches(shape, size, step) * size**nd * 4 * (c_in + 2 * c_out)


# --------------------------------------------------------------------------------------
# The child: one run of one peer on one workload
# --------------------------------------------------------------------------------------
def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Reset the peak RSS to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``).

    A forked child starts with its parent's high-water mark; after the reset,
    ``ru_maxrss`` is the peak of this run alone.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return ru.ru_utime + ru.ru_stime


class Counter:
    n = 0


def make_numpy_model(classes: int | None, counter: type[Counter], extra_axis: bool = False):
    """Identity on a (C, *spatial) patch; with classes, repeat along a new class axis."""
    if classes is None:

        def model(x):
            counter.n += 1
            return x.copy()

    elif extra_axis:  # tiler logits: (classes, C, *spatial)

        def model(x):
            counter.n += 1
            return np.repeat(x[None], classes, axis=0)

    else:  # (C=1, *spatial) -> (classes, *spatial)

        def model(x):
            counter.n += 1
            return np.repeat(x, classes, axis=0)

    return model


def run_numpy(img, wl, counter):
    size, step, classes = wl["size"], wl["step"], wl["classes"]
    spatial = img.shape[1:]
    model = make_numpy_model(classes, counter)

    def go():
        starts = [squeeze_starts(n, size, step) for n in spatial]
        w = gaussian_nd(size, len(spatial))
        c_out = classes or img.shape[0]
        out = np.zeros((c_out, *spatial), dtype=np.float32)
        wsum = np.zeros(spatial, dtype=np.float32)
        for pos in itertools.product(*starts):
            sl = tuple(slice(s, s + size) for s in pos)
            res = model(img[(slice(None), *sl)])
            out[(slice(None), *sl)] += res * w
            wsum[sl] += w
        out /= wsum
        return out.argmax(0) if classes else out

    return go


def run_floor(img, wl, counter):
    """Bare loop: out[sl] += img[sl] * w over the same positions; nothing else."""
    size, step, classes = wl["size"], wl["step"], wl["classes"]
    spatial = img.shape[1:]

    def go():
        starts = [squeeze_starts(n, size, step) for n in spatial]
        w = gaussian_nd(size, len(spatial))
        out = np.zeros((classes or img.shape[0], *spatial), dtype=np.float32)
        for pos in itertools.product(*starts):
            sl = tuple(slice(s, s + size) for s in pos)
            out[(slice(None), *sl)] += img[(slice(None), *sl)] * w
            counter.n += 1
        return out

    return go


def run_patchly(img, wl, counter):
    from patchly import Aggregator, GridSampler

    size, step, classes = wl["size"], wl["step"], wl["classes"]
    spatial = img.shape[1:]
    nd = len(spatial)
    model = make_numpy_model(classes, counter)

    def go():
        sampler = GridSampler(
            image=img,
            spatial_size=spatial,
            patch_size=(size,) * nd,
            step_size=(step,) * nd,
            spatial_first=False,
        )
        out_shape = (classes or img.shape[0], *spatial)
        agg = Aggregator(
            sampler=sampler,
            output_size=out_shape,
            weights="gaussian",
            spatial_first=False,
            softmax_dim=0 if classes else None,
        )
        for patch, bbox in sampler:
            agg.append(model(patch), bbox)
        return np.asarray(agg.get_output())

    return go


def run_tiler(img, wl, counter):
    from tiler import Merger, Tiler

    size, step, classes = wl["size"], wl["step"], wl["classes"]
    nd = img.ndim - 1
    c = img.shape[0]
    model = make_numpy_model(classes, counter, extra_axis=True)

    def go():
        tiler = Tiler(
            data_shape=img.shape,
            tile_shape=(c, *(size,) * nd),
            overlap=(0, *(size - step,) * nd),
            channel_dimension=0,
            mode="constant",
        )
        window = np.broadcast_to(gaussian_nd(size, nd), (c, *(size,) * nd)).copy()
        merger = Merger(tiler, window=window, logits=classes or 0)
        for tile_id, tile in tiler(img):
            merger.add(tile_id, model(tile))
        if classes:
            return merger.merge(unpad=True, argmax=True, dtype=np.int64)[0]
        return merger.merge(unpad=True, dtype=np.float32)

    return go


def run_monai(img, wl, counter, batch=1):
    import torch
    from monai.inferers import sliding_window_inference

    size, step, classes = wl["size"], wl["step"], wl["classes"]
    nd = img.ndim - 1

    def model(x):
        counter.n += x.shape[0]
        return x.repeat(1, classes, *(1,) * nd) if classes else x.clone()

    def go():
        x = torch.from_numpy(img)[None]
        with torch.no_grad():
            y = sliding_window_inference(
                x,
                roi_size=(size,) * nd,
                sw_batch_size=batch,
                predictor=model,
                overlap=1 - step / size,
                mode="gaussian",
                sigma_scale=0.125,
                progress=False,
            )
        y = y[0]
        return y.argmax(0).numpy() if classes else y.numpy()

    return go


def run_torchio(img, wl, counter):
    import torch
    import torchio as tio

    size, step, classes = wl["size"], wl["step"], wl["classes"]

    def model(x):
        counter.n += x.shape[0]
        return x.repeat(1, classes, 1, 1, 1) if classes else x.clone()

    def go():
        subject = tio.Subject(img=tio.ScalarImage(tensor=torch.from_numpy(img)))
        sampler = tio.inference.GridSampler(subject, patch_size=size, patch_overlap=size - step)
        agg = tio.inference.GridAggregator(sampler, overlap_mode="hann")
        with torch.no_grad():
            for patch in sampler:
                x = patch["img"][tio.DATA][None]
                agg.add_batch(model(x), patch[tio.LOCATION][None])
        y = agg.get_output_tensor()
        return y.argmax(0).numpy() if classes else y.numpy()

    return go


def run_xpatch(img, wl, counter, batch_size=None, chunks=None):
    import xarray as xr

    import xpatch  # noqa: F401  (registers the accessor)

    size, step, classes = wl["size"], wl["step"], wl["classes"]
    dims = wl["dims"]
    data = img if len(dims) == img.ndim else img[0]  # single channel: a view, no copy
    coords = {d: np.arange(n) for d, n in zip(dims, data.shape) if d != "band"}
    da = xr.DataArray(data, dims=dims, coords=coords, name="image")
    spatial = [d for d in dims if d != "band"]
    sizes = dict.fromkeys(spatial, size)
    batched = batch_size is not None

    if classes:
        output_dims = (*(("patch",) if batched else ()), "class", *dims)

        def model(p):
            x = p.values
            counter.n += x.shape[0] if batched else 1
            axis = 1 if batched else 0
            return np.repeat(np.expand_dims(x, axis), classes, axis=axis)

    else:
        output_dims = None

        def model(p):
            counter.n += p.shape[0] if batched else 1
            return p.values.copy()

    def go():
        kwargs = dict(step=step, weights="gaussian", output_dims=output_dims)
        if batched:
            kwargs["batch_size"] = batch_size
        if classes and chunks is not None:
            # skipna=False: every voxel is covered (no NaN), and xarray's default NaN-skipping
            # argmax copies the whole array first, which the numpy peers do not pay for.
            out = da.patch.apply(
                model,
                sizes,
                chunks=chunks,
                on_chunk=lambda c: c.argmax("class", skipna=False),
                **kwargs,
            )
        else:
            out = da.patch.apply(model, sizes, **kwargs)
            if classes:
                out = out.argmax("class", skipna=False)
        return out.values

    return go


def make_runner(peer: str, img: np.ndarray, wl: dict, counter: type[Counter]):
    if peer == "xpatch":
        return run_xpatch(img, wl, counter)
    if peer == "xpatch[batch=256]":
        return run_xpatch(img, wl, counter, batch_size=256)
    if peer == "xpatch[chunks=48]":
        return run_xpatch(img, wl, counter, chunks=48)
    if peer == "numpy":
        return run_numpy(img, wl, counter)
    if peer == "floor":
        return run_floor(img, wl, counter)
    if peer == "patchly":
        return run_patchly(img, wl, counter)
    if peer == "tiler":
        return run_tiler(img, wl, counter)
    if peer == "monai":
        return run_monai(img, wl, counter)
    if peer == "monai[batch=256]":
        return run_monai(img, wl, counter, batch=256)
    if peer == "torchio":
        return run_torchio(img, wl, counter)
    raise SystemExit(f"unknown peer {peer!r}")


def digest(a: np.ndarray) -> str:
    return hashlib.blake2b(
        memoryview(np.ascontiguousarray(a)).cast("B"), digest_size=16
    ).hexdigest()


def child(peer: str, wl_name: str, quick: bool, profile: bool = False, warmup: bool = True) -> dict:
    wl = dict(WORKLOADS[wl_name])
    shape = wl["quick"] if quick else wl["shape"]
    counter = Counter
    # Imports happen before the input exists and before the clock starts.
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    go = make_runner(peer, img, wl, counter)  # imports the peer's modules
    if warmup:
        # One call on a single-patch input first, so that lazy imports and one-time
        # set-up (xpatch imports dask on its first apply, torch initialises its
        # thread pool, ...) count neither as run time nor as working memory.
        tiny = np.random.default_rng(1).random(
            (shape[0], *(wl["size"],) * (len(shape) - 1)), dtype=np.float32
        )
        with warnings.catch_warnings():  # Patchly warns on a single-patch squeeze grid
            warnings.simplefilter("ignore")
            make_runner(peer, tiny, wl, counter)()
        del tiny
        counter.n = 0
    before = digest(img)
    reset_peak()
    base_rss = rss_now()
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        out = go()
        prof.disable()
        seconds = time.perf_counter() - t0
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(15)
        return {"seconds": seconds, "profile": buf.getvalue(), "patches": counter.n}
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    out = go()
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    peak = peak_rss()
    out = np.asarray(out)
    unchanged = digest(img) == before
    if peer == "floor":
        err = float("nan")
    elif wl["classes"]:
        # every class is the same identity copy: the blended classes tie, argmax -> 0
        err = float(np.count_nonzero(out.reshape(shape[1:]) != 0)) / out.size
    else:
        err = float(np.max(np.abs(out.reshape(shape) - img)))
    return {
        "seconds": seconds,
        "cpu": cpu,
        "base_rss": base_rss,
        "peak_rss": peak,
        "work": peak - base_rss,
        "patches": counter.n,
        "err": err,
        "unchanged": unchanged,
        "out_shape": list(out.shape),
    }


def bandwidth_child(quick: bool) -> dict:
    """Copy bandwidth (read + write bytes per second) of one big np.copyto."""
    n = (64 if quick else 512) * 2**20 // 4
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return {"bandwidth": 2 * src.nbytes / best}


# --------------------------------------------------------------------------------------
# The parent: schedule fresh processes, collect, report
# --------------------------------------------------------------------------------------
def spawn(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1])


# Imports done once per peer family, in a "zygote" process that forks one fresh
# child per run (the child runs one pair once and exits). Import time is excluded
# from the measurements anyway; this only keeps the whole run short.
FAMILY_IMPORTS = {
    "xpatch": ["xarray", "xpatch", "xpatch.parallel"],
    "numpy": [],
    "patchly": ["patchly"],
    "tiler": ["tiler"],
    "monai": ["torch", "monai.inferers"],
    "torchio": ["torch", "torchio"],
}


def family(peer: str) -> str:
    b = base(peer)
    return "numpy" if b in ("floor", "bandwidth") else b


def do_request(req: dict) -> dict:
    if req["kind"] == "bandwidth":
        return bandwidth_child(req["quick"])
    return child(req["peer"], req["workload"], req["quick"], req["profile"], req["warmup"])


def zygote(fam: str) -> int:
    """Import the family's packages, then fork one child per request line on stdin."""
    import importlib
    import select
    import signal

    for mod in FAMILY_IMPORTS[fam]:
        importlib.import_module(mod)
    print(json.dumps({"ready": fam}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        rfd, wfd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the fresh child
            os.close(rfd)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # keep the zygote's stdout (the protocol) clean
            try:
                res = do_request(req)
            except BaseException as err:  # report, never hang the zygote
                res = {"error": f"{type(err).__name__}: {err}"[:300]}
            with os.fdopen(wfd, "w") as f:
                f.write(json.dumps(res))
            os._exit(0)
        os.close(wfd)
        deadline = time.monotonic() + req["timeout"]
        chunks: list[bytes] = []
        timed_out = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([rfd], [], [], left)
            if ready:
                data = os.read(rfd, 1 << 16)
                if not data:
                    break
                chunks.append(data)
        os.close(rfd)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if timed_out:
            res = {"error": f"timed out after {req['timeout']:.0f} s"}
        elif not chunks:
            res = {"error": f"child died ({'signal ' + str(-os.waitstatus_to_exitcode(status))})"}
        else:
            res = json.loads(b"".join(chunks))
        print(json.dumps(res), flush=True)
    return 0


class Zygotes:
    """One zygote process per peer family, started on first use."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, req: dict) -> dict:
        fam = family(req.get("peer", "bandwidth"))
        proc = self.procs.get(fam)
        if proc is None or proc.poll() is not None:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--zygote", fam],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            first = proc.stdout.readline()
            if not first.startswith("{"):
                return {"error": f"could not start the {fam} zygote (import failed?)"}
            self.procs[fam] = proc
        proc.stdin.write(json.dumps(req) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            self.procs.pop(fam, None)
            return {"error": f"the {fam} zygote died"}
        return json.loads(line)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
        self.procs.clear()


def run_one(args, zygotes: Zygotes | None, peer: str, wl: str, profile: bool = False) -> dict:
    """One run of ``peer`` on ``wl`` in a fresh process (forked, or spawned with --spawn)."""
    if zygotes is None:
        flags = ["--quick"] if args.quick else []
        flags += ["--cold"] if args.cold else []
        flags += ["--cprofile"] if profile else []
        return spawn(["--child", wl, peer, *flags], timeout=args.timeout)
    req = dict(
        kind="run",
        peer=peer,
        workload=wl,
        quick=args.quick,
        profile=profile,
        warmup=not args.cold,
        timeout=args.timeout,
    )
    return zygotes.run(req)


def installed(peer: str) -> bool:
    mod = MODULES.get(base(peer))
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error", "failed")}
    s = {
        "seconds": median([r["seconds"] for r in ok]),
        "cpu": median([r["cpu"] for r in ok]),
        "work": median([r["work"] for r in ok]),
        "patches": ok[0]["patches"],
        "err": max(r["err"] for r in ok),
        "unchanged": all(r["unchanged"] for r in ok),
        "n": len(ok),
        "all": [r["seconds"] for r in ok],
    }
    s["rate"] = s["patches"] / s["seconds"] if s["seconds"] > 0 else float("nan")
    if len(ok) < len(runs):
        s["note"] = (
            f"{len(runs) - len(ok)} run(s) failed: {next(r for r in runs if 'error' in r)['error']}"
        )
    return s


def out_bytes(wl: dict, shape: tuple[int, ...]) -> int:
    """Size of the blended float32 output (before any argmax)."""
    return int(np.prod(shape[1:])) * (wl["classes"] or shape[0]) * 4


def git_state() -> str:
    """Commit of the checkout being measured, with "+dirty" for uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "xpatch"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    # name in the report -> distribution name (xpatch is distributed as xarray-patch)
    dists = {"xpatch": "xarray-patch"}
    for name in ("numpy", "xarray", "scipy", "xpatch", "patchly", "tiler", "monai", "torchio"):
        try:
            out[name] = metadata.version(dists.get(name, name))
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        out["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        out["torch"] = "not installed"
    return out


def _row(name: str, r: dict, ob: int, base_s: float | None, classes) -> str:
    ratio = f"{r['seconds'] / base_s:.2f}" if base_s else ""
    if r.get("err") is None or r["err"] != r["err"]:  # floor loop: no error
        err = ""
    else:
        err = f"{r['err']:.2g}" if classes is None else f"{r['err']:.2%}"
    return (
        f"| {name} | {r['seconds']:.3f} | {r['cpu']:.2f} | {fmt_mb(r['work'])}"
        f" | {r['work'] / ob:.2f} | {r['rate']:,.0f} | {err} | {ratio} |"
    )


def report(results, workloads, peers, args, bandwidth, wall) -> tuple[str, list[str]]:
    """Markdown report and the list of findings (targets missed, xpatch slower)."""
    mode = "quick" if args.quick else "full"
    md: list[str] = []
    findings: list[str] = []
    cmd = (
        "python benchmarks/peers.py"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
        + (f" --peers {args.peers}" if args.peers else "")
        + (f" --repeats {args.repeats}" if args.repeats != (1 if args.quick else 5) else "")
        + (" --cold" if args.cold else "")
        + (" --spawn" if args.spawn else "")
    )
    md.append("# Benchmarks: xpatch side by side with its peers\n")
    md.append(
        f"Generated by `{cmd}` on {_dt.date.today().isoformat()} ({mode} mode,"
        f" {args.repeats} fresh process(es) per pair, median). Do not edit by hand: rerun"
        " the command, which rewrites this page.\n"
    )
    vers = versions()
    (l0, l1) = args.load
    md.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s),"
        f" {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM;"
        f" load average {l0[0]:.1f} at the start, {l1[0]:.1f} at the end (above the CPU"
        " count, other processes competed for the cores and wall times are inflated; the"
        " CPU column is less sensitive to that). "
        + ", ".join(f"{k} {v}" for k, v in vers.items())
        + f" (xpatch checkout {git_state()})"
        + f". Copy bandwidth (np.copyto, read + write): {bandwidth / 1e9:.1f} GB/s."
        f" Whole run: {wall / 60:.1f} min.\n"
    )
    md.append(
        "Columns: **s** median wall seconds of the run (sampling, model, blending and the"
        " final result; imports, one warm-up call on a single-patch input and input creation"
        " excluded); **CPU s** user + system CPU seconds of the run, all threads (torch"
        " uses several); **work MB** peak RSS of the child process (`ru_maxrss`) minus its"
        " RSS after creating the input: working memory above the input, output included;"
        " **x out** that memory over the size of the blended float32 output; **patches/s**"
        " patches the model was given per wall second (each tool's own grid);"
        " **max err** max abs error of the result against the input (the model is the"
        " identity), for W4 the fraction of voxels whose label differs from the reference"
        " argmax (all classes are equal, so the reference label is 0 everywhere);"
        " **vs xpatch** the row's wall time over xpatch's (above 1: xpatch is faster).\n"
    )
    md.append(
        "Every peer gets the same identity model, returning a fresh float32 array"
        " (`x.copy()` / `x.clone()`; W4: `repeat` to 8 classes); every input is checked to"
        " be unchanged afterwards. Gaussian weights with sigma = size/8 for xpatch"
        ' (`weights="gaussian"`), the numpy loop, Patchly (`weights="gaussian"`),'
        ' tiler (the same kernel passed as `window=`) and MONAI (`mode="gaussian"`,'
        " `sigma_scale=0.125`, `overlap=1 - step/size`); TorchIO has no gaussian and uses"
        ' `overlap_mode="hann"`. Each run is a fresh process forked from one that'
        " has only imported the peer's packages (`--spawn`: a new interpreter per run);"
        " repetitions are interleaved, and in each one the peers of a workload run in a"
        " shuffled (seeded) order.\n"
    )
    md.append(
        "Floor lines: **floor loop** is the bare numpy loop `out[sl] += img[sl] * w` over the"
        " same positions (no sampling API, no model, no normalisation); **bandwidth bound**"
        " is the bytes any blender must move (each input patch read once, the accumulator"
        " region read and written once, float32) divided by the measured copy bandwidth.\n"
    )
    for wl_name in workloads:
        wl = WORKLOADS[wl_name]
        classes = wl["classes"]
        shape = wl["quick"] if args.quick else wl["shape"]
        res = results[wl_name]
        xp = res.get(BASE_PEER, {})
        base_s = xp.get("seconds")
        ob = out_bytes(wl, shape)
        n_p = n_patches(shape, wl["size"], wl["step"])
        md.append(f"\n## {wl_name}: {wl['title']}\n")
        md.append(
            f"Input {'x'.join(map(str, shape))} float32 (channel-first),"
            f" {fmt_mb(np.prod(shape) * 4)} MB; {n_p:,} patches on the squeeze grid;"
            f" blended float32 output {fmt_mb(ob)} MB.\n"
        )
        md.append("| peer | s | CPU s | work MB | x out | patches/s | max err | vs xpatch |")
        md.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        notes = []
        for peer in peers:
            if peer == "floor":
                continue
            if (peer, wl_name) in SKIP_NOTES:
                notes.append(f"{peer}: skipped, {SKIP_NOTES[(peer, wl_name)]}.")
                continue
            r = res.get(peer)
            if r is None:
                continue
            if "error" in r or "skipped" in r:
                md.append(f"| {peer} | — | — | — | — | — | — | — |")
                notes.append(f"{peer}: {r.get('error') or r.get('skipped')}")
                continue
            name = peer if r["unchanged"] else f"{peer} (input modified!)"
            md.append(_row(name, r, ob, base_s, classes))
            if "note" in r:
                notes.append(f"{peer}: {r['note']}")
            if not r["unchanged"]:
                findings.append(f"{wl_name}: {peer} modified its input")
        f = res.get("floor")
        if f and "error" not in f and "skipped" not in f:
            md.append(_row("*floor loop*", f, ob, base_s, classes))
        tb = floor_bytes(shape, wl["size"], wl["step"], classes) / bandwidth
        md.append(
            f"| *bandwidth bound* | {tb:.3f} | | | | {n_p / tb:,.0f} | |"
            + (f" {tb / base_s:.2f} |" if base_s else " |")
        )
        if notes:
            md.append("")
            md.extend(f"- {n}" for n in dict.fromkeys(notes))
        if not base_s:
            continue
        # --- findings for this workload
        for peer in peers:
            r = res.get(peer)
            if not r or "error" in r or "skipped" in r or peer == "floor" or base(peer) == "xpatch":
                continue
            if r["seconds"] < base_s:
                findings.append(
                    f"{wl_name}: xpatch ({base_s:.3f} s) is slower than {peer}"
                    f" ({r['seconds']:.3f} s): x{base_s / r['seconds']:.2f}"
                )
        for peer in peers:
            r = res.get(peer)
            if base(peer) != "xpatch" or not r or "error" in r or "skipped" in r:
                continue
            if r["work"] > 1.1 * ob:
                findings.append(
                    f"{wl_name}: {peer} working memory {fmt_mb(r['work'])} MB is"
                    f" {r['work'] / ob:.2f}x the output ({fmt_mb(ob)} MB); target <= 1.10x"
                )
            if classes is None and r["err"] > 1e-5:
                findings.append(f"{wl_name}: {peer} max error {r['err']:.2g}")
            if classes and r["err"] > 0:
                findings.append(f"{wl_name}: {peer} label mismatch {r['err']:.2%}")
        chunked = res.get("xpatch[chunks=48]")
        others = [
            (r["work"], peer)
            for peer, r in res.items()
            if base(peer) != "xpatch" and peer != "floor" and r and "work" in r
        ]
        if chunked and "work" in chunked and others:
            low, low_peer = min(others)
            ratio = chunked["work"] / low
            md.append("")
            md.append(
                f"- xpatch[chunks=48]: working memory {fmt_mb(chunked['work'])} MB,"
                f" {ratio:.2f}x that of the leanest peer ({low_peer}, {fmt_mb(low)} MB)"
                " (target: far below every peer)."
            )
            if ratio > 0.75:
                findings.append(
                    f"{wl_name}: xpatch[chunks=48] working memory is {ratio:.2f}x that of"
                    f" {low_peer}; target: far below every peer"
                )
        npy = res.get("numpy")
        if wl_name == "W5" and npy and "error" not in npy and "skipped" not in npy:
            md.append("")
            fl = f["seconds"] if f and "seconds" in f else None
            for peer, target in (("xpatch", 30e-6), ("xpatch[batch=256]", 5e-6)):
                r = res.get(peer)
                if not r or "error" in r or "skipped" in r:
                    continue
                over = (r["seconds"] - npy["seconds"]) / r["patches"]
                over_cpu = (r["cpu"] - npy["cpu"]) / r["patches"]
                line = (
                    f"- {peer}: per-patch overhead over the hand-written numpy loop"
                    f" {over * 1e6:.1f} µs wall, {over_cpu * 1e6:.1f} µs CPU"
                    f" (target < {target * 1e6:.0f} µs)"
                )
                if fl is not None:
                    line += (
                        f"; over the floor loop {(r['seconds'] - fl) / r['patches'] * 1e6:.1f} µs"
                    )
                md.append(line + ".")
                if over > target:
                    findings.append(
                        f"W5: {peer} per-patch overhead {over * 1e6:.1f} µs > target"
                        f" {target * 1e6:.0f} µs"
                    )
    md.append("\n## Targets (reported, not asserted)\n")
    md.append(
        "xpatch below every peer on every workload; per-patch overhead of `apply` on W5"
        " (over the hand-written numpy loop) < 30 µs unbatched and < 5 µs with"
        " `batch_size=256`; working memory at most the output size + 10 %.\n"
    )
    if findings:
        md.append("Missed or notable in this run:\n")
        md.extend(f"- {x}" for x in findings)
        md.append(
            "\nWhere the memory bound meets what the workload itself holds (two results"
            " in flight on W3, the batch and its answer on W5, the argmax copy on W4"
            ' unchunked), see "How the benchmark\'s targets are read" in the'
            " [design notes](design.md)."
        )
    else:
        md.append("All targets met in this run.")
    md.append("")
    return "\n".join(md), findings


def print_table(results, workloads, peers, quick):
    for wl_name in workloads:
        res = results[wl_name]
        base_s = res.get(BASE_PEER, {}).get("seconds")
        print(f"\n{wl_name}: {WORKLOADS[wl_name]['title']}")
        print(
            f"  {'peer':<20}{'s':>9}{'CPU s':>8}{'work MB':>10}{'patches/s':>12}"
            f"{'max err':>10}{'vs xp':>7}"
        )
        for peer in peers:
            r = res.get(peer)
            if r is None:
                continue
            if "error" in r or "skipped" in r:
                print(f"  {peer:<20}  {r.get('error') or r.get('skipped')}")
                continue
            ratio = r["seconds"] / base_s if base_s else float("nan")
            print(
                f"  {peer:<20}{r['seconds']:9.3f}{r['cpu']:8.2f}{r['work'] / 2**20:10.0f}"
                f"{r['rate']:12,.0f}"
                f"{r['err']:10.2g}{ratio:7.2f}"
            )


def selection(args) -> tuple[list[str], list[str]]:
    """The workloads and peers that ``--only`` and ``--peers`` name (default: all)."""
    workloads = [w.strip() for w in args.only.split(",")] if args.only else list(WORKLOADS)
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"--only: unknown workload {w!r}; choose from {list(WORKLOADS)}")
    if args.peers:
        peers = [p.strip() for p in args.peers.split(",")]
        names = set(PEERS) | {base(p) for p in PEERS}
        for p in peers:
            if p not in names:
                raise SystemExit(f"--peers: unknown peer {p!r}; choose from {sorted(names)}")
        # a base name selects its variants too
        peers = [p for p in PEERS if p in peers or base(p) in peers]
    else:
        peers = list(PEERS)
    return workloads, peers


def in_process(args) -> int:
    """Every selected peer's call ``args.in_process`` times in this one process.

    The rounds are interleaved (the peers in a shuffled, seeded order each round),
    after one warm-up call each on the real input. The ratios are then free of the
    per-process noise of a shared machine (a whole process running fast or slow), at
    the price of what fresh processes measure: first-call costs and peak memory.
    Torch-based peers are left out unless named: torch's worker threads spin on after
    each call and slow the next peer's run in the same process.
    """
    workloads, peers = selection(args)
    torch_based = [p for p in peers if base(p) in ("monai", "torchio")]
    if torch_based and not args.peers:
        peers = [p for p in peers if p not in torch_based]
        print("(monai and torchio left out: name them in --peers to include them, see below)")
    elif torch_based:
        print(
            "caution: torch's worker threads go on spinning for a while after each torch"
            " call and slow whatever runs next in the same process; compare torch-based"
            " peers in fresh processes (the default mode)"
        )
    for w in workloads:
        wl = dict(WORKLOADS[w])
        img = np.random.default_rng(0).random(
            wl["quick"] if args.quick else wl["shape"], dtype=np.float32
        )
        names = [p for p in peers if runs_on(p, w) and installed(p)]
        runners = {p: make_runner(p, img, wl, Counter) for p in names}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for go in runners.values():
                go()
            times: dict[str, list[float]] = {p: [] for p in names}
            order = random.Random(0)
            for _ in range(args.in_process):
                order.shuffle(names)
                for p in names:
                    t0 = time.perf_counter()
                    runners[p]()
                    times[p].append(time.perf_counter() - t0)
        print(f"\n{w}: {WORKLOADS[w]['title']} ({args.in_process} interleaved calls per peer)")
        print(
            f"  {'peer':22s} {'min':>7s} {'q25':>7s} {'median':>7s}   vs xpatch: min  q25  median"
        )
        ref = times.get("xpatch")
        stats = {p: (min(t), float(np.quantile(t, 0.25)), median(t)) for p, t in times.items()}
        for p in sorted(names, key=lambda p: stats[p][2]):
            a = stats[p]
            ratios = ""
            if ref is not None:
                r = stats["xpatch"]
                ratios = "  ".join(f"{x / y:4.2f}" for x, y in zip(a, r))
            print(f"  {p:22s} {a[0]:7.3f} {a[1]:7.3f} {a[2]:7.3f}   {ratios}")
    return 0


def parent(args) -> int:
    workloads, peers = selection(args)
    if BASE_PEER not in peers:
        peers.insert(0, BASE_PEER)  # the ratios need it
    quick_flag = ["--quick"] if args.quick else []
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    zygotes = None if args.spawn else Zygotes()
    bw = spawn(["--bandwidth", *quick_flag], timeout=120)
    bandwidth = bw.get("bandwidth", float("nan"))
    jobs = [(w, p) for w in workloads for p in peers if runs_on(p, w)]
    runs: dict[tuple[str, str], list[dict]] = {j: [] for j in jobs}
    skipped = {j: f"{base(j[1])} is not installed" for j in jobs if not installed(j[1])}
    todo = [j for j in jobs if j not in skipped]
    total = len(todo) * args.repeats
    k = 0
    for rep in range(args.repeats):  # interleave repeats to spread drift over peers
        # and shuffle the peers of each workload (seeded: reproducible), so that none
        # always runs right after the same one (a peer leaving 1 GB of freed memory
        # makes the next first touches slower)
        order = random.Random(rep)
        sequence = []
        for w in workloads:
            group = [j for j in todo if j[0] == w]
            order.shuffle(group)
            sequence += group
        for w, p in sequence:
            k += 1
            t0 = time.perf_counter()
            r = run_one(args, zygotes, p, w)
            runs[(w, p)].append(r)
            took = time.perf_counter() - t0
            msg = r.get("error") or f"{r['seconds']:.3f} s, work {r['work'] / 2**20:.0f} MB"
            print(f"[{k}/{total}] rep {rep + 1} {w} {p}: {msg} ({took:.1f} s)", flush=True)
    if zygotes is not None:
        zygotes.close()
    args.load = (load_start, os.getloadavg())
    results: dict[str, dict[str, dict]] = {w: {} for w in workloads}
    for (w, p), rs in runs.items():
        results[w][p] = {"skipped": skipped[(w, p)]} if (w, p) in skipped else summarise(rs)
    wall = time.perf_counter() - t_start
    print_table(results, workloads, peers, args.quick)
    md, findings = report(results, workloads, peers, args, bandwidth, wall)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    analysis = Path(__file__).with_name("analysis.md")
    if analysis.exists():  # the hand-written reading of the numbers, kept beside the code
        md = md.rstrip("\n") + "\n\n" + analysis.read_text()
    out.write_text(md)
    if args.json:
        Path(args.json).write_text(
            json.dumps({f"{w}|{p}": r for w in results for p, r in results[w].items()}, indent=1)
        )
    print(f"\nbandwidth {bandwidth / 1e9:.1f} GB/s; wall {wall / 60:.1f} min; wrote {out}")
    for f in findings:
        print("finding:", f)
    return 0


def profile(args) -> int:
    peers = [p.strip() for p in args.peers.split(",")] if args.peers else ["xpatch"]
    zygotes = None if args.spawn else Zygotes()
    for w in args.profile.split(","):
        for p in peers:
            if not runs_on(p, w):
                continue
            r = run_one(args, zygotes, p, w, profile=True)
            print(
                f"\n===== cProfile: {p} on {w} ({r.get('seconds', float('nan')):.3f} s,"
                f" {r.get('patches')} patches) ====="
            )
            print(r.get("profile") or r.get("error"))
    if zygotes is not None:
        zygotes.close()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    ap.add_argument("--only", help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--peers", help="comma-separated peers, e.g. xpatch,numpy")
    ap.add_argument("--repeats", type=int, help="fresh processes per pair (default 5, quick 1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per child run")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="markdown report to (re)write")
    ap.add_argument("--json", help="also write the summarised results as JSON")
    ap.add_argument("--profile", metavar="W1,W5", help="cProfile xpatch on these workloads")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="no warm-up call: first-call costs (lazy imports) count as run time",
    )
    ap.add_argument(
        "--spawn",
        action="store_true",
        help="start every run in a new interpreter (slower) instead of forking it from"
        " a process that has imported the peer's packages",
    )
    ap.add_argument(
        "--in-process",
        type=int,
        metavar="N",
        help="instead: N interleaved calls per peer in one process per workload (min,"
        " lower quartile, median and their ratios to xpatch; no memory, no first-call costs)",
    )
    ap.add_argument("--zygote", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "PEER"), help=argparse.SUPPRESS)
    ap.add_argument("--cprofile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.zygote:
        return zygote(args.zygote)
    if args.bandwidth:
        print(json.dumps(bandwidth_child(args.quick)))
        return 0
    if args.child:
        print(
            json.dumps(
                child(args.child[1], args.child[0], args.quick, args.cprofile, not args.cold)
            )
        )
        return 0
    if args.profile:
        return profile(args)
    if args.in_process:
        return in_process(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

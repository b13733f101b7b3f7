"""Side-by-side benchmark of xpatch against its peers.

One command runs every (peer, workload) pair several times, each run in a fresh
Python process, and prints (and writes to ``docs/benchmarks.md``) a table of

* the median wall time of the run (sampling + model + blending + final result),
  warm (after a warm-up call on a single-patch input) and cold (the first call in
  a fresh process: imports done before the clock starts, but no warm-up call),
* working memory: peak RSS of the child (``VmHWM``) minus its RSS right after
  the input was created, i.e. the memory the tool needs above the input,
* patches per second (patches actually given to the model, counted per tool),
* the max abs error of the blended result against the input (the model is the
  identity), or for W4 the fraction of voxels whose label differs from the
  reference argmax,
* the time relative to xpatch, measured in the same run,

and a short cProfile summary of xpatch (where its time goes) on W1-W3, W6 and W7.

Usage (from the repository root)::

    python benchmarks/peers.py                       # full run: 3 warm + 2 cold runs per pair
    python benchmarks/peers.py --quick               # small sizes, 1 repeat
    python benchmarks/peers.py --only W1,W3 --peers xpatch,numpy
    python benchmarks/peers.py --only W6,W7          # the lazy file sources only
    python benchmarks/peers.py --profile W1,W5       # cProfile of xpatch (top 15)
    python benchmarks/peers.py --json run.json       # results to run.json, not peers-results.json
    python benchmarks/peers.py --render run.json     # rewrite the page (after editing analysis.md)

Peers on the in-memory workloads W1-W5: xpatch, a hand-written numpy loop, Patchly
(GridSampler + Aggregator), tiler (Tiler + Merger), MONAI ``sliding_window_inference``
and TorchIO (GridSampler + GridAggregator, 3-D only). On the file workloads W6 (zarr)
and W7 (netCDF4/HDF5), each also with a 5 ms-per-patch model: xpatch on the lazily
opened file, xpatch after reading the whole array, the numpy loop reading every patch
through zarr / h5py, the same loop after reading the whole array, MONAI after reading
the whole array, and xbatcher's BatchGenerator (sampling only; blended by the numpy
loop). Peers that are not installed are reported as skipped. Every peer gets the same
identity "model" that returns a fresh float32 array (never a view), and gaussian
weights with sigma = size/8 where it has them.
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
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # xpatch from this checkout even when not installed
    sys.path.insert(1, str(ROOT))
if str(HERE) not in sys.path:  # its helpers, also when loaded by compare_versions.py
    sys.path.insert(1, str(HERE))
from _memory import reset_peak, rss_now, rss_peak  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
# The summarised results of the last run, beside the page: the docs draw their chart from it.
DEFAULT_JSON = ROOT / "benchmarks" / "peers-results.json"

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
# Lazily opened, compressed files: a uint16 volume in stored chunks of `chunk`^3, read
# by xpatch through xarray without dask; the model casts each patch to float32 (and
# with model_ms, first sleeps that long: a stand-in for a GPU model, which releases the
# GIL as a GPU call does). W6 and W6[model=5ms] read the same file.
FILE_KIND = dict(
    shape=(1, 256, 256, 256),
    quick=(1, 160, 160, 160),
    dims=("z", "y", "x"),
    size=96,
    step=48,
    classes=None,
    chunk=64,
)
for _name, _source, _what in (
    ("W6", "zarr", "zarr (default codec)"),
    ("W7", "netcdf", "netCDF4/HDF5 (zlib)"),
):
    for _ms in (0, 5):
        WORKLOADS[_name + (f"[model={_ms}ms]" if _ms else "")] = dict(
            FILE_KIND,
            title=f"3-D 256^3 uint16 {_what}, stored chunks 64^3, lazily opened, size 96, step 48"
            + (f", a {_ms} ms-per-patch model" if _ms else ""),
            source=_source,
            model_ms=_ms,
        )
MEM = tuple(w for w in WORKLOADS if "source" not in WORKLOADS[w])
FILES = tuple(w for w in WORKLOADS if "source" in WORKLOADS[w])

# Peer variants: name -> (workloads it runs on, or None for all).
PEERS: dict[str, tuple[str, ...] | None] = {
    "xpatch": None,
    "xpatch[batch=256]": ("W5",),
    "xpatch[chunks=48]": ("W4",),
    "xpatch[read-whole]": FILES,
    "numpy": MEM,
    "numpy[per-patch]": FILES,
    "numpy[read-whole]": FILES,
    "patchly": MEM,
    "tiler": MEM,
    "monai": None,
    "monai[batch=256]": ("W5",),
    "torchio": ("W3", "W4"),
    "xbatcher": FILES,
    "floor": MEM,
    "read": FILES,
}
SKIP_NOTES = {
    ("torchio", "W1"): "TorchIO is 3-D only",
    ("torchio", "W2"): "TorchIO is 3-D only",
    ("torchio", "W5"): "TorchIO is 3-D only",
}
FLOORS = ("floor", "read")  # reference lines, not peers
BASE_PEER = "xpatch"
MODULES = {  # import name of each peer's package (for "not installed" skips)
    "patchly": "patchly",
    "tiler": "tiler",
    "monai": "monai",
    "torchio": "torchio",
    "xbatcher": "xbatcher",
}
SOURCE_MODULES = {"zarr": "zarr", "netcdf": "h5py"}  # what a file workload needs


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


# --------------------------------------------------------------------------------------
# File-backed workloads (W6 zarr, W7 netCDF4/HDF5): files, readers and runners
# --------------------------------------------------------------------------------------
FILE_VERSION = 1  # bump when the files' content or layout changes


def cache_dir() -> Path:
    """Where the generated files live (not in the repository): $XPATCH_BENCH_CACHE or
    $TMPDIR/xpatch-bench-files."""
    env = os.environ.get("XPATCH_BENCH_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "xpatch-bench-files"


def file_spatial(wl: dict, quick: bool, tiny: bool = False) -> tuple[int, ...]:
    if tiny:  # the warm-up input: one patch, still in several stored chunks
        return (wl["size"],) * (len(wl["shape"]) - 1)
    return tuple((wl["quick"] if quick else wl["shape"])[1:])


def file_path(wl: dict, quick: bool, tiny: bool = False) -> Path:
    spatial = file_spatial(wl, quick, tiny)
    ext = "zarr" if wl["source"] == "zarr" else "nc"
    name = f"{wl['source']}-{'x'.join(map(str, spatial))}-c{wl['chunk']}-v{FILE_VERSION}.{ext}"
    return cache_dir() / name


def volume(spatial: tuple[int, ...]) -> np.ndarray:
    """A deterministic uint16 volume: smooth structure (values ~300-1700) plus noise
    (sigma 20), so that it compresses as a real image does (zarr's zstd: ~0.7)."""
    z, y, x = np.ogrid[tuple(slice(0, n) for n in spatial)]
    z, y, x = (a.astype(np.float32) for a in (z, y, x))
    v = 1000 + 400 * np.sin(z / 17) * np.cos(y / 23) + 300 * np.sin(x / 11 + z / 29)
    v = v + np.random.default_rng(0).normal(0, 20, spatial).astype(np.float32)
    return np.clip(np.rint(v), 0, 65535).astype(np.uint16)


def netcdf_engine() -> str:
    import importlib.util

    return "h5netcdf" if importlib.util.find_spec("h5netcdf") else "netcdf4"


def ensure_file(wl: dict, quick: bool, tiny: bool = False) -> Path:
    """The workload's file, written once (atomically) into cache_dir()."""
    path = file_path(wl, quick, tiny)
    if path.exists():
        return path
    import shutil

    import xarray as xr

    path.parent.mkdir(parents=True, exist_ok=True)
    spatial = file_spatial(wl, quick, tiny)
    dims = wl["dims"]
    da = xr.DataArray(
        volume(spatial),
        dims=dims,
        coords={d: np.arange(n) for d, n in zip(dims, spatial)},
        name="image",
    )
    chunks = (wl["chunk"],) * len(spatial)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with warnings.catch_warnings():  # zarr 3: consolidated metadata is not in the spec
        warnings.simplefilter("ignore")
        if wl["source"] == "zarr":
            # default codec of the zarr format (zarr 3: zstd)
            da.to_dataset().to_zarr(tmp, mode="w", encoding={"image": {"chunks": chunks}})
        else:
            enc = {"image": {"chunksizes": chunks, "zlib": True, "complevel": 4}}
            da.to_netcdf(tmp, engine=netcdf_engine(), encoding=enc)
    try:
        os.rename(tmp, path)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
    return path


def disk_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def file_state(path: Path) -> str:
    """Sizes and modification times of the file(s): unchanged means nobody wrote."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    st = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.blake2b(repr(st).encode(), digest_size=16).hexdigest()


def open_raw(wl: dict, path: Path):
    """The stored array through its own library (zarr / h5py), no xarray: (array, close)."""
    if wl["source"] == "zarr":
        import zarr

        return zarr.open_group(str(path), mode="r")["image"], lambda: None
    import h5py

    f = h5py.File(path, "r")
    return f["image"], f.close


def open_xr(wl: dict, path: Path):
    """The file opened lazily by xarray, without dask, as a user opens it."""
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if wl["source"] == "zarr":
            return xr.open_zarr(path, chunks=None)["image"]
        return xr.open_dataarray(path)  # xarray's default engine (netCDF4 if installed)


def read_whole(wl: dict, path: Path) -> np.ndarray:
    arr, close = open_raw(wl, path)
    try:
        return arr[...]
    finally:
        close()


def sleep_model(wl: dict):
    ms = wl.get("model_ms", 0)
    return (lambda: time.sleep(ms / 1000)) if ms else (lambda: None)


def blend_loop(read, spatial, size, step, model, starts=None):
    """The hand-written loop of run_numpy on a spatial-only array: read(sl) -> patch."""
    if starts is None:
        starts = [squeeze_starts(n, size, step) for n in spatial]
    w = gaussian_nd(size, len(spatial))
    out = np.zeros(spatial, dtype=np.float32)
    wsum = np.zeros(spatial, dtype=np.float32)
    for pos in itertools.product(*starts):
        sl = tuple(slice(s, s + size) for s in pos)
        res = model(read(sl))
        out[sl] += res * w
        wsum[sl] += w
    out /= wsum
    return out


def file_runner(peer: str, path: Path, wl: dict, counter: type[Counter]):
    """Runner of ``peer`` on a file workload. Every call opens the file (metadata only,
    a few ms, as a script does), so that repeated calls (--in-process) read it again;
    the file is opened once here first, so that imports and xarray's backend discovery
    are done before the clock starts."""
    size, step = wl["size"], wl["step"]
    nd = len(wl["shape"]) - 1
    pause = sleep_model(wl)
    arr, close = open_raw(wl, path)
    spatial = tuple(arr.shape)
    close()
    if base(peer) in ("xpatch", "xbatcher"):
        open_xr(wl, path)  # xarray's backend discovery and imports, before the clock

    def model(x):  # ndarray in, fresh float32 out
        counter.n += 1
        pause()
        return x.astype(np.float32)

    if base(peer) == "xpatch":
        import xpatch  # noqa: F401  (registers the accessor)

        sizes = dict.fromkeys(wl["dims"], size)

        def xmodel(p):
            counter.n += 1
            pause()
            return p.values.astype(np.float32)

        whole = peer == "xpatch[read-whole]"

        def go():
            da = open_xr(wl, path)
            if whole:
                da = da.load()  # read and decode everything, then apply in memory
            return da.patch.apply(xmodel, sizes, step=step, weights="gaussian").values

        return go
    if peer == "numpy[per-patch]":

        def go():
            arr, close = open_raw(wl, path)
            try:
                return blend_loop(arr.__getitem__, arr.shape, size, step, model)
            finally:
                close()

        return go
    if peer == "numpy[read-whole]":

        def go():
            img = read_whole(wl, path)
            return blend_loop(img.__getitem__, img.shape, size, step, model)

        return go
    if peer == "read":

        def go():
            counter.n = n_patches((1, *spatial), size, step)
            return read_whole(wl, path)

        return go
    if peer == "monai":
        import torch
        from monai.inferers import sliding_window_inference

        def predictor(x):
            counter.n += x.shape[0]
            pause()
            return x.clone()

        def go():
            img = read_whole(wl, path)
            # MONAI cannot blend uint16 tensors (torch has no index-add for UInt16):
            # the array becomes float32 first, as MONAI's transforms make it
            x = torch.from_numpy(img.astype(np.float32))[None, None]
            del img
            with torch.no_grad():
                y = sliding_window_inference(
                    x,
                    roi_size=(size,) * nd,
                    sw_batch_size=1,
                    predictor=predictor,
                    overlap=1 - step / size,
                    mode="gaussian",
                    sigma_scale=0.125,
                    progress=False,
                )
            return y[0, 0].numpy()

        return go
    if peer == "xbatcher":
        import xbatcher

        dims = wl["dims"]

        def go():
            da = open_xr(wl, path)
            bgen = xbatcher.BatchGenerator(
                da,
                input_dims=dict.fromkeys(dims, size),
                input_overlap=dict.fromkeys(dims, size - step),
            )
            w = gaussian_nd(size, nd)
            out = np.zeros(da.shape, dtype=np.float32)
            wsum = np.zeros(da.shape, dtype=np.float32)
            for b in bgen:  # one patch per batch, read when the batch is made
                sl = tuple(slice(int(b[d].values[0]), int(b[d].values[0]) + size) for d in dims)
                out[sl] += model(b.values) * w
                wsum[sl] += w
            # xbatcher's grid drops what is left after the last whole patch: no result there
            np.divide(out, wsum, out=out, where=wsum > 0)
            out[wsum == 0] = np.nan
            return out

        return go
    raise SystemExit(f"{peer!r} does not run on file workloads")


def make_input(wl: dict, quick: bool, tiny: bool = False):
    """The input of a run: a float32 array (channel-first), or a file's path."""
    if "source" in wl:
        return ensure_file(wl, quick, tiny)
    shape = wl["quick"] if quick else wl["shape"]
    if tiny:
        shape = (shape[0], *(wl["size"],) * (len(shape) - 1))
    return np.random.default_rng(1 if tiny else 0).random(shape, dtype=np.float32)


def make_runner(peer: str, img: np.ndarray, wl: dict, counter: type[Counter]):
    if "source" in wl:
        return file_runner(peer, img, wl, counter)
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
    img = make_input(wl, quick)  # an array, or the path of a file (W6, W7)
    on_file = "source" in wl
    go = make_runner(peer, img, wl, counter)  # imports the peer's modules
    if warmup:
        # One call on a single-patch input first, so that lazy imports and one-time
        # set-up (torch initialises its thread pool, ...) count neither as run time nor
        # as working memory. Without it (cold) the first call pays them.
        tiny = make_input(wl, quick, tiny=True)
        with warnings.catch_warnings():  # Patchly warns on a single-patch squeeze grid
            warnings.simplefilter("ignore")
            make_runner(peer, tiny, wl, counter)()
        del tiny
    counter.n = 0
    before = file_state(img) if on_file else digest(img)
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
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("cumulative").print_stats(15)
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]  # by own time

        def inclusive(match) -> tuple[float, int]:
            hits = [v for k, v in stats.stats.items() if match(k)]
            return sum(v[3] for v in hits), sum(v[1] for v in hits)

        return {
            "seconds": seconds,
            "profile": buf.getvalue(),
            "patches": counter.n,
            "total_tt": stats.total_tt,
            # the benchmark's own model, and building xarray objects (patches, output)
            "model": inclusive(lambda k: k[0].endswith("peers.py") and k[2] in ("model", "xmodel")),
            "dataarray": inclusive(
                lambda k: k[0].endswith("dataarray.py") and "xarray" in k[0] and k[2] == "__init__"
            ),
            "top": [
                {"where": where_name(k), "calls": v[1], "tottime": v[2], "cumtime": v[3]}
                for k, v in top
            ],
        }
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    out = go()
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    peak = rss_peak()
    out = np.asarray(out)
    unchanged = (file_state(img) if on_file else digest(img)) == before
    covered = 1.0
    if peer in FLOORS:
        err = float("nan")
    elif on_file:
        ref = read_whole(wl, img).astype(np.float32)
        finite = np.isfinite(out)
        covered = float(finite.mean())
        err = float(np.max(np.abs(out - ref), where=finite, initial=0.0))
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
        "covered": covered,
        "unchanged": unchanged,
        "out_shape": list(out.shape),
    }


def where_name(key: tuple) -> str:
    """A pstats key (file, line, function) as `package/module.py:function`."""
    file, _line, func = key
    if file == "~":  # a builtin: "{method 'astype' of 'numpy.ndarray' objects}"
        return func
    parts = Path(file).parts
    for root in ("xpatch", "numpy", "xarray", "zarr", "numcodecs", "h5py", "concurrent"):
        if root in parts:
            k = len(parts) - 1 - parts[::-1].index(root)
            return "/".join(parts[k:]) + f":{func}"
    return f"{Path(file).name}:{func}"


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
    "xbatcher": ["xarray", "xbatcher"],
}


# The file workloads' libraries, imported by the zygotes of the families that run on
# them when installed (no threads start at import, so forking stays safe).
FILE_IMPORTS = ["zarr", "h5py", "h5netcdf", "netCDF4"]
FILE_FAMILIES = ("xpatch", "numpy", "monai", "xbatcher")


def family(peer: str) -> str:
    b = base(peer)
    return "numpy" if b in ("floor", "bandwidth", "read") else b


def do_request(req: dict) -> dict:
    if req["kind"] == "bandwidth":
        return bandwidth_child(req["quick"])
    return child(req["peer"], req["workload"], req["quick"], req["profile"], req["warmup"])


def zygote(fam: str) -> int:
    """Import the family's packages, then fork one child per request line on stdin."""
    import importlib
    import importlib.util
    import select
    import signal

    for mod in FAMILY_IMPORTS[fam]:
        importlib.import_module(mod)
    if fam in FILE_FAMILIES:
        for mod in FILE_IMPORTS:
            if importlib.util.find_spec(mod) is not None:
                importlib.import_module(mod)
        if "xarray" in sys.modules:
            sys.modules["xarray"].backends.list_engines()  # backend discovery, once
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


def run_one(
    args, zygotes: Zygotes | None, peer: str, wl: str, profile: bool = False, warmup=None
) -> dict:
    """One run of ``peer`` on ``wl`` in a fresh process (forked, or spawned with --spawn).

    ``warmup``: make a warm-up call first (default: unless --cold)."""
    if warmup is None:
        warmup = not args.cold
    if zygotes is None:
        flags = ["--quick"] if args.quick else []
        flags += [] if warmup else ["--cold"]
        flags += ["--cprofile"] if profile else []
        return spawn(["--child", wl, peer, *flags], timeout=args.timeout)
    req = dict(
        kind="run",
        peer=peer,
        workload=wl,
        quick=args.quick,
        profile=profile,
        warmup=warmup,
        timeout=args.timeout,
    )
    return zygotes.run(req)


def installed(peer: str, wl: str | None = None) -> bool:
    """The peer's package (and the file workload's library) can be imported."""
    import importlib.util

    mods = [MODULES.get(base(peer))]
    if wl is not None and "source" in WORKLOADS[wl]:
        mods.append(SOURCE_MODULES[WORKLOADS[wl]["source"]])
    return all(m is None or importlib.util.find_spec(m) is not None for m in mods)


def missing(peer: str, wl: str) -> str:
    """Why ``peer`` cannot run on ``wl`` here."""
    if not installed(peer):
        return f"{base(peer)} is not installed"
    return f"{SOURCE_MODULES[WORKLOADS[wl]['source']]} is not installed"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def summarise(runs: list[dict], cold: list[dict] | None = None) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error", "failed")}
    cold_ok = [r["seconds"] for r in cold or () if "seconds" in r]
    s = {
        "cold": median(cold_ok) if cold_ok else None,
        "cold_all": cold_ok,
        "covered": min(r.get("covered", 1.0) for r in ok),
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
    names = ("numpy", "xarray", "scipy", "xpatch", "patchly", "tiler", "monai", "torchio")
    names += ("xbatcher", "zarr", "numcodecs", "h5py", "h5netcdf", "netCDF4")
    for name in names:
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
    if r.get("err") is None or r["err"] != r["err"]:  # floor lines: no error
        err = ""
    else:
        err = f"{r['err']:.2g}" if classes is None else f"{r['err']:.2%}"
    cold = f"{r['cold']:.3f}" if r.get("cold") is not None else ""
    return (
        f"| {name} | {r['seconds']:.3f} | {cold} | {r['cpu']:.2f} | {fmt_mb(r['work'])}"
        f" | {r['work'] / ob:.2f} | {r['rate']:,.0f} | {err} | {ratio} |"
    )


def ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r and "skipped" not in r


TABLE_HEAD = [
    "| peer | s | cold s | CPU s | work MB | x out | patches/s | max err | vs xpatch |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def _peer_rows(md, notes, findings, wl_name, res, peers, ob, base_s, classes) -> None:
    for peer in peers:
        if peer in FLOORS:
            continue
        if (peer, wl_name) in SKIP_NOTES:
            notes.append(f"{peer}: skipped, {SKIP_NOTES[(peer, wl_name)]}.")
            continue
        r = res.get(peer)
        if r is None:
            continue
        if not ok(r):
            md.append(f"| {peer} | — | — | — | — | — | — | — | — |")
            notes.append(f"{peer}: {r.get('error') or r.get('skipped')}")
            continue
        name = peer if r["unchanged"] else f"{peer} (input modified!)"
        md.append(_row(name, r, ob, base_s, classes))
        for kind, runs in (("warm", r["all"]), ("cold", r.get("cold_all") or [])):
            if len(runs) > 1 and max(runs) > SPREAD * min(runs):
                notes.append(
                    f"{peer}: its {kind} runs took {', '.join(f'{x:.3f}' for x in runs)} s,"
                    f" more than {SPREAD:.0f}x apart: other jobs held the cores (torch's"
                    " threads, which spin while they wait, suffer most); read this median"
                    " with care."
                )
        if "note" in r:
            notes.append(f"{peer}: {r['note']}")
        if not r["unchanged"]:
            findings.append(f"{wl_name}: {peer} modified its input")


def _common_findings(findings, wl_name, res, peers, base_s) -> None:
    """xpatch slower than a peer; xpatch's first call far above a warm one."""
    for peer in peers:
        r = res.get(peer)
        if not ok(r) or peer in FLOORS or base(peer) == "xpatch" or r["covered"] < 1:
            continue  # (a peer that leaves voxels without a result does less work)
        if r["seconds"] < base_s:
            findings.append(
                f"{wl_name}: xpatch ({base_s:.3f} s) is slower than {peer}"
                f" ({r['seconds']:.3f} s): x{base_s / r['seconds']:.2f}"
            )
    for peer in peers:
        r = res.get(peer)
        if base(peer) != "xpatch" or peer == "xpatch[read-whole]" or not ok(r):
            continue
        if r.get("cold") is not None and r["cold"] - r["seconds"] > COLD_TARGET:
            findings.append(
                f"{wl_name}: {peer}'s first call in a fresh process takes {r['cold']:.3f} s,"
                f" {(r['cold'] - r['seconds']) * 1e3:.0f} ms above a warm call"
                f" (target: within {COLD_TARGET * 1e3:.0f} ms)"
            )


COLD_TARGET = 0.05  # s: a first call within 50 ms of a warm one
SPREAD = 3.0  # runs of one pair further apart than this: say so under the table
LAZY_TARGET = 1.10  # lazy file source: at most 1.1x reading whole + applying in memory


def _mem_workload(md, findings, wl_name, res, peers, args, bandwidth) -> None:
    wl = WORKLOADS[wl_name]
    classes = wl["classes"]
    shape = wl["quick"] if args.quick else wl["shape"]
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
    md.extend(TABLE_HEAD)
    notes: list[str] = []
    _peer_rows(md, notes, findings, wl_name, res, peers, ob, base_s, classes)
    f = res.get("floor")
    if ok(f):
        md.append(_row("*floor loop*", f, ob, base_s, classes))
    tb = floor_bytes(shape, wl["size"], wl["step"], classes) / bandwidth
    md.append(
        f"| *bandwidth bound* | {tb:.3f} | | | | | {n_p / tb:,.0f} | |"
        + (f" {tb / base_s:.2f} |" if base_s else " |")
    )
    if notes:
        md.append("")
        md.extend(f"- {n}" for n in dict.fromkeys(notes))
    if not base_s:
        return
    md.append("")
    line = (
        f"- Distance to the bandwidth bound: xpatch takes {base_s / tb:.1f}x the bound"
        f" ({(base_s - tb) * 1e3:.0f} ms above it; CPU {xp['cpu']:.2f} s)"
    )
    if ok(f):
        line += (
            f", {base_s / f['seconds']:.2f}x the bare floor loop, which itself takes"
            f" {f['seconds'] / tb:.1f}x the bound"
        )
    if wl_name in PROFILE_WORKLOADS:
        line += "; where the rest goes: see the cProfile summary below"
    md.append(line + ".")
    _common_findings(findings, wl_name, res, peers, base_s)
    for peer in peers:
        r = res.get(peer)
        if base(peer) != "xpatch" or not ok(r):
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
        if base(peer) != "xpatch" and peer not in FLOORS and r and "work" in r
    ]
    if chunked and "work" in chunked and others:
        low, low_peer = min(others)
        ratio = chunked["work"] / low
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
    if wl_name == "W5" and ok(npy):
        fl = f["seconds"] if ok(f) else None
        for peer, target in (("xpatch", 30e-6), ("xpatch[batch=256]", 5e-6)):
            r = res.get(peer)
            if not ok(r):
                continue
            over = (r["seconds"] - npy["seconds"]) / r["patches"]
            over_cpu = (r["cpu"] - npy["cpu"]) / r["patches"]
            line = (
                f"- {peer}: per-patch overhead over the hand-written numpy loop"
                f" {over * 1e6:.1f} µs wall, {over_cpu * 1e6:.1f} µs CPU"
                f" (target < {target * 1e6:.0f} µs)"
            )
            if fl is not None:
                line += f"; over the floor loop {(r['seconds'] - fl) / r['patches'] * 1e6:.1f} µs"
            md.append(line + ".")
            if over > target:
                findings.append(
                    f"W5: {peer} per-patch overhead {over * 1e6:.1f} µs > target"
                    f" {target * 1e6:.0f} µs"
                )


def _ratio(a: dict | None, b: dict | None, key: str = "seconds") -> str:
    if not ok(a) or not ok(b) or a.get(key) is None or not b.get(key):
        return "n/a"
    return f"{a[key] / b[key]:.2f}x"


def _file_workload(md, findings, wl_name, res, peers, args) -> None:
    wl = WORKLOADS[wl_name]
    shape = wl["quick"] if args.quick else wl["shape"]
    spatial = shape[1:]
    xp = res.get(BASE_PEER, {})
    base_s = xp.get("seconds")
    ob = out_bytes(wl, shape)
    n_p = n_patches(shape, wl["size"], wl["step"])
    path = file_path(wl, args.quick)
    array_b = int(np.prod(spatial)) * 2
    row_b = array_b // spatial[0] * wl["chunk"]
    n_rows = -(-spatial[0] // wl["chunk"])
    ms = wl.get("model_ms", 0)
    if wl["source"] == "zarr":
        kind = "zarr store (zarr's default codec), opened with `xr.open_zarr(path, chunks=None)`"
    else:
        kind = (
            f"netCDF4/HDF5 file (zlib level 4, written by {netcdf_engine()}), opened with"
            " `xr.open_dataarray(path)` (xarray's default engine)"
        )
    md.append(f"\n## {wl_name}: {wl['title']}\n")
    md.append(
        f"Input: a {'x'.join(map(str, spatial))} uint16 {kind}; stored chunks"
        f" {wl['chunk']}^3, {fmt_mb(array_b)} MB decoded, {disk_bytes(path) / 2**20:.0f} MB"
        f" on disk; a row of stored chunks along the first axis is {fmt_mb(row_b)} MB decoded"
        f" ({n_rows} rows). {n_p:,} patches on the squeeze grid; the model"
        + (f" sleeps {ms} ms (`time.sleep`), then" if ms else "")
        + f" returns the patch cast to float32; blended float32 output {fmt_mb(ob)} MB.\n"
    )
    md.extend(TABLE_HEAD)
    notes: list[str] = []
    _peer_rows(md, notes, findings, wl_name, res, peers, ob, base_s, None)
    rd = res.get("read")
    if ok(rd):
        md.append(
            f"| *read whole array only* | {rd['seconds']:.3f} |"
            + (f" {rd['cold']:.3f} |" if rd.get("cold") is not None else " |")
            + f" {rd['cpu']:.2f} | {fmt_mb(rd['work'])} | | | |"
            + (f" {rd['seconds'] / base_s:.2f} |" if base_s else " |")
        )
    if ms:
        model_s = n_p * ms / 1000
        md.append(
            f"| *model alone* | {model_s:.3f} | | | | | | |"
            + (f" {model_s / base_s:.2f} |" if base_s else " |")
        )
    xb = res.get("xbatcher")
    if ok(xb) and xb["covered"] < 1:
        notes.append(
            f"xbatcher: its grid drops what is left after the last whole patch, so it"
            f" samples {xb['patches']} patches and leaves {1 - xb['covered']:.0%} of the"
            " voxels without a result (max err is over the covered voxels)."
        )
    mo = res.get("monai")
    if ok(mo):
        notes.append(
            "monai: reads the whole array, then casts it to float32 (torch cannot"
            " blend uint16 tensors), so its model gets float32 patches and returns a clone."
        )
    if notes:
        md.append("")
        md.extend(f"- {n}" for n in dict.fromkeys(notes))
    if not base_s:
        return
    whole, naive = res.get("xpatch[read-whole]"), res.get("numpy[per-patch]")
    md.append("")
    md.append(
        f"- xpatch on the lazily opened file: {_ratio(xp, whole)} the time of reading the"
        f" whole array + applying in memory (`xpatch[read-whole]`; target <="
        f" {LAZY_TARGET:.1f}x), cold {_ratio(xp, whole, 'cold')};"
        f" {_ratio(xp, naive)} the time of the numpy loop reading every patch through"
        f" {'zarr' if wl['source'] == 'zarr' else 'h5py'} (cold {_ratio(xp, naive, 'cold')})"
        f" and {_ratio(xp, res.get('numpy[read-whole]'))} that of the same loop after"
        " reading the whole array."
    )
    if ms and ok(rd):
        read_s, model_s = rd["seconds"], n_p * ms / 1000
        line = (
            f"- With the {ms} ms model: the model alone takes {model_s:.3f} s ({n_p} x {ms} ms),"
            f" reading the whole array alone {read_s:.3f} s; xpatch on the lazy file takes"
            f" {base_s:.3f} s, {base_s - model_s:.3f} s above the model alone"
        )
        if ok(whole):
            line += (
                f"; read whole + apply (one after the other) takes {whole['seconds']:.3f} s,"
                f" {whole['seconds'] - model_s:.3f} s above it. Were reading wholly hidden"
                f" behind the model, the lazy run would take about read whole + apply minus"
                f" the read, {whole['seconds'] - read_s:.3f} s"
            )
        md.append(line + ".")
    if ok(whole) and xp["seconds"] > LAZY_TARGET * whole["seconds"]:
        findings.append(
            f"{wl_name}: xpatch on the lazy file takes {xp['seconds'] / whole['seconds']:.2f}x"
            f" read whole + apply ({xp['seconds']:.3f} s vs {whole['seconds']:.3f} s);"
            f" target <= {LAZY_TARGET:.1f}x"
        )
    mem = []
    for peer in peers:
        r = res.get(peer)
        if peer in FLOORS:
            continue
        if ok(r):
            extra = r["work"] - ob
            mem.append(f"{peer} {fmt_mb(extra)} MB ({extra / row_b:.1f} rows)")
    if mem:
        md.append(
            "- Working memory above the float32 output, in rows of stored chunks"
            f" ({fmt_mb(row_b)} MB each; the whole decoded array is {n_rows} rows,"
            f" {fmt_mb(array_b)} MB): " + ", ".join(mem) + "."
        )
    if ok(xp) and xp["work"] - ob >= array_b:
        findings.append(
            f"{wl_name}: xpatch on the lazy file holds {fmt_mb(xp['work'] - ob)} MB above the"
            f" output, not less than the whole decoded array ({fmt_mb(array_b)} MB)"
        )
    if xp["err"] > 1e-3:
        findings.append(f"{wl_name}: xpatch max error {xp['err']:.2g}")
    _common_findings(findings, wl_name, res, peers, base_s)


PROFILE_WORKLOADS = ("W1", "W2", "W3", "W6", "W7")


def _profile_section(md, profiles: dict[str, dict]) -> None:
    if not profiles:
        return
    md.append("\n## Where xpatch's time goes (cProfile)\n")
    md.append(
        "One warm run of xpatch per workload under cProfile (`--profile` prints the full"
        " listing), in a fresh process: the share of the profiled time spent in the"
        " benchmark's model (the identity's copy or cast), in building xarray objects"
        " (the labeled patches handed to func, and the output), and the functions with the"
        " most own time (excluding what they call; numpy's `copy` and `astype` are mostly"
        " the model's). cProfile sees the calling thread only and slows Python-level"
        " code; while a profiler is set, xpatch blends each result before calling func"
        " again (its overlap of blending with func is off under a profiler), so the profile"
        " shows the sequential cost of each step; time spent waiting for helper threads"
        " (the read-ahead of W6/W7, the blocks of a large patch blended in parallel) shows"
        " up as lock waits and queue puts.\n"
    )
    for w, r in profiles.items():
        if "top" not in r:
            md.append(f"- {w}: {r.get('error', 'no profile')}")
            continue
        tot = r["total_tt"] or float("nan")
        parts = [
            f"`{t['where']}` {t['tottime'] / tot:.0%} ({t['calls']:,} calls)" for t in r["top"][:6]
        ]
        (m_s, _), (d_s, d_n) = r.get("model", (0, 0)), r.get("dataarray", (0, 0))
        md.append(
            f"- **{w}** ({r['seconds']:.3f} s profiled, {r['patches']} patches): the"
            f" benchmark's model {m_s / tot:.0%}, `xarray.DataArray(...)` constructions"
            f" {d_s / tot:.0%} ({d_n:,} calls); by own time: " + "; ".join(parts) + "."
        )


def report(results, workloads, peers, args, bandwidth, wall, profiles=None):
    """Markdown report and the list of findings (targets missed, xpatch slower)."""
    mode = "quick" if args.quick else "full"
    md: list[str] = []
    findings: list[str] = []
    cmd = (
        "python benchmarks/peers.py"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
        + (f" --peers {args.peers}" if args.peers else "")
        + (f" --repeats {args.repeats}" if args.repeats != (1 if args.quick else 3) else "")
        + (
            f" --cold-repeats {args.cold_repeats}"
            if args.cold_repeats != default_cold_repeats(args)
            else ""
        )
        + (" --cold" if args.cold else "")
        + (" --spawn" if args.spawn else "")
    )
    md.append("# Benchmarks: xpatch side by side with its peers\n")
    md.append(
        f"Generated by `{cmd}` on {_dt.date.today().isoformat()} ({mode} mode,"
        f" {args.repeats} fresh process(es) per pair for the warm figures and"
        f" {args.cold_repeats} for the cold ones, median). Do not edit by hand: rerun"
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
        "Columns: **s** median wall seconds of a warm run (sampling, model, blending and"
        " the final result; imports, one warm-up call on a single-patch input and input"
        " creation excluded); **cold s** the same for the first call in a fresh process:"
        " imports are done before the clock starts (the file workloads also open their file"
        " once, so xarray has found its backends), but there is no warm-up call, so"
        " one-time set-up inside the first call counts; **CPU s** user + system CPU"
        " seconds of the warm run, all threads (torch uses several, xpatch blends and"
        " reads ahead on helper threads); **work MB** peak RSS of the child process"
        " (`VmHWM`) minus its RSS after creating the input (for W6/W7: after opening"
        " the file): working memory above the input, output included; **x out** that"
        " memory over the size of the blended float32 output; **patches/s** patches the"
        " model was given per wall second (each tool's own grid); **max err** max abs"
        " error of the result against the input (the model is the identity), for W4 the"
        " fraction of voxels whose label differs from the reference argmax (all classes"
        " are equal, so the reference label is 0 everywhere); **vs xpatch** the row's"
        " wall time over xpatch's (above 1: xpatch is faster).\n"
    )
    md.append(
        "Every peer gets the same identity model, returning a fresh float32 array"
        " (`x.copy()` / `x.clone()`; W4: `repeat` to 8 classes; W6/W7: the uint16 patch"
        " cast to float32, after a 5 ms `time.sleep` in the `[model=5ms]` variants);"
        " every input is checked to be unchanged afterwards. Gaussian weights with"
        ' sigma = size/8 for xpatch (`weights="gaussian"`), the numpy loop, Patchly'
        ' (`weights="gaussian"`), tiler (the same kernel passed as `window=`) and MONAI'
        ' (`mode="gaussian"`, `sigma_scale=0.125`, `overlap=1 - step/size`); TorchIO has'
        ' no gaussian and uses `overlap_mode="hann"`. Each run is a fresh process forked'
        " from one that has only imported the peer's packages (`--spawn`: a new"
        " interpreter per run); repetitions are interleaved, and in each one the runs of a"
        " workload (peers, warm and cold) go in a shuffled (seeded) order.\n"
    )
    md.append(
        "Floor lines: **floor loop** is the bare numpy loop `out[sl] += img[sl] * w` over the"
        " same positions (no sampling API, no model, no normalisation); **bandwidth bound**"
        " is the bytes any blender must move (each input patch read once, the accumulator"
        " region read and written once, float32) divided by the measured copy bandwidth;"
        " **read whole array only** (W6/W7) is reading and decoding the whole array with"
        " zarr / h5py, nothing else; **model alone** is the patches times 5 ms.\n"
    )
    md.append(
        "File workloads (W6 zarr, W7 netCDF4/HDF5): the files are generated once into"
        f" `{cache_dir().name}/` under the temporary directory (`$XPATCH_BENCH_CACHE`"
        " overrides it; the OS page cache holds them, so cold means a fresh process, not"
        " a cold disk), and every call opens the file itself (metadata only). Peers:"
        " **xpatch** applies on the lazily opened file; **xpatch[read-whole]** loads the"
        " whole array (`.load()`) and applies in memory, the reference of the lazy"
        " target; **numpy[per-patch]** is the hand-written loop reading every patch"
        " through zarr / h5py (each read decodes every stored chunk the patch touches);"
        " **numpy[read-whole]** reads the whole array first, then loops in memory;"
        " **monai** reads the whole array, as it must, then runs"
        " `sliding_window_inference`; **xbatcher** samples with `BatchGenerator`"
        " (`input_overlap` = size - step) on the lazily opened file and blends with the"
        " numpy loop's code.\n"
    )
    for wl_name in workloads:
        res = results[wl_name]
        if "source" in WORKLOADS[wl_name]:
            _file_workload(md, findings, wl_name, res, peers, args)
        else:
            _mem_workload(md, findings, wl_name, res, peers, args, bandwidth)
    _profile_section(md, profiles or {})
    md.append("\n## Targets (reported, not asserted)\n")
    md.append(
        "xpatch below every peer on every workload; per-patch overhead of `apply` on W5"
        " (over the hand-written numpy loop) < 30 µs unbatched and < 5 µs with"
        " `batch_size=256`; working memory at most the output size + 10 % (W1-W5); the"
        f" first call in a fresh process within {COLD_TARGET * 1e3:.0f} ms of a warm call;"
        f" on a lazily opened file (W6, W7) at most {LAZY_TARGET:.1f}x the time of reading"
        " the whole array and applying in memory, with working memory above the output"
        " bounded by a few rows of stored chunks rather than the array, and with a slow"
        " model a wall time close to the model's alone (reading overlapped with it).\n"
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
            f"  {'peer':<20}{'s':>9}{'cold s':>9}{'CPU s':>8}{'work MB':>10}{'patches/s':>12}"
            f"{'max err':>10}{'vs xp':>7}"
        )
        for peer in peers:
            r = res.get(peer)
            if r is None:
                continue
            if not ok(r):
                print(f"  {peer:<20}  {r.get('error') or r.get('skipped')}")
                continue
            ratio = r["seconds"] / base_s if base_s else float("nan")
            cold = r["cold"] if r.get("cold") is not None else float("nan")
            print(
                f"  {peer:<20}{r['seconds']:9.3f}{cold:9.3f}{r['cpu']:8.2f}"
                f"{r['work'] / 2**20:10.0f}{r['rate']:12,.0f}"
                f"{r['err']:10.2g}{ratio:7.2f}"
            )


def expand(names: str, variants: bool = True) -> list[str]:
    """Workloads named in a comma-separated list; with ``variants``, W6 also names its
    variants (W6[model=5ms])."""
    out: list[str] = []
    for w in (x.strip() for x in names.split(",")):
        found = [k for k in WORKLOADS if k == w or (variants and k.split("[")[0] == w)]
        if not found:
            raise SystemExit(f"unknown workload {w!r}; choose from {list(WORKLOADS)}")
        out += [k for k in found if k not in out]
    return out


def selection(args, variants: bool = True) -> tuple[list[str], list[str]]:
    """The workloads and peers that ``--only`` and ``--peers`` name (default: all)."""
    workloads = expand(args.only, variants) if args.only else list(WORKLOADS)
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
    each call and slow the next peer's run in the same process. ``--only`` takes exact
    workload names here (W6 is W6 alone): compare_versions.py runs one workload per call.
    """
    workloads, peers = selection(args, variants=False)
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
        names = [p for p in peers if runs_on(p, w) and installed(p, w)]
        if not names:
            continue
        img = make_input(wl, args.quick)  # an array, or a file's path
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


def default_cold_repeats(args) -> int:
    if args.cold:  # every run is cold already
        return 0
    return 1 if args.quick else 2


def parent(args) -> int:
    workloads, peers = selection(args)
    if BASE_PEER not in peers:
        peers.insert(0, BASE_PEER)  # the ratios need it
    quick_flag = ["--quick"] if args.quick else []
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    for w in workloads:  # the files, written once (not timed; reused by later runs)
        wl = WORKLOADS[w]
        if "source" in wl and installed("numpy", w):
            for tiny in (False, True):
                if not file_path(wl, args.quick, tiny).exists():
                    print(f"writing {file_path(wl, args.quick, tiny)}", flush=True)
                    ensure_file(wl, args.quick, tiny)
    zygotes = None if args.spawn else Zygotes()
    bw = spawn(["--bandwidth", *quick_flag], timeout=120)
    bandwidth = bw.get("bandwidth", float("nan"))
    jobs = [(w, p) for w in workloads for p in peers if runs_on(p, w)]
    skipped = {j: missing(j[1], j[0]) for j in jobs if not installed(j[1], j[0])}
    todo = [j for j in jobs if j not in skipped]
    modes = {"warm": args.repeats, "cold": args.cold_repeats}
    runs: dict[tuple[str, str, str], list[dict]] = {(*j, m): [] for j in todo for m in modes}
    total = len(todo) * (args.repeats + args.cold_repeats)
    k = 0
    for rep in range(max(modes.values())):  # interleave repeats to spread drift over peers
        # and shuffle the runs of each workload (seeded: reproducible), so that none
        # always runs right after the same one (a peer leaving 1 GB of freed memory
        # makes the next first touches slower)
        order = random.Random(rep)
        sequence = []
        for w in workloads:
            group = [(*j, m) for j in todo if j[0] == w for m, n in modes.items() if rep < n]
            order.shuffle(group)
            sequence += group
        for w, p, m in sequence:
            k += 1
            t0 = time.perf_counter()
            r = run_one(args, zygotes, p, w, warmup=False if m == "cold" else None)
            runs[(w, p, m)].append(r)
            took = time.perf_counter() - t0
            msg = r.get("error") or f"{r['seconds']:.3f} s, work {r['work'] / 2**20:.0f} MB"
            print(f"[{k}/{total}] rep {rep + 1} {w} {p} {m}: {msg} ({took:.1f} s)", flush=True)
    profiles: dict[str, dict] = {}
    if args.report_profile:
        for w in (x.strip() for x in args.report_profile.split(",")):
            if w in workloads and runs_on(BASE_PEER, w) and installed(BASE_PEER, w):
                profiles[w] = run_one(args, zygotes, BASE_PEER, w, profile=True, warmup=True)
                print(f"profiled xpatch on {w}", flush=True)
    if zygotes is not None:
        zygotes.close()
    args.load = (load_start, os.getloadavg())
    results: dict[str, dict[str, dict]] = {w: {} for w in workloads}
    for w, p in jobs:
        if (w, p) in skipped:
            results[w][p] = {"skipped": skipped[(w, p)]}
        else:
            results[w][p] = summarise(runs[(w, p, "warm")], runs[(w, p, "cold")])
    wall = time.perf_counter() - t_start
    print_table(results, workloads, peers, args.quick)
    md, findings = report(results, workloads, peers, args, bandwidth, wall, profiles)
    out = write_page(md, args.out)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "results": {f"{w}|{p}": r for w in results for p, r in results[w].items()},
                    "profiles": profiles,
                    "findings": findings,
                    "report": md,
                },
                indent=1,
            )
        )
    print(f"\nbandwidth {bandwidth / 1e9:.1f} GB/s; wall {wall / 60:.1f} min; wrote {out}")
    for f in findings:
        print("finding:", f)
    return 0


def write_page(md: str, out: str) -> Path:
    """The report, then the hand-written reading of the numbers (analysis.md, kept beside
    the code)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    analysis = Path(__file__).with_name("analysis.md")
    if analysis.exists():
        md = md.rstrip("\n") + "\n\n" + analysis.read_text()
    path.write_text(md)
    return path


def profile(args) -> int:
    peers = [p.strip() for p in args.peers.split(",")] if args.peers else ["xpatch"]
    zygotes = None if args.spawn else Zygotes()
    for w in expand(args.profile):
        if "source" in WORKLOADS[w]:
            ensure_file(WORKLOADS[w], args.quick)
            ensure_file(WORKLOADS[w], args.quick, tiny=True)
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
    ap.add_argument("--only", help="comma-separated workloads, e.g. W1,W3 (W6: W6 and W6[...])")
    ap.add_argument("--peers", help="comma-separated peers, e.g. xpatch,numpy")
    ap.add_argument("--repeats", type=int, help="warm runs per pair (default 3, quick 1)")
    ap.add_argument(
        "--cold-repeats",
        type=int,
        help="cold runs per pair: first call in a fresh process, no warm-up (default 2,"
        " quick 1; 0: none)",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds per child run")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="markdown report to (re)write")
    ap.add_argument(
        "--json",
        default=str(DEFAULT_JSON),
        help="where to write the summarised results as JSON (the docs' chart reads them)",
    )
    ap.add_argument("--profile", metavar="W1,W5", help="cProfile xpatch on these workloads")
    ap.add_argument(
        "--report-profile",
        default=",".join(PROFILE_WORKLOADS),
        metavar="W1,W3",
        help="workloads (exact names) whose cProfile summary goes in the report (default"
        " %(default)s; '' for none)",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="no warm-up call in any run: first-call costs (lazy imports) count as run"
        " time (then no separate cold runs)",
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
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="instead: rewrite the page from a run saved with --json (after editing"
        " analysis.md); nothing is measured",
    )
    ap.add_argument("--zygote", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "PEER"), help=argparse.SUPPRESS)
    ap.add_argument("--cprofile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.cold_repeats is None:
        args.cold_repeats = default_cold_repeats(args)
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
    if args.render:
        out = write_page(json.loads(Path(args.render).read_text())["report"], args.out)
        print(f"wrote {out} from {args.render}")
        return 0
    if args.profile:
        return profile(args)
    if args.in_process:
        return in_process(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

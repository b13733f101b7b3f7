"""The weighted add at the heart of aggregation: ``target += part * weight``.

``weight`` is given as one or more arrays that broadcast against ``target`` and
whose product is the weight (a cached N-D weight, or a 1-D factor times the
product of the other axes' factors when the full weight is too large to cache).

Small patches take one multiply into a reused scratch array and one add. Large
patches are cut into blocks of about 0.5 MiB along one axis and the threads
take them in turn: numpy releases the GIL inside ufunc loops, the blocks
are disjoint, and each thread has its own small scratch, so a large patch is
blended on every core without any full-size temporary.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_BYTES = 1 << 19  # a block of the weighted product stays in a core's cache
THREAD_BYTES = 1 << 21  # patches smaller than this are blended on the calling thread
MAX_THREADS = 8

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def default_threads() -> int:
    """``XPATCH_NUM_THREADS`` if set, else the cores this process may run on (at most 8)."""
    env = os.environ.get("XPATCH_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"XPATCH_NUM_THREADS must be a positive int, got {env!r}")
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of helper threads (made again in a forked child)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xpatch-blend")
            _pool_pid = os.getpid()
        return _pool


class Blender:
    """Adds weighted patch results into accumulation buffers.

    Parameters
    ----------
    threads : int, optional
        Threads that share the blocks of a large patch; default one per core
        (at most 8). 1 blends on the calling thread only.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self._scratch: dict[tuple[int, tuple[int, ...], np.dtype], np.ndarray] = {}

    def _buffer(self, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (slot, shape, dtype)
        scratch = self._scratch.get(key)
        if scratch is None:
            if len(self._scratch) >= 4 * self.threads:
                self._scratch.clear()
            scratch = self._scratch[key] = np.empty(shape, dtype=dtype)
        return scratch

    def __call__(self, target: np.ndarray, part: np.ndarray, weights: Sequence[np.ndarray]) -> None:
        """``target += part * prod(weights)``, in place (``part`` is cast to ``target``'s dtype)."""
        if target.nbytes <= BLOCK_BYTES:
            self._run(0, target, part, weights)
            return
        axis = _split_axis(target.shape)
        n = target.shape[axis]
        rows = max(1, BLOCK_BYTES // max(target.nbytes // n, 1))
        blocks = [(a, min(a + rows, n)) for a in range(0, n, rows)]
        workers = min(self.threads, len(blocks)) if target.nbytes >= THREAD_BYTES else 1
        if workers == 1:
            for a, b in blocks:
                self._block(0, target, part, weights, axis, a, b)
            return
        # the threads take blocks from one shared counter: a thread that starts late
        # (a busy core) takes fewer blocks instead of holding the others up
        counter = itertools.count()
        job = (counter, blocks, target, part, weights, axis)
        pool = _executor(self.threads - 1)
        futures = [pool.submit(self._take, k, *job) for k in range(1, workers)]
        try:
            self._take(0, *job)
        finally:
            for fut in futures:
                fut.result()

    def _take(
        self,
        slot: int,
        counter: Iterator[int],
        blocks: Sequence[tuple[int, int]],
        target: np.ndarray,
        part: np.ndarray,
        weights: Sequence[np.ndarray],
        axis: int,
    ) -> None:
        for i in counter:  # next() on a count is atomic under the GIL
            if i >= len(blocks):
                return
            a, b = blocks[i]
            self._block(slot, target, part, weights, axis, a, b)

    def _block(
        self,
        slot: int,
        target: np.ndarray,
        part: np.ndarray,
        weights: Sequence[np.ndarray],
        axis: int,
        a: int,
        b: int,
    ) -> None:
        lead = (slice(None),) * axis
        cut = (*lead, slice(a, b))
        ws = [w if w.shape[axis] == 1 else w[cut] for w in weights]
        self._run(slot, target[cut], part[cut], ws)

    def _run(
        self, slot: int, target: np.ndarray, part: np.ndarray, weights: Sequence[np.ndarray]
    ) -> None:
        scratch = self._buffer(slot, target.shape, target.dtype)
        np.multiply(part, weights[0], out=scratch, casting="unsafe")
        for w in weights[1:]:
            np.multiply(scratch, w, out=scratch, casting="unsafe")
        target += scratch


def _split_axis(shape: tuple[int, ...]) -> int:
    """The first axis long enough to share out in blocks (else the longest)."""
    for k, n in enumerate(shape):
        if n >= 16:
            return k
    return int(np.argmax(shape))

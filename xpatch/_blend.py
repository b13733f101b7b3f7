"""The weighted add at the heart of aggregation: ``target += part * weight``.

``weight`` is given as one or more arrays that broadcast against ``target`` and
whose product is the weight (a cached N-D weight, or a 1-D factor times the
product of the other axes' factors when the full weight is too large to cache).

Small patches take one multiply into a reused scratch array and one add. Large
patches are cut into blocks of about 0.5 MiB along one axis and the threads
take them in turn: numpy releases the GIL inside ufunc loops, the blocks
are disjoint, and each thread has its own small scratch, so a large patch is
blended on every core without any full-size temporary.

A patch result that nothing but the aggregator can reach (see
:func:`sole_owner`) may be blended in the background: the helper threads
take its blocks while the calling thread goes on to run ``func`` on the next
patch, and the calling thread joins in on what is left before the next add.
A result the model may still hold (a reused output buffer, a view of the
input) is blended before the call returns, as any result is on one thread.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any

import numpy as np

BLOCK_BYTES = 1 << 19  # a block of the weighted product stays in a core's cache
THREAD_BYTES = 1 << 21  # patches smaller than this are blended on the calling thread
MAX_THREADS = 8

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


def default_threads() -> int:
    """How many threads xpatch may use (helper threads plus the calling one).

    ``XPATCH_NUM_THREADS`` if set; else 1 inside a dask task (dask runs tasks in
    parallel already) and no more than a ``threadpoolctl`` limit in force; else the
    cores this process may run on (at most 8).
    """
    env = os.environ.get("XPATCH_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"XPATCH_NUM_THREADS must be a positive int, got {env!r}")
        return int(env)
    if _in_dask_task():
        return 1
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS, _threadpool_limit()))


def _in_dask_task() -> bool:
    """True on a dask worker thread or inside a task of dask's threaded scheduler."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            distributed.get_worker()
            return True
        except ValueError:
            pass
    if "dask.local" not in sys.modules:
        return False
    # a task of dask's local schedulers runs under dask.local's execute_task
    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            return False
        if frame.f_code.co_name == "execute_task" and frame.f_globals.get(
            "__name__", ""
        ).startswith("dask."):
            return True
        frame = frame.f_back
    return False


def _threadpool_limit() -> int:
    """The smallest thread limit ``threadpoolctl`` has set for a numerical library (only
    when the user has imported it: xpatch does not depend on it)."""
    threadpoolctl = sys.modules.get("threadpoolctl")
    if threadpoolctl is None:
        return MAX_THREADS
    try:
        limits = [int(info["num_threads"]) for info in threadpoolctl.threadpool_info()]
    except Exception:  # an introspection failure must not stop a run
        return MAX_THREADS
    return min([*limits, MAX_THREADS])


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
        self._scratch: dict[int, tuple[tuple[int, ...], np.dtype, np.ndarray, np.ndarray]] = {}
        self._pending: tuple[_Job, list[Future[None]]] | None = None

    def _buffer(self, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Thread ``slot``'s scratch for ``shape``: one flat buffer per thread, reused."""
        held = self._scratch.get(slot)
        if held is not None and held[0] == shape and held[1] == dtype:
            return held[2]
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if held is not None and held[3].nbytes >= nbytes:
            flat = held[3]
        else:
            flat = np.empty(nbytes, dtype=np.uint8)
        scratch = flat[:nbytes].view(dtype).reshape(shape)
        self._scratch[slot] = (shape, dtype, scratch, flat)
        return scratch

    def wait(self) -> None:
        """Finish the background blend, if any (the calling thread takes its blocks too)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        job, futures = pending
        try:
            self._take(0, job)
        finally:
            wait_all(futures)  # every thread is out of the buffers, even on an error
        for fut in futures:
            fut.result()
        job.report()

    def submit(self, task: Callable[[], None], background: bool = False) -> None:
        """Run ``task`` (which writes to accumulation buffers), in the background if asked.

        The same contract as a background blend: whatever ``task`` reads must not
        change, and what it writes must not be read, before :meth:`wait`.
        """
        if self._pending is not None:
            self.wait()
        if not background or self.threads < 2:
            task()
            return
        job = _Job([], 0, None, task)
        self._pending = (job, [_executor(self.threads - 1).submit(self._take, 1, job)])

    def __call__(
        self,
        target: np.ndarray,
        part: np.ndarray,
        weights: Sequence[np.ndarray],
        background: bool = False,
    ) -> None:
        """``target += part * prod(weights)``, in place (``part`` is cast to ``target``'s dtype).

        With ``background`` (only for a ``part`` nothing else may change, and a
        ``target`` nothing reads before :meth:`wait`), a large patch is left to
        the helper threads and the call returns at once. Every call first waits
        for the previous background blend.
        """
        if self._pending is not None:
            self.wait()
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
        job = _Job(blocks, axis, (target, part, weights))
        pool = _executor(self.threads - 1)
        futures = [pool.submit(self._take, k, job) for k in range(1, workers)]
        self._pending = (job, futures)
        if not background:
            self.wait()

    def _take(self, slot: int, job: _Job) -> None:
        with np.errstate(all="call", call=job.error):
            self._take_blocks(slot, job)

    def _take_blocks(self, slot: int, job: _Job) -> None:
        if job.task is not None:
            if next(job.counter) == 0:  # whichever thread comes first runs it
                task, job.task = job.task, None
                task()
            return
        arrays = job.arrays
        if arrays is None:  # every block was taken before this thread started
            return
        target, part, weights = arrays
        del arrays
        blocks, axis = job.blocks, job.axis
        for i in job.counter:  # next() on a count is atomic under the GIL
            if i >= len(blocks):
                # all taken: the patch is freed once the last block in progress is done,
                # not when the caller next waits
                job.arrays = None
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


class _Job:
    """The blocks of one patch, taken in turn by the threads that blend it.

    Floating-point errors (``inf * 0`` ...) are collected, not warned about on
    the helper threads: :meth:`report` treats them on the calling thread, as
    its own ``np.errstate`` says, as if the calling thread had done all the work.
    """

    __slots__ = ("arrays", "axis", "blocks", "counter", "errors", "mode", "task")

    def __init__(
        self,
        blocks: Sequence[tuple[int, int]],
        axis: int,
        arrays: tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]] | None,
        task: Callable[[], None] | None = None,
    ) -> None:
        self.task = task  # or one piece of work, run by one thread
        self.counter = itertools.count()
        self.blocks = blocks
        self.axis = axis
        self.arrays = arrays
        self.errors: list[str] = []
        self.mode = np.geterr()  # the calling thread's settings

    def error(self, kind: str, flag: int) -> None:  # np.errstate's callback
        self.errors.append(kind)

    def report(self) -> None:
        """Warn about, or raise, the floating-point errors the threads met."""
        for kind in dict.fromkeys(self.errors):
            key = _ERROR_KEYS.get(kind.split()[0], "invalid")
            mode = self.mode[key]
            message = f"{kind} encountered while blending"
            if mode == "raise":
                raise FloatingPointError(message)
            call = np.geterrcall()
            if mode == "call" and callable(call):
                call(kind, 0)
            elif mode != "ignore":
                warnings.warn(message, RuntimeWarning, stacklevel=5)


_ERROR_KEYS = {"divide": "divide", "overflow": "over", "underflow": "under", "invalid": "invalid"}


def _split_axis(shape: tuple[int, ...]) -> int:
    """The first axis long enough to share out in blocks (else the longest)."""
    for k, n in enumerate(shape):
        if n >= 16:
            return k
    return int(np.argmax(shape))


def ref_counts(a: np.ndarray) -> tuple[int, int]:
    """References to ``a`` and to the array owning its memory (0 if ``a`` owns it)."""
    base = a.base
    return sys.getrefcount(a), 0 if base is None else sys.getrefcount(base)


def _counts_as_in_sole_owner(a: np.ndarray) -> tuple[int, int]:
    counts = ref_counts(a)  # called at the same depth as in sole_owner
    return counts


def _probe() -> tuple[int, int]:
    data = np.empty(2)[:1]  # one local name; the owner is held by the view only
    return _counts_as_in_sole_owner(data)


_sole_counts: tuple[int, int] | None = None  # measured on first use, never under a tracer
# a free-threaded interpreter defers some reference counting: never rely on counts there
_COUNTS_EXACT = getattr(sys, "_is_gil_enabled", lambda: True)()


def sole_owner(a: Any, min_bytes: int = 0) -> bool:
    """Whether nothing but the caller's local name can reach ``a``'s memory.

    Call it as ``sole_owner(name)`` from a function whose local ``name`` is the
    only reference to ``a`` that the caller knows of: the reference counts are
    compared with those of exactly that situation, measured the same way
    (:func:`_probe`). True only for a plain numeric ndarray of at least
    ``min_bytes`` that owns its memory or is a view of one, when neither is
    referenced (weak references included) by anything else: then no other code
    can write to that memory while it is blended in the background. Anything
    else (a view of the input, a buffer a model keeps for its next call, memory
    owned by another library, object arrays whose elements the model may keep)
    gives False, and is blended at once. So does any call under a debugger,
    tracer or profiler, which may hold frame locals (and so add references)
    behind the counts' back.
    """
    global _sole_counts
    if (
        not _COUNTS_EXACT
        or type(a) is not np.ndarray
        or a.nbytes < min_bytes
        or a.dtype.kind not in "biufc"
        or weakref.getweakrefcount(a)
        or sys.gettrace() is not None
        or sys.getprofile() is not None
    ):
        return False
    # before any other name in this frame refers to a or its owner (see _probe)
    counts = ref_counts(a)
    if _sole_counts is None:
        _sole_counts = _probe()
    base = a.base
    if base is None:
        return bool(a.flags.owndata) and counts[0] == _sole_counts[0]
    return (
        type(base) is np.ndarray
        and bool(base.flags.owndata)
        and not weakref.getweakrefcount(base)
        and counts == _sole_counts
    )

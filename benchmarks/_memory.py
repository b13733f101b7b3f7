"""Resident memory of this process, for the benchmark scripts (Linux ``/proc``).

The peak is ``VmHWM``, which :func:`reset_peak` clears to the current RSS, not
``ru_maxrss``: after ``exec`` the kernel keeps the pre-exec high-water mark (the
parent's, at fork) in ``ru_maxrss``, so a child started by a driver that had grown
large (writing the benchmark files, making a volume) reads the driver's size.
Off Linux both fall back to ``ru_maxrss``.
"""

from __future__ import annotations

import resource


def ru_maxrss() -> int:
    """``getrusage`` peak RSS in bytes (KiB on Linux): never below the parent's peak at
    the fork, so it only bounds this process's own peak from above."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_now() -> int:
    """Current resident set size in bytes."""
    value = _status("VmRSS")
    return ru_maxrss() if value is None else value


def rss_peak() -> int:
    """Peak RSS of this process's own address space since the last :func:`reset_peak`."""
    value = _status("VmHWM")
    return ru_maxrss() if value is None else value


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

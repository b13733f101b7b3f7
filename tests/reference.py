"""Brute-force references for blending tests: naive on purpose, no xpatch inside."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.signal import windows
from strategies import reference_starts as ref_axis

__all__ = ["builtin_weights", "kernel_1d", "ref_axis", "ref_for", "reference", "uncovered_mask"]


def kernel_1d(name: str, n: int, sigma: float = 0.125) -> np.ndarray:
    if name == "mean":
        return np.ones(n)
    if name == "gaussian":
        return windows.gaussian(n, std=sigma * n)
    if name == "hann":
        return windows.hann(n + 2)[1:-1]
    raise AssertionError(name)


def builtin_weights(name: str, sigma: float = 0.125):
    """N-D kernel (spatial order) as the outer product of 1-D kernels."""

    def weights(shape: tuple[int, ...]) -> np.ndarray:
        out = np.ones(())
        for n in shape:
            out = np.multiply.outer(out, kernel_1d(name, n, sigma))
        return out

    return weights


def reference(
    a,
    axes,
    size,
    step,
    border,
    weights,
    f,
    pad_mode="constant",
    subset=None,
):
    """Brute-force blend of ``f`` over the grid; NaN where no weight lands.

    ``axes``: spatial axis numbers (ascending); ``size``/``step``: one int per
    spatial axis; ``weights``: spatial shape -> N-D weight; ``f(patch, starts)``
    returns an array of the patch's shape; ``subset``: flat indices of the
    windows to blend (default all).
    """
    a = np.asarray(a)
    plans = [ref_axis(a.shape[ax], size[i], step[i], border) for i, ax in enumerate(axes)]
    pad = [(0, 0)] * a.ndim
    for (starts, sizes), ax in zip(plans, axes):
        stop = max(s + n for s, n in zip(starts, sizes))
        pad[ax] = (max(0, -starts[0]), max(0, stop - a.shape[ax]))
    padded = np.pad(a, pad, mode=pad_mode) if any(p != (0, 0) for p in pad) else a
    num = np.zeros(padded.shape)
    den = np.zeros(padded.shape)
    positions = itertools.product(*(range(len(p[0])) for p in plans))
    for k, position in enumerate(positions):
        if subset is not None and k not in subset:
            continue
        index = [slice(None)] * a.ndim
        starts, shape = [], []
        for (st_, sz), ax, p in zip(plans, axes, position):
            s0 = st_[p] + pad[ax][0]
            index[ax] = slice(s0, s0 + sz[p])
            starts.append(st_[p])
            shape.append(sz[p])
        index = tuple(index)
        w = np.asarray(weights(tuple(shape)), dtype=np.float64)
        bshape = [1] * a.ndim
        for ax, n in zip(axes, shape):
            bshape[ax] = n
        w = w.reshape(bshape)
        num[index] += w * np.asarray(f(padded[index], tuple(starts)), dtype=np.float64)
        den[index] += w * np.ones(num[index].shape)
    out = np.full(padded.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pad, a.shape))
    return out[crop]


def uncovered_mask(shape, axes, size, step, border) -> np.ndarray:
    """Elements that no window covers (only the crop border has any)."""
    mask = np.zeros(shape, dtype=bool)
    for i, ax in enumerate(axes):
        starts, sizes = ref_axis(shape[ax], size[i], step[i], border)
        cov = np.zeros(shape[ax], dtype=bool)
        for s, n in zip(starts, sizes):
            cov[max(s, 0) : s + n] = True
        bshape = [1] * len(shape)
        bshape[ax] = shape[ax]
        mask |= ~cov.reshape(bshape)
    return mask


def ref_for(case, da, weights, f, **kw):
    """``reference`` for a geometry case (see ``strategies.array_cases``) and its array."""
    sp = case["spatial"]
    return reference(
        da.values,
        case["axes"],
        [case["size"][d] for d in sp],
        [case["step"][d] for d in sp],
        case["border"],
        weights,
        f,
        **kw,
    )


def same_partition(a, b) -> bool:
    """Two label images are the same partition iff zeros coincide and the map between
    their ids is a bijection on the nonzero elements."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    nz = a != 0
    if not nz.any():
        return True
    pairs = np.unique(np.stack([a[nz], b[nz]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def failing_at(n: int, func):
    """``func``, except that its ``n``-th call raises ``RuntimeError("killed")`` (a run
    interrupted part-way, to be resumed)."""
    calls = {"n": 0}

    def flaky(p):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("killed")
        return func(p)

    return flaky


def recording_readers(monkeypatch) -> list:
    """The readers ``apply`` makes (``ChunkReader.make`` recorded as they are made)."""
    from xpatch import _reader

    made = []
    make = _reader.ChunkReader.make.__func__

    def recorded(cls, *args, **kwargs):
        out = make(cls, *args, **kwargs)
        made.append(out)
        return out

    monkeypatch.setattr(_reader.ChunkReader, "make", classmethod(recorded))
    return made

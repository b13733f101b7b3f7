"""Separable normalisation: the final weight of every patch, known before any result.

This is xpatch's key numerical idea, and all of its arithmetic is in this module.

Blending divides the weighted sum of the results covering an element by the sum of
their weights::

    out(x) = sum_p w_p(x) r_p(x) / sum_p w_p(x)

Every built-in kernel is a product of 1-D kernels, ``w_p(x) = prod_i k_i(x_i - s_pi)``,
and every grid is a Cartesian product of per-axis starts ``s_pi``. So the denominator
factorises too::

    sum_p w_p(x) = prod_i D_i(x_i),   D_i(t) = sum_j k_i(t - s_ij)   (1-D, per axis)

Dividing each 1-D kernel by its axis' ``D_i`` once, before anything is added, gives
every patch its *final* weight ``prod_i k_i / D_i``. Each result is then added with
that weight and the output needs no weight map, no division pass: a chunk is finished
the moment its last patch lands. A custom weight that is not a product of 1-D
factors has no such shortcut; its weights are summed per chunk (see
:class:`~xpatch.aggregate.Aggregator`) and divided when the chunk finishes.

Numpy only: no xarray, no dask.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from xpatch.errors import WeightsError
from xpatch.grid import PatchGrid
from xpatch.weights import CustomWeights, Kernel

__all__ = ["SeparableWeights", "outer", "place"]


def outer(
    factors: Sequence[np.ndarray], axes: Sequence[int], ndim: int, dtype: np.dtype
) -> np.ndarray:
    """The product of 1-D ``factors``, each placed on its axis of an ``ndim``-D array.

    Examples
    --------
    >>> outer([np.array([1.0, 2.0]), np.array([1.0, 10.0, 100.0])], [0, 1], 2, np.float32)
    array([[  1.,  10., 100.],
           [  2.,  20., 200.]], dtype=float32)
    """
    w: np.ndarray | None = None
    for f, ax in zip(factors, axes):
        shape = [1] * ndim
        shape[ax] = len(f)
        term = f.astype(dtype, copy=False).reshape(shape)
        w = term if w is None else w * term
    assert w is not None
    return w


def place(arr: np.ndarray, axes: Sequence[int], ndim: int) -> np.ndarray:
    """Put the axes of a spatial array (grid dim order) on ``axes`` of an ``ndim``-D array.

    Examples
    --------
    >>> place(np.zeros((2, 3)), [2, 0], 3).shape
    (3, 1, 2)
    """
    order = np.argsort(axes)
    moved = np.transpose(arr, order)
    shape = [1] * ndim
    for k, ax in enumerate(sorted(axes)):
        shape[ax] = moved.shape[k]
    return moved.reshape(shape)


class SeparableWeights:
    """Per-axis 1-D weight factors, normalised so that overlapping patches sum to 1.

    Parameters
    ----------
    grid : PatchGrid
        The windows: per-axis starts and sizes.
    kernel : Kernel or CustomWeights
        The resolved blending weights. A :class:`~xpatch.weights.Kernel` is
        normalised per axis; a custom weight keeps factors of ones (only its
        placement is planned here; it is normalised per chunk).

    Attributes
    ----------
    separable : bool
        True for a :class:`~xpatch.weights.Kernel`.
    factors : list of list of ndarray
        ``factors[i][p]``: the final 1-D weight of window position ``p`` along axis ``i``.
    ids : list of list of int
        ``ids[i][p]``: equal ids, equal factors (interior windows of a regular grid
        share one), so weights can be cached by id.
    covered : list of ndarray
        Per axis, which elements some patch covers.

    Raises
    ------
    WeightsError
        The kernel is 0 (underflows) over elements that patches cover.

    Examples
    --------
    >>> from xpatch.weights import mean
    >>> w = SeparableWeights(PatchGrid({"x": 6}, {"x": 4}, step=2), mean())
    >>> [f.tolist() for f in w.factors[0]]
    [[1.0, 1.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    """

    def __init__(self, grid: PatchGrid, kernel: Kernel | CustomWeights) -> None:
        self.grid = grid
        self.separable = isinstance(kernel, Kernel)
        self.factors: list[list[np.ndarray]] = []
        self.ids: list[list[int]] = []
        self.covered: list[np.ndarray] = []
        for ax in grid.axes:
            before, after = ax.pad_width
            raw = [kernel.factor(int(n)) if self.separable else np.ones(int(n)) for n in ax.sizes]
            # D_i: the sum of the raw 1-D kernels over the (virtually padded) axis
            denominator = np.zeros(ax.length + before + after)
            for s, f in zip(ax.starts, raw):
                denominator[s + before : s + before + len(f)] += f
            covered = ax.coverage() > 0
            if np.any(covered & ~(denominator[before : before + ax.length] > 0)):
                raise WeightsError(
                    f"weights={kernel!r}: the kernel is 0 (underflows) over elements of dim"
                    f" {ax.dim!r} that patches cover, so they cannot be blended; use a wider"
                    " kernel (e.g. a larger gaussian sigma)"
                )
            self.covered.append(covered)
            if self.separable:
                raw = [
                    f / denominator[s + before : s + before + len(f)]
                    for s, f in zip(ax.starts, raw)
                ]
            self.factors.append(raw)
            seen: dict[bytes, int] = {}
            self.ids.append([seen.setdefault(f.tobytes(), len(seen)) for f in raw])
        self._ids_array = [np.asarray(ids) for ids in self.ids]
        # a weight that is 0 somewhere: results are masked there (0 * NaN is NaN)
        self.has_zeros = any(not f.all() for factors in self.factors for f in factors)

    def codes(self, positions: Sequence[np.ndarray]) -> np.ndarray:
        """Per window (given its positions along each axis): equal codes, equal weights."""
        code = np.zeros(len(positions[0]), dtype=np.int64)
        for i, p in enumerate(positions):
            code = code * (len(self.factors[i]) + 1) + self._ids_array[i][p]
        return code

    def uncovered(self, region: Sequence[slice]) -> np.ndarray | None:
        """Mask of the elements of ``region`` that no patch covers; None if all are covered."""
        cov = [c[s] for c, s in zip(self.covered, region)]
        if all(c.all() for c in cov):
            return None
        mask = np.zeros((), dtype=bool)
        for c in cov:
            mask = np.logical_or.outer(mask, ~c)
        return mask

    def added_sum(
        self,
        region: Sequence[slice],
        positions: Sequence[range],
        added: np.ndarray,
    ) -> np.ndarray:
        """Sum of the final weights of the windows in ``added`` over ``region``.

        The weights of all windows sum to 1 over covered elements; with some windows
        missing (``result(partial=True)``) the chunk is divided by this sum instead.
        ``positions`` are the per-axis window positions that overlap ``region``.
        """
        shape = tuple(s.stop - s.start for s in region)
        total = np.zeros(shape)
        for position in itertools.product(*positions):
            if not added[self.grid.index_of(position)]:
                continue
            dst, facs = [], []
            for i, (ax, p, s) in enumerate(zip(self.grid.axes, position, region)):
                start = int(ax.starts[p])
                a, b = max(start, s.start), min(start + int(ax.sizes[p]), s.stop)
                dst.append(slice(a - s.start, b - s.start))
                facs.append(self.factors[i][p][a - start : b - start])
            total[tuple(dst)] += outer(facs, range(len(facs)), len(facs), total.dtype)
        return total

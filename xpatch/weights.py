"""Blending weights: 1-D window kernels and their separable N-D products.

Built-in kernels are products of 1-D kernels (see :class:`Kernel`), which lets
the aggregator normalise them per axis (separable normalisation) instead of
keeping an image-sized weight map. Any other weight is a :class:`CustomWeights`.

Examples
--------
>>> import xpatch
>>> xpatch.weights.gaussian(sigma=0.25)
gaussian(sigma=0.25)
>>> xpatch.weights.hann().factor(4).round(3)
array([0.345, 0.905, 0.905, 0.345])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from xpatch._types import WEIGHTS_NAMES
from xpatch.errors import WeightsError

__all__ = ["CustomWeights", "Kernel", "WeightsLike", "gaussian", "hann", "mean", "resolve"]


class Kernel:
    """A separable kernel: the product of one 1-D factor per spatial dim.

    Subclasses implement :meth:`factor`; every factor is strictly positive, so an
    element covered by a single patch keeps a non-zero weight.

    Examples
    --------
    >>> k = gaussian(sigma=0.25)
    >>> k({"y": 3, "x": 2}).shape
    (3, 2)
    >>> bool(np.allclose(k({"y": 3, "x": 2}), np.outer(k.factor(3), k.factor(2))))
    True
    """

    name = "kernel"

    def factor(self, n: int) -> np.ndarray:
        """The 1-D kernel for a patch of ``n`` elements (float64)."""
        raise NotImplementedError

    def __call__(self, size: Mapping[Hashable, int]) -> np.ndarray:
        """The N-D kernel for a patch of ``size`` (dims in mapping order)."""
        out = np.ones((), dtype=np.float64)
        for n in size.values():
            out = np.multiply.outer(out, self.factor(int(n)))
        return out

    def _params(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{self.name}({self._params()})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class _Mean(Kernel):
    name = "mean"

    def factor(self, n: int) -> np.ndarray:
        return np.ones(int(n), dtype=np.float64)


class _Gaussian(Kernel):
    name = "gaussian"

    def __init__(self, sigma: float = 0.125) -> None:
        if isinstance(sigma, bool) or not (
            isinstance(sigma, (int, float, np.integer, np.floating))
            and np.isfinite(sigma)
            and sigma > 0
        ):
            raise WeightsError(f"gaussian: sigma must be a positive finite number, got {sigma!r}")
        self.sigma = float(sigma)

    def factor(self, n: int) -> np.ndarray:
        return _gaussian_factor(int(n), self.sigma).copy()

    def _params(self) -> str:
        return f"sigma={self.sigma:g}"


class _Hann(Kernel):
    name = "hann"

    def factor(self, n: int) -> np.ndarray:
        return _hann_factor(int(n)).copy()


# The 1-D factors are computed here in numpy with exactly the arithmetic of
# scipy.signal.windows (``_windows.py``, read in scipy 1.17), so they are bit-for-bit
# the contract's values (tests compare with scipy for every P up to 1024) without
# importing scipy.signal, which costs about half a second at the first call.


@lru_cache(maxsize=256)
def _gaussian_factor(n: int, sigma: float) -> np.ndarray:
    """``scipy.signal.windows.gaussian(n, std=sigma * n)`` (symmetric)."""
    if n <= 1:  # scipy's _len_guards
        return np.ones(n, dtype=np.float64)
    std = sigma * n
    i = np.arange(0, n, dtype=np.float64) - (n - 1.0) / 2.0
    sig2 = 2 * std * std
    return np.exp(-(i**2) / sig2)


@lru_cache(maxsize=256)
def _hann_factor(n: int) -> np.ndarray:
    """``scipy.signal.windows.hann(n + 2)[1:-1]``.

    scipy's hann is ``general_hamming(M, 0.5)``, i.e. ``general_cosine`` with
    ``a = [0.5, 0.5]``: ``w = 0 + 0.5 * cos(0 * fac) + 0.5 * cos(1 * fac)`` on
    ``fac = linspace(-pi, pi, M)``. The first term is exactly 0.5 and ``1 * fac``
    is ``fac``, so ``0.5 + 0.5 * cos(fac)`` is the same value bit for bit.
    """
    m = n + 2  # >= 2: scipy's length guard (M <= 1) never applies
    fac = np.linspace(-np.pi, np.pi, m, dtype=np.float64)
    return (0.5 + 0.5 * np.cos(fac))[1:-1]


def mean() -> Kernel:
    """Constant weights: overlapping results are averaged.

    Examples
    --------
    >>> mean().factor(3)
    array([1., 1., 1.])
    """
    return _Mean()


def gaussian(sigma: float = 0.125) -> Kernel:
    """Gaussian weights, ``exp(-(i - c)**2 / (2 * (sigma * P)**2))`` along each axis.

    Parameters
    ----------
    sigma : float, default: 1/8
        Standard deviation as a fraction of the patch size ``P``.

    Notes
    -----
    The 1-D factor is ``scipy.signal.windows.gaussian(P, std=sigma * P)``, used
    as is: its peak is 1 for odd ``P`` and just below 1 for even ``P``. It is
    computed in numpy with scipy's arithmetic (the same values, bit for bit),
    so scipy.signal is never imported.

    Examples
    --------
    >>> gaussian().factor(5).round(3)
    array([0.006, 0.278, 1.   , 0.278, 0.006])
    """
    return _Gaussian(sigma)


def hann() -> Kernel:
    """Hann weights, ``scipy.signal.windows.hann(P + 2)[1:-1]`` along each axis.

    Strictly positive: an element covered by a single patch keeps its value.
    Computed in numpy with scipy's arithmetic (the same values, bit for bit).

    Examples
    --------
    >>> hann().factor(3)
    array([0.5, 1. , 0.5])
    """
    return _Hann()


_NAMED: dict[str, Callable[[], Kernel]] = {"mean": mean, "gaussian": gaussian, "hann": hann}


class CustomWeights:
    """A user-given weight: an array of the patch size, or a callable.

    Not separable: the aggregator keeps a weight map (per chunk) for it.

    Parameters
    ----------
    weights : array-like, DataArray or callable
        An array in the spatial dims' order, a DataArray with the spatial dims
        by name, or a callable ``size -> array`` receiving a mapping dim -> size.
    dims : sequence of hashable
        The spatial dims, in order.

    Examples
    --------
    >>> w = CustomWeights(lambda size: np.ones((size["y"], size["x"])), ("y", "x"))
    >>> w({"y": 2, "x": 3})
    array([[1., 1., 1.],
           [1., 1., 1.]])
    """

    def __init__(self, weights: Any, dims: Sequence[Hashable]) -> None:
        self.source = weights
        self.dims = tuple(dims)
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def __call__(self, size: Mapping[Hashable, int]) -> np.ndarray:
        key = tuple(int(size[d]) for d in self.dims)
        if key not in self._cache:
            value = self.source
            if callable(self.source):
                try:
                    value = self.source(dict(zip(self.dims, key)))
                except Exception as error:
                    error.add_note(
                        f"(raised by the weights callable {self._name()} for a patch of size"
                        f" {dict(zip(self.dims, key))})"
                    )
                    raise
            self._cache[key] = self._check(value, key)
        return self._cache[key]

    def _name(self) -> str:
        """The user's weights as a message names them."""
        source = self.source
        name = getattr(source, "__qualname__", None) or getattr(source, "__name__", None)
        if callable(source):
            return f"{name}()" if name else repr(source)
        return f"array of shape {getattr(source, 'shape', None) or np.shape(source)}"

    def _check(self, value: Any, shape: tuple[int, ...]) -> np.ndarray:
        what = f"weights {self._name()}" if callable(self.source) else "weights"
        size = dict(zip(self.dims, shape))
        dims = getattr(value, "dims", None)
        if dims is not None:
            if set(dims) != set(self.dims):
                raise WeightsError(
                    f"{what}: a DataArray weight must have exactly the spatial dims {self.dims},"
                    f" got dims {tuple(dims)}"
                )
            value = value.transpose(*self.dims).values
        kind = getattr(value, "dtype", None)
        if kind is None:
            try:
                kind = np.asarray(value).dtype
            except (TypeError, ValueError):  # ragged nested lists
                kind = np.dtype(object)
        if np.dtype(kind).kind not in "biuf":
            raise WeightsError(
                f"{what}: custom weights must be real numbers, got an array of dtype {kind}"
                f" (for a patch of size {size}); give a float array, e.g."
                f" np.asarray(w, dtype=float)"
            )
        arr = np.array(value, dtype=np.float64)  # a copy: later changes by the caller do not count
        if arr.shape != shape:
            if callable(self.source):
                raise WeightsError(
                    f"{what}, for a patch of size {size}, returned shape {arr.shape}; it must"
                    f" return an array of shape {shape} (the spatial dims {self.dims} in order)"
                    f" or a DataArray with those dims"
                )
            raise WeightsError(
                f"weights: expected an array of the patch shape {size}, got shape {arr.shape};"
                " patches of other sizes (the adaptive border's shortened last patch)"
                " need a callable size -> array or a kernel from xpatch.weights"
            )
        if not np.all(np.isfinite(arr)):
            raise WeightsError("weights: every weight must be finite (found NaN or inf)")
        if np.any(arr < 0):
            raise WeightsError(f"weights: weights must be non-negative (min {arr.min()!r})")
        if not np.any(arr > 0):
            raise WeightsError("weights: at least one weight must be positive (all are zero)")
        arr.flags.writeable = False  # cached and shared by every window of this shape
        return arr

    def __repr__(self) -> str:
        return f"CustomWeights({type(self.source).__name__})"


WeightsLike = str | Kernel | Callable[..., Any] | np.ndarray | Any


def resolve(weights: WeightsLike, dims: Sequence[Hashable]) -> Kernel | CustomWeights:
    """Turn a ``weights`` argument into a :class:`Kernel` or :class:`CustomWeights`.

    Examples
    --------
    >>> resolve("hann", ("y", "x"))
    hann()
    """
    if isinstance(weights, Kernel):
        return weights
    if isinstance(weights, str):
        if weights not in _NAMED:
            raise WeightsError(
                f"weights must be one of {WEIGHTS_NAMES}, a kernel from xpatch.weights,"
                f" an array or a callable; got {weights!r}"
            )
        return _NAMED[weights]()
    if weights is None:
        raise WeightsError(
            f"weights must be one of {WEIGHTS_NAMES}, an array or a callable; got None"
        )
    if callable(weights) or hasattr(weights, "shape") or isinstance(weights, (list, tuple)):
        return CustomWeights(weights, dims)
    raise WeightsError(
        f"weights must be one of {WEIGHTS_NAMES}, a kernel, an array or a callable;"
        f" got {type(weights).__name__}"
    )

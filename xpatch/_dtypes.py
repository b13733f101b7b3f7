"""The dtype and fill rules of blending (numpy only).

- Accumulation: float64 (complex128) results accumulate in double precision, all
  others in float32.
- Blended results: floats keep their dtype, integers and bools become float32 (a
  blend of integers is not an integer).
- Elements no patch covers get ``fill_value``: by default NaN for inexact dtypes,
  0 for integers and bools (decided on the final dtype, after ``on_chunk``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from xpatch._normalise import place

__all__ = ["DEFAULT", "accumulation_dtype", "blended_dtype", "default_fill", "fill"]


class _Default:
    """Marks "fill_value not given"; pickles as a reference, so it stays a singleton.

    Its repr, ``auto``, is what signatures show (``fill_value=auto`` in ``help`` and
    the API pages): one token, as Sphinx splits a signature at commas. It means NaN
    for inexact results and 0 for integer or bool ones (:func:`default_fill`).

    Examples
    --------
    >>> DEFAULT
    auto
    """

    def __repr__(self) -> str:
        return "auto"

    def __reduce__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a result of ``dtype`` is summed in.

    Examples
    --------
    >>> accumulation_dtype(np.dtype("int16")), accumulation_dtype(np.dtype("float64"))
    (dtype('float32'), dtype('float64'))
    """
    if dtype.kind == "f" and dtype.itemsize >= 8:
        return np.dtype(np.float64)
    if dtype.kind == "c":
        return np.dtype(np.complex128 if dtype.itemsize >= 16 else np.complex64)
    return np.dtype(np.float32)


def blended_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype of a blended result: floats keep theirs, integers and bools become float32."""
    return dtype if dtype.kind in "fc" else np.dtype(np.float32)


def default_fill(dtype: np.dtype) -> Any:
    """NaN for inexact dtypes, 0 for integers and bools."""
    return np.nan if dtype.kind in "fc" else 0


def fill(
    data: np.ndarray,
    mask: np.ndarray,
    dims: Sequence[Hashable],
    spatial: Sequence[Hashable],
    value: Any,
) -> None:
    """Set the masked spatial elements (mask in grid dim order) across every other dim."""
    axes = [list(dims).index(d) for d in spatial]
    where = np.broadcast_to(place(mask, axes, data.ndim), data.shape)
    np.copyto(data, np.asarray(value).astype(data.dtype), where=where)

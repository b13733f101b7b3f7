"""Argument checks with clear messages, run before any work starts.

Imports numpy only, so that the pure geometry can use it too.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from xpatch._types import BORDERS, PAD_MODES, Border, PadMode
from xpatch.errors import DimensionError, GridError


def is_int(value: Any) -> bool:
    """True for Python and numpy integers (bool excluded)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: Any, argument: str, dim: Hashable | None = None) -> int:
    """Return ``value`` as int, or raise naming the argument and dim."""
    where = f"{argument}" if dim is None else f"{argument} for dim {dim!r}"
    if not is_int(value):
        raise GridError(f"{where} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise GridError(f"{where} must be a positive int, got {value!r}")
    return int(value)


def check_dims(keys: Iterable[Hashable], available: Iterable[Hashable], argument: str) -> None:
    """Raise if any of ``keys`` is not one of ``available``."""
    available = tuple(available)
    missing = [k for k in keys if k not in available]
    if missing:
        raise DimensionError(
            f"{argument}: dims {missing} not found in the array's dims {available}"
        )


def per_dim(
    value: int | Mapping[Hashable, int] | None,
    dims: tuple[Hashable, ...],
    argument: str,
    default: Mapping[Hashable, int] | None = None,
) -> dict[Hashable, int]:
    """Expand an int-or-mapping argument into one positive int per dim."""
    if value is None:
        if default is None:
            raise GridError(f"{argument} is required")
        return dict(default)
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in dims]
        if unknown:
            raise DimensionError(
                f"{argument}: dims {unknown} are not spatial dims; the spatial dims are {dims}"
            )
        out = dict(default) if default is not None else {}
        for d in dims:
            if d in value:
                out[d] = positive_int(value[d], argument, d)
            elif d not in out:
                raise GridError(f"{argument} has no value for dim {d!r}")
        return out
    return {d: positive_int(value, argument, d) for d in dims}


def validate_grid_args(
    shape: Mapping[Hashable, int],
    size: Mapping[Hashable, int],
    step: int | Mapping[Hashable, int] | None,
    border: Border,
    pad_mode: PadMode | None,
) -> tuple[dict[Hashable, int], dict[Hashable, int], PadMode | None]:
    """Check the grid arguments; return size and step per dim, and the pad mode."""
    if not isinstance(size, Mapping) or not size:
        raise GridError(
            "size: give the patch size of at least one spatial dim, e.g. size={'y': 256} or y=256"
        )
    dims = tuple(shape)
    check_dims(size, dims, "size")
    if set(size) != set(dims):
        raise DimensionError(f"size names dims {tuple(size)} but the grid has dims {dims}")
    if border not in BORDERS:
        raise GridError(f"border must be one of {BORDERS}, got {border!r}")
    if pad_mode is not None:
        if border != "pad":
            raise GridError(f"pad_mode={pad_mode!r} needs border='pad', got border={border!r}")
        if pad_mode not in PAD_MODES:
            raise GridError(
                f"pad_mode must be one of {PAD_MODES} (numpy.pad modes that depend only on"
                f" values near the border), got {pad_mode!r}"
            )
    elif border == "pad":
        pad_mode = "constant"
    size_d = {d: positive_int(size[d], "size", d) for d in dims}
    step_d = per_dim(step, dims, "step", default=size_d)
    for d in dims:
        length = int(shape[d])
        if step_d[d] > size_d[d]:
            raise GridError(
                f"step for dim {d!r} is {step_d[d]}, larger than the patch size {size_d[d]}:"
                " elements between patches would never be covered"
            )
        if size_d[d] > length and border != "pad":
            raise GridError(
                f"size for dim {d!r} is {size_d[d]}, larger than the dim's length {length};"
                " use border='pad' to pad virtually"
            )
        if length < 1:
            raise GridError(f"dim {d!r} has length {length}; there is nothing to patch")
    return size_d, step_d, pad_mode

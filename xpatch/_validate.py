"""Argument checks with clear messages, run before any work starts.

Imports numpy only, so that the pure geometry can use it too.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from xpatch._types import BORDERS, PAD_MODES, WEIGHTS_NAMES, Border, PadMode
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


def flag(value: Any, argument: str) -> bool:
    """Return ``value`` as bool, or raise ``TypeError``: a flag is True or False, not "yes".

    Examples
    --------
    >>> flag(True, "progress")
    True
    >>> flag("no", "resume")
    Traceback (most recent call last):
    ...
    TypeError: resume must be True or False, got 'no' (str)
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{argument} must be True or False, got {value!r} ({type(value).__name__})")


def index(value: Any, argument: str = "index") -> int:
    """An integer index as Python sequences take it (numpy ints too; not bool, float, str).

    Examples
    --------
    >>> index(-1)
    -1
    >>> index(1.5)
    Traceback (most recent call last):
    ...
    TypeError: index must be an int (a window's position; -1 is the last), got 1.5 (float)
    """
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(
        f"{argument} must be an int (a window's position; -1 is the last),"
        f" got {value!r} ({type(value).__name__})"
    )


def dim_name(value: Any, argument: str) -> Hashable:
    """Check that ``value`` can name a dim: hashable, not None, not a tuple or list.

    Examples
    --------
    >>> dim_name("patch", "batch_dim")
    'patch'
    >>> dim_name(None, "batch_dim")
    Traceback (most recent call last):
    ...
    TypeError: batch_dim must be a dim name (a str), got None (NoneType)
    """
    if (
        value is None
        or isinstance(value, (tuple, list, set, frozenset, dict))
        or not isinstance(value, Hashable)
    ):
        raise TypeError(
            f"{argument} must be a dim name (a str), got {value!r} ({type(value).__name__})"
        )
    return value


def dim_names(value: Any, argument: str, example: str) -> tuple[Hashable, ...]:
    """A sequence of distinct dim names as a tuple; one str is one dim (as in xarray).

    Examples
    --------
    >>> dim_names(["class", "y", "x"], "output_dims", "('class', 'y', 'x')")
    ('class', 'y', 'x')
    >>> dim_names("x", "output_dims", "('x',)")
    ('x',)
    >>> dim_names(5, "output_dims", "('class', 'y', 'x')")
    Traceback (most recent call last):
    ...
    TypeError: output_dims must be a sequence of dim names, ...; got 5 (int)
    """
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise TypeError(
            f"{argument} must be a sequence of dim names, e.g. {argument}={example};"
            f" got {value!r} ({type(value).__name__})"
        )
    names = entries(value, argument, "a dim name")
    repeated = [d for i, d in enumerate(names) if d in names[:i]]
    if repeated:
        raise DimensionError(
            f"{argument} {names!r} names the dim {repeated[0]!r} twice; each dim appears once"
        )
    return names


def entries(value: Iterable[Any], argument: str, what: str) -> tuple[Hashable, ...]:
    """The entries of a sequence of names as a tuple, each one a name (hashable, not
    None, not a container), else a TypeError naming ``argument`` and the entry.

    Examples
    --------
    >>> entries(["y", None], "output_dims", "a dim name")
    Traceback (most recent call last):
    ...
    TypeError: output_dims ('y', None): each entry must be a dim name (a str), got None ...
    """
    names = tuple(value)
    for name in names:
        if (
            name is None
            or isinstance(name, (tuple, list, set, dict))
            or not isinstance(name, Hashable)
        ):
            raise TypeError(
                f"{argument} {names!r}: each entry must be {what} (a str),"
                f" got {name!r} ({type(name).__name__})"
            )
    return names


def keywords(values: Mapping[Hashable, Any]) -> str:
    """``y=256, x=256``: per-dim values as the keywords a user would type.

    Examples
    --------
    >>> keywords({"y": 256, "x": 128})
    'y=256, x=128'
    """
    return ", ".join(f"{d}={v!r}" for d, v in values.items())


def example_dims(dims: Sequence[Hashable], n: int) -> tuple[Hashable, ...]:
    """The dims a size given without names most likely means: the last ``n`` (at most 2)."""
    dims = tuple(dims)
    n = max(1, min(n, len(dims)))
    return dims[-n:]


def size_without_dims(size: Any, dims: Sequence[Hashable]) -> GridError:
    """The error for a size given as an int or a tuple: say how to name its dims.

    Examples
    --------
    >>> print(size_without_dims(16, ("band", "y", "x")))
    size=16: give the patch size per dim by name, e.g. y=16, x=16 ... ('band', 'y', 'x')
    """
    if isinstance(size, (tuple, list)) and size:
        values = list(size)[-len(tuple(dims)) :] if dims else list(size)
        names = example_dims(dims, len(values))
        values = values[-len(names) :]
    else:
        names = example_dims(dims, 2)
        values = [size] * len(names)
    values = [int(v) if is_int(v) else v for v in values]
    per_dim = dict(zip(names, values))
    return GridError(
        f"size={size!r}: give the patch size per dim by name, e.g. {keywords(per_dim)}"
        f" (or a mapping {per_dim!r}); the array's dims are {tuple(dims)!r}"
    )


# keywords of other patch libraries (MONAI's sliding_window_inference, patchify, torch's
# unfold, ...) that would otherwise read as unknown dims
_SIZE_WORDS = ("size", "patch_size", "roi_size", "window_size", "patch_shape", "kernel_size")
_STEP_WORDS = ("stride", "strides", "step_size", "scan_interval")
_PAD_WORDS = {
    "constant": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "edge": "edge",
    "symmetric": "symmetric",
    "circular": "wrap",
    "wrap": "wrap",
}


def foreign_keywords(kwargs: Mapping[Hashable, Any], dims: Sequence[Hashable]) -> None:
    """Refuse keywords of other libraries that are not dims of the array, saying what
    xpatch calls them (``stride`` -> ``step``, ``roi_size`` -> sizes per dim, ...).
    (``overlap`` is an xpatch argument: see :func:`xpatch._units.overlap_step`.)

    Examples
    --------
    >>> foreign_keywords({"stride": 8}, ("y", "x"))
    Traceback (most recent call last):
    ...
    xpatch.errors.GridError: stride=8 is not an xpatch argument: use step=8 (an int, or ...)
    """
    dims = tuple(dims)
    for key, value in kwargs.items():
        if key in dims or not isinstance(key, str):
            continue
        head = f"{key}={value!r} is not an xpatch argument: "
        if key in _STEP_WORDS:
            raise GridError(head + f"use step={value!r} (an int, or a mapping dim -> int)")
        if key in _SIZE_WORDS:
            if isinstance(value, Mapping):
                hint = (
                    f"give the patch size per dim by name, e.g. {keywords(value)}"
                    f" (or the mapping as the first argument after func, not as size=)"
                )
            else:
                hint = str(size_without_dims(value, dims)).split(": ", 1)[1]
            if key == "size":  # size exists, but positional-only: no size= keyword
                head = f"size={value!r} as a keyword: "
            raise GridError(head + hint)
        if key in ("sw_batch_size", "batch"):
            raise GridError(head + f"use batch_size={value!r}")
        if key == "sigma_scale":
            raise GridError(head + f"use weights=xpatch.weights.gaussian(sigma={value!r})")
        if key in ("mode", "blend_mode"):
            if value in WEIGHTS_NAMES or value == "constant":
                name = "mean" if value == "constant" else value
                raise GridError(head + f"to blend, use weights={name!r}")
            if value in _PAD_WORDS:
                raise GridError(head + f"to pad, use border='pad', pad_mode={_PAD_WORDS[value]!r}")
            raise GridError(
                head + f"blending is weights= (one of {WEIGHTS_NAMES}), padding is"
                f" border='pad' with pad_mode= (one of {PAD_MODES})"
            )
        if key in ("padding_mode", "padding"):
            mode = _PAD_WORDS.get(value) if isinstance(value, str) else None
            choice = repr(mode) if mode else f" (one of {PAD_MODES})"
            raise GridError(head + f"use border='pad', pad_mode={choice}")
        if key in _APPLY_ONLY:
            raise GridError(
                f"{key}= is an argument of apply (what func sees or returns), not of this"
                f" method; pass it to .patch.apply(func, ..., {key}=...)"
            )


# apply's own keywords, refused by name where another method receives them
_APPLY_ONLY = ("halo", "scale", "template", "output_names")


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

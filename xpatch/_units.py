"""Sizes in the units of the coordinates (``units="coords"``) and ``overlap=`` as a fraction.

``size``, ``step``, ``halo`` and ``chunks`` are counted in elements; with
``units="coords"`` they are given in the units of the spatial coordinates (metres,
degrees, microns) and converted here with the spacing of each dim's coordinate, which
must be 1-D and regularly spaced (ascending or descending: the absolute spacing is
used). ``overlap`` is MONAI's fraction of the patch: ``step = int(size * (1 - overlap))``
per dim, at least 1.

The arithmetic (:func:`spacing`, :func:`convert`, :func:`overlap_step`) works on numpy
arrays and plain numbers; :func:`to_elements` and :func:`grid_elements` read the
object's coordinates (duck-typed: no xarray import) and call it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from xpatch._validate import check_dims, is_int, keywords
from xpatch.errors import GridError

__all__ = ["Converted", "Units", "convert", "overlap_step", "spacing", "to_elements"]

Units = Literal["index", "coords"]
UNITS: tuple[str, ...] = ("index", "coords")

#: two lengths in coordinate units are the same when they differ by less than this
#: fraction (float coordinates are rarely exact multiples of their spacing)
RTOL = 1e-6

_FALLBACK = "or give sizes in elements (units='index')"


class Converted(NamedTuple):
    """The arguments of :func:`convert`, in elements (``None`` where not given)."""

    size: dict[Hashable, int] | None
    step: Any
    halo: Any
    chunks: Any


def check_units(units: Any) -> Units:
    """``units`` if it is one of ``"index"``, ``"coords"``; else a :class:`GridError`.

    Examples
    --------
    >>> check_units("coords")
    'coords'
    >>> check_units("metres")
    Traceback (most recent call last):
    ...
    xpatch.errors.GridError: units must be one of ('index', 'coords'), got 'metres': ...
    """
    if not isinstance(units, str) or units not in UNITS:
        raise GridError(
            f"units must be one of {UNITS}, got {units!r}: 'index' counts size, step, halo"
            " and chunks in elements, 'coords' in the units of the spatial coordinates"
        )
    return units  # type: ignore[return-value]


def spacing(values: Any, dim: Hashable) -> float:
    """The absolute spacing of a regularly spaced 1-D coordinate.

    ``values`` is the coordinate of ``dim`` as a numpy array (``None``: it has none).
    Neighbouring steps may differ by a relative ``1e-6``, or by the rounding of the
    coordinate's float type at its magnitude (float32 metres of a projected CRS); the
    spacing is the mean step, measured end to end.

    Raises
    ------
    GridError
        The coordinate is missing, not 1-D, shorter than 2, not numeric, not
        monotonic or irregular; the message names the dim.

    Examples
    --------
    >>> spacing(np.array([90.0, 89.75, 89.5, 89.25]), "lat")
    0.25
    >>> spacing(np.array([0.0, 1.0, 3.0]), "x")
    Traceback (most recent call last):
    ...
    xpatch.errors.GridError: units='coords': the coordinate of dim 'x' is not regularly ...
    """
    head = f"units='coords': the coordinate of dim {dim!r}"
    if values is None:
        raise GridError(
            f"units='coords': dim {dim!r} has no coordinate to measure sizes by; assign one"
            f" (e.g. obj.assign_coords({dim}=...)) {_FALLBACK}"
        )
    values = np.asarray(values)
    if values.ndim != 1:
        raise GridError(f"{head} is {values.ndim}-D; it must be 1-D along {dim!r} {_FALLBACK}")
    if values.dtype.kind not in "iuf":
        raise GridError(
            f"{head} holds {values.dtype} values, not numbers, so it has no spacing"
            f" in units {_FALLBACK}"
        )
    if values.size < 2:
        raise GridError(
            f"{head} has {values.size} value(s): a spacing needs at least 2 {_FALLBACK}"
        )
    v = values.astype(np.float64)
    steps = np.diff(v)
    if not np.all(np.isfinite(v)):
        raise GridError(f"{head} holds NaN or infinite values, so it has no spacing {_FALLBACK}")
    if not (np.all(steps > 0) or np.all(steps < 0)):
        raise GridError(
            f"{head} is not monotonic (it repeats or turns back), so it has no spacing {_FALLBACK}"
        )
    mean = abs(v[-1] - v[0]) / (v.size - 1)
    absolute = np.abs(steps)
    rounding = 4 * np.finfo(values.dtype).eps if values.dtype.kind == "f" else 0.0
    tolerance = max(RTOL * mean, float(rounding * np.abs(v).max()))
    low, high = float(absolute.min()), float(absolute.max())
    if high - low > tolerance:
        raise GridError(
            f"{head} is not regularly spaced (steps from {_num(low)} to {_num(high)}),"
            f" so a size in its units has no fixed number of elements {_FALLBACK}"
        )
    return float(mean)


def convert(
    spacings: Mapping[Hashable, float],
    *,
    size: Mapping[Hashable, Any] | None = None,
    step: Any = None,
    halo: Any = None,
    chunks: Any = None,
) -> Converted:
    """Convert sizes in coordinate units to elements, with the spacing of each dim.

    ``spacings`` maps each spatial dim to its coordinate spacing (see :func:`spacing`).
    ``size`` is a mapping dim -> number; ``step``, ``halo`` and ``chunks`` a number for
    every dim or a mapping dim -> number (``chunks`` also dim -> sequence of block
    lengths). Values of other types, and mappings' keys that are not among
    ``spacings``, are returned as they are, for the usual checks to refuse.

    Raises
    ------
    GridError
        A value that is not a whole number of elements (the message names the
        values nearby that are) or not positive (``halo``: negative).
    TypeError
        A value that is not a number.

    Examples
    --------
    >>> c = convert({"y": 30.0, "x": 10.0}, size={"y": 3840, "x": 1280}, step=960.0, halo=60)
    >>> c.size, c.step, c.halo
    ({'y': 128, 'x': 128}, {'y': 32, 'x': 96}, {'y': 2, 'x': 6})
    >>> convert({"y": 30.0}, size={"y": 100.0})
    Traceback (most recent call last):
    ...
    xpatch.errors.GridError: size y=100.0 is 3.33 elements of spacing 30.0; 90.0 or 120.0 would ...
    """
    return Converted(
        None if size is None else _per_dim(size, spacings, "size", 1),
        _per_dim(step, spacings, "step", 1),
        _per_dim(halo, spacings, "halo", 0),
        _per_dim(chunks, spacings, "chunks", 1, blocks=True),
    )


def overlap_step(
    overlap: Any, size: Mapping[Hashable, Any], step: Any = None
) -> dict[Hashable, int] | Any:
    """The step that ``overlap`` (a fraction of the patch) means, by MONAI's rule.

    ``step = int(size * (1 - overlap))`` per dim, at least 1. ``overlap`` is a number
    in [0, 1) for every dim or a mapping dim -> number (the dims it leaves out keep
    step = size). With ``overlap=None``, ``step`` is returned unchanged.

    Raises
    ------
    GridError
        Both ``step`` and ``overlap``; an overlap outside [0, 1); a tuple or list
        (name the dims: a mapping).
    DimensionError
        A mapping naming a dim that has no size.
    TypeError
        An overlap that is not a number.

    Examples
    --------
    >>> overlap_step(0.25, {"y": 256, "x": 100})
    {'y': 192, 'x': 75}
    >>> overlap_step({"y": 0.5}, {"y": 256, "x": 100})
    {'y': 128}
    >>> overlap_step(0.999, {"y": 256})
    {'y': 1}
    """
    if overlap is None:
        return step
    if step is not None:
        raise GridError(
            f"give step or overlap, not both (got step={step!r}, overlap={overlap!r}):"
            " overlap is the fraction of the patch that neighbouring patches share,"
            " step = int(size * (1 - overlap))"
        )
    dims = tuple(size)
    if isinstance(overlap, Mapping):
        check_dims(overlap, dims, "overlap")
        per = dict(overlap)
    elif isinstance(overlap, Sequence) and not isinstance(overlap, str):
        raise GridError(_overlap_by_position(overlap, size))
    else:
        per = dict.fromkeys(dims, overlap)
    out = {}
    for d in dims:
        if d not in per:
            continue
        o = per[d]
        if not isinstance(o, numbers.Real) or isinstance(o, (bool, np.bool_)):
            raise TypeError(
                f"overlap for dim {d!r} must be a number in [0, 1), the fraction of the patch"
                f" that neighbouring patches share; got {o!r} ({type(o).__name__})"
            )
        if not 0 <= o < 1:
            raise GridError(
                f"overlap for dim {d!r} must be in [0, 1) (a fraction of the patch: 0.25 means"
                f" neighbouring patches share a quarter of it), got {o!r}"
            )
        n = size[d]
        if not is_int(n) or n < 1:
            return step  # a bad size: the grid's own check names it
        out[d] = max(int(n * (1 - o)), 1)
    return out


def _overlap_by_position(overlap: Sequence[Any], size: Mapping[Hashable, Any]) -> str:
    """The message for an overlap given per axis: show it per dim, with the step meant."""
    dims = tuple(size)[-len(overlap) :] if overlap else tuple(size)
    named = dict(zip(dims, overlap))
    message = f"overlap={overlap!r}: give overlap per dim by name, e.g. overlap={named!r}"
    if len(overlap) == len(size) and all(
        isinstance(o, numbers.Real) and 0 <= o < 1 for o in overlap
    ):
        step = overlap_step(named, size)
        if step:
            message += f" (for size {keywords(size)} that is step={step!r})"
    return message


def _per_dim(
    value: Any,
    spacings: Mapping[Hashable, float],
    argument: str,
    least: int,
    *,
    blocks: bool = False,
) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {
            d: _one(v, spacings[d], argument, d, least, blocks) if d in spacings else v
            for d, v in value.items()
        }
    if _is_number(value):
        return {d: _elements(value, s, argument, d, least) for d, s in spacings.items()}
    return value  # a tuple, a str...: the usual checks refuse it with their message


def _one(value: Any, s: float, argument: str, dim: Hashable, least: int, blocks: bool) -> Any:
    if blocks and isinstance(value, (tuple, list)):
        return tuple(_elements(v, s, argument, dim, least) for v in value)
    return _elements(value, s, argument, dim, least)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _elements(value: Any, s: float, argument: str, dim: Hashable, least: int) -> int:
    """``value`` (coordinate units) as a whole number of elements of spacing ``s``."""
    if not _is_number(value):
        raise TypeError(
            f"{argument} for dim {dim!r} with units='coords' must be a number in the units of"
            f" its coordinate, got {value!r} ({type(value).__name__})"
        )
    if not math.isfinite(value) or value < 0 or (least and value == 0):
        bound = "positive" if least else ">= 0"
        raise GridError(f"{argument} {dim}={value!r} must be {bound} (units='coords')")
    n = value / s
    whole = round(n)
    if abs(n - whole) > RTOL * max(abs(n), 1.0) or whole < least:
        below, above = math.floor(n), math.ceil(n)
        near = " or ".join(_num(k * s) for k in sorted({below, above}) if k >= least)
        raise GridError(
            f"{argument} {dim}={value!r} is {n:.3g} elements of spacing {_num(s)}; {near}"
            f" would be whole ({argument} with units='coords' must be a whole number of"
            " elements)"
        )
    return int(whole)


def _num(x: float) -> str:
    """A float as a user would write it: 90.0, not 89.99999999999999."""
    return repr(float(f"{x:.10g}"))


def _coordinate(obj: Any, dim: Hashable) -> np.ndarray | None:
    """The values of the dimension coordinate of ``dim``, or None where there is none."""
    if dim not in obj.coords:
        return None
    return np.asarray(obj.coords[dim].values)


def to_elements(
    obj: Any,
    dims: Sequence[Hashable],
    units: Any,
    *,
    size: Mapping[Hashable, Any] | None = None,
    step: Any = None,
    halo: Any = None,
    chunks: Any = None,
) -> Converted:
    """``size``, ``step``, ``halo``, ``chunks`` of ``obj``'s grid over ``dims`` in elements.

    With ``units="index"`` they are returned as given; with ``units="coords"`` they are
    converted with the spacing of each dim's coordinate in ``obj`` (a DataArray or
    Dataset; see :func:`spacing` and :func:`convert`).

    Examples
    --------
    >>> import xarray as xr
    >>> da = xr.DataArray(np.zeros((4, 6)), dims=("y", "x"),
    ...                   coords={"y": [90.0, 60.0, 30.0, 0.0], "x": np.arange(6) * 0.5})
    >>> to_elements(da, ("y", "x"), "coords", halo={"x": 1.5}, chunks={"y": 60})
    Converted(size=None, step=None, halo={'x': 3}, chunks={'y': 2})
    """
    if check_units(units) == "index" or all(v is None for v in (size, step, halo, chunks)):
        return Converted(None if size is None else dict(size), step, halo, chunks)
    spacings = {d: spacing(_coordinate(obj, d), d) for d in dims}
    return convert(spacings, size=size, step=step, halo=halo, chunks=chunks)


def grid_elements(
    obj: Any,
    dims: Sequence[Hashable],
    size: Mapping[Hashable, Any],
    step: Any,
    units: Any,
    overlap: Any,
) -> tuple[dict[Hashable, Any], Any]:
    """The grid's ``size`` and ``step`` in elements: ``units`` converted, ``overlap`` applied.

    Examples
    --------
    >>> import xarray as xr
    >>> da = xr.DataArray(np.zeros(100), dims="x", coords={"x": 5.0 + 10 * np.arange(100)})
    >>> grid_elements(da, ("x",), {"x": 320.0}, None, "coords", 0.25)
    ({'x': 32}, {'x': 24})
    """
    converted = to_elements(obj, dims, units, size=size, step=step)
    sizes = dict(converted.size or {})
    return sizes, overlap_step(overlap, sizes, converted.step)

"""Labels of an output at another resolution than the source (``apply(..., scale=)``).

The blended output of a super-resolution model (scale 2) or of a coarse feature map
(scale 1/4) has ``length * scale`` elements along each spatial dim. Its coordinates
are derived from the source's: for a regularly spaced coordinate of spacing ``d``
whose values are cell centres, the output cells have spacing ``d / scale`` and their
centres tile the same extent (the first input cell ``[c0 - d/2, c0 + d/2]`` holds the
first ``scale`` output cells). Irregular or non-numeric coordinates along a scaled dim
cannot be rescaled and are refused, naming the coordinate.
"""

from __future__ import annotations

from collections.abc import Hashable
from fractions import Fraction

import numpy as np
import xarray as xr

from xpatch._patchmap import PatchMap
from xpatch.errors import DimensionError

__all__ = ["rescaled_coordinate", "scaled_template"]

# attributes that cache a georeference and would be stale after rescaling (rioxarray
# recomputes the transform from the coordinates when they are absent)
_STALE = ("GeoTransform", "transform")


def rescaled_coordinate(values: np.ndarray, scale: Fraction, name: Hashable) -> np.ndarray:
    """Cell centres of a regularly spaced coordinate at ``scale`` times its resolution.

    Examples
    --------
    >>> rescaled_coordinate(np.array([0.0, 10.0, 20.0, 30.0]), Fraction(2), "x")
    array([-2.5,  2.5,  7.5, 12.5, 17.5, 22.5, 27.5, 32.5])
    >>> rescaled_coordinate(np.array([0.0, 10.0, 20.0, 30.0]), Fraction(1, 2), "x")
    array([ 5., 25.])
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        raise DimensionError(
            f"coordinate {name!r} has dtype {values.dtype}: the output at scale {scale} along"
            f" it needs numeric coordinates to derive; drop it (obj.drop_vars({name!r})) or give"
            " numeric ones"
        )
    if len(values) < 2:
        raise DimensionError(
            f"coordinate {name!r} has {len(values)} value: its spacing is unknown, so the"
            f" output at scale {scale} cannot be labeled; drop it first"
        )
    v = values.astype(np.float64)
    steps = np.diff(v)
    d = float((v[-1] - v[0]) / (len(v) - 1))
    # float32 coordinates (0.1 degrees, say) carry rounding of their own magnitude
    eps = np.finfo(values.dtype).eps if values.dtype.kind == "f" else 0.0
    if not np.allclose(steps, d, rtol=1e-6, atol=8 * eps * float(np.abs(v).max())):
        raise DimensionError(
            f"coordinate {name!r} is not regularly spaced (steps from {steps.min():g} to"
            f" {steps.max():g}): the output at scale {scale} cannot be labeled; drop it"
            f" (obj.drop_vars({name!r})) or give a regular one"
        )
    n = int(len(values) * scale)
    fine = d / float(scale)
    return float(values[0]) - d / 2 + (np.arange(n) + 0.5) * fine


def scaled_template(obj: xr.DataArray | xr.Dataset, pm: PatchMap) -> xr.DataArray | xr.Dataset:
    """A stand-in for ``obj`` at the target's resolution: its labels, no real data.

    The data variables are zero-strided arrays of the target's shape (no memory);
    only their dims, dtypes, coordinates, names and attributes are read.
    """
    target = pm.target
    scaled = {d for d in target.dims if pm.scale[d] != 1}
    coords = {}
    for name, coord in obj.coords.items():
        along = scaled & set(coord.dims)
        if not along:
            var = coord.variable.copy(deep=False)
            var.attrs = {k: v for k, v in var.attrs.items() if k not in _STALE}
            coords[name] = var
            continue
        if len(coord.dims) != 1:
            raise DimensionError(
                f"coordinate {name!r} spans several spatial dims {coord.dims}: it cannot be"
                " derived for an output at another resolution; drop it first"
                f" (obj.drop_vars({name!r}))"
            )
        (d,) = coord.dims
        values = rescaled_coordinate(coord.values, pm.scale[d], name)
        coords[name] = xr.Variable((d,), values, dict(coord.attrs))

    def stand_in(var: xr.Variable) -> xr.Variable:
        shape = tuple(target.lengths.get(d, n) for d, n in zip(var.dims, var.shape))
        data = np.broadcast_to(np.zeros((), dtype=var.dtype), shape)
        return xr.Variable(var.dims, data, {k: v for k, v in var.attrs.items() if k not in _STALE})

    if isinstance(obj, xr.DataArray):
        return xr.DataArray(stand_in(obj.variable), coords=coords, name=obj.name)
    data_vars = {k: stand_in(v.variable) for k, v in obj.data_vars.items()}
    return xr.Dataset(data_vars, coords=coords, attrs=dict(obj.attrs))

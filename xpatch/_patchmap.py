"""What ``func`` sees and where its result goes: halo and outputs at another resolution.

Pure geometry (numpy only), like :mod:`xpatch.grid`. The grid of ``apply`` is planned
on the *patch proper*: its windows are what is blended. Two options make what
``func`` sees, or what it returns, differ from that window:

- ``halo``: every patch is widened by ``h`` elements on each side before ``func``
  sees it (context), and the result's halo is cropped off before blending. At the
  array's border the context is what the border mode gives: the virtual padding of
  ``border="pad"`` (the patch keeps its full width), otherwise only the data there
  is (the widened window is clipped to the array, as a filter applied to the whole
  array sees its border);
- ``scale``: ``func`` returns a patch whose spatial sizes are the input's times a
  fixed factor per dim (super-resolution 2, a feature map 1/4). The output is
  blended on the *target* grid: the planned grid with every start, size and length
  multiplied by the factor.

A :class:`PatchMap` holds three grids with the same windows at the same indices:
``grid`` (planned), ``source`` (what is sampled: ``grid`` widened by the halo) and
``target`` (what is blended: ``grid`` scaled), plus per axis and window position the
slice of ``func``'s result that holds the patch proper.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from xpatch.errors import DimensionError, GridError, ResultError
from xpatch.grid import AxisPlan, PatchGrid, Window

__all__ = ["PatchMap", "as_scale", "spatial_keys"]


def spatial_keys(value: Mapping[Hashable, Any], dims: Sequence[Hashable], argument: str) -> None:
    """Refuse keys of a per-dim ``argument`` (``halo``, ``scale``) that are no spatial dim.

    Examples
    --------
    >>> spatial_keys({"y": 2}, ("y", "x"), "halo")
    """
    if other := [k for k in value if k not in dims]:
        raise DimensionError(
            f"{argument}: {other} are not spatial dims: {argument} applies along the dims the"
            f" patch sizes name, {tuple(dims)}; drop the others from {argument}="
        )


def as_scale(value: Any, dim: Hashable) -> Fraction:
    """A scale factor as an exact fraction (2, 0.25, "1/4" or a Fraction).

    Examples
    --------
    >>> as_scale(0.25, "y"), as_scale(2, "y"), as_scale("1/3", "y")
    (Fraction(1, 4), Fraction(2, 1), Fraction(1, 3))
    """
    try:
        if isinstance(value, bool):  # (an int to Fraction, but no factor)
            raise TypeError
        if isinstance(value, float):
            f = Fraction(value).limit_denominator(1 << 16)
        else:
            f = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        raise GridError(
            f"scale for dim {dim!r} must be a positive number such as 2 or 0.25, got {value!r}"
        ) from None
    if f <= 0:
        raise GridError(f"scale for dim {dim!r} must be positive, got {value!r}")
    return f


def _scaled(value: int, f: Fraction, what: str, dim: Hashable, fix: str) -> int:
    out = value * f
    if out.denominator != 1:
        raise GridError(
            f"scale {f} along dim {dim!r}: the {what} {value} times {f} is {float(out):g},"
            f" not a whole number of output elements; {fix}"
        )
    return int(out)


@dataclass(frozen=True, eq=False)
class PatchMap:
    """The planned grid, the windows ``func`` sees and the windows its results fill.

    Attributes
    ----------
    grid : PatchGrid
        The planned windows (the patch proper), in the source's index space.
    source : PatchGrid
        The windows sampled for ``func``: ``grid`` widened by the halo.
    target : PatchGrid
        The windows blended: ``grid`` scaled to the output's index space.
    halo : dict
        Elements of context per spatial dim and side.
    scale : dict
        Output elements per input element, per spatial dim (exact fractions).
    crops : tuple of ndarray
        Per axis and window position: where the patch proper starts in ``func``'s
        result (in output elements).

    Examples
    --------
    >>> grid = PatchGrid({"x": 10}, {"x": 4}, step=3)
    >>> pm = PatchMap.make(grid, halo={"x": 2}, scale={"x": 2})
    >>> pm.source.starts["x"], pm.source.sizes["x"]
    (array([0, 1, 4]), array([6, 8, 6]))
    >>> pm.target.starts["x"], pm.target.lengths["x"]
    (array([ 0,  6, 12]), 20)
    >>> pm.crop(pm.grid[1])
    (slice(4, 12, None),)
    """

    grid: PatchGrid
    source: PatchGrid
    target: PatchGrid
    halo: dict[Hashable, int]
    scale: dict[Hashable, Fraction]
    crops: tuple[np.ndarray, ...]

    @classmethod
    def make(
        cls,
        grid: PatchGrid,
        halo: Mapping[Hashable, int] | None = None,
        scale: Mapping[Hashable, Any] | None = None,
    ) -> PatchMap:
        """Widen ``grid`` by ``halo`` and scale it by ``scale`` (both default nothing)."""
        halo_d = {d: int((halo or {}).get(d, 0)) for d in grid.dims}
        scale_d = {d: as_scale((scale or {}).get(d, 1), d) for d in grid.dims}
        pad = grid.border == "pad"
        src_axes, tgt_axes, crops = [], [], []
        for ax in grid.axes:
            d, h, f = ax.dim, halo_d[ax.dim], scale_d[ax.dim]
            if pad:
                lo, hi = ax.starts - h, ax.stops + h
            else:
                lo = np.maximum(ax.starts - h, 0)
                hi = np.minimum(ax.stops + h, ax.length)
            src_axes.append(AxisPlan(d, ax.length, lo, hi - lo))
            fix = (
                f"choose a size, step and border whose starts are multiples of {f.denominator}"
                f" along {d!r} (e.g. border='crop'), or another scale"
            )
            # border="crop" leaves the tail after the last window uncovered: the output
            # ends with the last whole output element there
            if grid.border != "crop":
                _scaled(ax.length, f, "length", d, "crop or pad the array to a multiple first")
            _scaled(grid.size[d], f, "patch size", d, fix)
            _scaled(h, f, "halo", d, f"choose a halo that is a multiple of {f.denominator}")
            for s in np.unique(ax.starts):
                _scaled(int(s), f, "patch start", d, fix)
            for n in np.unique(ax.sizes):
                _scaled(int(n), f, "patch size", d, fix)
            for n in np.unique(hi - lo):  # the halo clipped at the array's ends
                _scaled(
                    int(n), f, "patch size with its halo (clipped at the array's end)", d,
                    f"crop the array to a length that is a multiple of {f.denominator} first",
                )  # fmt: skip
            num, den = f.numerator, f.denominator
            tgt_axes.append(  # (the length rounded down only under border="crop")
                AxisPlan(d, ax.length * num // den, ax.starts * num // den, ax.sizes * num // den)
            )
            crops.append((ax.starts - lo) * num // den)
        source = (
            grid
            if not any(halo_d.values())
            else PatchGrid.from_axes(
                src_axes, grid.size, grid.step, grid.border, grid.pad_mode, grid.kept
            )
        )
        size_t = {d: int(grid.size[d] * scale_d[d]) for d in grid.dims}
        step_t = {d: max(1, int(grid.step[d] * scale_d[d])) for d in grid.dims}
        target = (
            grid
            if all(f == 1 for f in scale_d.values())
            else PatchGrid.from_axes(
                tgt_axes, size_t, step_t, grid.border, grid.pad_mode, grid.kept
            )
        )
        return cls(grid, source, target, halo_d, scale_d, tuple(crops))

    @property
    def identity(self) -> bool:
        """True without halo and scale: ``func`` sees and fills the planned windows."""
        return self.source is self.grid and self.target is self.grid

    @property
    def scaled(self) -> bool:
        """True if some dim has a scale other than 1."""
        return self.target is not self.grid

    def target_chunks(self, chunks: Any) -> Any:
        """``chunks`` (in the source's elements) in the target's elements.

        An int or a length per dim is scaled and rounded (at least 1); block lengths
        per dim (a tuple, as dask gives them) must scale to whole numbers.
        """
        if chunks is None or not self.scaled:
            return chunks
        per = chunks if isinstance(chunks, Mapping) else {d: chunks for d in self.grid.dims}
        out = {}
        for d, value in per.items():
            f = self.scale.get(d, Fraction(1))
            if isinstance(value, (tuple, list)):
                out[d] = tuple(
                    _scaled(int(b), f, "block length", d, "give chunks= as one length per dim")
                    for b in value
                )
            else:
                out[d] = max(1, round(int(value) * f))
        return out

    def crop(self, window: Window) -> tuple[slice, ...]:
        """The slice of ``func``'s result (per spatial dim) that holds ``window`` proper."""
        out = []
        for i, p in enumerate(window.position):
            c = int(self.crops[i][p])
            out.append(slice(c, c + int(self.target.axes[i].sizes[p])))
        return tuple(out)

    def expected(self, window: Window) -> tuple[int, ...]:
        """The spatial shape of ``func``'s result for ``window`` (widened, scaled)."""
        shape = []
        for i, p in enumerate(window.position):
            n = int(self.source.axes[i].sizes[p]) * self.scale[self.grid.dims[i]]
            shape.append(int(n))
        return tuple(shape)

    def check(self, sizes: Mapping[Hashable, int], window: Window, what: Any) -> None:
        """Refuse a result whose spatial ``sizes`` are not those :meth:`expected` gives."""
        want = dict(zip(self.grid.dims, self.expected(window)))
        got = {d: int(sizes[d]) for d in want if d in sizes}
        if got != want:
            src = self.source[window.index]
            parts = [f"halo {self.halo}"] if any(self.halo.values()) else []
            if self.scaled:
                parts.append(f"scale { {d: str(f) for d, f in self.scale.items()} }")
            hint = ""
            if self._without_halo(got, window):
                hint = (
                    "; it has the size of the patch proper, as if func had cut the halo off"
                    " itself: return the whole patch it was given (xpatch crops the halo), or"
                    " give scale= if the result is at another resolution"
                )
            raise ResultError(
                f"{what} has spatial sizes {got}; expected {want} (func saw {src!r}"
                f"{', ' + ', '.join(parts) if parts else ''}): a result must cover the patch"
                f" it was given, times the scale{hint}"
            )

    def _without_halo(self, sizes: Mapping[Hashable, int], window: Window) -> bool:
        """Do ``sizes`` match the patch proper of ``window`` (at this scale) where a
        halo widens it: a func that cut the halo off itself?"""
        proper = dict(zip(self.grid.dims, self.target[window.index].shape))
        widened = [d for d in self.grid.dims if self.halo[d]]
        return bool(widened) and all(int(sizes.get(d, -1)) == proper[d] for d in widened)

    def infer_scale(
        self, sizes: Mapping[Hashable, int], window: Window, what: Any
    ) -> dict[Hashable, Fraction] | None:
        """The scale a first result's spatial ``sizes`` imply: None if it is this one's,
        or if they are no whole multiple (or whole fraction) of the patch's."""
        src = self.source[window.index]
        found = {}
        for d, n in zip(self.grid.dims, src.shape):
            if d not in sizes:
                return None  # the spatial check says what is missing
            found[d] = Fraction(int(sizes[d]), int(n))
        if found == self.scale or self._without_halo(sizes, window):
            return None  # (the patch proper without its halo is not another scale)
        # a whole factor or its inverse (x2 super-resolution, a 1/4 feature map); any
        # other ratio is a result of the wrong size, which check() reports
        if all(f and (f.numerator == 1 or f.denominator == 1) for f in found.values()):
            return found
        return None

"""Hypothesis strategies for patch-grid geometry.

Pure data (ints and dicts), no xarray: ``test_grid.py`` and any other test file may
import them. Sizes stay small so that brute-force checks (marking every window on a
boolean array, comparing with Patchly) are fast.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

BORDERS: tuple[str, ...] = ("squeeze", "edge", "adaptive", "crop", "pad")
PAD_MODES: tuple[str, ...] = ("constant", "edge", "reflect", "symmetric", "wrap")
DIM_NAMES: tuple[str, ...] = ("t", "z", "y", "x")

borders = st.sampled_from(BORDERS)
pad_modes = st.sampled_from(PAD_MODES)


@dataclass(frozen=True)
class GridGeometry:
    """Arguments of one grid: lengths, sizes and steps per dim, and the border.

    ``shape`` is in the source array's dim order; ``size`` and ``step`` may list the
    same dims in another order (the grid must follow ``shape``'s order).
    """

    shape: dict[Hashable, int]
    size: dict[Hashable, int]
    step: dict[Hashable, int]
    border: str = "squeeze"
    pad_mode: str | None = field(default=None)

    @property
    def dims(self) -> tuple[Hashable, ...]:
        return tuple(self.shape)

    def axis(self, dim: Hashable) -> tuple[int, int, int]:
        """``(L, P, S)`` of one dim."""
        return self.shape[dim], self.size[dim], self.step[dim]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``PatchGrid`` (besides shape and size)."""
        out: dict[str, Any] = {"step": self.step, "border": self.border}
        if self.pad_mode is not None:
            out["pad_mode"] = self.pad_mode
        return out

    def grid(self) -> Any:
        """The ``xpatch.PatchGrid`` of this geometry."""
        from xpatch.grid import PatchGrid

        return PatchGrid(self.shape, self.size, **self.kwargs())


@st.composite
def axis_geometry(
    draw: st.DrawFn, border: str = "squeeze", max_length: int = 60
) -> tuple[int, int, int]:
    """``(L, P, S)`` for one axis with ``1 <= S <= P <= L``.

    Under the pad border ``P`` may exceed ``L`` (an array smaller than the patch).
    Draws shrink towards small lengths and towards ``S == P`` edge cases.
    """
    length = draw(st.integers(1, max_length))
    if border == "pad":
        size = draw(st.integers(1, max_length + max(2, max_length // 4)))
    else:
        size = draw(st.integers(1, length))
    step = draw(st.one_of(st.just(size), st.just(1), st.integers(1, size)))
    return length, size, step


@st.composite
def grid_geometry(
    draw: st.DrawFn,
    border: str | st.SearchStrategy[str] | None = None,
    min_dims: int = 1,
    max_dims: int = 4,
    max_length: int = 60,
    max_elements: int = 1024,
    dims: Sequence[Hashable] = DIM_NAMES,
    pad_mode: bool = False,
) -> GridGeometry:
    """A whole grid's arguments, 1-D to ``max_dims``-D.

    Parameters
    ----------
    border : str, strategy of str or None
        A fixed border, a strategy for one, or None for any border.
    max_elements : int
        Bound on the product of the lengths (so brute-force checks stay cheap).
    dims : sequence of hashable
        Pool of dim names; the grid uses a random ordered subset of them.
    pad_mode : bool
        Draw a pad_mode too when the border is "pad".
    """
    if border is None:
        border = borders
    if isinstance(border, st.SearchStrategy):
        border = draw(border)
    ndim = draw(st.integers(min_dims, min(max_dims, len(dims))))
    names = draw(st.permutations(list(dims)))[:ndim]
    cap = max(1, min(max_length, round(max_elements ** (1 / ndim))))
    axes = {d: draw(axis_geometry(border, cap)) for d in names}
    shape = {d: axes[d][0] for d in names}
    order = draw(st.permutations(names))
    size = {d: axes[d][1] for d in order}
    step = {d: axes[d][2] for d in order}
    mode = draw(pad_modes) if pad_mode and border == "pad" else None
    return GridGeometry(shape, size, step, border, mode)


def reference_starts(length: int, size: int, step: int, border: str) -> tuple[list, list]:
    """Starts and sizes along one axis, transcribed from the DESIGN.md formulas.

    A deliberately naive oracle (plain Python, no numpy) for the per-axis plans.
    """
    L, P, S = length, size, step
    if border == "pad":
        n = 1 if P >= L else -(-(L - P) // S) + 1
        pad = (n - 1) * S + P - L
        first = -(pad // 2)
        return [first + i * S for i in range(n)], [P] * n
    k = (L - P) // S
    base = [i * S for i in range(k + 1)]
    if border == "squeeze":
        if k * S + P < L:
            base.append((k + 1) * S)
        n = len(base)
        if n == 1:
            return [0], [P]
        over = (n - 1) * S + P - L
        a = over // (n - 1)
        starts = [i * (S - a) for i in range(n - 1)] + [L - P]
        return starts, [P] * n
    if border == "edge":
        starts = base + ([L - P] if k * S != L - P else [])
        return starts, [P] * len(starts)
    if border == "adaptive":
        if k * S + P < L:
            return [*base, (k + 1) * S], [P] * len(base) + [L - (k + 1) * S]
        return base, [P] * len(base)
    if border == "crop":
        return base, [P] * len(base)
    raise ValueError(border)


def mapping_of(dims: Sequence[Hashable], values: Sequence[Any]) -> Mapping[Hashable, Any]:
    """``dict(zip(dims, values))``, a tiny helper for readable tests."""
    return dict(zip(dims, values))


@st.composite
def array_cases(draw, borders=BORDERS, max_patches=80, band=None):
    """A small N-D array geometry: dims (spatial ones from ``t, z, y, x``, maybe a
    ``band`` dim), shape, sizes and steps for one border, at most ``max_patches``."""
    ndim = draw(st.integers(1, 4))
    border = draw(st.sampled_from(borders))
    max_len = {1: 20, 2: 11, 3: 6, 4: 4}[ndim]
    spatial = list(DIM_NAMES[-ndim:])
    lengths, size, step = {}, {}, {}
    for d in spatial:
        L = draw(st.integers(1, max_len))
        P = draw(st.integers(1, L + 3 if border == "pad" else L))
        S = draw(st.integers(1, P))
        lengths[d], size[d], step[d] = L, P, S
    n = math.prod(len(reference_starts(lengths[d], size[d], step[d], border)[0]) for d in spatial)
    assume(n <= max_patches)
    has_band = draw(st.booleans()) if band is None else band
    dims = list(spatial)
    if has_band:
        dims.insert(draw(st.integers(0, ndim)), "band")
    shape = tuple(2 if d == "band" else lengths[d] for d in dims)
    kw_order = draw(st.permutations(spatial))  # size keywords in any order
    return {
        "dims": tuple(dims),
        "shape": shape,
        "spatial": tuple(spatial),
        "axes": [dims.index(d) for d in spatial],
        "size": size,
        "step": step,
        "border": border,
        "kwargs": {d: size[d] for d in kw_order},
        "n_patches": n,
    }

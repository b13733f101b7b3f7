"""Pure geometry: where the patches go.

This module knows sizes, never data. It imports numpy only (no xarray, no dask):
the grid of a 10-terabyte array is planned exactly as the grid of a toy array.

A grid is the Cartesian product of per-axis starts, one 1-D plan per spatial dim,
computed by :func:`axis_starts` for each border mode.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from xpatch._types import Border, PadMode
from xpatch._validate import validate_grid_args

__all__ = ["AxisPlan", "PatchGrid", "Window", "axis_starts"]


def axis_starts(length: int, size: int, step: int, border: Border) -> tuple[np.ndarray, np.ndarray]:
    """Patch starts and sizes along one axis.

    Parameters
    ----------
    length : int
        Length ``L`` of the axis.
    size : int
        Patch size ``P``.
    step : int
        Step ``S`` between neighbouring starts, ``1 <= S <= P``.
    border : {"squeeze", "edge", "adaptive", "crop", "pad"}
        How the last patch is placed when the grid does not fit the axis exactly.

    Returns
    -------
    starts, sizes : numpy.ndarray
        Integer arrays of equal length. Under ``"pad"`` the starts refer to the
        unpadded axis: the first may be negative and the last patch may end past
        ``length``.

    Examples
    --------
    >>> axis_starts(100, 30, 20, "squeeze")[0]
    array([ 0, 18, 36, 54, 70])
    >>> axis_starts(100, 30, 20, "edge")[0]
    array([ 0, 20, 40, 60, 70])
    >>> starts, sizes = axis_starts(100, 30, 20, "adaptive")
    >>> starts, sizes
    (array([ 0, 20, 40, 60, 80]), array([30, 30, 30, 30, 20]))
    >>> axis_starts(100, 30, 20, "pad")[0]
    array([-5, 15, 35, 55, 75])
    """
    L, P, S = int(length), int(size), int(step)
    if border == "pad":
        n = 1 if P >= L else math.ceil((L - P) / S) + 1
        before = ((n - 1) * S + P - L) // 2
        starts = np.arange(n, dtype=np.int64) * S - before
        return starts, np.full(n, P, dtype=np.int64)
    k = (L - P) // S
    base = np.arange(k + 1, dtype=np.int64) * S
    last_end = k * S + P
    if border == "crop" or last_end == L:
        starts = base
    elif border == "squeeze":
        n = k + 2
        over = (n - 1) * S + P - L
        shrink = over // (n - 1)
        starts = np.arange(n, dtype=np.int64) * (S - shrink)
        starts[-1] = L - P
    elif border == "edge":
        starts = np.append(base, L - P)
    elif border == "adaptive":
        tail = (k + 1) * S
        starts = np.append(base, tail)
        sizes = np.full(len(starts), P, dtype=np.int64)
        sizes[-1] = L - tail
        return starts, sizes
    else:  # pragma: no cover - validated before
        raise AssertionError(border)
    return starts, np.full(len(starts), P, dtype=np.int64)


@dataclass(frozen=True)
class AxisPlan:
    """The 1-D plan of one spatial dim: patch starts and sizes along it.

    Examples
    --------
    >>> plan = PatchGrid({"x": 10}, {"x": 4}, step=3).axes[0]
    >>> plan.starts, plan.stops
    (array([0, 3, 6]), array([ 4,  7, 10]))
    """

    dim: Hashable
    length: int
    starts: np.ndarray
    sizes: np.ndarray

    @property
    def stops(self) -> np.ndarray:
        """End (exclusive) of every patch along the axis."""
        return self.starts + self.sizes

    @property
    def pad_width(self) -> tuple[int, int]:
        """Virtual padding (before, after) that the patches reach into."""
        before = max(0, -int(self.starts[0]))
        after = max(0, int(self.stops.max()) - self.length)
        return before, after

    def coverage(self) -> np.ndarray:
        """How many patches cover each element of the axis."""
        lo = np.clip(self.starts, 0, self.length)
        hi = np.clip(self.stops, 0, self.length)
        diff = np.zeros(self.length + 1, dtype=np.int64)
        np.add.at(diff, lo, 1)
        np.add.at(diff, hi, -1)
        return np.cumsum(diff[:-1])

    def touching(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Range ``[first, last)`` of patches that overlap each region ``[lo, hi)``.

        Vectorised over regions: relies on starts and stops both being sorted.
        """
        first = np.searchsorted(self.stops, lo, side="right")
        last = np.searchsorted(self.starts, hi, side="left")
        return first, np.maximum(last, first)


@dataclass(frozen=True, eq=False)
class Window(Mapping[Hashable, slice]):
    """The location of one patch: a mapping dim -> slice, plus its grid index.

    Slices are in the index space of the source array. Under the pad border a
    slice may start below 0 or stop past the dim's length.

    Attributes
    ----------
    dims : tuple of hashable
        The spatial dims.
    slices : tuple of slice
        One slice per spatial dim.
    index : int
        Flat position in the grid: ``grid[window.index] == window``.
    position : tuple of int
        Position along each spatial dim of the grid.

    Examples
    --------
    >>> w = Window(dims=("y", "x"), slices=(slice(0, 4), slice(2, 6)), index=1)
    >>> w["x"]
    slice(2, 6, None)
    >>> dict(w)
    {'y': slice(0, 4, None), 'x': slice(2, 6, None)}
    """

    dims: tuple[Hashable, ...]
    slices: tuple[slice, ...]
    index: int
    position: tuple[int, ...] = field(default=(), compare=False)

    def __getitem__(self, dim: Hashable) -> slice:
        try:
            return self.slices[self.dims.index(dim)]
        except ValueError:
            raise KeyError(dim) from None

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.dims)

    def __len__(self) -> int:
        return len(self.dims)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return (self.index, self.dims, self.slices) == (other.index, other.dims, other.slices)

    def __hash__(self) -> int:
        return hash((self.index, self.dims, tuple((s.start, s.stop) for s in self.slices)))

    @property
    def shape(self) -> tuple[int, ...]:
        """Patch size along each spatial dim."""
        return tuple(s.stop - s.start for s in self.slices)

    def __repr__(self) -> str:
        parts = ", ".join(f"{d}={s.start}:{s.stop}" for d, s in zip(self.dims, self.slices))
        return f"<Window {self.index}: {parts}>"


class PatchGrid(Sequence[Window]):
    """The ordered, deterministic sequence of patch windows over named dims.

    A grid is pure geometry: it knows the lengths of the spatial dims, never the
    data. Iteration runs in a fixed order, the last spatial dim fastest.

    Parameters
    ----------
    shape : mapping of hashable to int
        Length of each spatial dim, in the order of the source array's dims.
    size : mapping of hashable to int
        Patch size per spatial dim (same keys as ``shape``).
    step : int or mapping of hashable to int, optional
        Distance between neighbouring patch starts. Default: ``size`` (no overlap).
    border : {"squeeze", "edge", "adaptive", "crop", "pad"}, default: "squeeze"
        How the last patch along each axis is placed.
    pad_mode : {"constant", "edge", "reflect", "symmetric", "wrap"}, optional
        Virtual padding mode; only with ``border="pad"`` (default "constant").

    Attributes
    ----------
    dims : tuple of hashable
        The spatial dims, in the source array's order.
    lengths : dict
        Length of each spatial dim.
    size, step : dict
        Patch size and step per spatial dim.
    border : str
        The border mode.
    pad_mode : str or None
        The virtual padding mode (``border="pad"`` only).
    axes : tuple of AxisPlan
        The per-axis plans (starts and sizes).

    Examples
    --------
    >>> grid = PatchGrid({"y": 100, "x": 7}, {"y": 30, "x": 7}, step={"y": 20, "x": 7})
    >>> grid
    <PatchGrid 5 patches, border='squeeze'
        y: length 100, size 30, step 20 -> 5 patches
        x: length 7, size 7, step 7 -> 1 patches>
    >>> grid.starts["y"]
    array([ 0, 18, 36, 54, 70])
    >>> grid[1]
    <Window 1: y=18:48, x=0:7>
    """

    def __init__(
        self,
        shape: Mapping[Hashable, int],
        size: Mapping[Hashable, int],
        step: int | Mapping[Hashable, int] | None = None,
        border: Border = "squeeze",
        pad_mode: PadMode | None = None,
    ) -> None:
        size_d, step_d, pad = validate_grid_args(shape, size, step, border, pad_mode)
        self.dims: tuple[Hashable, ...] = tuple(shape)
        self.lengths: dict[Hashable, int] = {d: int(shape[d]) for d in self.dims}
        self.size: dict[Hashable, int] = size_d
        self.step: dict[Hashable, int] = step_d
        self.border: Border = border
        self.pad_mode: PadMode | None = pad
        self.axes: tuple[AxisPlan, ...] = tuple(
            AxisPlan(
                d, self.lengths[d], *axis_starts(self.lengths[d], size_d[d], step_d[d], border)
            )
            for d in self.dims
        )
        self.kept: np.ndarray | None = None
        self._index()

    def _index(self) -> None:
        self._counts = tuple(len(a.starts) for a in self.axes)
        self._slices = tuple(
            [slice(int(a), int(b)) for a, b in zip(ax.starts, ax.stops)] for ax in self.axes
        )

    @classmethod
    def from_axes(
        cls,
        axes: Sequence[AxisPlan],
        size: Mapping[Hashable, int],
        step: Mapping[Hashable, int],
        border: Border,
        pad_mode: PadMode | None = None,
        kept: np.ndarray | None = None,
    ) -> PatchGrid:
        """A grid of explicitly given per-axis plans (internal: the windows widened by a
        halo, or scaled to an output at another resolution; see :mod:`xpatch._patchmap`).

        Examples
        --------
        >>> g = PatchGrid({"x": 10}, {"x": 4}, step=3)
        >>> ax = g.axes[0]
        >>> wide = PatchGrid.from_axes(
        ...     [AxisPlan("x", 20, ax.starts * 2, ax.sizes * 2)], {"x": 8}, {"x": 6}, "squeeze"
        ... )
        >>> wide[1]
        <Window 1: x=6:14>
        """
        grid = cls.__new__(cls)
        grid.dims = tuple(ax.dim for ax in axes)
        grid.lengths = {ax.dim: int(ax.length) for ax in axes}
        grid.size = {d: int(size[d]) for d in grid.dims}
        grid.step = {d: int(step[d]) for d in grid.dims}
        grid.border = border
        grid.pad_mode = pad_mode
        grid.axes = tuple(axes)
        grid.kept = kept
        grid._index()
        return grid

    def with_kept(self, kept: np.ndarray | None) -> PatchGrid:
        """This grid with only the windows flagged in ``kept`` sampled (a mask; see
        :attr:`kept`). Indices and positions stay those of the full grid.

        Examples
        --------
        >>> g = PatchGrid({"x": 10}, {"x": 4}, step=3).with_kept(np.array([True, False, True]))
        >>> len(g), g.n_kept, [w.index for w in g.kept_windows()]
        (3, 2, [0, 2])
        """
        if kept is not None:
            kept = np.asarray(kept, dtype=bool).reshape(-1)
            if kept.shape != (len(self),):
                raise ValueError(f"kept has {kept.size} flags for a grid of {len(self)} windows")
            kept.flags.writeable = False
        return PatchGrid.from_axes(
            self.axes, self.size, self.step, self.border, self.pad_mode, kept
        )

    @property
    def n_kept(self) -> int:
        """How many windows are sampled (all, unless a mask skips some)."""
        return len(self) if self.kept is None else int(self.kept.sum())

    def kept_windows(self) -> Iterator[Window]:
        """The windows that are sampled, in grid order (all unless a mask skips some)."""
        if self.kept is None:
            return iter(self)
        return (self[int(i)] for i in np.flatnonzero(self.kept))

    # --- Sequence protocol -------------------------------------------------
    def __len__(self) -> int:
        return math.prod(self._counts)

    @overload
    def __getitem__(self, i: int) -> Window: ...
    @overload
    def __getitem__(self, i: slice) -> list[Window]: ...
    def __getitem__(self, i: int | slice) -> Window | list[Window]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"grid indices must be integers or slices, not {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"window index {i} out of range for a grid of {n} patches")
        index = int(i) % n
        position = tuple(int(p) for p in np.unravel_index(index, self._counts))
        return self._window(index, position)

    def __iter__(self) -> Iterator[Window]:
        dims = self.dims
        ranges = [range(c) for c in self._counts]
        per_axis = self._slices
        new = object.__new__
        pairs = zip(itertools.product(*ranges), itertools.product(*per_axis))
        for index, (position, slices) in enumerate(pairs):
            # Window(dims, slices, index, position) without the frozen dataclass's
            # __init__ (four object.__setattr__ calls): the same instance, 5x faster
            w = new(Window)
            d = w.__dict__
            d["dims"] = dims
            d["slices"] = slices
            d["index"] = index
            d["position"] = position
            yield w

    def _window(self, index: int, position: tuple[int, ...]) -> Window:
        slices = tuple(s[p] for s, p in zip(self._slices, position))
        return Window(self.dims, slices, index, position)

    def owns(self, window: Window) -> bool:
        """True if ``window`` is this grid's window at its index (a fast check)."""
        position = window.position
        if len(position) != len(self._counts) or window.dims != self.dims:
            return False
        try:
            if self.index_of(position) != window.index:
                return False
            return all(s[p] == w for s, p, w in zip(self._slices, position, window.slices))
        except (ValueError, IndexError):
            return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatchGrid):
            return NotImplemented
        return self.signature() == other.signature()

    __hash__ = None  # type: ignore[assignment]

    # --- public geometry ---------------------------------------------------
    @property
    def shape(self) -> dict[Hashable, int]:
        """Number of patches along each spatial dim."""
        return dict(zip(self.dims, self._counts))

    @property
    def shape_tuple(self) -> tuple[int, ...]:
        """Number of patches along each spatial dim, in the grid's dim order."""
        return self._counts

    @property
    def starts(self) -> dict[Hashable, np.ndarray]:
        """Per-axis patch starts (index space of the source array)."""
        return {ax.dim: ax.starts.copy() for ax in self.axes}

    @property
    def sizes(self) -> dict[Hashable, np.ndarray]:
        """Per-axis patch sizes (they differ only for the adaptive border's last patch)."""
        return {ax.dim: ax.sizes.copy() for ax in self.axes}

    @property
    def pad_width(self) -> dict[Hashable, tuple[int, int]]:
        """Virtual padding (before, after) per dim; zero unless ``border="pad"``."""
        return {ax.dim: ax.pad_width for ax in self.axes}

    def coverage(self) -> dict[Hashable, np.ndarray]:
        """How many patches cover each element, as one vector per spatial dim.

        The number of patches covering an N-D element is the product of its
        per-axis counts.

        Examples
        --------
        >>> PatchGrid({"x": 11}, {"x": 4}, step=3, border="crop").coverage()["x"]
        array([1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 0])
        """
        return {ax.dim: ax.coverage() for ax in self.axes}

    def index_of(self, position: Sequence[int]) -> int:
        """Flat index of the window at per-axis grid ``position``."""
        index = 0
        for p, n in zip(position, self._counts):
            if not 0 <= p < n:
                raise IndexError(f"grid position {tuple(position)} out of range {self._counts}")
            index = index * n + int(p)
        return index

    def locate(self, starts: Mapping[Hashable, int]) -> Window | None:
        """The window whose slices start at ``starts`` (one int per dim), or None."""
        position = []
        for ax in self.axes:
            s = int(starts[ax.dim])
            p = int(np.searchsorted(ax.starts, s))
            if p >= len(ax.starts) or ax.starts[p] != s:
                return None
            position.append(p)
        return self._window(self.index_of(position), tuple(position))

    def signature(self) -> dict[str, Any]:
        """Plain-data description of the grid (for records and equality)."""
        return {
            "dims": [str(d) for d in self.dims],
            "lengths": [self.lengths[d] for d in self.dims],
            "size": [self.size[d] for d in self.dims],
            "step": [self.step[d] for d in self.dims],
            "border": self.border,
            "pad_mode": self.pad_mode,
            **({"starts": [ax.starts.tolist() for ax in self.axes]} if self._explicit() else {}),
            **({"kept": _digest(self.kept)} if self.kept is not None else {}),
        }

    def _explicit(self) -> bool:
        """True if the starts are not those the border mode gives (a derived grid)."""
        return any(
            not np.array_equal(
                ax.starts,
                axis_starts(ax.length, self.size[ax.dim], self.step[ax.dim], self.border)[0],
            )
            for ax in self.axes
        )

    def __repr__(self) -> str:
        lines = [f"<PatchGrid {len(self)} patches, border={self.border!r}"]
        if self.pad_mode is not None:
            lines[0] += f", pad_mode={self.pad_mode!r}"
        if self.kept is not None:
            lines[0] += f", {self.n_kept} kept by the mask"
        for ax, n in zip(self.axes, self._counts):
            d = ax.dim
            lines.append(
                f"    {d}: length {ax.length}, size {self.size[d]}, step {self.step[d]}"
                f" -> {n} patches"
            )
        return "\n".join(lines) + ">"

    def plot(
        self,
        image: Any = None,
        ax: Any = None,
        *,
        band: Any = None,
        rgb: bool | Sequence[Any] | None = None,
        cmap: str = "gray",
        **kwargs: Any,
    ) -> Any:
        """Draw the windows of a 2-D grid, over an image if given (needs matplotlib).

        A labeled image (a DataArray with 1-D numeric coordinates along the grid's
        dims) is drawn in its coordinates, metres or microns, with its units on the
        axes; each window is the rectangle of the pixels it selects, the virtual
        padding of ``border="pad"`` included. An unlabeled image, or none, is drawn
        in index space.

        Parameters
        ----------
        image : DataArray or array-like, optional
            Shown underneath. A DataArray has the grid's dims with the grid's lengths;
            any other dim (a band dim) needs ``band`` or ``rgb``. An unlabeled image is
            2-D, or ``(y, x, 3)`` RGB, in the grid's dim order.
        ax : matplotlib.axes.Axes, optional
            Axes to draw on; default: a new figure.
        band : hashable, optional
            Show the one band with this label of the image's non-spatial dim.
        rgb : True or sequence of three labels, optional
            Show three bands of the image's non-spatial dim as red, green and blue
            (``True``: the dim holds exactly three), stretched together between
            their 2nd and 98th percentiles.
        cmap : str, default: "gray"
            Colormap of a one-band image.
        **kwargs
            Passed to :class:`matplotlib.patches.Rectangle` (``edgecolor``,
            ``linewidth``...); by default each window gets the next colour of the cycle.

        Returns
        -------
        matplotlib.axes.Axes

        Raises
        ------
        GridError
            The grid is not 2-D, or the image's lengths are not the grid's.
        DimensionError
            The image lacks a grid dim, or ``band``/``rgb`` name unknown labels.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np, xarray as xr
        >>> import xpatch
        >>> scene = xr.DataArray(
        ...     np.random.rand(3, 40, 60),
        ...     dims=("band", "y", "x"),
        ...     coords={"band": ["red", "green", "blue"],
        ...             "y": 500.0 - 10 * np.arange(40), "x": 10.0 * np.arange(60)},
        ... )
        >>> ax = scene.patch.grid(y=16, x=16, step=12).plot(scene, rgb=True)
        >>> [float(v) for v in ax.get_xlim()]  # metres: the outer pixel edges along x
        [-5.0, 595.0]
        """
        from xpatch._plot import plot_grid

        return plot_grid(self, image, ax, band=band, rgb=rgb, cmap=cmap, **kwargs)


def _digest(flags: np.ndarray) -> str:
    """A short, stable digest of a boolean mask (for :meth:`PatchGrid.signature`)."""
    import hashlib

    return hashlib.sha1(np.packbits(flags).tobytes()).hexdigest()[:16]

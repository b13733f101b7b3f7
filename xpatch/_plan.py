"""The blending plan: everything about blending known before the first result.

Pure data (numpy only): the grid, the chunk layout, the resolved kernel and its
per-axis normalised factors, and the blending options. Built once per run and
shared: by the eager aggregator and by every dask block task, which receives this
plan rather than an aggregator.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from xpatch._normalise import SeparableWeights
from xpatch._options import BlendOptions
from xpatch.grid import PatchGrid
from xpatch.layout import ChunkLayout
from xpatch.weights import CustomWeights, Kernel, resolve

__all__ = ["BlendPlan"]


@dataclass(frozen=True)
class BlendPlan:
    """Everything about blending that is known before the first result.

    Examples
    --------
    >>> plan = BlendPlan.make(PatchGrid({"x": 10}, {"x": 4}, step=2), BlendOptions(chunks=5))
    >>> plan.layout.shape, plan.kernel
    ((2,), gaussian(sigma=0.125))
    """

    grid: PatchGrid
    layout: ChunkLayout
    kernel: Kernel | CustomWeights
    weights: SeparableWeights
    options: BlendOptions

    @classmethod
    def make(
        cls, grid: PatchGrid, options: BlendOptions, layout: ChunkLayout | None = None
    ) -> BlendPlan:
        """Resolve the kernel, normalise it per axis and plan the chunks."""
        options.check_spatial(grid.dims)
        kernel = resolve(options.weights, grid.dims)
        if isinstance(kernel, CustomWeights):  # validate every patch shape up front
            for shape in itertools.product(*(np.unique(s) for s in grid.sizes.values())):
                kernel(dict(zip(grid.dims, (int(n) for n in shape))))
        layout = layout if layout is not None else ChunkLayout(grid, options.chunks)
        return cls(grid, layout, kernel, SeparableWeights(grid, kernel), options)

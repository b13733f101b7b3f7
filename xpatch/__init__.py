"""xpatch: patch-wise processing of labeled N-D arrays.

``import xpatch`` registers the ``.patch`` accessor on ``xarray.DataArray`` and
``xarray.Dataset``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from xpatch import weights
from xpatch.accessor import PatchAccessor
from xpatch.aggregate import Aggregator
from xpatch.dataset import PatchDataset
from xpatch.errors import (
    AggregationError,
    DimensionError,
    GridError,
    IncompleteError,
    PatchError,
    ResultError,
    WeightsError,
)
from xpatch.grid import PatchGrid, Window, axis_starts

try:
    __version__ = version("xarray-patch")
except PackageNotFoundError:  # pragma: no cover - not installed
    __version__ = "0.0.0"

__all__ = [
    "AggregationError",
    "Aggregator",
    "DimensionError",
    "GridError",
    "IncompleteError",
    "PatchAccessor",
    "PatchDataset",
    "PatchError",
    "PatchGrid",
    "ResultError",
    "WeightsError",
    "Window",
    "__version__",
    "axis_starts",
    "weights",
]

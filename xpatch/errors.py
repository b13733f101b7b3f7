"""Typed errors raised by xpatch.

Every error caused by a bad argument derives from :class:`PatchError`, itself a
:class:`ValueError`, so ``except ValueError`` catches them all.
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "DimensionError",
    "GridError",
    "IncompleteError",
    "PatchError",
    "ResultError",
    "WeightsError",
]


class PatchError(ValueError):
    """Base class of every xpatch error about a bad value."""


class DimensionError(PatchError):
    """A dim named in an argument does not exist, or is given twice."""


class GridError(PatchError):
    """Bad geometry: size, step, border, pad_mode or chunks."""


class WeightsError(PatchError):
    """Unknown weights name or an invalid custom weight."""


class ResultError(PatchError):
    """A patch result has the wrong shape, dims or coordinates."""


class AggregationError(PatchError):
    """A window is added twice or cannot be located in the grid."""


class IncompleteError(AggregationError):
    """``Aggregator.result()`` was asked for while windows are missing."""

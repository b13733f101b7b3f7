"""Literal aliases for the string options of xpatch."""

from __future__ import annotations

from typing import Literal

Border = Literal["squeeze", "edge", "adaptive", "crop", "pad"]
PadMode = Literal["constant", "edge", "reflect", "symmetric", "wrap"]
WeightsName = Literal["mean", "gaussian", "hann"]

BORDERS: tuple[str, ...] = ("squeeze", "edge", "adaptive", "crop", "pad")
PAD_MODES: tuple[str, ...] = ("constant", "edge", "reflect", "symmetric", "wrap")
WEIGHTS_NAMES: tuple[str, ...] = ("mean", "gaussian", "hann")

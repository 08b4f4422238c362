"""YOLOv3-family models from darknet cfg + weights: `load_detector(...)` returns a `Detector`."""

from __future__ import annotations

from . import openmp  # noqa: F401  (must precede every torch import; torch loads lazily)
from .cfg import CfgError
from .cfg import WeightsError
from .loader import Detector
from .loader import load_detector

__all__ = ["CfgError", "Detector", "WeightsError", "load_detector"]

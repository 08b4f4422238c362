"""YOLOv3-family models from darknet cfg + weights: `load_detector(...)` returns a `Detector`."""

from __future__ import annotations

from . import openmp  # noqa: F401  (must precede every torch import)
from .cfg import CfgError
from .loader import Detector
from .loader import load_detector
from .weights import WeightsError

__all__ = ["CfgError", "Detector", "WeightsError", "load_detector"]

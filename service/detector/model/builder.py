"""Builds the engines load_detector times or runs; torch is imported only where one needs it."""

from __future__ import annotations

import logging

from . import openvino_engine
from .engines import OpenCVEngine
from .engines import TorchEngine

log = logging.getLogger("detector.model.loader")  # its lines belong to the load they explain


class EngineBuilder:
    """Builds engines for (engine, precision) specs; torch is imported only for a torch engine
    or an OpenVINO conversion (a cache miss)."""

    def __init__(self, cfg, cfg_path, weights_path, input_shape, heads, flag, threads, cache):
        self.cfg, self.cfg_path, self.weights_path = cfg, cfg_path, weights_path
        self.input_shape, self.heads, self.flag = input_shape, heads, flag
        self.threads, self.cache = threads, cache

    def __call__(self, specs: list[tuple[str, str]], auto: bool) -> tuple[list, str]:
        """Return the engines that loaded and words to add to the reason.

        :param auto: leave out an OpenVINO engine that fails to load (logged), else raise.
        """
        candidates, notes = [], ""
        # OpenVINO first: a conversion (cache miss) frees its memory before torch loads its model.
        for kind, precision in sorted(specs, key=lambda spec: spec[0] != "openvino"):
            if kind == "torch":
                candidates.append(TorchEngine(self.fused(precision), precision))
            elif kind == "opencv":
                import cv2

                from .weights import check_size

                cv2.setNumThreads(self.threads)
                check_size(self.meta_model(), self.weights_path)
                candidates.append(OpenCVEngine(self.cfg, self.cfg_path, self.weights_path))
            else:
                try:
                    ov_engine, how = openvino_engine.load_engine(
                        self.cfg_path, self.weights_path, self.input_shape, self.heads,
                        precision, self.flag, self.threads, self.cache,
                        build=lambda: self.fused("fp32"),
                    )  # fmt: skip
                except Exception as exc:  # auto: an engine that cannot load is not a candidate
                    if not auto:
                        raise
                    log.warning("openvino-%s left out of auto: %s", precision, exc)
                    notes += f"; openvino-{precision} left out: it failed to load ({exc})"
                    continue
                candidates.append(ov_engine)
                notes += f"; openvino model {how}"
        return candidates, notes

    def meta_model(self):
        """Return the darknet module with meta (unallocated) parameters: its shapes only."""
        import torch

        from .darknet import Darknet

        torch.set_num_threads(self.threads)
        with torch.device("meta"):  # no allocation: load_fused installs the real parameters
            return Darknet(self.cfg)

    def fused(self, precision: str):
        """Return the darknet model with batch norm folded, in the precision's dtype."""
        import torch

        from .weights import load_fused

        model = self.meta_model()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        load_fused(model, self.weights_path, dtype)
        return model

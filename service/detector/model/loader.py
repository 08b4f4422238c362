"""The Detector: a loaded model with its engine, and load_detector() that builds and warms it."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from ..detection import Detection
from .cfg import Yolo
from .cfg import parse_cfg
from .darknet import Darknet
from .engines import OpenCVEngine
from .engines import TorchEngine
from .engines import bf16_flag
from .engines import choose
from .postprocess import HeadSpec
from .postprocess import decode
from .postprocess import postprocess
from .preprocess import letterbox
from .weights import WeightsError
from .weights import count_floats
from .weights import load_weights
from .weights import read_header

log = logging.getLogger(__name__)
ENGINES = ("auto", "torch", "opencv")
PRECISIONS = ("auto", "fp32", "bf16")
WARMUP_RUNS = 2


class Detector:
    """Runs one model on RGB images, thread-safely; `last_timing`: the last call's stages in ms."""

    def __init__(
        self,
        name: str,
        engine,
        engine_reason: str,
        heads: list[HeadSpec],
        input_shape: tuple[int, int],
        class_names: list[str],
        threshold: float,
        nms_threshold: float,
    ) -> None:
        self.name = name
        self._engine = engine
        self.engine = engine.name
        self.precision = engine.precision
        self.engine_reason = engine_reason
        self.heads = heads
        self.input_shape = input_shape  # (width, height) of the network input
        self.input_size = max(input_shape)
        self.class_names = class_names
        self.threshold = threshold
        self.nms_threshold = nms_threshold
        self.last_timing: dict[str, float] = {}
        self._local = threading.local()

    def __repr__(self) -> str:
        w, h = self.input_shape
        return f"<Detector {self.name} {w}x{h} engine={self.engine} ({self.precision})>"

    def infer(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the raw [yolo] input maps (fp32) for a letterboxed 1x3xHxW input (0..1)."""
        return self._engine(x)

    def detect(
        self, image: Image.Image, original_size: tuple[int, int] | None = None
    ) -> list[Detection]:
        """Return the detections in `image`, highest score first.

        :param image: RGB image, already EXIF-transposed.
        :param original_size: (width, height) to map boxes to when `image` was decoded reduced
            (JPEG draft); default: the image's own size.
        """
        start = time.perf_counter()
        net_w, net_h = self.input_shape
        x, box = letterbox(image, net_w, net_h)
        prepared = time.perf_counter()
        maps = self._engine(x)
        inferred = time.perf_counter()
        rows = decode(maps, self.heads, net_w, net_h, self.threshold)
        result = postprocess(rows, box, self.threshold, self.nms_threshold, original_size)
        detections = [
            Detection(self.class_names[c], c, s, (x1, y1, x2, y2))
            for (x1, y1, x2, y2), s, c in zip(
                result.boxes.tolist(), result.scores.tolist(), result.classes.tolist()
            )
        ]
        done = time.perf_counter()
        self.last_timing = {
            "preprocess": (prepared - start) * 1000,
            "inference": (inferred - prepared) * 1000,
            "postprocess": (done - inferred) * 1000,
        }
        return detections


def read_names(path: str | Path) -> list[str]:
    """Return the class names, one per non-empty line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read class names {path}: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_weights_size(model: Darknet, weights_path: Path) -> None:
    """Fail like load_weights would, without reading the whole file (opencv engine only)."""
    try:
        size = weights_path.stat().st_size
        with weights_path.open("rb") as f:
            header = read_header(f.read(20))
    except OSError as exc:
        raise WeightsError(f"cannot read weights {weights_path}: {exc.strerror}") from None
    need = header.size + 4 * count_floats(model)
    if size != need:
        direction = "short" if size < need else "long"
        raise WeightsError(
            f"weights {weights_path} is {size} bytes but cfg {model.cfg.path} needs exactly "
            f"{need}: file too {direction}; is it the weights for this cfg?"
        )


def load_detector(
    cfg_path: str | Path,
    weights_path: str | Path,
    names_path: str | Path,
    *,
    engine: str = "auto",
    size: int = 0,
    threads: int = 0,
    threshold: float = 0.25,
    nms_threshold: float = 0.45,
    name: str | None = None,
    precision: str = "auto",
) -> Detector:
    """Build a detector from a darknet cfg + weights + names triple and run a warm-up inference.

    :param engine: "torch", "opencv", or "auto" (time both at load, keep the faster).
    :param size: network input size (multiple of 32); 0 takes width and height from the cfg.
    :param threads: intra-op threads for torch and OpenCV; 0 leaves their defaults (all cores).
    :param precision: torch engine: "fp32", "bf16", or "auto" (bf16 where the CPU has
        amx_bf16 or avx512_bf16, else fp32).
    :raise CfgError, WeightsError, ValueError: with a message naming the file and the problem.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if size and (size < 32 or size % 32):
        raise ValueError(f"size must be a positive multiple of 32, got {size}")
    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    cfg = parse_cfg(cfg_path)
    names = read_names(names_path)
    if len(names) != cfg.classes:
        raise ValueError(
            f"{names_path} has {len(names)} class names but {cfg_path} has classes={cfg.classes}"
        )
    if threads:
        import cv2

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    input_shape = (size, size) if size else (cfg.net.width, cfg.net.height)
    heads = []
    for index in cfg.yolo_indices:
        spec: Yolo = cfg.layers[index]
        heads.append(HeadSpec(spec.anchors, spec.classes, spec.scale_x_y))
    flag = bf16_flag()
    if precision == "auto":
        precision = "bf16" if flag else "fp32"
    started = time.perf_counter()
    candidates = []
    if engine in ("auto", "torch"):
        model = Darknet(cfg)
        load_weights(model, weights_path)
        candidates.append(TorchEngine(model, precision))
    if engine in ("auto", "opencv"):
        if not candidates:
            with torch.device("meta"):
                _check_weights_size(Darknet(cfg), weights_path)
        candidates.append(OpenCVEngine(cfg, cfg_path, weights_path))
    x, _ = letterbox(Image.new("RGB", input_shape, (127, 127, 127)), *input_shape)
    for candidate in candidates:
        for _ in range(WARMUP_RUNS):  # first runs allocate, create and cache kernels
            candidate(x)
    if len(candidates) == 1:
        chosen = candidates[0]
        reason = f"{chosen.label} as configured (engine={engine})"
    else:
        chosen, reason = choose(candidates, x)
    if chosen.name == "torch":
        if chosen.precision == "fp32":
            reason += f"; fp32 ({'bf16 not requested' if flag else 'no amx_bf16/avx512_bf16'})"
        else:
            reason += f"; bf16 convolutions (CPU flag {flag or 'missing: emulated, slow'})"
    candidates.clear()
    detector = Detector(
        name or cfg_path.stem,
        chosen,
        reason,
        heads,
        input_shape,
        names,
        threshold,
        nms_threshold,
    )
    detector.detect(Image.new("RGB", input_shape, (127, 127, 127)))  # end-to-end warm-up
    log.info(
        "loaded %s %dx%d in %.1f s: %s",
        detector.name,
        *input_shape,
        time.perf_counter() - started,
        reason,
    )
    return detector

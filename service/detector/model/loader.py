"""The Detector: a loaded model with its engine, and load_detector() that builds and warms it."""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import ENGINE_PRECISIONS
from ..config import ENGINES
from ..config import PRECISIONS
from ..detection import Detection
from ..machine import cpu_count
from . import choice_cache
from . import openvino_cache
from . import openvino_engine
from .builder import EngineBuilder
from .cfg import WeightsError
from .cfg import parse_cfg
from .engines import bf16_flag
from .engines import choose
from .engines import plan
from .postprocess import HeadSpec
from .postprocess import decode
from .postprocess import head_specs
from .postprocess import postprocess
from .preprocess import letterbox

log = logging.getLogger(__name__)


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

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
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


def default_threads(workers: int = 1) -> int:
    """Return intra-op threads per process: cores / workers, at least 1.

    More threads than that oversubscribe the cores: measured on a busy 2-core machine, torch
    with 2 threads per worker ran 3-6x slower than with 1.
    """
    return max(1, cpu_count() // max(1, workers))


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc malloc_trim)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


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
    workers: int = 1,
    memory_mb: int = 0,
    cache_dir: str | Path | None = None,
) -> Detector:
    """Build a detector from a darknet cfg + weights + names triple and run a warm-up inference.

    :param engine: "torch", "opencv", "openvino", or "auto": time every engine that runs the
        precision and whose `workers` copies fit in memory (engines.plan) and keep the fastest;
        the choice is cached beside the OpenVINO models, so later loads on this CPU model only
        load the winner (torch is imported only when the torch engine or a conversion needs it).
    :param size: network input size (multiple of 32); 0 takes width and height from the cfg.
    :param threads: intra-op threads of every engine; 0 = cores / workers (at least 1).
    :param precision: "fp32", "bf16", "int8" (openvino), or "auto" (bf16 where the CPU has
        amx_bf16 or avx512_bf16, else fp32).
    :param workers: processes that each load this model on this machine (memory and threads).
    :param memory_mb: RAM auto may plan with; 0 reads MemTotal (capped by a cgroup limit).
    :param cache_dir: prepared OpenVINO models; None = <weights dir>/.openvino.
    :raise CfgError, WeightsError, ValueError: with a message naming the file and the problem.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto" and precision not in ENGINE_PRECISIONS[engine]:
        raise ValueError(
            f"engine {engine} has no precision {precision!r}; it runs "
            f"{', '.join(ENGINE_PRECISIONS[engine])}"
        )
    if threads < 0:
        raise ValueError(f"threads must be 0 (cores / workers) or positive, got {threads}")
    if size and (size < 32 or size % 32):
        raise ValueError(f"size must be a positive multiple of 32, got {size}")
    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    cfg = parse_cfg(cfg_path)
    names = read_names(names_path)
    if len(names) != cfg.classes:
        raise ValueError(
            f"{names_path} has {len(names)} class names but {cfg_path} has classes={cfg.classes}"
        )
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    threads = threads or default_threads(workers)
    input_shape = (size, size) if size else (cfg.net.width, cfg.net.height)
    heads = head_specs(cfg)
    flag = bf16_flag()
    if precision == "auto":
        precision = "bf16" if flag and engine != "opencv" else "fp32"
    started = time.perf_counter()
    try:
        weights_bytes = weights_path.stat().st_size
    except OSError as exc:
        raise WeightsError(f"cannot read weights {weights_path}: {exc.strerror}") from None
    has_openvino = bool(openvino_cache.version())
    int8 = None
    if engine == "auto" and precision != "int8" and has_openvino:
        found = openvino_cache.prepare(cfg_path, weights_path, input_shape, "int8", cache_dir)
        if found is not None:
            int8 = (bool(found.gate and found.gate.passed), openvino_engine.gate_words(found.gate))
        del found
    specs, reason = plan(
        engine, precision, flag, weights_bytes, workers, memory_mb, has_openvino, int8
    )
    build = EngineBuilder(cfg, cfg_path, weights_path, input_shape, heads, flag, threads, cache_dir)
    x, _ = letterbox(Image.new("RGB", input_shape, (127, 127, 127)), *input_shape)
    chosen = None
    if len(specs) > 1:
        labels = [f"{kind}-{kind_precision}" for kind, kind_precision in specs]
        fields = choice_cache.choice_fields(cfg_path, weights_path, input_shape, labels, threads)
        path = choice_cache.choice_path(openvino_cache.cache_root(weights_path, cache_dir), fields)
        cached = choice_cache.read_choice(path, fields)
        if cached is not None:
            try:
                (chosen,), notes = build([specs[labels.index(cached["chosen"])]], False)
            except Exception as exc:  # the cached winner cannot load now: time them all again
                log.warning("cached auto choice %s failed to load (%s); timing all", path, exc)
            else:
                reason = f"{choice_cache.words(cached, path)}; {reason}{notes}"
    if chosen is None:
        candidates, notes = build(specs, engine == "auto")
        reason += notes
        if len(candidates) == 1:
            chosen = candidates[0]  # warmed up by the detect() below
        else:
            for candidate in candidates:
                candidate(x)  # the first run allocates, creates and caches kernels
            del candidate  # no reference may keep the loser alive
            chosen, timed, timings, rounds = choose(candidates, x, threads)
            reason = f"{timed}; {reason}"
            choice_cache.write_choice(path, fields, chosen.label, timings, rounds)
            candidates.clear()  # the loser's memory goes back to the OS
            release_memory()
    if chosen.precision == "fp32" and chosen.name != "opencv":
        reason += f"; fp32 ({'as configured' if flag else 'no amx_bf16/avx512_bf16'})"
    elif chosen.precision == "bf16":
        reason += f"; bf16 convolutions (CPU flag {flag or 'missing: emulated, slow'})"
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

"""Inference engines behind one call, engine(input) -> raw [yolo] maps, and the `auto` choice."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import sizing
from ..machine import memory_total_mb
from .cfg import Convolutional
from .cfg import ModelCfg

if TYPE_CHECKING:
    from .darknet import Darknet

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPUs with native bf16 dot products
# auto, when it has to measure: interleaved timed rounds after one warm-up run per engine.
AUTO_MIN_RUNS, AUTO_MAX_RUNS, AUTO_BUDGET_S = 2, 5, 2.0
# Within this of the fastest, OpenVINO wins: a worker serving it never imports torch (yolov3-416
# bf16, measured 2026-12-02: peak RSS 401 MB vs 595-753, warm start ~2 s vs 4-6 s), and timings
# this close on a busy machine are noise that the cached choice would otherwise keep.
AUTO_TIE = 0.10
# Peak RSS of a worker with the OpenCV engine, measured (bench/results.md, 1 thread):
# yolov3-tiny 554 MB (35 MB weights), yolov3-416 1960 MB, yolov3-608 2069 MB (248 MB weights):
# about 330 MB of process + 6.6 x the weights file (cv2.dnn keeps several copies and
# workspace). auto only tries OpenCV when every worker can hold this plus the torch model.
OPENCV_BASE_MB, OPENCV_PER_WEIGHTS_MB = 330, 6.6
RESERVE_MB = sizing.RESERVE_MB  # left to the OS, nginx and the gunicorn master (one rule)
# Peak RSS of a worker with the OpenVINO engine from a warm cache, load_detector + a 640x480
# warm-up (OpenVINO 2026.4, random yolov3 weights of 248 MB, 416), measured when torch was
# imported too: fp32 973 MB, bf16 728 MB (the IR holds fp16 weights). That is ~250 MB of process
# plus the IR's constants (mmap), the CPU plugin's repacked copy and the pre/post-processing: fp32
# 3.1 x the weights file, bf16 2.0 x. int8 (not measured) keeps a quarter of fp32's weights:
# bf16's bound. Kept as the bound of auto's timing start (torch and OpenVINO both loaded); a
# worker that serves OpenVINO alone (cached choice or pinned: no torch) measured 2026-12-02, VmHWM:
# yolov3-416 bf16 401-405 MB, fp32 648 MB; yolov3-tiny bf16 174-177 MB, fp32 211 MB.
OPENVINO_BASE_MB = 250
OPENVINO_PER_WEIGHTS = {"fp32": 3.1, "bf16": 2.0, "int8": 2.0}


def cpu_flags() -> set[str]:
    """Return the CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_flag(flags: set[str] | None = None) -> str | None:
    """Return the CPU flag that makes bf16 convolutions worthwhile, or None."""
    flags = cpu_flags() if flags is None else flags
    return next((flag for flag in BF16_FLAGS if flag in flags), None)


def opencv_footprint_mb(weights_bytes: int) -> int:
    """Return the estimated peak RSS of one worker running the OpenCV engine on these weights."""
    return round(OPENCV_BASE_MB + OPENCV_PER_WEIGHTS_MB * weights_bytes / 2**20)


def opencv_fits(weights_bytes: int, workers: int, memory_mb: int = 0) -> tuple[bool, str]:
    """Return whether `workers` processes can each try OpenCV next to the torch model, and why.

    :param memory_mb: RAM to plan for; 0 reads MemTotal (or the cgroup limit).
    """
    total = memory_mb or memory_total_mb()
    if not total:
        return True, "memory size unknown"
    need = opencv_footprint_mb(weights_bytes) + round(weights_bytes / 2**20)
    budget = total - RESERVE_MB
    words = (
        f"{workers} worker(s) x ~{need} MB (OpenCV ~{opencv_footprint_mb(weights_bytes)} MB "
        f"+ torch weights) vs {budget} MB ({total} MB RAM - {RESERVE_MB} MB reserve)"
    )
    return workers * need <= budget, words


def openvino_footprint_mb(weights_bytes: int, precision: str) -> int:
    """Return the estimated peak RSS of one worker running the OpenVINO engine (warm cache)."""
    return round(OPENVINO_BASE_MB + OPENVINO_PER_WEIGHTS[precision] * weights_bytes / 2**20)


def openvino_fits(
    weights_bytes: int, workers: int, precision: str, memory_mb: int = 0
) -> tuple[bool, str]:
    """Return whether `workers` processes can each try OpenVINO next to the torch model, and why."""
    total = memory_mb or memory_total_mb()
    if not total:
        return True, "memory size unknown"
    torch_mb = round(weights_bytes / 2**20 / (2 if precision == "bf16" else 1))
    engine_mb = openvino_footprint_mb(weights_bytes, precision)
    budget = total - RESERVE_MB
    words = (
        f"{workers} worker(s) x ~{engine_mb + torch_mb} MB (OpenVINO-{precision} ~{engine_mb} MB "
        f"+ torch weights) vs {budget} MB ({total} MB RAM - {RESERVE_MB} MB reserve)"
    )
    return workers * (engine_mb + torch_mb) <= budget, words


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo ("unknown" where it does not say)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class TorchEngine:
    """Darknet in torch: batch norm folded into convs, channels_last, inference_mode, fp32/bf16.

    Pass a model loaded with weights.load_fused (already folded, channels_last, in the target
    dtype: nothing is copied here); an unfused model is folded and converted, with copies.
    Takes and returns numpy arrays like every engine (torch stays inside).
    """

    name = "torch"

    def __init__(self, model: Darknet, precision: str = "fp32") -> None:
        import torch

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = model.fuse().eval().to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.to(self.dtype)

    @property
    def label(self) -> str:
        """Return the engine name with its precision, for logs and reports."""
        return f"torch-{self.precision}"

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(x, dtype=np.float32))
            x = x.to(dtype=self.dtype, memory_format=torch.channels_last)  # one copy
            return [m.float().numpy() for m in self.model(x)]


class OpenCVEngine:
    """OpenCV's darknet importer (cv2.dnn) on the same cfg + weights, returning the same maps."""

    name = "opencv"
    label = "opencv"
    precision = "fp32"

    def __init__(self, cfg: ModelCfg, cfg_path: str | Path, weights_path: str | Path) -> None:
        import cv2

        self.net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        # The raw maps are the outputs of the convs feeding the [yolo] layers (named conv_<i>).
        self.outputs = []
        for index in cfg.yolo_indices:
            if not isinstance(cfg.layers[index - 1], Convolutional):
                raise ValueError(f"{cfg.path}: layer {index - 1} before a [yolo] must be a conv")
            self.outputs.append(f"conv_{index - 1}")
        missing = set(self.outputs) - set(self.net.getLayerNames())
        if missing:
            raise ValueError(f"OpenCV's darknet net has no layer {sorted(missing)}")
        self._lock = threading.Lock()  # a cv2.dnn.Net is not safe to run from two threads

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        blob = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            self.net.setInput(blob)
            maps = self.net.forward(self.outputs)
        return [np.array(m) for m in maps]


def pick(names: list[str], labels: list[str], best_ms: list[float]) -> tuple[int, str]:
    """Return the index auto takes and why: the fastest, or OpenVINO in a tie (AUTO_TIE)."""
    fastest = min(range(len(best_ms)), key=best_ms.__getitem__)
    if names[fastest] == "openvino":
        return fastest, "was fastest at load"
    near = [
        i
        for i, name in enumerate(names)
        if name == "openvino" and best_ms[i] <= best_ms[fastest] * (1 + AUTO_TIE)
    ]
    if not near:
        return fastest, "was fastest at load"
    winner = min(near, key=best_ms.__getitem__)
    return winner, (
        f"was within {AUTO_TIE:.0%} of the fastest, {labels[fastest]}, at load: OpenVINO wins a "
        "tie (its workers load no torch)"
    )


def choose(candidates: list, x: np.ndarray, threads: int) -> tuple[object, str, dict, int]:
    """Time the warmed-up candidates on `x`: (fastest, why in words, best ms by label, rounds).

    Runs are interleaved (A, B, A, B, ...) and each engine keeps its best time, so a burst of
    load from other processes on a shared machine does not decide the choice: at least
    AUTO_MIN_RUNS rounds, more (up to AUTO_MAX_RUNS) while within AUTO_BUDGET_S.
    """
    best_ms = [float("inf")] * len(candidates)
    started = time.perf_counter()
    rounds = 0
    while rounds < AUTO_MIN_RUNS or (
        rounds < AUTO_MAX_RUNS and time.perf_counter() - started < AUTO_BUDGET_S
    ):
        for i, engine in enumerate(candidates):
            start = time.perf_counter()
            engine(x)
            best_ms[i] = min(best_ms[i], (time.perf_counter() - start) * 1000)
        rounds += 1
    winner, verdict = pick([e.name for e in candidates], [e.label for e in candidates], best_ms)
    measured = ", ".join(f"{e.label} {ms:.0f} ms" for e, ms in zip(candidates, best_ms))
    size = f"{x.shape[3]}x{x.shape[2]}"
    reason = (
        f"auto: {candidates[winner].label} {verdict} ({measured}; best of {rounds} "
        f"interleaved runs at {size}, {threads} threads)"
    )
    timings = {e.label: round(ms, 1) for e, ms in zip(candidates, best_ms)}
    return candidates[winner], reason, timings, rounds


def plan(
    engine: str,
    precision: str,
    flag: str | None,
    weights_bytes: int,
    workers: int,
    memory_mb: int = 0,
    openvino: bool = True,
    int8: tuple[bool, str] | None = None,
) -> tuple[list[tuple[str, str]], str]:
    """Return the (engine, precision) candidates to build and time, and why these.

    `precision` is resolved (no "auto"); `openvino`: whether OpenVINO is importable; `int8`:
    (passed, reason) of a prepared int8 model's accuracy gate, None when none is prepared. A
    pinned engine is the only candidate; auto tries torch, OpenVINO where installed and where
    its workers fit in memory (int8 too where its gate passed), and OpenCV (fp32 only) where
    its workers fit.
    """
    if engine != "auto":
        return [(engine, precision)], f"{engine}-{precision} as configured (engine={engine})"
    if precision == "int8":
        if not openvino:
            raise ValueError("precision int8 needs the openvino engine: pip install openvino")
        return [("openvino", "int8")], "auto: openvino-int8, the only engine with int8"
    candidates = [("torch", precision)]
    notes = []
    if openvino:
        fits, words = openvino_fits(weights_bytes, workers, precision, memory_mb)
        if fits:
            candidates.append(("openvino", precision))
        notes.append(f"OpenVINO {'fits' if fits else 'not tried'}: {words}")
        if int8 is None:
            notes.append("no int8 model prepared (detector prepare)")
        elif not int8[0]:
            notes.append(f"int8 not tried: its gate {int8[1]}")
        elif openvino_fits(weights_bytes, workers, "int8", memory_mb)[0]:
            candidates.append(("openvino", "int8"))
            notes.append(f"int8 gate {int8[1]}")
    elif flag and precision == "bf16":
        return candidates, "auto: torch-bf16 chosen by CPU flag, not timed (OpenVINO not installed)"
    else:
        notes.append("OpenVINO not installed")
    if precision == "fp32":
        fits, words = opencv_fits(weights_bytes, workers, memory_mb)
        if fits:
            candidates.append(("opencv", "fp32"))
        notes.append(f"OpenCV {'fits' if fits else 'not tried'}: {words}")
    else:
        notes.append(f"OpenCV not tried: it has no {precision}")
    if len(candidates) == 1:
        return candidates, f"auto: torch-{precision}, the only candidate ({'; '.join(notes)})"
    return candidates, "; ".join(notes)

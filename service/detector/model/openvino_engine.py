"""The OpenVINO engine: the fused darknet model converted by OpenVINO, run on the CPU plugin."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from . import openvino_cache

PRECISIONS = ("fp32", "bf16", "int8")
HINTS = {"fp32": "f32", "bf16": "bf16"}  # INFERENCE_PRECISION_HINT; int8 runs as quantized


class OpenVINOEngine:
    """An OpenVINO compiled model behind engine(x) -> raw [yolo] maps (fp32 numpy arrays).

    One compiled model and one InferRequest behind a lock: the request threads of a worker take
    turns. Measured (yolov3-tiny bf16 at 416, 2 threads, 3 callers x 10 calls, loaded 2-core
    machine): a lock 40-46 calls/s, p50 63-65 ms; an InferRequest per thread 29-31 calls/s,
    p50 77-84 ms (concurrent requests oversubscribe the cores).
    """

    name = "openvino"

    def __init__(self, model, precision: str = "fp32", threads: int = 1) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,  # several workers share the cores: no fixed core each
        }
        if precision in HINTS:
            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.outputs = list(self.compiled.outputs)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        """Return the engine name with its precision, for logs and reports."""
        return f"openvino-{self.precision}"

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        data = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            result = self._request.infer({0: data})  # copies the outputs out of the request
        return [result[out] for out in self.outputs]


def gate_words(report) -> str:
    """Return a gate report's verdict in words (a missing report has not passed)."""
    return report.reason if report is not None else "report missing or unreadable"


def load_engine(cfg_path, weights_path, input_shape, heads, precision, flag, threads, cache, build):
    """Return (OpenVINOEngine, how its model was obtained): cached, converted or quantized.

    :param build: callable returning the fused fp32 torch model, for a conversion.
    :param cache: cache root; None = <weights dir>/.openvino.
    """
    engine_cls = OpenVINOEngine
    if precision == "bf16" and not flag:
        raise ValueError(
            "openvino bf16 needs a CPU with amx_bf16 or avx512_bf16 and this one has neither; "
            "set precision fp32"
        )

    def quantize(fp32):
        from .quantize import quantize_and_gate

        reference = engine_cls(fp32, "fp32", threads)
        compile_int8 = lambda model: engine_cls(model, "int8", threads)  # noqa: E731
        return quantize_and_gate(fp32, reference, compile_int8, heads, input_shape)

    prepared = openvino_cache.prepare(
        cfg_path,
        weights_path,
        input_shape,
        precision,
        cache,
        build=build,
        quantize=quantize,
    )
    if precision == "int8" and not (prepared.gate and prepared.gate.passed):
        raise ValueError(
            f"the int8 model ({prepared.how}) did not pass its accuracy gate: "
            f"{gate_words(prepared.gate)}; set precision bf16 or fp32"
        )
    return engine_cls(prepared.model, precision, threads), prepared.how


def prepare_models(
    cfg_path: str | Path,
    weights_path: str | Path,
    size: int,
    precisions: list[str],
    cache_dir: str | Path | None = None,
    threads: int = 1,
) -> list[tuple[str, str, bool]]:
    """Build (or verify) the cache entries of `precisions` and compile each once.

    :return: (label, how it was obtained or why it cannot be used, whether it was built now).
    """
    from .builder import EngineBuilder
    from .cfg import parse_cfg
    from .engines import bf16_flag
    from .postprocess import head_specs

    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    cfg = parse_cfg(cfg_path)
    input_shape = (size, size) if size else (cfg.net.width, cfg.net.height)
    heads, flag = head_specs(cfg), bf16_flag()
    builder = EngineBuilder(
        cfg, cfg_path, weights_path, input_shape, heads, flag, threads, cache_dir
    )

    def build():  # a cache miss only: torch and the darknet module load here
        return builder.fused("fp32")

    done = []
    for precision in precisions:
        label = f"openvino-{precision}"
        try:
            engine, how = load_engine(
                cfg_path,
                weights_path,
                input_shape,
                heads,
                precision,
                flag,
                threads,
                cache_dir,
                build,
            )
        except ValueError as exc:  # a rejected int8 gate, bf16 on a CPU without it
            done.append((label, f"not usable: {exc}", "quantized in" in str(exc)))
            continue
        del engine
        done.append((label, how, not how.startswith("cached")))
    return done

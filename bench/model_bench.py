"""Model benchmark: this project's engines vs OpenCV DNN and OpenVINO used directly, interleaved.

Every row is its own process (so its peak RSS is its own), loaded one after the other; then the
rows of a model take turns, one end-to-end run each per round, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports torch (the rows, random weights, the header): detector.model sets
# OMP_WAIT_POLICY=PASSIVE, which libgomp reads only once, when torch loads.
from detector.model import openmp

from bench import pipelines
from bench.report import render

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "service" / "detector" / "data"
# Kept between runs (weights/ is git-ignored): random weights, so the engines' caches (ours in
# <weights dir>/.openvino, the peers' IR) stay valid and a second run skips every conversion.
BENCH_DIR = ROOT / "weights" / ".bench"
QUICK_ENV = "BENCH_QUICK"  # set to 1: yolov3-tiny and yolov3-416 only, 3 rounds, no 12 MP
FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_FLAGS = {"amx_bf16", "avx512_bf16"}
MODELS = {  # label -> (cfg, input size, weights: "real" from weights/ or "random")
    "yolov3-tiny-416": ("yolov3-tiny.cfg", 416, "real"),
    "yolov3-416": ("yolov3.cfg", 416, "random"),
    "yolov3-608": ("yolov3.cfg", 608, "random"),
}
LOAD_TIMEOUT_S = 900  # NNCF quantization of yolov3-608 on 2 busy cores included
RUN_TIMEOUT_S = 120


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    """Return the CPU feature flags from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_rows(flags: set[str], engine_precisions: dict) -> list[str]:
    """Rows for this CPU: each engine and precision of ours, auto, then the peers.

    The plain torch port ("torch-unfused") is not among them (ask for it with --rows).

    bf16 rows only where the CPU computes bf16 natively (emulated bf16 is many times slower and
    OpenVINO ignores the hint there). `engine_precisions`: what load_detector runs, per engine.
    """
    bf16 = bool(BF16_FLAGS & flags)
    rows = []
    for engine in ("openvino", "torch", "opencv"):  # openvino first: it builds the cache auto reads
        for precision in engine_precisions.get(engine, ()):
            if bf16 or precision != "bf16":
                rows.append(f"{engine}-{precision}")
    rows += ["auto", "opencv-dnn-direct"]
    rows += [f"ov-direct-{p}" for p in ("fp32", "bf16", "int8") if bf16 or p != "bf16"]
    return rows


def engine_precisions() -> dict:
    """Engine -> precisions this project's load_detector runs (config.ENGINE_PRECISIONS)."""
    from detector import config

    known = getattr(config, "ENGINE_PRECISIONS", None)
    if known is None:  # before the openvino engine: torch fp32/bf16 and opencv fp32
        known = {"torch": ("fp32", "bf16"), "opencv": ("fp32",)}
    return {engine: tuple(p) for engine, p in known.items() if engine != "auto"}


def make_jpegs(folder: Path) -> dict[str, Path]:
    """Write a 12 MP and a 1 MP JPEG of one photo (scikit-image's coffee, plus sensor noise)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    photo = Image.fromarray(data.coffee())
    paths = {}
    for key, size in (("1MP", (1155, 866)), ("12MP", (4000, 3000))):
        big = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)
        paths[key] = folder / f"photo-{key}.jpg"
        Image.fromarray(noisy).save(paths[key], quality=90)
    return paths


def peak_rss_mb() -> int:
    """Return this process's peak resident set size (VmHWM: not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    import resource  # not Linux: ru_maxrss may include the parent's peak before exec

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# ---------------------------------------------------------------- worker side (one per row)


def worker(spec: dict) -> None:
    """Load one row, warm up, then answer commands on stdin: "1MP"/"12MP" (one run) or "end"."""
    proto = os.fdopen(os.dup(1), "w")  # the protocol's own stdout; libraries' prints go to stderr
    os.dup2(2, 1)
    if openmp.TORCH_LOADED_FIRST:
        raise RuntimeError("torch was imported before detector.model: OMP_WAIT_POLICY not set")
    started = time.perf_counter()
    try:
        run, engine, reason = pipelines.build(spec)
    except Exception as exc:  # the row cannot run here (e.g. int8 refused by its gate): say why
        proto.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        proto.flush()
        raise
    load_s = time.perf_counter() - started
    images = {k: Path(v).read_bytes() for k, v in spec["images"].items()}
    for _ in range(spec["warmup"]):
        run(images["1MP"])
    ready = {"engine": engine, "reason": reason, "load_s": round(load_s, 2)}
    proto.write(json.dumps(ready) + "\n")
    proto.flush()
    for command in sys.stdin:
        key = command.strip()
        if key == "end":
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        forward = run(images[key])
        cpu = time.process_time() - start_cpu
        reply = {"wall": time.perf_counter() - start, "cpu": cpu, "forward": forward}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
    proto.write(json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")
    proto.flush()


# ---------------------------------------------------------------- parent side


class Row:
    """One row's worker process and the samples it returned."""

    def __init__(self, spec: dict, log) -> None:
        self.spec = spec
        self.result: dict = {"row": spec["row"], "model": spec["label"]}
        self.samples: dict[str, list[dict]] = {"1MP": [], "12MP": []}
        cmd = [sys.executable, "-m", "bench.model_bench", "--worker", json.dumps(spec)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            bufsize=0,  # unbuffered: select() sees every line the worker writes
        )
        self.log = log

    def _reply(self, timeout: float) -> dict:
        """Read one JSON line from the worker, failing after `timeout` seconds."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            try:
                self.process.wait(10)  # it may be exiting after a failure: report its own code
            except subprocess.TimeoutExpired:
                pass
            self.stop()
            raise RuntimeError(f"no answer (exit {self.process.returncode}); see {self.log.name}")
        return json.loads(line)

    def wait_ready(self) -> None:
        """Wait until the row is loaded and warm; record its load time, engine and reason."""
        try:
            self.result.update(self._reply(LOAD_TIMEOUT_S))
        except (RuntimeError, json.JSONDecodeError) as exc:
            self.result["error"] = str(exc)

    def run(self, key: str) -> None:
        """Time one end-to-end run on the `key` photo."""
        if "error" in self.result:
            return
        try:
            self.process.stdin.write(f"{key}\n".encode())
            self.process.stdin.flush()
            self.samples[key].append(self._reply(RUN_TIMEOUT_S))
        except (OSError, RuntimeError, json.JSONDecodeError) as exc:
            self.result["error"] = str(exc)

    def finish(self) -> dict:
        """End the worker, record its peak RSS and return the row's result with its samples."""
        if "error" not in self.result:
            try:
                self.process.stdin.write(b"end\n")
                self.process.stdin.flush()
                self.result.update(self._reply(RUN_TIMEOUT_S))
            except (OSError, RuntimeError, json.JSONDecodeError) as exc:
                self.result["error"] = str(exc)
        self.stop()
        self.result["samples"] = self.samples
        return self.result

    def stop(self) -> None:
        """Stop the worker by PID (it is our child)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if not pipe.closed:
                pipe.close()


def bench_model(specs: list[dict], rounds: int, rounds_12mp: int, log) -> list[dict]:
    """Load every row of one model in turn, then interleave their timed runs round by round."""
    rows = []
    for spec in specs:
        print(f"bench: {spec['label']} {spec['row']} loading ...", file=sys.stderr, flush=True)
        if spec["row"].startswith(("openvino", "ov-direct")):  # convert/quantize once, untimed
            prepare = Row({**spec, "warmup": 0}, log)
            prepare.wait_ready()
            prepare.finish()
        row = Row(spec, log)
        row.wait_ready()
        rows.append(row)
    for key, count in (("1MP", rounds), ("12MP", rounds_12mp)):
        for index in range(count):
            shift = index % len(rows)  # each row takes each position in turn
            for row in rows[shift:] + rows[:shift]:
                row.run(key)
    return [row.finish() for row in rows]


def build_parser() -> argparse.ArgumentParser:
    """Options of the model benchmark."""
    quick = os.environ.get(QUICK_ENV) == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.model_bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3 if quick else 5, help="1 MP rounds")
    parser.add_argument("--rounds-12mp", type=int, default=0 if quick else 1, help="12 MP rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per row after load")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads per row (all cores)"
    )
    models = list(MODELS)[:2] if quick else list(MODELS)
    parser.add_argument("--models", default=",".join(models), help="comma-separated subset")
    parser.add_argument("--rows", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> str:
    """Run the model benchmark and return its markdown report."""
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return ""
    import cv2
    import openvino
    import torch
    from detector.model.random_weights import write_random_weights

    flags = cpu_flags()
    rows = [r for r in args.rows.split(",") if r] or default_rows(flags, engine_precisions())
    header = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; flags: "
        + (", ".join(f for f in FLAGS_SHOWN if f in flags) or "none of " + ", ".join(FLAGS_SHOWN)),
        f"torch {torch.__version__}, OpenCV {cv2.__version__}, OpenVINO {openvino.get_version()}; "
        f"{args.threads} threads per row; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"{args.rounds} interleaved rounds (1 MP) and {args.rounds_12mp} (12 MP) after "
        f"{args.warmup} warm-up runs; load average at start "
        + " ".join(f"{v:.1f}" for v in os.getloadavg()),
    ]
    results = []
    log_file = tempfile.NamedTemporaryFile("w", prefix="model-bench-", suffix=".log", delete=False)
    with tempfile.TemporaryDirectory(prefix="detector-bench-") as tmp, log_file as log:
        images = {k: str(v) for k, v in make_jpegs(Path(tmp)).items()}
        for label in [m for m in args.models.split(",") if m]:
            cfg_name, size, source = MODELS[label]
            cfg = DATA / cfg_name
            if source == "real":
                weights = ROOT / "weights" / "yolov3-tiny.weights"
                if not weights.is_file():
                    raise SystemExit(f"{weights} is missing; run `make weights` first")
            else:
                weights = BENCH_DIR / f"{cfg.stem}-random.weights"
                if not weights.exists():
                    BENCH_DIR.mkdir(parents=True, exist_ok=True)
                    write_random_weights(cfg, weights)
            common = {
                "label": label,
                "model": cfg.stem,
                "cfg": str(cfg),
                "weights": str(weights),
                "names": str(DATA / "coco.names"),
                "size": size,
                "threads": args.threads,
                "warmup": args.warmup,
                "images": images,
                "cache_dir": str(BENCH_DIR / "openvino-direct"),
            }
            specs = [{**common, "row": row} for row in rows]
            results += bench_model(specs, args.rounds, args.rounds_12mp, log)
    return render(results, header)


if __name__ == "__main__":
    print(main(), end="")

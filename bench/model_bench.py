"""Model benchmark: this project's engines vs OpenCV DNN and unfused torch, one process per row."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports torch (this module's rows, random_weights, the header): detector.model
# sets OMP_WAIT_POLICY=PASSIVE, which libgomp reads only once, when torch loads.
from detector.model import openmp

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "service" / "detector" / "data"
FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
MODELS = {  # label -> (cfg, input size, weights: "real" from weights/ or "random")
    "yolov3-tiny-416": ("yolov3-tiny.cfg", 416, "real"),
    "yolov3-416": ("yolov3.cfg", 416, "random"),
    "yolov3-608": ("yolov3.cfg", 608, "random"),
}
ROWS = ("torch-fp32", "torch-bf16", "opencv", "auto", "opencv-dnn-direct", "torch-unfused")
ROW_LABELS = {
    "torch-fp32": "detector torch fp32 (BN folded, channels_last)",
    "torch-bf16": "detector torch bf16 convs",
    "opencv": "detector opencv engine",
    "auto": "detector auto",
    "opencv-dnn-direct": "OpenCV DNN directly (cv2 decode + blob + NMSBoxes)",
    "torch-unfused": "torch fp32 unfused (BN layers, NCHW, full decode)",
}


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


def make_jpegs(folder: Path) -> dict[str, Path]:
    """Write a 12 MP and a 1 MP JPEG of one photo (scikit-image's coffee, plus sensor noise)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    photo = Image.fromarray(data.coffee())
    paths = {}
    for label, size in (("1MP", (1155, 866)), ("12MP", (4000, 3000))):
        big = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)
        paths[label] = folder / f"photo-{label}.jpg"
        Image.fromarray(noisy).save(paths[label], quality=90)
    return paths


def random_weights(cfg_path: Path, out: Path) -> None:
    """Write seeded random weights of realistic scale whose heads predict (almost) nothing."""
    import torch
    from detector.model.cfg import parse_cfg
    from detector.model.darknet import Darknet
    from detector.model.weights import write_weights

    torch.manual_seed(0)
    model = Darknet(parse_cfg(cfg_path))
    with torch.no_grad():
        for block in model.conv_blocks():
            weight = block.conv.weight
            fan_in = weight[0].numel()
            weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            if block.bn is None:  # a head: tiny weights, objectness bias far below threshold
                weight.mul_(0.01)
                block.conv.bias.fill_(-6.0)
            else:
                block.bn.weight.uniform_(0.5, 1.0)
                block.bn.bias.normal_(0.0, 0.1)
                block.bn.running_mean.normal_(0.0, 0.1)
                block.bn.running_var.uniform_(1.0, 4.0)
    write_weights(model, out)


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 1)


# ---------------------------------------------------------------- worker side (one per row)


def _project_pipeline(spec: dict, row: str):
    """Load this project's detector; return (run(jpeg) -> forward seconds, engine label)."""
    from detector import imaging
    from detector.model import load_detector

    engine, precision = {
        "torch-fp32": ("torch", "fp32"),
        "torch-bf16": ("torch", "bf16"),
        "opencv": ("opencv", "fp32"),
        "auto": ("auto", "auto"),
    }[row]
    det = load_detector(
        spec["cfg"],
        spec["weights"],
        spec["names"],
        engine=engine,
        precision=precision,
        size=spec["size"],
        threads=spec["threads"],
        name=spec["model"],
    )

    def run(data: bytes) -> float:
        decoded = imaging.decode_image(data, max_pixels=200_000_000, target=det.input_size)
        det.detect(decoded.image, original_size=decoded.size)
        return det.last_timing["inference"] / 1000

    label = f"{det.engine}-{det.precision}" if det.engine == "torch" else det.engine
    return run, label, det.engine_reason


def _unfused_pipeline(spec: dict):
    """A straightforward torch port: full decode, BN as separate layers, NCHW fp32, no_grad."""
    import torch
    from detector.model.cfg import parse_cfg
    from detector.model.darknet import Darknet
    from detector.model.postprocess import HeadSpec
    from detector.model.postprocess import decode
    from detector.model.postprocess import postprocess
    from detector.model.preprocess import letterbox
    from detector.model.weights import load_weights
    from PIL import Image
    from PIL import ImageOps

    torch.set_num_threads(spec["threads"])
    cfg = parse_cfg(spec["cfg"])
    model = Darknet(cfg).eval()
    load_weights(model, spec["weights"])
    heads = [HeadSpec(cfg.layers[i].anchors, cfg.layers[i].classes) for i in cfg.yolo_indices]
    size = spec["size"]

    def run(data: bytes) -> float:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        x, box = letterbox(image, size, size)
        x = x.contiguous()  # plain NCHW
        start = time.perf_counter()
        with torch.no_grad():
            maps = model(x)
        forward = time.perf_counter() - start
        postprocess(decode(maps, heads, size, size), box, 0.25, 0.45)
        return forward

    return run


def _opencv_pipeline(spec: dict):
    """OpenCV DNN as its tutorials use it: imdecode, letterbox, blobFromImage, NMSBoxesBatched."""
    import cv2
    import numpy as np

    cv2.setNumThreads(spec["threads"])
    net = cv2.dnn.readNetFromDarknet(spec["cfg"], spec["weights"])
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    outputs = net.getUnconnectedOutLayersNames()
    size = spec["size"]

    def run(data: bytes) -> float:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        scale = min(size / w, size / h)
        nw, nh = int(w * scale), int(h * scale)
        dx, dy = (size - nw) // 2, (size - nh) // 2
        canvas = np.full((size, size, 3), 127, np.uint8)
        canvas[dy : dy + nh, dx : dx + nw] = cv2.resize(image, (nw, nh))
        blob = cv2.dnn.blobFromImage(canvas, 1 / 255.0, (size, size), swapRB=True, crop=False)
        start = time.perf_counter()
        net.setInput(blob)
        rows = np.concatenate(net.forward(outputs))
        forward = time.perf_counter() - start
        scores = rows[:, 5:]
        classes = scores.argmax(1)
        best = scores[np.arange(len(rows)), classes]
        keep = best > 0.25
        xywh = rows[keep, :4] * size
        xywh[:, 0] = (xywh[:, 0] - xywh[:, 2] / 2 - dx) / scale
        xywh[:, 1] = (xywh[:, 1] - xywh[:, 3] / 2 - dy) / scale
        xywh[:, 2:] /= scale
        cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), best[keep].tolist(), classes[keep].tolist(), 0.25, 0.45
        )
        return forward

    return run


def peak_rss_mb() -> int:
    """Return this process's peak resident set size (VmHWM: not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    import resource  # not Linux: ru_maxrss may include the parent's peak before exec

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def worker(spec: dict) -> dict:
    """Load one row's pipeline, warm up, time it on both JPEGs, report medians and peak RSS."""
    if openmp.TORCH_LOADED_FIRST:
        raise RuntimeError("torch was imported before detector.model: OMP_WAIT_POLICY not set")
    started = time.perf_counter()
    reason = ""
    row = spec["row"]
    if row == "opencv-dnn-direct":
        run, label = _opencv_pipeline(spec), "opencv-dnn"
    elif row == "torch-unfused":
        run, label = _unfused_pipeline(spec), "torch-unfused"
    else:
        run, label, reason = _project_pipeline(spec, row)
    load_s = time.perf_counter() - started
    images = {k: Path(v).read_bytes() for k, v in spec["images"].items()}
    result = {"row": row, "model": spec["label"], "engine": label, "reason": reason}
    result["load_s"] = round(load_s, 2)
    for _ in range(spec["warmup"]):
        run(images["1MP"])
    forward = []
    for key, runs in (("1MP", spec["runs"]), ("12MP", spec["runs_12mp"])):
        wall, cpu = [], []
        for _ in range(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            forward.append(run(images[key]))
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start)
        result[f"e2e_{key}_ms"] = _median_ms(wall)
        result[f"cpu_{key}_ms"] = _median_ms(cpu)
    result["forward_ms"] = _median_ms(forward)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# ---------------------------------------------------------------- parent side


def _run_worker(spec: dict, timeout: float) -> dict:
    """Run one row in a fresh interpreter (so its peak RSS is its own) and parse its JSON."""
    cmd = [sys.executable, "-m", "bench.model_bench", "--worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"row": spec["row"], "model": spec["label"], "error": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(results: list[dict], header: list[str]) -> str:
    """Return the markdown report: header lines, then one table."""
    lines = [f"- {line}" for line in header] + [""]
    lines.append(
        "| model | implementation | engine | load s | forward ms | 1 MP e2e ms | 1 MP e2e CPU ms "
        "| 12 MP e2e CPU ms | 12 MP − 1 MP CPU ms | CPU vs OpenCV DNN | peak RSS MB |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = {r["model"]: r.get("cpu_1MP_ms") for r in results if r["row"] == "opencv-dnn-direct"}
    for r in results:
        label = ROW_LABELS[r["row"]]
        if "error" in r:
            lines.append(f"| {r['model']} | {label} | failed: {r['error'][:80]} |||||||||")
            continue
        cpu = r["cpu_1MP_ms"]
        ratio = f"{cpu / base[r['model']]:.2f}×" if base.get(r["model"]) else "–"
        extra = round(r["cpu_12MP_ms"] - cpu, 1)
        lines.append(
            f"| {r['model']} | {label} | {r['engine']} | {r['load_s']:g} | {r['forward_ms']:g} "
            f"| {r['e2e_1MP_ms']:g} | {cpu:g} | {r['cpu_12MP_ms']:g} | {extra:+g} | {ratio} "
            f"| {r['peak_rss_mb']} |"
        )
    autos = [r for r in results if r["row"] == "auto" and r.get("reason")]
    if autos:
        lines.append("")
        lines.extend(f"- {r['model']}: {r['reason']}" for r in autos)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Run the model benchmark and return its markdown report."""
    parser = argparse.ArgumentParser(prog="python -m bench.model_bench")
    parser.add_argument("--runs", type=int, default=20, help="timed 1 MP runs (default 20)")
    parser.add_argument("--runs-12mp", type=int, default=5, help="timed 12 MP runs (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per process (default 1: one worker per core, as the service runs)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return ""
    flags = cpu_flags()
    rows = [r for r in args.rows.split(",") if r]
    if "torch-bf16" in rows and not ({"amx_bf16", "avx512_bf16"} & flags):
        rows.remove("torch-bf16")  # emulated bf16 is many times slower: not a real option
    import cv2
    import torch

    header = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; flags: "
        + (", ".join(f for f in FLAGS_SHOWN if f in flags) or "none of " + ", ".join(FLAGS_SHOWN)),
        f"torch {torch.__version__}, OpenCV {cv2.__version__}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"median of {args.runs} runs (1 MP) and {args.runs_12mp} (12 MP) after {args.warmup} "
        "warm-up; load average at start " + " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "e2e = JPEG bytes → decode (JPEG draft for this project) → letterbox → forward → "
        "decode + NMS, as wall time and as process CPU time (with 1 thread the CPU time is what "
        "the work costs even when other jobs share the cores; ratios use it); "
        "photo: scikit-image coffee at 1155x866 (1 MP) and 4000x3000 (12 MP); "
        "yolov3 uses seeded random weights (timing only).",
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="detector-bench-") as tmp:
        images = {k: str(v) for k, v in make_jpegs(Path(tmp)).items()}
        for label in [m for m in args.models.split(",") if m]:
            cfg_name, size, source = MODELS[label]
            cfg = DATA / cfg_name
            if source == "real":
                weights = ROOT / "weights" / "yolov3-tiny.weights"
                if not weights.is_file():
                    raise SystemExit(f"{weights} is missing; run `make weights` first")
            else:
                weights = Path(tmp) / f"{cfg.stem}-random.weights"
                if not weights.exists():
                    random_weights(cfg, weights)
            for row in rows:
                spec = {
                    "label": label,
                    "model": cfg.stem,
                    "row": row,
                    "cfg": str(cfg),
                    "weights": str(weights),
                    "names": str(DATA / "coco.names"),
                    "size": size,
                    "threads": args.threads,
                    "runs": args.runs,
                    "runs_12mp": args.runs_12mp,
                    "warmup": args.warmup,
                    "images": images,
                }
                print(f"bench: {label} {row} ...", file=sys.stderr, flush=True)
                results.append(_run_worker(spec, timeout=1800))
    return render(results, header)


if __name__ == "__main__":
    print(main(), end="")

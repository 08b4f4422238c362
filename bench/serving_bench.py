"""Serving benchmark: a bounded load test of `detector serve` on 127.0.0.1, per model and layout.

Each (model, layout) gets its own server on a free loopback port (stopped by PID), a short
warm-up, then `--repeats` windows of `--concurrency` clients posting the same photo to
/api/v1/detect for `--duration` seconds each. Reports requests/s and latency percentiles as the
median and the spread (min-max) of the windows, errors, the engine the server chose (/version)
and the peak RSS of every worker. yolov3 runs on seeded random weights (timing only).

A second table breaks a request down: the medians of the stages the server reports in its
Server-Timing header (upload, decode, wait for the inference lock, preprocess, inference,
postprocess, and the app's total), the client's p50 beside them (the rest is gunicorn, the
socket and the client), and the CPU each request cost the server (master and workers, from
/proc) and the load client: on a shared machine CPU ms per request is steadier than req/s.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.serving_stages import cpu_seconds
from bench.serving_stages import parse_server_timing
from bench.serving_stages import stage_medians
from bench.serving_stages import stage_table
from bench.serving_stages import worker_pids

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "service" / "detector" / "data"
DOG = ROOT.parent / "shared" / "testdata" / "dog.jpg"
BENCH_DIR = ROOT / "weights" / ".bench"  # seeded random weights, kept between runs
LAYOUTS = "2x1"  # workers x request threads per worker (inference threads: cores / workers)
MODELS = "yolov3-tiny,yolov3"
DURATION_ENV = "BENCH_SERVING_SECONDS"
QUICK_ENV = "BENCH_QUICK"  # set to 1: shorter windows, 2 repeats


def photo() -> tuple[str, bytes]:
    """dog.jpg from the shared test data, else scikit-image's coffee photo."""
    if DOG.is_file():
        return "dog.jpg", DOG.read_bytes()
    import io

    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()).save(buf, format="JPEG", quality=90)
    return "skimage coffee", buf.getvalue()


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_env(model: str) -> dict[str, str]:
    """DETECTOR_* settings serving `model`: its weights in weights/, else seeded random ones."""
    if (ROOT / "weights" / f"{model}.weights").is_file():
        return {"DETECTOR_MODEL": model, "DETECTOR_WEIGHTS_DIR": str(ROOT / "weights")}
    from detector.model.random_weights import write_random_weights

    # The model benchmark's file (weights/.bench): the OpenVINO cache beside it is reused.
    weights = BENCH_DIR / f"{model}-random.weights"
    if not weights.exists():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        write_random_weights(DATA / f"{model}.cfg", weights)
    return {
        "DETECTOR_CFG": str(DATA / f"{model}.cfg"),
        "DETECTOR_WEIGHTS": str(weights),
        "DETECTOR_NAMES": str(DATA / "coco.names"),
    }


def start_server(
    workers: int, threads: int, settings: dict[str, str], log
) -> tuple[subprocess.Popen, str]:
    """Start `detector serve` on a free loopback port and wait for /readyz."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update(settings)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [
        str(Path(sys.executable).parent / "detector"),
        "serve",
        "--bind",
        url[7:],
        "--workers",
        str(workers),
        "--request-threads",
        str(threads),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 600  # a first start may build the OpenVINO cache
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"detector serve exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                time.sleep(1.0 * workers)  # the other workers finish their warm-up
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop_server(process)
    raise RuntimeError(f"detector serve not ready on {url} within 600 s; see {log.name}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the master by PID; SIGKILL its process group if it does not exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def worker_memory_mb(master_pid: int) -> list[tuple[float, float]]:
    """(RSS, peak RSS) in MB of each worker of the gunicorn master."""
    children = worker_pids(master_pid)
    result = []
    for pid in children:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
        result.append(
            (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)
        )
    return result


def load(url: str, name: str, data: bytes, concurrency: int, seconds: float) -> dict:
    """Post `data` from `concurrency` threads for `seconds`; return latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    timings: list[dict[str, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = http.post(url + "/api/v1/detect", files={"file": (name, data)})
                    ok = response.status_code == 200
                    problem = "" if ok else f"HTTP {response.status_code}"
                    timing = parse_server_timing(response.headers.get("server-timing", ""))
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))
                    if not problem and timing:
                        timings.append(timing)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "latencies": sorted(latencies),
        "errors": errors,
        "wall": time.monotonic() - began,
        "timings": timings,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, in ms."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index] * 1000


def window_figures(window: dict) -> dict:
    """req/s, p50 and p99 (ms) and the error count of one load window."""
    lat = window["latencies"]
    return {
        "rps": len(lat) / window["wall"],
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
        "errors": len(window["errors"]),
        "requests": len(lat),
    }


def run_layout(model: str, layout: str, args, name: str, data: bytes, log) -> dict:
    """Benchmark one model and worker layout on its own server: warm-up, then the windows."""
    workers, threads = (int(n) for n in layout.split("x"))
    settings = model_env(model)
    if args.engine:
        settings["DETECTOR_ENGINE"] = args.engine
    process, url = start_server(workers, threads, settings, log)
    try:
        info = httpx.get(url + "/version", timeout=10).json()
        engine = "-".join(str(info[k]) for k in ("engine", "precision") if info.get(k)) or "?"
        load(url, name, data, args.concurrency, min(5.0, args.duration / 2))  # warm-up
        raw, server_cpu, client_cpu, seen = [], [], [], set()
        for _ in range(args.repeats):
            pids = [process.pid, *worker_pids(process.pid)]
            seen.update(pids[1:])
            server, client = cpu_seconds(pids), time.process_time()
            window = load(url, name, data, args.concurrency, args.duration)
            answered = max(1, len(window["latencies"]) + len(window["errors"]))
            client_cpu.append((time.process_time() - client) * 1000 / answered)
            now = worker_pids(process.pid)
            seen.update(now)
            if sorted(now) == sorted(pids[1:]):  # a recycled worker's CPU cannot be read
                server_cpu.append((cpu_seconds(pids) - server) * 1000 / answered)
            raw.append(window)
        windows = [window_figures(window) for window in raw]
        latencies = sorted(x for w in raw for x in w["latencies"])
        memory = worker_memory_mb(process.pid)
    finally:
        stop_server(process)
    plural = "s" if threads > 1 else ""
    return {
        "model": model,
        "layout": f"{workers} worker{'s' if workers > 1 else ''} x {threads} thread{plural}",
        "engine": engine,
        "windows": windows,
        "memory": memory,
        "stages": stage_medians([t for w in raw for t in w["timings"]]),
        "client_p50": percentile(latencies, 0.5),
        "server_cpu_ms": statistics.median(server_cpu) if server_cpu else float("nan"),
        "client_cpu_ms": statistics.median(client_cpu),
        "restarts": len(seen) - workers,  # workers started during the windows (max_requests)
    }


def spread(values: list[float], digits: int = 0) -> str:
    """Median and (min-max) of the values, e.g. "33.1 (31.0-35.2)"."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def table(results: list[dict], args, name: str) -> str:
    """Format the results as a markdown table."""
    lines = [
        f"`detector serve`, {args.concurrency} concurrent clients posting {name} to "
        f"/api/v1/detect, {args.repeats} windows of {args.duration:.0f} s per row after a "
        f"warm-up, {os.cpu_count()} CPUs; median (min-max) over the windows; engine as the "
        "server's /version reports it (config engine "
        f"{args.engine or 'auto'}); load average at start "
        + " ".join(f"{v:.1f}" for v in os.getloadavg())
        + ".",
        "",
        "| model | layout | engine | requests | req/s | p50 ms | p99 ms | p99 / p50 | errors "
        "| worker RSS MB (peak) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        w = r["windows"]
        memory = ", ".join(f"{rss:.0f} ({peak:.0f})" for rss, peak in r["memory"])
        ratios = [x["p99"] / x["p50"] for x in w if x["p50"] == x["p50"] and x["p50"] > 0]
        lines.append(
            f"| {r['model']} | {r['layout']} | {r['engine']} | "
            f"{sum(x['requests'] for x in w)} | {spread([x['rps'] for x in w], 1)} | "
            f"{spread([x['p50'] for x in w])} | {spread([x['p99'] for x in w])} | "
            f"{spread(ratios, 1) if ratios else '–'} | {sum(x['errors'] for x in w)} | {memory} |"
        )
    return "\n".join(lines) + "\n\n" + stage_table(results)


def build_parser() -> argparse.ArgumentParser:
    """Options of the serving benchmark."""
    quick = os.environ.get(QUICK_ENV) == "1"
    parser = argparse.ArgumentParser(prog="python -m bench.serving_bench", description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get(DURATION_ENV, "8" if quick else "20")),
        help=f"seconds per window (default 20, 8 with {QUICK_ENV}=1, or ${DURATION_ENV})",
    )
    parser.add_argument("--repeats", type=int, default=2 if quick else 3, help="windows per row")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--models", default=MODELS, help=f"comma-separated ({MODELS})")
    parser.add_argument("--layouts", default=LAYOUTS, help=f"WORKERSxTHREADS,... ({LAYOUTS})")
    parser.add_argument("--engine", default="", help="pin the engine (default: the config's auto)")
    return parser


def main(argv: list[str] | None = None) -> str:
    """Run every model and layout, print the markdown table and return it."""
    args = build_parser().parse_args([] if argv is None else argv)
    if not 1 <= args.duration <= 600 or not 1 <= args.concurrency <= 64:
        raise SystemExit("duration must be 1..600 s and concurrency 1..64 (bounded load only)")
    if not 1 <= args.repeats <= 10:
        raise SystemExit(f"repeats must be 1..10, got {args.repeats}")
    name, data = photo()
    results = []
    log_file = tempfile.NamedTemporaryFile(
        "w", prefix="serving-bench-", suffix=".log", delete=False
    )
    with log_file as log:
        for model in [m for m in args.models.split(",") if m]:
            for layout in args.layouts.split(","):
                print(f"bench: serving {model} {layout} ...", file=sys.stderr, flush=True)
                results.append(run_layout(model, layout, args, name, data, log))
    report = table(results, args, name)
    print(report, flush=True)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

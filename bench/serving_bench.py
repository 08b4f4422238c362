"""Serving benchmark: a bounded load test of `detector serve` on 127.0.0.1, two worker layouts.

Each layout gets its own server on a free loopback port (stopped by PID), a short warm-up, then
`--concurrency` clients posting the same photo to /api/v1/detect for `--duration` seconds.
Reports requests/s, latency percentiles, errors and the RSS of every worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT.parent / "shared" / "testdata" / "dog.jpg"
LAYOUTS = "1x2,2x1"  # workers x threads per worker
DURATION_ENV = "BENCH_SERVING_SECONDS"


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


def start_server(workers: int, threads: int, model: str, log) -> tuple[subprocess.Popen, str]:
    """Start `detector serve` on a free loopback port and wait for /readyz."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update(DETECTOR_MODEL=model, DETECTOR_WEIGHTS_DIR=str(ROOT / "weights"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [
        str(Path(sys.executable).parent / "detector"),
        "serve",
        "--bind",
        url[7:],
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
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
    raise RuntimeError(f"detector serve not ready on {url} within 120 s")


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
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
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
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": sorted(latencies), "errors": errors, "wall": time.monotonic() - began}


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, in ms."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index] * 1000


def run_layout(workers: int, threads: int, args, name: str, data: bytes, log) -> dict:
    """Benchmark one worker layout on its own server."""
    process, url = start_server(workers, threads, args.model, log)
    try:
        load(url, name, data, args.concurrency, min(5.0, args.duration / 4))  # warm-up
        result = load(url, name, data, args.concurrency, args.duration)
        result["memory"] = worker_memory_mb(process.pid)
    finally:
        stop_server(process)
    result["layout"] = f"{workers} worker x {threads} thread" + ("s" if threads > 1 else "")
    return result


def table(results: list[dict], args, name: str) -> str:
    """Format the results as a markdown table."""
    lines = [
        f"`detector serve` with {args.model}, {args.concurrency} concurrent clients posting "
        f"{name} to /api/v1/detect for {args.duration:.0f} s each, {os.cpu_count()} CPUs.",
        "",
        "| layout | requests | req/s | p50 ms | p95 ms | p99 ms | errors | worker RSS MB (peak) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lat = r["latencies"]
        memory = ", ".join(f"{rss:.0f} ({peak:.0f})" for rss, peak in r["memory"])
        lines.append(
            f"| {r['layout']} | {len(lat)} | {len(lat) / r['wall']:.1f} | "
            f"{percentile(lat, 0.50):.0f} | {percentile(lat, 0.95):.0f} | "
            f"{percentile(lat, 0.99):.0f} | {len(r['errors'])} | {memory} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """Options of the serving benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench.serving_bench", description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get(DURATION_ENV, "60")),
        help=f"seconds per layout (default 60, or ${DURATION_ENV})",
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--model", default="yolov3-tiny")
    parser.add_argument("--layouts", default=LAYOUTS, help=f"WORKERSxTHREADS,... ({LAYOUTS})")
    return parser


def main(argv: list[str] | None = None) -> str:
    """Run both layouts, print the markdown table and return it."""
    args = build_parser().parse_args([] if argv is None else argv)
    if not 1 <= args.duration <= 600 or not 1 <= args.concurrency <= 64:
        raise SystemExit("duration must be 1..600 s and concurrency 1..64 (bounded load only)")
    name, data = photo()
    results = []
    with tempfile.NamedTemporaryFile(
        "w", prefix="serving-bench-", suffix=".log", delete=False
    ) as log:
        for layout in args.layouts.split(","):
            workers, threads = (int(n) for n in layout.split("x"))
            results.append(run_layout(workers, threads, args, name, data, log))
    report = table(results, args, name)
    print(report, flush=True)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

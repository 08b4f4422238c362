"""The one sizing rule: workers, threads and memory limits from cores, memory and the model.

gunicorn_conf applies it when the config leaves workers at 0; Ansible runs this very file on
each host (ansible.builtin.script with the host's python3, so it imports only the standard
library) and renders its numbers into the config and the unit. Nothing else sizes.

Rule:
- a worker costs the model's measured peak RSS (bench/model_bench.py: ~300 MB yolov3-tiny,
  ~550 MB yolov3-416 with the torch engine) plus decode_memory_mb, what its image decodes
  may use at once (imaging.decode_cost, limits.MemoryBudget);
- during a deploy both colors run (blue/green, each its own gunicorn with N workers), so each
  color gets (memory - reserve) / colors, and workers = min(cores, that / worker cost), >= 1;
- a worker runs one inference at a time (its inference lock; the torch threads split that one
  inference), so the service admits DETECTIONS_PER_WORKER (1) detection per worker at once
  (admitted(), the one place this is computed) and answers more 503 + Retry-After
  (limits.Gate): an admitted request never waits behind another one's inference, so its
  latency stays near the unloaded one (issue 13.8's bound is 2x; measured 2026-12-02, 1 worker
  behind nginx, 6 clients: 1 per worker 0.93x, 2 per worker 2.26x); each worker has one more
  thread for light requests (health, metrics, page assets, 503 answers): threads = 2;
- nginx passes at most max_conns = workers x threads connections to one color at once (upstream
  max_conns): gunicorn never queues a connection, the excess gets nginx's 503 + Retry-After;
- torch threads per worker = cores / workers, so workers never oversubscribe the cores;
- nginx lets one client send rate_per_s = cores / the model's CPU seconds per image with a burst
  of max_inflight: the fastest this host may serve (the engine `auto` picks on a CPU with
  AMX/AVX512-BF16), so a client that waits for its answers is never refused 429; a slower CPU
  is bounded by admission and max_conns instead (503 + Retry-After at once);
- the unit's MemoryMax is one color's share (never below its workers' cost) and MemoryHigh
  (reclaim and throttle) 7/8 of it; OOMPolicy=continue lets gunicorn replace a killed worker.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from dataclasses import dataclass

RESERVE_MB = 512  # the OS, nginx, sshd
MODEL_MEMORY_MB = {"yolov3-tiny": 300, "yolov3": 550}
DEFAULT_MODEL_MEMORY_MB = 1000  # custom models: a guess on the safe side
# CPU seconds per image served, `make bench` serving 2026-12-02 (2 workers x 1 thread on 2 cores,
# openvino-bf16): tiny 96.9 req/s, yolov3 (608) 22.3 req/s. With 0.1 and 0.75 (torch fp32) a
# sequential client of a tiny host (one answer every ~56 ms) was refused 429 on the test bed.
MODEL_CPU_SECONDS = {"yolov3-tiny": 0.02, "yolov3": 0.09}
DEFAULT_MODEL_CPU_SECONDS = 1.5
DECODE_MEMORY_MB = 350  # config.decode_memory_mb's default (config takes it from here)
DETECTIONS_PER_WORKER = 1  # one inference at a time per worker: see admitted()
COLORS = 2


@dataclass(frozen=True)
class Sizing:
    """The numbers one color of the service runs with."""

    workers: int
    threads: int  # gunicorn request threads per worker
    torch_threads: int  # intra-op threads per worker (OMP_NUM_THREADS, config.threads)
    worker_memory_mb: int
    memory_max_mb: int  # systemd MemoryMax of one color
    memory_high_mb: int  # systemd MemoryHigh of one color
    max_inflight: int  # detections admitted at once by one color (limits.Gate)
    max_conns: int  # connections nginx passes to one color at once (upstream max_conns)
    rate_per_s: int  # images per second the host can serve: nginx's per-client limit_req rate


def admitted(workers: int) -> int:
    """Return how many detections a service of `workers` workers admits at once (max_inflight)."""
    return DETECTIONS_PER_WORKER * max(1, workers)


def size(
    cores: int,
    memory_mb: int,
    model: str,
    *,
    workers: int = 0,
    threads: int = 0,
    worker_threads: int = 0,
    decode_memory_mb: int = DECODE_MEMORY_MB,
    worker_memory_mb: int = 0,
    reserve_mb: int = RESERVE_MB,
    colors: int = COLORS,
) -> Sizing:
    """Apply the rule of this module's docstring; non-zero workers/threads/worker_threads win.

    :param cores: CPUs the service may use.
    :param memory_mb: the host's memory (MemTotal, capped by a cgroup limit).
    :param model: model name (yolov3, yolov3-tiny or a custom one).
    :param worker_memory_mb: a worker's cost when known better than the model table (0 = table
        + decode_memory_mb).
    :param colors: service instances that run at once (2 during a blue/green deploy).
    """
    cost = (
        worker_memory_mb or MODEL_MEMORY_MB.get(model, DEFAULT_MODEL_MEMORY_MB) + decode_memory_mb
    )
    share = max(0, memory_mb - reserve_mb) // max(1, colors)
    workers = workers or max(1, min(cores, share // cost))
    request_threads = worker_threads or DETECTIONS_PER_WORKER + 1
    memory_max = -(-max(share, workers * cost) // 64) * 64
    return Sizing(
        workers=workers,
        threads=request_threads,
        torch_threads=threads or max(1, cores // workers),
        worker_memory_mb=cost,
        memory_max_mb=memory_max,
        memory_high_mb=memory_max * 7 // 8,
        max_inflight=admitted(workers),
        max_conns=workers * request_threads,
        rate_per_s=max(1, int(cores / MODEL_CPU_SECONDS.get(model, DEFAULT_MODEL_CPU_SECONDS))),
    )


def omp_wait_policy(threads: int) -> str:
    """Return OMP_WAIT_POLICY for a process running `threads` intra-op threads (0 = unknown).

    Measured 2026-12-02 on this 2-core AMX machine under load from other jobs (load ~7),
    yolov3-tiny torch-bf16, median of 21 per process, interleaved rounds:
    - one process x 2 threads (`detector detect`): PASSIVE 26-57 ms, ACTIVE 389-535 ms (the
      spinning partner thread steals the core the busy machine has left);
    - 2 processes x 1 thread (2 serving workers): PASSIVE 57-178 ms, ACTIVE 25-66 ms.
    So: ACTIVE where a process has one thread (nothing to spin against), PASSIVE otherwise.
    """
    return "ACTIVE" if threads == 1 else "PASSIVE"


def main(argv: list[str] | None = None) -> int:
    """Print the sizing as JSON (what the Ansible role renders into the config and unit)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--worker-threads", type=int, default=0)
    parser.add_argument("--decode-memory-mb", type=int, default=DECODE_MEMORY_MB)
    parser.add_argument("--worker-memory-mb", type=int, default=0)
    parser.add_argument("--reserve-mb", type=int, default=RESERVE_MB)
    parser.add_argument("--colors", type=int, default=COLORS)
    args = vars(parser.parse_args(argv))
    cores, memory_mb, model = args.pop("cores"), args.pop("memory_mb"), args.pop("model")
    print(json.dumps(asdict(size(cores, memory_mb, model, **args)), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

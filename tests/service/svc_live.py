"""Start and stop a real `detector serve` (gunicorn) on a free loopback port, by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """One `detector serve` process group; stopped by its PID, never by name."""

    def __init__(
        self,
        workers: int = 2,
        threads: int = 2,
        env: dict | None = None,
        log_path: Path | None = None,
        uds: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.uds = uds
        self.port = 0 if uds else port or free_port()
        self.bind = f"unix:{uds}" if uds else f"{host}:{self.port}"
        self.url = "http://detector.local" if uds else f"http://{host}:{self.port}"
        self.workers = workers
        self.threads = threads
        self.env = dict(env or {})
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 90.0) -> LiveServer:
        """Start the server and wait until /readyz answers 200 (every worker warms up first)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
        env.update(DETECTOR_WEIGHTS_DIR=str(ROOT / "weights"), DETECTOR_MODEL="yolov3-tiny")
        env.update(self.env)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [
            str(Path(sys.executable).parent / "detector"),
            "serve",
            "--bind",
            self.bind,
            "--workers",
            str(self.workers),
            "--request-threads",
            str(self.threads),
        ]
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()  # never leave a server behind, whatever went wrong
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Poll /readyz until 200, the process exits, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"detector serve exited with {self.process.returncode}")
            if self.uds and not self.uds.exists():
                time.sleep(0.3)  # httpcore leaks the socket of a failed unix connect
                continue
            try:
                with self.client() as client:
                    ready = client.get(self.url + "/readyz", timeout=2).status_code == 200
                if ready:
                    time.sleep(0.5 * self.workers)  # let the other workers finish warming up
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"detector serve not ready on {self.url} after {timeout:.0f} s")

    def client(self, timeout: float = 60) -> httpx.Client:
        """An HTTP client that reaches this server (over its unix socket if it has one)."""
        transport = httpx.HTTPTransport(uds=str(self.uds)) if self.uds else None
        return httpx.Client(transport=transport, timeout=timeout)

    @property
    def pid(self) -> int:
        """The gunicorn master's PID."""
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """PIDs of the master's live children (the workers)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGTERM to the master's PID), then SIGKILL its group if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self.process = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

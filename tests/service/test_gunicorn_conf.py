"""gunicorn sizing rule, loopback-only binding and `detector serve` refusing bad setups."""

from __future__ import annotations

import pytest
from detector import gunicorn_conf
from detector import server
from detector import sizing
from detector.machine import cpu_count
from detector.machine import memory_available_mb
from detector.machine import memory_total_mb


def test_the_server_sizes_with_the_one_rule():
    expected = sizing.size(
        cpu_count(),
        memory_total_mb(),
        gunicorn_conf._settings.model,
        workers=gunicorn_conf._settings.workers,
        threads=gunicorn_conf._settings.threads,
        worker_threads=gunicorn_conf._settings.worker_threads,
        decode_memory_mb=gunicorn_conf._settings.decode_memory_mb,
        colors=1,
    )
    assert (gunicorn_conf.workers, gunicorn_conf.threads) == (expected.workers, expected.threads)
    assert gunicorn_conf.worker_connections <= 2 * gunicorn_conf.threads
    assert gunicorn_conf.backlog <= 64


def test_available_memory_is_positive():
    assert memory_available_mb() > 0


@pytest.mark.parametrize(
    "bind",
    [
        "127.0.0.1:5000",
        "localhost:8000",
        "[::1]:5000",
        "127.0.1.1:80",
        "unix:/run/detector/blue.sock",
    ],
)
def test_loopback_and_unix_binds_are_accepted(bind):
    gunicorn_conf.check_bind(bind)


@pytest.mark.parametrize("bind", ["0.0.0.0:5000", "[::]:5000", "10.0.0.5:5000", ":5000"])
def test_public_binds_are_refused_unless_allowed(bind):
    with pytest.raises(ValueError, match="--allow-public"):
        gunicorn_conf.check_bind(bind)
    gunicorn_conf.check_bind(bind, allow_public=True)


def test_the_settings_keep_the_documented_choices():
    assert gunicorn_conf.preload_app is False
    assert gunicorn_conf.timeout > 25  # above the page's client timeout
    assert gunicorn_conf.graceful_timeout > 0
    assert gunicorn_conf.max_requests > 0 and gunicorn_conf.max_requests_jitter > 0
    assert gunicorn_conf.worker_class == "gthread"
    assert "rid=%({x-request-id}o)s" in gunicorn_conf.access_log_format
    assert "%(M)sms" in gunicorn_conf.access_log_format


@pytest.fixture
def serve_env(monkeypatch, tmp_path):
    """Isolate the DETECTOR_* variables `detector serve` exports (restored after the test)."""
    for name in ("BIND", "WORKERS", "WORKER_THREADS", "CONFIG", "ALLOW_PUBLIC_BIND"):
        monkeypatch.setenv(f"DETECTOR_{name}", "")
        monkeypatch.delenv(f"DETECTOR_{name}")
    monkeypatch.setenv("DETECTOR_WEIGHTS_DIR", str(tmp_path))


def test_serve_refuses_a_public_bind(serve_env, capsys):
    assert server.main(["--bind", "0.0.0.0:5000"]) == 2
    assert "--allow-public" in capsys.readouterr().err


def test_serve_refuses_missing_weights_before_forking(serve_env, capsys):
    assert server.main(["--bind", "127.0.0.1:1"]) == 2
    assert "fetch-weights" in capsys.readouterr().err

"""Service settings: the only reader of DETECTOR_CONFIG (TOML) and DETECTOR_* overrides."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from detector import sizing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 targets
    import tomli as tomllib

ENV_PREFIX = "DETECTOR_"
CONFIG_ENV = "DETECTOR_CONFIG"
ENGINES = ("auto", "torch", "opencv", "openvino")
MIN_API_KEY_LENGTH = 16  # an API key shorter than this is refused at start
PRECISIONS = ("auto", "fp32", "bf16", "int8")  # auto = bf16 where the CPU has it natively
# The precisions each engine runs (and "auto"); any other engine/precision pair does not exist.
ENGINE_PRECISIONS = {
    "torch": ("fp32", "bf16"),
    "opencv": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
    "auto": ("fp32", "bf16", "int8"),
}


class ConfigError(ValueError):
    """A setting is unknown or has a bad value."""


@dataclass(frozen=True)
class Config:
    """Settings of one service process; written by Ansible from group_vars, never by hand."""

    model: str = "yolov3-tiny"
    size: int = 0  # network input size; 0 = take it from the cfg
    engine: str = "auto"
    precision: str = "auto"  # fp32, bf16, int8 (openvino) or auto (bf16 on amx/avx512_bf16 CPUs)
    threads: int = 0  # torch/OpenCV threads per process; 0 = cores / workers, at least 1
    threshold: float = 0.25
    nms_threshold: float = 0.45
    weights_dir: str = "weights"
    openvino_cache_dir: str = ""  # prepared OpenVINO models; empty = <weights dir>/.openvino
    cfg: str = ""  # custom model: cfg + weights + names replace `model`
    weights: str = ""
    names: str = ""
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    release: str = ""  # release id shown by /version; empty = read from the install
    bind: str = "127.0.0.1:5000"  # gunicorn: loopback host:port or unix:PATH (nginx in front)
    workers: int = 0  # gunicorn worker processes; 0 = sized from CPU and memory (gunicorn_conf)
    worker_threads: int = 0  # request threads per worker; 0 = sized with workers
    backend_url: str = ""  # where the upload page POSTs; empty = the page's own origin
    request_deadline_s: float = 15.0  # decode + inference per request; later = 503
    # a detection still running after this recycles its worker (watchdog); 0 = 2 x the deadline
    detection_limit_s: float = 0.0
    # memory one worker's image decodes may use at once; more = 422 (default: the sizing rule's)
    decode_memory_mb: int = sizing.DECODE_MEMORY_MB
    max_inflight: int = 0  # detections admitted at once per service (all workers); 0 = 1 per worker
    # gunicorn (detector.gunicorn_conf reads these; the unit passes no flags of its own):
    worker_timeout_s: int = 120  # a worker silent this long is killed (hung loop watchdog)
    graceful_timeout_s: int = 60  # in-flight requests finish within this on stop/reload
    max_requests: int = 10000  # a worker is recycled after this many requests ...
    max_requests_jitter: int = 1000  # ... plus a random 0..N, so workers do not recycle together
    # API keys (detector.auth): empty = detection endpoints open; never shown by repr or logs
    api_keys: tuple[str, ...] = field(default_factory=tuple, repr=False)
    # with keys on: a request on the unix socket with no proxy header (not via nginx) needs none
    api_keys_local_exempt: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        allowed = ENGINE_PRECISIONS[self.engine]
        if self.precision != "auto" and self.precision not in allowed:
            raise ConfigError(
                f"engine {self.engine} has no precision {self.precision!r} (it runs "
                f"{', '.join(allowed)}); set precision to one of auto, {', '.join(allowed)}"
                " or pick another engine"
            )
        if self.threads < 0:
            raise ConfigError(
                f"threads must be 0 (cores / workers) or positive, got {self.threads}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {self.threshold}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ConfigError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if self.size and (self.size % 32 or self.size < 32):
            raise ConfigError(f"size must be a positive multiple of 32, got {self.size}")
        if self.workers < 0 or self.worker_threads < 0:
            raise ConfigError("workers and worker_threads must be 0 (auto) or positive")
        if self.max_upload_bytes <= 0 or self.max_pixels <= 0:
            raise ConfigError("max_upload_bytes and max_pixels must be positive")
        if self.request_deadline_s <= 0 or self.decode_memory_mb <= 0:
            raise ConfigError(
                "request_deadline_s and decode_memory_mb must be positive, got "
                f"{self.request_deadline_s} and {self.decode_memory_mb}"
            )
        if self.worker_timeout_s <= 0 or self.graceful_timeout_s <= 0:
            raise ConfigError(
                "worker_timeout_s and graceful_timeout_s must be positive, got "
                f"{self.worker_timeout_s} and {self.graceful_timeout_s}"
            )
        if self.max_requests < 0 or self.max_requests_jitter < 0:
            raise ConfigError("max_requests and max_requests_jitter must be 0 (off) or positive")
        if self.detection_limit_s < 0:
            raise ConfigError(
                f"detection_limit_s must be 0 (2 x request_deadline_s) or positive, "
                f"got {self.detection_limit_s}"
            )
        if self.max_inflight < 0:
            raise ConfigError(f"max_inflight must be 0 (auto) or positive, got {self.max_inflight}")
        custom = [bool(self.cfg), bool(self.weights), bool(self.names)]
        if any(custom) and not all(custom):
            raise ConfigError("a custom model needs all three of cfg, weights and names")
        for number, key in enumerate(self.api_keys, 1):  # the message never shows a key
            if len(key) < MIN_API_KEY_LENGTH or not key.isprintable() or key != key.strip():
                raise ConfigError(
                    f"api_keys entry {number} must be at least {MIN_API_KEY_LENGTH} printable "
                    "characters without surrounding spaces; make one with `openssl rand -hex 32`"
                )


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value):
    """Convert a TOML or environment value to the field's type, naming the key on failure."""
    default = _FIELDS[name].default
    if default is dataclasses.MISSING:
        default = _FIELDS[name].default_factory()
    try:
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(str(v) for v in value)
        if isinstance(default, bool):
            return str(value).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r} has a bad value {value!r}: {exc}") from exc


def from_mapping(values: dict) -> Config:
    """Build a Config from a mapping, rejecting unknown keys."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return Config(**{k: _coerce(k, v) for k, v in values.items()})


def load(path: str | os.PathLike | None = None, environ: dict | None = None) -> Config:
    """Read the TOML file (argument or DETECTOR_CONFIG), then apply DETECTOR_<KEY> overrides."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    path = path or environ.get(CONFIG_ENV)
    if path:
        try:
            with Path(path).open("rb") as fh:
                values.update(tomllib.load(fh))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist; set {CONFIG_ENV}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        unknown = sorted(set(values) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    for name in _FIELDS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and env_name != CONFIG_ENV:
            values[name] = environ[env_name]
    return from_mapping(values)

"""auto's engine choice cached per CPU model and model: later workers pick without timing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path

from . import openvino_cache

log = logging.getLogger(__name__)

CHOICE_FORMAT = 2  # bump when the fields or the timing rule change (2: the OpenVINO tie rule)


def _version(package: str) -> str | None:
    """Return an installed distribution's version without importing it (None if absent)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def choice_fields(
    cfg_path: Path,
    weights_path: Path,
    input_shape: tuple[int, int],
    candidates: list[str],
    threads: int,
) -> dict:
    """Return what a timed choice depends on: CPU, model files, input, candidates, libraries."""
    from .engines import cpu_flags
    from .engines import cpu_model

    return {
        "format": CHOICE_FORMAT,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags_sha256": hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest(),
        "weights_sha256": openvino_cache.input_sha256(weights_path),
        "cfg_sha256": openvino_cache.input_sha256(cfg_path),
        "input": list(input_shape),
        "candidates": sorted(candidates),
        "threads": threads,
        "versions": {p: _version(p) for p in ("torch", "openvino", "opencv-python-headless")},
    }


def choice_path(root: Path, fields: dict) -> Path:
    """Return the file of this choice: <cache root>/auto-<hash of the fields>.json."""
    text = json.dumps(fields, sort_keys=True)
    return root / f"auto-{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"


def read_choice(path: Path, fields: dict) -> dict | None:
    """Return the stored choice when the file is trusted and its fields match; else None."""
    if not path.is_file():
        return None
    try:
        for item in (path.parent, path):
            reason = openvino_cache.untrusted(item)
            if reason:
                log.warning("auto choice %s not trusted, timing again: %s", path, reason)
                return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("fields") != fields or data.get("chosen") not in fields["candidates"]:
            log.warning("auto choice %s is for other inputs, timing again", path)
            return None
        if not isinstance(data.get("timings_ms"), dict) or not data.get("created"):
            raise ValueError("no timings_ms or created")
        return data
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("auto choice %s is unreadable (%s), timing again", path, exc)
        return None


def write_choice(path: Path, fields: dict, chosen: str, timings_ms: dict, rounds: int) -> None:
    """Store the choice atomically (temp file, then rename), mode 0644; log if it cannot."""
    data = {
        "fields": fields,
        "chosen": chosen,
        "timings_ms": timings_ms,
        "rounds": rounds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = None
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot cache auto's choice in %s (%s); the next worker times again", path, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def words(data: dict, path: Path) -> str:
    """Return why the cached choice is taken, in the words of a timed one."""
    measured = ", ".join(f"{label} {ms:.0f} ms" for label, ms in sorted(data["timings_ms"].items()))
    width, height = data["fields"]["input"]
    return (
        f"auto: {data['chosen']} from the cached choice of {data['created']} ({measured}; best "
        f"of {data['rounds']} interleaved runs at {width}x{height}, "
        f"{data['fields']['threads']} threads; {path})"
    )

"""The OpenVINO model cache: converted (or quantized) IR on disk, keyed by what it came from."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the entry layout or the conversion changes
CACHE_DIR_NAME = ".openvino"  # default cache: <weights dir>/.openvino/<key>/
MANIFEST = "manifest.json"
FILES = ("model.xml", "model.bin")
GATE = "model.gate.json"  # int8 entries: the accuracy gate's report (gate.gate_path of model.xml)


class CacheError(ValueError):
    """The cache directory cannot be used (not writable, writable by others)."""


def version() -> str | None:
    """Return the installed OpenVINO version, or None where it is not importable."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.get_version()


def file_sha256(path: str | Path) -> str:
    """Return the sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _input_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """Return a weights or cfg file's sha256, once per process and file version."""
    return file_sha256(path)


def input_sha256(path: Path) -> str:
    """Return the sha256 of a weights or cfg file (hashed again when it changed)."""
    st = path.stat()
    return _input_sha256(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def cache_fields(
    cfg_path: Path, weights_path: Path, input_shape: tuple[int, int], precision: str
) -> dict:
    """Return what a cache entry depends on: weights, cfg, input size, precision, OpenVINO."""
    fields = {
        "format": CACHE_FORMAT,
        "weights_sha256": input_sha256(weights_path),
        "cfg_sha256": input_sha256(cfg_path),
        "input": list(input_shape),
        "precision": precision,
        "openvino": version(),
    }
    if precision == "int8":  # the quantization's own inputs (no nncf import: workers skip it)
        from importlib import metadata

        from .quantize import QuantizeOptions

        try:
            fields["nncf"] = metadata.version("nncf")
        except metadata.PackageNotFoundError:
            fields["nncf"] = None
        fields["quantize"] = QuantizeOptions().to_dict()
    return fields


def cache_key(fields: dict) -> str:
    """Return the entry's directory name: a hash of its fields (readable prefix for humans)."""
    text = json.dumps(fields, sort_keys=True)
    return f"{fields['precision']}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def untrusted(path: Path) -> str | None:
    """Return why `path` must not be trusted (owner or mode), or None."""
    st = path.lstat()
    if path.is_symlink():
        return f"{path} is a symlink"
    if st.st_uid not in (os.getuid(), 0):
        return f"{path} is owned by uid {st.st_uid}, not this user ({os.getuid()}) or root"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {st.st_mode & 0o777:o})"
    return None


def read_entry(entry: Path, fields: dict):
    """Return the entry's ov.Model when it is complete, trusted and matches; else None (logged)."""
    import openvino as ov

    if not entry.is_dir():
        return None
    try:
        manifest_files = [n for n in os.listdir(entry) if n != MANIFEST]
        for path in (entry.parent, entry, entry / MANIFEST, *(entry / n for n in manifest_files)):
            reason = untrusted(path)
            if reason:
                log.warning("openvino cache entry %s not trusted, rebuilding: %s", entry, reason)
                return None
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("fields") != fields:
            log.warning("openvino cache entry %s is for other inputs, rebuilding", entry)
            return None
        if set(FILES) - set(manifest["sha256"]) or set(manifest_files) != set(manifest["sha256"]):
            log.warning(
                "openvino cache entry %s has other files than its manifest, rebuilding", entry
            )
            return None
        for name in manifest["sha256"]:
            if file_sha256(entry / name) != manifest["sha256"][name]:
                log.warning("openvino cache entry %s: %s fails its sha256, rebuilding", entry, name)
                return None
        return ov.Core().read_model(entry / FILES[0], entry / FILES[1])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        log.warning("openvino cache entry %s is unreadable (%s), rebuilding", entry, exc)
        return None


def write_entry(entry: Path, fields: dict, model, gate=None) -> None:
    """Save `model` as IR with its manifest into `entry`: built in a temp dir, then renamed.

    :param gate: int8: the GateReport to store beside the model (verified like the model).
    """
    import openvino as ov

    root = entry.parent
    try:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
    except OSError as exc:
        raise CacheError(
            f"cannot write the openvino cache {root}: {exc.strerror}; make it writable by this "
            "user or set openvino_cache_dir"
        ) from None
    try:
        # bf16 runs from fp16 weights (10-bit mantissa, more than bf16's 7): half the file and
        # ~250 MB less RSS for yolov3; fp32 keeps its weights bit for bit.
        compress = fields["precision"] == "bf16"
        ov.save_model(model, tmp / FILES[0], compress_to_fp16=compress)
        if gate is not None:
            gate.save(tmp / GATE)
        names = [*FILES, GATE] if gate is not None else list(FILES)
        manifest = {
            "fields": fields,
            "sha256": {name: file_sha256(tmp / name) for name in names},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)
        if entry.exists() or entry.is_symlink():  # stale or corrupt: move aside, then drop it
            stale = Path(tempfile.mkdtemp(prefix=f".{entry.name}.stale.", dir=root))
            os.rename(entry, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, entry)
    except OSError as exc:
        if entry.is_dir() and read_entry(entry, fields) is not None:
            return  # another worker wrote the same entry first
        raise CacheError(f"cannot write the openvino cache entry {entry}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disable_telemetry() -> None:
    """Keep OpenVINO's converter and NNCF from sending usage statistics from this process.

    Both send them through openvino-telemetry unless the user opted out (its `opt_in_out
    --opt_out` writes ~/intel/openvino_telemetry), and the service user has no home to record
    that in; every consent check here answers "declined" instead.
    """
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    declined = opt_in_checker.ConsentCheckResult.DECLINED
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: declined


def convert(model, input_shape: tuple[int, int]):
    """Convert the fused fp32 darknet module with OpenVINO's converter, static 1x3xHxW input."""
    import openvino as ov
    import torch

    disable_telemetry()

    width, height = input_shape
    x = torch.zeros(1, 3, height, width)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code
        return ov.convert_model(model.float().eval(), example_input=x, input=[1, 3, height, width])


class Prepared:
    """A model from the cache or just built: the ov.Model, how it came, its int8 gate report."""

    def __init__(self, model, how: str, gate=None) -> None:
        self.model, self.how, self.gate = model, how, gate


def cache_root(weights_path: Path, cache_dir: str | Path | None) -> Path:
    """Return the cache root: `cache_dir`, else <weights dir>/.openvino."""
    return Path(cache_dir) if cache_dir else weights_path.parent / CACHE_DIR_NAME


def prepare(
    cfg_path: str | Path,
    weights_path: str | Path,
    input_shape: tuple[int, int],
    precision: str,
    cache_dir: str | Path | None = None,
    build=None,
    quantize=None,
) -> Prepared | None:
    """Return the model from the cache, building and caching it on a miss.

    :param cache_dir: cache root; None = <weights dir>/.openvino.
    :param build: callable returning the fused fp32 torch model (called only on a miss).
    :param quantize: int8: callable(fp32 ov.Model) -> (int8 ov.Model, GateReport), called on a
        miss; None = look up only (returns None on a miss: `auto` never quantizes at start).
    """
    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    fields = cache_fields(cfg_path, weights_path, input_shape, precision)
    root = cache_root(weights_path, cache_dir)
    entry = root / cache_key(fields)
    model = read_entry(entry, fields)
    if model is not None:
        return Prepared(model, f"cached {entry}", _gate(entry, precision))
    if precision == "int8" and quantize is None:
        return None
    if build is None:
        raise ValueError(f"no prepared openvino model in {entry} and nothing to convert")
    fp32 = None
    disable_telemetry()  # NNCF's quantization reports too
    if precision == "int8":  # before the lock: the fp32 entry takes it too
        fp32 = prepare(cfg_path, weights_path, input_shape, "fp32", cache_dir, build).model
    with _build_lock(root):  # several workers on a cold cache: one converts, the others read
        model = read_entry(entry, fields)
        if model is not None:
            return Prepared(
                model, f"cached {entry} (built by another process)", _gate(entry, precision)
            )
        started = time.perf_counter()
        gate = None
        if precision == "int8":
            model, gate = quantize(fp32)
            verb = "quantized"
        else:
            model = convert(build(), input_shape)
            verb = "converted"
        took = f"{verb} in {time.perf_counter() - started:.1f} s"
        try:
            write_entry(entry, fields, model, gate)
            model = read_entry(entry, fields) or model  # run what a warm start will run
            return Prepared(model, f"{took}, cached {entry}", gate)
        except CacheError as exc:
            log.warning("%s; running uncached", exc)
            return Prepared(model, f"{took}, not cached ({exc})", gate)


def _gate(entry: Path, precision: str):
    """Return the stored gate report of an int8 entry (None for other precisions)."""
    if precision != "int8":
        return None
    from .gate import load_report

    return load_report(entry / GATE)


@contextlib.contextmanager
def _build_lock(root: Path):
    """Hold an exclusive lock on <root>/.lock while building; none where root is not writable."""
    try:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        f = (root / ".lock").open("a")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield

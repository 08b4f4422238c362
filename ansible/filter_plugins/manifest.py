"""Ansible filters reading the weights manifest (weights/manifest.toml) on the controller."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - older controllers
    import tomli as tomllib


def from_toml(text: str) -> dict:
    """Parse TOML text (e.g. a file lookup) into a mapping."""
    return tomllib.loads(text)


def weights_entry(manifest: dict, model: str) -> dict:
    """Return the manifest entry of model, failing with the models it knows."""
    if model not in manifest:
        known = ", ".join(sorted(manifest))
        raise ValueError(f"model {model!r} is not in weights/manifest.toml (known: {known})")
    return manifest[model]


class FilterModule:
    """Filters: from_toml, weights_entry."""

    def filters(self) -> dict:
        return {"from_toml": from_toml, "weights_entry": weights_entry}

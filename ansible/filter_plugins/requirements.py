"""Ansible filter comparing `pip freeze` output with pinned requirement lines (check mode too)."""

from __future__ import annotations

import re


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def pip_missing(freeze: str, requirements: list) -> list:
    """Return the `name==version` lines of requirements that the freeze output does not match."""
    installed = {}
    for line in freeze.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            installed[_canonical(name)] = version.strip()
    missing = []
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:  # an unpinned name: present in any version is enough
            if _canonical(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]) not in installed:
                missing.append(line)
            continue
        name, version = line.split("==", 1)
        if installed.get(_canonical(name)) != version.strip():
            missing.append(line)
    return missing


class FilterModule:
    """Filters: pip_missing."""

    def filters(self) -> dict:
        return {"pip_missing": pip_missing}

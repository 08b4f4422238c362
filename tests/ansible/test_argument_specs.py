"""Every role option is documented in meta/argument_specs.yml with a description of its own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "ansible" / "roles").iterdir())


def _text(description) -> str:
    """argument_specs allows a string or a list of paragraphs."""
    if isinstance(description, list):
        description = " ".join(str(part) for part in description)
    return " ".join(str(description or "").split())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_option_has_its_own_description(role: Path):
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    options = specs["main"]["options"]
    undocumented = sorted(set(defaults) - set(options))
    assert not undocumented, f"{role.name}: defaults missing from argument_specs: {undocumented}"
    for entry, spec in specs.items():
        texts = {name: _text(opt.get("description")) for name, opt in spec["options"].items()}
        empty = sorted(name for name, text in texts.items() if not text)
        assert not empty, f"{role.name}/{entry}: options without a description: {empty}"
        shared = {text: n for text, n in Counter(texts.values()).items() if n > 1}
        clashes = {name: text for name, text in texts.items() if text in shared}
        assert not clashes, f"{role.name}/{entry}: options share a description: {clashes}"

"""The README says what the code does: the user's command lines and production's figures."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from testbed import userpath

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DEFAULTS = yaml.safe_load(
    (REPO / "ansible" / "roles" / "detector" / "defaults" / "main.yml").read_text()
)


def _code_lines() -> list[str]:
    """Every line of the README's ```sh blocks, comments stripped."""
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]


def test_the_e2e_runs_the_provisioning_line_the_readme_prints():
    line = " ".join(userpath.PROVISION).format(inventory=userpath.INVENTORY)
    assert f"{line} --ask-vault-pass" in _code_lines()
    # The e2e swaps only the password prompt for a file, which the README offers too.
    assert " ".join(userpath.VAULT_PASSWORD).split()[0] in README


def test_the_readme_prints_the_user_path_in_order():
    lines = _code_lines()
    wanted = [
        "make setup-control && . .venv/bin/activate",
        f"cp -r ansible/inventories/example {userpath.INVENTORY}",
        "ssh-keygen -t ed25519 -f ~/.ssh/detector-deploy",  # userpath.deploy_keypair's step
        f"ansible-vault encrypt {userpath.INVENTORY}/group_vars/all/vault.yml",
        "fab trust-host",
        "fab deploy",
        "fab status",
    ]
    positions = [lines.index(line) for line in wanted]
    assert positions == sorted(positions), "the README's steps are out of order"
    assert "<!-- section: user -->" in README
    assert README.index("## Deploy your own") < README.index("## HTTP API")
    assert README.index("## HTTP API") < README.index("## Development")


def test_the_readme_states_production_timeouts_and_recycling():
    assert f"`worker_timeout_s` {DEFAULTS['detector_request_timeout_s']}" in README
    assert f"`graceful_timeout_s` {DEFAULTS['detector_graceful_timeout_s']}" in README
    recycling = (
        f"`max_requests` {DEFAULTS['detector_max_requests']} + jitter "
        f"{DEFAULTS['detector_max_requests_jitter']}"
    )
    assert recycling in README
    assert f"({DEFAULTS['detector_releases_keep']}) releases" in README

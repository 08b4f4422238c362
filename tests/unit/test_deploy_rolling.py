"""Rolling deploy behind an lb: batches, summary, inventory (upstream: test_detector_activate)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from deploy import commands
from deploy import inventory
from deploy import rolling

ROOT = Path(__file__).resolve().parents[2]


def test_batches_and_drained_names_never_empty_the_upstream():
    assert rolling.batches([1, 2, 3], 2) == [[1, 2], [3]]
    assert rolling.batches([1, 2], 0) == [[1], [2]]
    assert rolling.drained_names(["d1"], ["d1", "d2"]) == ["d1"]
    assert rolling.drained_names(["d1", "d2"], ["d1", "d2"]) == []
    assert rolling.drained_names(["d1"], ["d1"]) == []


def _outcomes() -> list[rolling.Outcome]:
    return [
        rolling.Outcome("d1", rolling.UPDATED, previous="r1"),
        rolling.Outcome("d2", rolling.UPDATED, previous=""),
        rolling.Outcome("d3", rolling.FAILED, previous="r1", detail="gate failed"),
        rolling.Outcome("d4"),
    ]


def test_a_failure_rolls_back_updated_hosts_newest_first_unless_continue_on_failure():
    back = rolling.to_roll_back(_outcomes(), continue_on_failure=False)
    assert [o.host for o in back] == ["d1"]  # d2 had no previous release to go back to
    assert rolling.to_roll_back(_outcomes(), continue_on_failure=True) == []
    fine = [rolling.Outcome("d1", rolling.UPDATED, previous="r1")]
    assert rolling.to_roll_back(fine, continue_on_failure=False) == []


def test_summary_names_every_host_and_the_verdict():
    lines = rolling.summary("r2", _outcomes(), 12.34)
    assert lines[:4] == [
        "d1: updated",
        "d2: updated",
        "d3: FAILED (gate failed)",
        "d4: not attempted",
    ]
    assert lines[4] == "roll of r2 FAILED on d3 after 12.3s; r2 live on 2 of 4 host(s)"
    ok = rolling.summary("r2", [rolling.Outcome("d1", rolling.UPDATED)], 1.0)
    assert ok[-1] == "release r2 live on 1 host(s) in 1.0s"


def test_curl_http_and_parse_included_read_status_headers_and_body():
    argv = commands.curl_http("http://127.0.0.1:8080/api/v1/detect", 60, "/tmp/s.jpg")
    assert argv[:5] == ["/usr/bin/curl", "--silent", "--show-error", "--include", "--max-time"]
    assert argv[-3:] == ["--form", "file=@/tmp/s.jpg;type=image/jpeg", argv[-1]]
    out = (
        "HTTP/1.1 100 Continue\r\n\r\n"
        "HTTP/1.1 200 OK\r\nX-Detector-Release: r2\r\nContent-Type: application/json\r\n\r\n"
        '{"detections": []}\n200'
    )
    assert commands.parse_included(out) == (
        200,
        {"x-detector-release": "r2", "content-type": "application/json"},
        '{"detections": []}',
    )
    assert commands.parse_included("curl: (7) Failed to connect\n000")[0] == 0


def _write_inventory(tmp_path: Path, with_lb: bool) -> Path:
    lb = "    lb:\n      hosts:\n        lb1: {ansible_host: 10.0.0.1}\n" if with_lb else ""
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    detector:\n      hosts:\n"
        "        d1: {ansible_host: 10.0.0.2}\n"
        "        d2: {ansible_host: 192.0.2.9, detector_private_address: 10.0.0.3}\n" + lb
    )
    return tmp_path


def _need_ansible_inventory():
    local = Path(sys.executable).parent / "ansible-inventory"
    if not (local.exists() or shutil.which("ansible-inventory")):
        pytest.skip("ansible-inventory not installed (make setup)")


def test_inventory_with_an_lb_group_yields_the_balancer_and_backend_ports(tmp_path):
    _need_ansible_inventory()
    hosts, bal = inventory.load_with_balancer(str(_write_inventory(tmp_path, True)))
    assert [h.name for h in hosts] == ["d1", "d2"]
    assert {h.backend_port for h in hosts} == {8080}
    assert bal is not None and bal.host.name == "lb1" and bal.host.address == "10.0.0.1"
    assert bal.servers == (("d1", "10.0.0.2"), ("d2", "10.0.0.3"))
    assert (bal.port, bal.max_fails, bal.fail_timeout_s, bal.keepalive) == (8080, 1, 10, 16)


def test_inventory_without_an_lb_group_is_the_single_host_shape(tmp_path):
    _need_ansible_inventory()
    hosts, bal = inventory.load_with_balancer(str(_write_inventory(tmp_path, False)))
    assert bal is None
    assert [(h.name, h.backend_port) for h in hosts] == [("d1", 0), ("d2", 0)]

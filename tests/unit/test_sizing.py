"""The one sizing rule (detector.sizing) and the Ansible role getting its numbers from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from detector import sizing

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "detector"


@pytest.mark.parametrize(
    ("cores", "memory_mb", "model", "workers", "memory_max_mb"),
    [
        # (16000 - 512) / 2 colors = 7744 MB per color; yolov3 costs 550 + 350 = 900 MB
        (2, 16000, "yolov3-tiny", 2, 7744),  # CPU-bound: one worker per core
        (8, 16000, "yolov3", 8, 7744),
        (8, 4000, "yolov3", 1, 1792),  # memory-bound: 1744 // 900; MemoryMax rounds up to 64
        (8, 8000, "yolov3", 4, 3776),  # 3744 // 900
        (4, 900, "yolov3", 1, 960),  # never fewer than one worker, nor MemoryMax below it
        (16, 2000, "yolov3-tiny", 1, 768),  # 744 // 650
        (4, 8000, "custom-model", 2, 3776),  # unknown models cost 1000 + 350
    ],
)
def test_sizing_rule_fits_both_colors(cores, memory_mb, model, workers, memory_max_mb):
    sized = sizing.size(cores, memory_mb, model)
    assert (sized.workers, sized.memory_max_mb) == (workers, memory_max_mb)
    assert sized.threads == 2  # one detection + one light request (health, page, 503s)
    assert sized.torch_threads == max(1, cores // workers)
    assert sized.memory_high_mb < sized.memory_max_mb
    assert sized.max_inflight == workers == sizing.admitted(workers)
    assert sized.max_conns == 2 * workers
    if memory_mb - sizing.RESERVE_MB >= 2 * sized.worker_memory_mb:  # room for two colors
        assert 2 * sized.memory_max_mb <= memory_mb - sizing.RESERVE_MB + 2 * 64
        assert sized.workers * sized.worker_memory_mb <= sized.memory_max_mb


@pytest.mark.parametrize(
    ("cores", "model", "rate"), [(2, "yolov3-tiny", 100), (8, "yolov3", 88), (1, "yolov3", 11)]
)
def test_the_rate_nginx_allows_one_client_is_the_hosts_throughput(cores, model, rate):
    assert sizing.size(cores, 64000, model).rate_per_s == rate


def test_one_color_gets_twice_the_share():
    assert sizing.size(8, 8000, "yolov3", colors=1).workers == 8  # 7488 // 900
    assert sizing.size(8, 8000, "yolov3", colors=2).workers == 4


def test_a_worker_is_admitted_one_detection_its_inference_lock_runs():
    """Issue 13.8: an admitted request never waits behind another inference (2 per worker
    measured 2.26x the unloaded p99 behind nginx, 1 per worker 0.93x)."""
    assert [sizing.admitted(w) for w in (0, 1, 2, 8)] == [1, 1, 2, 8]
    for workers in (1, 3):
        sized = sizing.size(8, 64000, "yolov3", workers=workers)
        assert sized.max_inflight == workers
        assert sized.max_conns == sized.max_inflight + workers  # a light-request thread each


def test_explicit_values_win():
    sized = sizing.size(2, 16000, "yolov3-tiny", workers=3, threads=1, worker_threads=5)
    assert (sized.workers, sized.torch_threads, sized.threads) == (3, 1, 5)


def test_a_bigger_decode_budget_means_fewer_workers():
    assert sizing.size(8, 8000, "yolov3", decode_memory_mb=850).workers == 2  # 3744 // 1400


def _script_task() -> dict:
    """Return the task of roles/detector/tasks/sizing.yml that runs the rule on the host."""
    tasks = yaml.safe_load((ROLE / "tasks" / "sizing.yml").read_text())
    scripts = [t for t in tasks if "ansible.builtin.script" in t]
    assert len(scripts) == 1, "the role must run detector/sizing.py, once"
    return scripts[0]


def test_the_role_runs_the_packages_rule_read_only():
    task = _script_task()
    command = task["ansible.builtin.script"]["cmd"]
    script = command.replace("{{ role_path }}", str(ROLE)).split()[0]
    assert Path(script).resolve() == ROOT / "service" / "detector" / "sizing.py"
    assert task["changed_when"] is False and task["check_mode"] is False


def test_no_second_copy_of_the_rule_in_ansible():
    rendered = [ROLE / "tasks" / "sizing.yml", *sorted((ROLE / "templates").iterdir())]
    for path in rendered:
        text = path.read_text()
        assert "//" not in text, f"{path} computes sizes itself"
        assert not re.search(r"memtotal_mb\s*[-*/]", text), f"{path} computes sizes itself"


def test_the_role_and_the_service_agree():
    """Run the script with the arguments the role passes (facts filled in) and compare."""
    command = _script_task()["ansible.builtin.script"]["cmd"]
    values = {
        "ansible_processor_vcpus": "6",
        "ansible_memtotal_mb": "12000",
        "detector_model": "yolov3",
        "detector_service_workers": "0",
        "detector_service_worker_memory_mb": "0",
        "detector_service_memory_reserve_mb": "512",
        "detector_decode_memory_mb": "350",
        "detector_service_colors | length": "2",
    }

    def fill(match: re.Match) -> str:
        expression = match.group(1).strip()
        for name, value in values.items():
            if expression.startswith(name):
                return value
        if expression == "role_path":
            return str(ROLE)
        raise AssertionError(f"the sizing task passes an unexpected value: {expression}")

    argv = re.sub(r"\{\{(.*?)\}\}", fill, command).split()
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    from_role = json.loads(out.stdout)
    expected = sizing.size(6, 12000, "yolov3", decode_memory_mb=350, colors=2)
    assert from_role == expected.__dict__
    unit = (ROLE / "templates" / "detector@.service.j2").read_text()
    for key in ("workers", "torch_threads", "memory_max_mb", "memory_high_mb"):
        assert f"_detector_sizing.{key}" in unit or key == "workers"
    assert "OOMPolicy=continue" in unit


def test_the_roles_task_renders_the_rules_numbers(tmp_path):
    """Run the role's sizing tasks on localhost (facts overridden) and compare with the rule."""
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-playbook is not installed in the venv; run `make setup`")
    out = tmp_path / "sizing.json"
    play = [
        {
            "name": "Size",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": True,
            "gather_subset": ["!all", "min"],
            "tasks": [
                {
                    "name": "Run the role's sizing",
                    "ansible.builtin.include_role": {"name": "detector", "tasks_from": "sizing"},
                },
                {
                    "name": "Keep the result",
                    "ansible.builtin.copy": {
                        "content": "{{ _detector_sizing | to_json }}",
                        "dest": str(out),
                        "mode": "0600",
                    },
                },
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    facts = {"ansible_processor_vcpus": 3, "ansible_memtotal_mb": 9000, "detector_model": "yolov3"}
    env = {
        **os.environ,
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".tmp"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "ansible" / "roles"),
    }
    result = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", str(tmp_path / "play.yml")]
        + ["-e", f"ansible_python_interpreter={sys.executable}", "-e", json.dumps(facts)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text()) == sizing.size(3, 9000, "yolov3").__dict__
    # tests/e2e/test_provision.py reads the printed sizing
    assert re.search(r"3 cores, 9000 MB RAM: 3 worker\(s\) x 1 thread\(s\)", result.stdout)

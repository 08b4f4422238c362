"""make torch (configured sources, then the torch index) and make setup-control (no torch)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "ansible" / "roles" / "detector" / "defaults" / "main.yml"
DUMMY_VERSION = "2.13.0+cpu"


def _make(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_make_installs_the_torch_the_provisioning_installs():
    """One setting: make reads detector_torch_spec/_index_url; the Makefile repeats no pin."""
    settings = yaml.safe_load(SETTINGS.read_text())
    result = _make("-s", "torch-settings")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"TORCH_SPEC={settings['detector_torch_spec']}",
        f"TORCH_INDEX={settings['detector_torch_index_url']}",
    ]
    assert "torch==" not in (REPO / "Makefile").read_text()


class _Index:
    """A PEP 503 index on 127.0.0.1 (directory listings) that records every path asked for."""

    def __init__(self, root: Path):
        self.paths: list[str] = []
        index = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                index.paths.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Index:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _dummy_torch(tmp: Path) -> Path:
    """Build a wheel named torch 2.13.0+cpu (an empty package) with the local setuptools."""
    src = tmp / "dummy-torch"
    (src / "torch").mkdir(parents=True)
    (src / "torch" / "__init__.py").write_text('"""Stand-in for the test of make torch."""\n')
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "torch"\nversion = "{DUMMY_VERSION}"\n'
    )
    out = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--wheel-dir", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("torch-*.whl"))


def _offline_pip_env(index_url: str) -> dict:
    """pip with no config file and no find-links: its only configured source is index_url."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL=index_url,
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


def _installed_torch(venv: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('torch'))"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True)
    return probe.stdout.decode().strip()


@pytest.mark.slow
def test_make_torch_tries_the_configured_sources_then_the_torch_index(tmp_path: Path):
    wheel = _dummy_torch(tmp_path)
    root = tmp_path / "www"
    for name in ("configured", "torch-index"):  # the configured index has no torch at first
        (root / name).mkdir(parents=True)
    (root / "torch-index" / "torch").mkdir()
    shutil.copy(wheel, root / "torch-index" / "torch" / wheel.name)
    spec = f"TORCH_SPEC=torch=={DUMMY_VERSION}"
    with _Index(root) as index:
        configured, torch_index = f"{index.url}/configured/", f"{index.url}/torch-index/"
        env = _offline_pip_env(configured)

        # Not in the configured index: the torch index serves it.
        venv = tmp_path / "venv1"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        result = _make("torch", f"VENV={venv}", spec, f"TORCH_INDEX={torch_index}", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "not in the configured package sources; trying " + torch_index in result.stdout
        assert _installed_torch(venv) == DUMMY_VERSION
        asked = [p for p in index.paths if p.endswith("/torch/")]
        assert asked[0] == "/configured/torch/" and "/torch-index/torch/" in asked, asked

        # In the configured index: the torch index is never asked.
        shutil.copytree(root / "torch-index" / "torch", root / "configured" / "torch")
        index.paths.clear()
        venv = tmp_path / "venv2"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        result = _make("torch", f"VENV={venv}", spec, f"TORCH_INDEX={torch_index}", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "from the configured package sources" in result.stdout
        assert _installed_torch(venv) == DUMMY_VERSION
        assert not [p for p in index.paths if p.startswith("/torch-index/")], index.paths

        # Nowhere: make fails and says where it looked.
        venv = tmp_path / "venv3"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        missing = "TORCH_SPEC=torch==2.13.0+nowhere"
        result = _make("torch", f"VENV={venv}", missing, f"TORCH_INDEX={torch_index}", env=env)
        assert result.returncode != 0 and torch_index in result.stdout
        assert _installed_torch(venv) == ""


@pytest.mark.slow
def test_setup_control_provisions_and_deploys_without_torch(tmp_path: Path):
    """The light install runs fab, ansible-playbook and the release build; torch is absent."""
    venv = tmp_path / "control"
    result = _make("setup-control", f"VENV={venv}", timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    bin_dir = venv / "bin"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["ANSIBLE_LOCAL_TEMP"] = str(tmp_path / "ansible-tmp")

    def run(*argv: str) -> str:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        return done.stdout

    python = str(bin_dir / "python")
    present = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])"
    assert run(python, "-c", present % (["torch", "numpy", "cv2", "flask"],)) == "[]\n"
    loaded = (
        "import sys; sys.path.insert(0, '.'); import fabfile; print(sorted(%r & set(sys.modules)))"
    )
    assert run(python, "-c", loaded % ({"torch", "numpy", "detector"},)) == "[]\n"
    assert "deploy" in run(str(bin_dir / "fab"), "--list")
    run(
        str(bin_dir / "ansible-playbook"),
        "-i",
        "ansible/inventories/example",
        "--syntax-check",
        "ansible/provision.yml",
    )
    build = (
        "from pathlib import Path; from deploy import release; "
        f"print(release.build(allow_dirty=True, out=Path({str(tmp_path / 'build')!r})).wheel)"
    )
    wheel = Path(run(python, "-c", build).strip())
    assert wheel.is_file() and wheel.name.startswith("detector-"), wheel

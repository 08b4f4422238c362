"""The darknet cfg parser: official cfgs parse into typed layers; anything else names its line."""

from __future__ import annotations

import pytest
from detector.model.cfg import CfgError
from detector.model.cfg import Convolutional
from detector.model.cfg import Maxpool
from detector.model.cfg import Route
from detector.model.cfg import Shortcut
from detector.model.cfg import Upsample
from detector.model.cfg import Yolo
from detector.model.cfg import parse_cfg
from detector.model.cfg import parse_cfg_text
from detector.model.darknet import Darknet
from model_helpers import TINY_CFG
from model_helpers import YOLOV3_CFG

HEAD = "[net]\nwidth=64\nheight=64\n"
TAIL = (
    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n\n"
    "[yolo]\nmask=0\nanchors=1,2\nclasses=1\nnum=1\n"
)


def test_yolov3_tiny_layers():
    cfg = parse_cfg(TINY_CFG)
    assert (cfg.net.width, cfg.net.height, cfg.net.channels) == (416, 416, 3)
    assert len(cfg.layers) == 24 and cfg.yolo_indices == (16, 23) and cfg.classes == 80
    assert cfg.layers[11] == Maxpool(size=2, stride=1, padding=1, line=93)
    assert cfg.layers[15] == Convolutional(255, 1, 1, 0, False, "linear", line=123)
    assert cfg.layers[17].layers == (13,)  # layers = -4 from 17
    assert cfg.layers[20].layers == (19, 8)  # layers = -1, 8
    assert cfg.layers[16].anchors == ((81, 82), (135, 169), (344, 319))  # mask = 3,4,5


def test_yolov3_layers():
    cfg = parse_cfg(YOLOV3_CFG)
    assert len(cfg.layers) == 107 and cfg.yolo_indices == (82, 94, 106)
    assert isinstance(cfg.layers[4], Shortcut) and cfg.layers[4].source == 1  # from=-3
    assert isinstance(cfg.layers[85], Upsample) and cfg.layers[85].stride == 2
    assert cfg.layers[86] == Route(layers=(85, 61), line=cfg.layers[86].line)
    assert isinstance(cfg.layers[106], Yolo)
    assert cfg.layers[106].anchors == ((10, 13), (16, 30), (33, 23))


def test_minimal_cfg_builds():
    cfg = parse_cfg_text(HEAD + TAIL, "mini.cfg")
    assert cfg.layers[0].padding == 0 and cfg.layers[0].activation == "linear"
    assert len(Darknet(cfg).conv_blocks()) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[convolutional]\nfilters=8\nsize=3\nfliters=4\n", "mini.cfg:7: [convolutional]"),
        ("[convolutional]\nfilters=8\nsize=3\nfliters=4\n", "unknown key 'fliters'"),
        ("[local]\nfilters=8\n", "mini.cfg:4: [local] (section at line 4): unknown section"),
        ("[route]\nlayers=-3\n", "layers=-3 points at layer -3"),
        ("[route]\nlayers=0\n", "layer 0 can only use layers 0..-1"),
        ("[maxpool]\nsize=2\n\n[route]\nlayers=5\n", "mini.cfg:8: [route]"),
        ("[route]\n", "[route] needs layers="),
        ("[maxpool]\nsize=2\n\n[shortcut]\nfrom=-1,-2\n", "from= takes exactly one layer"),
        ("[convolutional]\nfilters=eight\n", "bad value filters='eight'"),
        ("[convolutional]\nactivation=gelu\n", "activation 'gelu' is not supported"),
        ("[convolutional]\ngroups=2\n", "grouped convolutions are not supported"),
        ("[convolutional]\nbatch_normalize=2\n", "bad value batch_normalize='2'"),
        ("[maxpool]\nsize=2\nsize=3\n", "key 'size' repeated"),
        ("[maxpool]\nsize 2\n", "mini.cfg:5: expected key=value"),
        ("[region]\nclasses=1\n", "[region] (YOLOv2) is not supported"),
    ],
)
def test_errors_name_file_line_and_section(text, message):
    with pytest.raises(CfgError) as err:
        parse_cfg_text(HEAD + text + "\n" + TAIL, "mini.cfg")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[convolutional]\nfilters=4\n", "mini.cfg: the first section must be [net]"),
        (HEAD + "[maxpool]\nsize=2\n", "no [yolo] section"),
        ("width=3\n[net]\n", "mini.cfg:1: key 'width=3' appears before any [section]"),
        (HEAD + "[yolo]\nmask=0,4\nanchors=1,2,3,4\nnum=2\n", "mask=[0, 4] refers to missing"),
        (HEAD + "[yolo]\nanchors=1,2,3\nnum=1\n", "anchors= must hold num=1 x,y pairs"),
        (HEAD + "[net\n", "mini.cfg:4: malformed section header"),
        (HEAD.replace("width=64", "widht=64") + TAIL, "mini.cfg:2: [net] (section at line 1)"),
    ],
)
def test_structure_errors(text, message):
    with pytest.raises(CfgError) as err:
        parse_cfg_text(text, "mini.cfg")
    assert message in str(err.value)


def test_build_errors_name_the_line():
    bad_head = (
        HEAD + "[convolutional]\nfilters=16\nsize=1\n\n[yolo]\nmask=0\nanchors=1,2\nclasses=1\n"
    )
    with pytest.raises(CfgError, match=r"mini.cfg:8: \[yolo\] needs 6 input channels"):
        Darknet(parse_cfg_text(bad_head, "mini.cfg"))
    shortcut = (
        HEAD + "[convolutional]\nfilters=4\n\n[convolutional]\nfilters=8\n\n[shortcut]\nfrom=-2\n"
    )
    with pytest.raises(CfgError, match=r"mini.cfg:10: \[shortcut\] adds layer 0 \(4 channels\)"):
        Darknet(parse_cfg_text(shortcut + TAIL, "mini.cfg"))


def test_training_keys_are_accepted(tmp_path):
    text = HEAD + "momentum=0.9\nburn_in=1000\nmosaic=1\n" + TAIL + "ignore_thresh=.7\njitter=.3\n"
    assert parse_cfg_text(text).net.width == 64


def test_unreadable_file(tmp_path):
    with pytest.raises(CfgError, match="cannot read cfg"):
        parse_cfg(tmp_path / "absent.cfg")

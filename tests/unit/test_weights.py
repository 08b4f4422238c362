"""The weights loader: header versions, exact size against the cfg, every parameter in order."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from detector.model.cfg import parse_cfg
from detector.model.cfg import parse_cfg_text
from detector.model.darknet import Darknet
from detector.model.weights import WeightsError
from detector.model.weights import count_floats
from detector.model.weights import expected_size
from detector.model.weights import load_weights
from detector.model.weights import read_header
from detector.model.weights import write_weights
from model_helpers import TINY_CFG
from model_helpers import YOLOV3_CFG

# conv 0: BN, 3 -> 4 channels, 3x3; conv 1 (head): no BN, 4 -> 6 channels, 1x1, with bias.
SMALL_CFG = (
    "[net]\nwidth=32\nheight=32\nchannels=3\n\n"
    "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n"
    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n\n"
    "[yolo]\nmask=0\nanchors=4,4\nclasses=1\nnum=1\n"
)
SMALL_FLOATS = (4 * 4 + 4 * 3 * 9) + (6 + 6 * 4)


def small_model() -> Darknet:
    return Darknet(parse_cfg_text(SMALL_CFG, "small.cfg"))


def weights_file(path, header: bytes, floats: int) -> np.ndarray:
    values = np.arange(floats, dtype="<f4") / 100 + 1  # distinct, positive (variances)
    path.write_bytes(header + values.tobytes())
    return values


def test_official_sizes():
    assert expected_size(Darknet(parse_cfg(YOLOV3_CFG))) == 248_007_048  # yolov3.weights
    assert expected_size(Darknet(parse_cfg(TINY_CFG))) == 35_434_956  # yolov3-tiny.weights


@pytest.mark.parametrize(
    ("header", "size", "seen"),
    [
        (struct.pack("<3iQ", 0, 2, 0, 2**40), 20, 2**40),  # 0.2+: 64-bit seen
        (struct.pack("<3ii", 0, 1, 0, 32013312), 16, 32013312),  # 0.1: 32-bit seen
        (struct.pack("<3iQ", 1, 0, 0, 7), 20, 7),
    ],
)
def test_header_versions(tmp_path, header, size, seen):
    parsed = read_header(header)
    assert (parsed.size, parsed.seen) == (size, seen)
    model = small_model()
    values = weights_file(tmp_path / "w", header, SMALL_FLOATS)
    assert load_weights(model, tmp_path / "w").size == size
    assert model.conv_blocks()[1].conv.weight.flatten()[-1].item() == pytest.approx(values[-1])


def test_load_order_and_head_bias(tmp_path):
    model = small_model()
    header = struct.pack("<3iQ", 0, 2, 0, 0)
    values = torch.from_numpy(weights_file(tmp_path / "w", header, SMALL_FLOATS))
    load_weights(model, tmp_path / "w")
    bn_block, head = model.conv_blocks()
    assert torch.equal(bn_block.bn.bias, values[0:4])  # beta first
    assert torch.equal(bn_block.bn.weight, values[4:8])  # then gamma
    assert torch.equal(bn_block.bn.running_mean, values[8:12])
    assert torch.equal(bn_block.bn.running_var, values[12:16])
    assert torch.equal(bn_block.conv.weight.flatten(), values[16:124])
    assert torch.equal(head.conv.bias, values[124:130])  # the conv before [yolo] has a bias
    assert torch.equal(head.conv.weight.flatten(), values[130:154])
    assert count_floats(model) == SMALL_FLOATS == 154


@pytest.mark.parametrize(
    ("floats", "word"), [(SMALL_FLOATS - 1, "short"), (SMALL_FLOATS + 6, "long")]
)
def test_wrong_size_is_an_error(tmp_path, floats, word):
    weights_file(tmp_path / "w", struct.pack("<3iQ", 0, 2, 0, 0), floats)
    with pytest.raises(WeightsError) as err:
        load_weights(small_model(), tmp_path / "w")
    message = str(err.value)
    assert f"file too {word}" in message and "small.cfg needs exactly 636" in message


def test_trailing_bytes_and_truncated_header(tmp_path):
    path = tmp_path / "w"
    weights_file(path, struct.pack("<3iQ", 0, 2, 0, 0), SMALL_FLOATS)
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(WeightsError, match="too long"):
        load_weights(small_model(), path)
    path.write_bytes(b"\0" * 10)
    with pytest.raises(WeightsError, match="a darknet header needs 16"):
        load_weights(small_model(), path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_weights(small_model(), tmp_path / "absent.weights")


def test_foreign_header():
    with pytest.raises(WeightsError, match="not a darknet weights file"):
        read_header(struct.pack("<3iQ", 1000, 0, 0, 0))


def test_write_then_load_round_trip(tmp_path):
    source = small_model()
    torch.manual_seed(0)
    for p in source.state_dict().values():
        p.copy_(torch.rand_like(p) + 0.5)
    write_weights(source, tmp_path / "w")
    target = small_model()
    load_weights(target, tmp_path / "w")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_real_tiny_weights(tiny_weights):
    model = Darknet(parse_cfg(TINY_CFG))
    header = load_weights(model, tiny_weights)
    assert (header.major, header.minor, header.size) == (0, 2, 20)
    head = model.conv_blocks()[9].conv  # conv 15, before the first [yolo]
    assert head.bias is not None and head.bias.abs().sum() > 0

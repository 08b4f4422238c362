"""Read a darknet .weights file into a Darknet module, checking the header and the exact size."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .darknet import Darknet


class WeightsError(ValueError):
    """The weights file does not fit the cfg (wrong size, bad header)."""


@dataclass(frozen=True)
class Header:
    """The weights header: version major.minor.revision and images seen in training."""

    major: int
    minor: int
    revision: int
    seen: int
    size: int  # header bytes: 16 or 20


def read_header(data: bytes) -> Header:
    """Parse the header; `seen` is 64-bit from version 0.2 on, as darknet's load_weights reads it.

    Darknet (src/parser.c, load_weights_upto): three int32 version fields, then `seen` as size_t
    when major * 10 + minor >= 2 and both are < 1000, else as int32.
    """
    if len(data) < 12:
        raise WeightsError(f"weights file is only {len(data)} bytes; a darknet header needs 16+")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if not (0 <= major < 1000 and 0 <= minor < 1000):
        raise WeightsError(
            f"weights header version {major}.{minor} is not a darknet weights file "
            "(transposed or foreign format)"
        )
    wide = major * 10 + minor >= 2
    size = 20 if wide else 16
    if len(data) < size:
        raise WeightsError(f"weights file is only {len(data)} bytes; its header needs {size}")
    (seen,) = struct.unpack_from("<Q" if wide else "<i", data, 12)
    return Header(major, minor, revision, seen, size)


def count_floats(model: Darknet) -> int:
    """Return how many float32 values the weights file must hold for this model."""
    total = 0
    for block in model.conv_blocks():
        total += block.conv.weight.numel() + block.conv.out_channels * (
            4 if block.bn is not None else 1
        )
    return total


def expected_size(model: Darknet, header_size: int = 20) -> int:
    """Return the exact file size in bytes for this model and header size."""
    return header_size + 4 * count_floats(model)


def load_weights(model: Darknet, path: str | Path) -> Header:
    """Load conv (and batch-norm) parameters in file order; the file must hold exactly that many.

    Per conv block: with batch norm, beta (bias), gamma (scale), running mean, running variance;
    without, the conv bias (the heads before [yolo] have one); then the conv weights.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = bytearray(path.stat().st_size)  # writable, so torch can view it without a copy
            f.readinto(data)
    except OSError as exc:
        raise WeightsError(f"cannot read weights {path}: {exc.strerror}") from None
    header = read_header(data)
    need = count_floats(model)
    have_bytes = len(data) - header.size
    if have_bytes != 4 * need:
        direction = "short" if have_bytes < 4 * need else "long"
        raise WeightsError(
            f"weights {path} is {len(data)} bytes but cfg {model.cfg.path} needs exactly "
            f"{header.size + 4 * need} ({need} floats after a {header.size}-byte header): "
            f"file too {direction}; is it the weights for this cfg?"
        )
    values = torch.from_numpy(np.frombuffer(data, dtype="<f4", offset=header.size))
    pointer = 0

    def take(tensor: torch.Tensor) -> None:
        nonlocal pointer
        n = tensor.numel()
        tensor.data.copy_(values[pointer : pointer + n].view_as(tensor))
        pointer += n

    with torch.no_grad():
        for block in model.conv_blocks():
            if block.bn is not None:
                for name in ("bias", "weight", "running_mean", "running_var"):
                    take(getattr(block.bn, name))
            else:
                take(block.conv.bias)
            take(block.conv.weight)
    assert pointer == need  # guaranteed by the size check above
    return header


def write_weights(
    model: Darknet, path: str | Path, header: tuple[int, int, int, int] = (0, 2, 0, 0)
) -> None:
    """Write the model's parameters as a darknet weights file (used by tests and the benchmark)."""
    major, minor, revision, seen = header
    wide = major * 10 + minor >= 2
    parts = [struct.pack("<3i", major, minor, revision), struct.pack("<Q" if wide else "<i", seen)]
    with torch.no_grad():
        for block in model.conv_blocks():
            if block.bn is not None:
                tensors = [getattr(block.bn, n) for n in ("bias", "weight", "running_mean")]
                tensors.append(block.bn.running_var)
            else:
                tensors = [block.conv.bias]
            tensors.append(block.conv.weight)
            parts.extend(t.detach().float().numpy().astype("<f4").tobytes() for t in tensors)
    Path(path).write_bytes(b"".join(parts))

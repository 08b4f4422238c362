"""Read a darknet .weights file into a Darknet module, checking the header and the exact size."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cfg import WeightsError  # noqa: F401  (defined without torch; raised and re-exported here)
from .darknet import BN_EPS
from .darknet import ConvBlock
from .darknet import Darknet


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


def _parts(block: ConvBlock) -> list[tuple[str, torch.Size]]:
    """Return (name, shape) of a conv block's arrays in file order."""
    channels = torch.Size([block.conv.out_channels])
    if block.bn is not None:
        parts = [(name, channels) for name in ("beta", "gamma", "mean", "var")]
    else:
        parts = [("bias", channels)]
    return parts + [("weight", block.conv.weight.shape)]


def read_blocks(
    model: Darknet, path: str | Path
) -> Iterator[tuple[ConvBlock, dict[str, torch.Tensor]]]:
    """Yield each conv block with its arrays from the file (float32 tensors), one block at a time.

    The size is checked against the cfg before anything is read; then each block's values are
    read straight into their own array (no whole-file buffer), so a caller that turns them into
    the final parameters and drops them holds at most one block's raw values at a time. With
    batch norm the file order is beta (bias), gamma (scale), running mean, running variance;
    without, the conv bias (the heads before [yolo] have one); then the conv weights.
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise WeightsError(f"cannot read weights {path}: {exc.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        header = read_header(f.read(20))
        need = count_floats(model)
        have_bytes = size - header.size
        if have_bytes != 4 * need:
            direction = "short" if have_bytes < 4 * need else "long"
            raise WeightsError(
                f"weights {path} is {size} bytes but cfg {model.cfg.path} needs exactly "
                f"{header.size + 4 * need} ({need} floats after a {header.size}-byte header): "
                f"file too {direction}; is it the weights for this cfg?"
            )
        f.seek(header.size)
        for block in model.conv_blocks():
            arrays = {}
            for name, shape in _parts(block):
                n = shape.numel()
                values = np.fromfile(f, dtype="<f4", count=n)
                if values.size != n:
                    raise WeightsError(f"weights {path} changed size while being read")
                arrays[name] = torch.from_numpy(values).view(shape)
            yield block, arrays
    return header


def check_size(model: Darknet, path: str | Path) -> Header:
    """Check the file's header and exact size against the cfg without reading the values."""
    blocks = read_blocks(model, path)
    try:
        next(blocks)
    except StopIteration as stop:  # a model without conv blocks
        return stop.value
    blocks.close()
    with Path(path).open("rb") as f:
        return read_header(f.read(20))


def load_weights(model: Darknet, path: str | Path) -> Header:
    """Copy conv (and batch-norm) parameters into the model in file order (unfused).

    The file must hold exactly as many floats as the cfg needs (see read_blocks).
    """
    blocks = read_blocks(model, path)
    with torch.no_grad():
        while True:
            try:
                block, arrays = next(blocks)
            except StopIteration as stop:
                return stop.value
            if block.bn is not None:
                for name, attr in (("beta", "bias"), ("gamma", "weight")):
                    getattr(block.bn, attr).copy_(arrays[name])
                block.bn.running_mean.copy_(arrays["mean"])
                block.bn.running_var.copy_(arrays["var"])
            else:
                block.conv.bias.copy_(arrays["bias"])
            block.conv.weight.copy_(arrays["weight"])


def load_fused(model: Darknet, path: str | Path, dtype: torch.dtype = torch.float32) -> Header:
    """Load the weights with every batch norm folded in, as `dtype` channels_last parameters.

    The model may be built on the meta device (no memory, no random init): each conv gets new
    parameters made from that block's values only, so the peak is the final parameters plus one
    block (yolov3: 248 MB + 19 MB, instead of model + file buffer + fused copy).
    """
    blocks = read_blocks(model, path)
    with torch.no_grad():
        while True:
            try:
                block, arrays = next(blocks)
            except StopIteration as stop:
                return stop.value
            weight = arrays.pop("weight")
            if block.bn is not None:
                # Same arithmetic as DarknetBatchNorm.scale_shift, so fused == unfused + fuse().
                scale = arrays["gamma"] / (arrays["var"].sqrt() + BN_EPS)
                bias = arrays["beta"] - arrays["mean"] * scale
                weight.mul_(scale.view(-1, 1, 1, 1))  # in place: the block's own array
            else:
                bias = arrays["bias"]
            block.set_conv(
                weight.to(dtype=dtype, memory_format=torch.channels_last),
                bias.to(dtype).contiguous(),
            )
            del weight, bias, arrays


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

"""Seeded random weights of realistic scale, to test and time models without their files."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .cfg import parse_cfg
from .darknet import Darknet
from .darknet import DarknetBatchNorm
from .weights import write_weights

OBJECTNESS_BIAS = -6.0  # few boxes pass a 0.25 threshold, as on a real photo


def _calibration_input(net_w: int, net_h: int, generator: torch.Generator) -> torch.Tensor:
    """Return a batch of photo-like inputs (values 0..1): smooth blobs, hard-edged rectangles,
    fine texture and their mix, so the measured statistics hold for real photos too.
    """
    size = (net_h, net_w)

    def blobs(cells: int) -> torch.Tensor:
        coarse = torch.rand(1, 3, cells, cells, generator=generator)
        return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)

    edges = F.interpolate(torch.rand(1, 3, 12, 12, generator=generator), size=size)  # nearest
    texture = torch.rand(1, 3, net_h, net_w, generator=generator)
    smooth = blobs(net_w // 32 + 1)
    mixed = (0.5 * edges + 0.3 * blobs(net_w // 8) + 0.2 * texture).clamp(0, 1)
    return torch.cat((smooth, edges, 0.7 * smooth + 0.3 * texture, mixed), 0)


@torch.no_grad()
def randomize(model: Darknet, seed: int = 0) -> Darknet:
    """Fill the model with He-scaled conv weights and batch-norm statistics measured on a
    photo-like input, so every batch-norm output is about unit scale (as in a trained net) and
    nothing saturates or blows up through the residual stack. Returns the model.
    """
    generator = torch.Generator().manual_seed(seed)
    blocks = model.conv_blocks()
    for block in blocks:
        conv = block.conv
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        conv.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
        if block.bn is not None:
            block.bn.weight.uniform_(0.5, 1.5, generator=generator)
            block.bn.bias.normal_(0.0, 0.2, generator=generator)
        else:  # a head before [yolo]: logits of a few units, objectness mostly low
            conv.weight.mul_(0.5)
            conv.bias.normal_(0.0, 0.5, generator=generator)
    for head in model.cfg.yolo_indices:
        conv = model.module_list[head - 1].conv
        per_anchor = conv.out_channels // len(model.cfg.layers[head].anchors)
        conv.bias[4::per_anchor] += OBJECTNESS_BIAS

    def calibrate(module: DarknetBatchNorm, inputs: tuple) -> None:
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)) + 1e-3)

    hooks = [
        block.bn.register_forward_pre_hook(calibrate) for block in blocks if block.bn is not None
    ]
    try:
        model.eval()(_calibration_input(model.cfg.net.width, model.cfg.net.height, generator))
    finally:
        for hook in hooks:
            hook.remove()
    return model


def write_random_weights(cfg_path: str | Path, out_path: str | Path, seed: int = 0) -> Path:
    """Write a seeded random .weights file that fits the cfg; returns its path."""
    model = randomize(Darknet(parse_cfg(cfg_path)), seed)
    write_weights(model, out_path)
    return Path(out_path)

"""Build a torch module from a parsed cfg: one module per darknet layer, one forward loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cfg import CfgError
from .cfg import Convolutional
from .cfg import Maxpool
from .cfg import ModelCfg
from .cfg import Route
from .cfg import Shortcut
from .cfg import Upsample
from .cfg import Yolo

LEAKY_SLOPE = 0.1  # darknet's leaky activation
# Darknet normalizes with (x - mean) / (sqrt(var) + .000001f) (src/blas.c, normalize_cpu).
BN_EPS = 1e-6


def activation(name: str) -> nn.Module:
    """Return the torch module for a darknet activation name."""
    if name == "leaky":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "logistic":
        return nn.Sigmoid()
    if name == "mish":
        return nn.Mish()
    if name == "swish":
        return nn.SiLU()
    return nn.Identity()


class DarknetBatchNorm(nn.Module):
    """Inference batch norm, darknet's formula: gamma * (x - mean) / (sqrt(var) + eps) + beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.zeros(channels))

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the per-channel (scale, shift) this norm applies."""
        scale = self.weight / (self.running_var.sqrt() + BN_EPS)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class ConvBlock(nn.Module):
    """[convolutional]: conv (with bias when there is no batch norm), batch norm, activation."""

    def __init__(self, spec: Convolutional, in_channels: int) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(
            in_channels,
            spec.filters,
            spec.size,
            spec.stride,
            spec.padding,
            bias=not spec.batch_normalize,
        )
        self.bn = DarknetBatchNorm(spec.filters) if spec.batch_normalize else None
        self.act = activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the batch norm into the conv weights and bias (inference only)."""
        if self.bn is None:
            return
        scale, shift = self.bn.scale_shift()
        conv = self.conv
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding
        )
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(shift)
        self.conv, self.bn = fused, None

    def set_conv(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Replace conv and batch norm by a conv with these (already fused) parameters, no copy."""
        conv = self.conv
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            device="meta",  # no allocation, no random init: the parameters are replaced below
        )
        fused.weight = nn.Parameter(weight, requires_grad=False)
        fused.bias = nn.Parameter(bias, requires_grad=False)
        self.conv, self.bn = fused, None


class MaxPool(nn.Module):
    """[maxpool] with darknet's padding: `padding // 2` before, the rest after, padded with -inf."""

    def __init__(self, spec: Maxpool) -> None:
        super().__init__()
        self.size, self.stride = spec.size, spec.stride
        before = spec.padding // 2
        self.pad = (before, spec.padding - before, before, spec.padding - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad) and self._pad_used(x.shape[2], x.shape[3]):
            x = F.pad(x, self.pad, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)

    def _pad_used(self, h: int, w: int) -> bool:
        """Return whether any pooling window reaches the padding (size 2 stride 2 on an even
        side never does): then the copy that padding costs can be skipped."""
        left, right, top, bottom = self.pad
        if left or top:
            return True
        for side, after in ((h, bottom), (w, right)):
            padded_out = (side + after - self.size) // self.stride + 1
            if after and (padded_out - 1) * self.stride + self.size > side:
                return True
        return False


class Upsampling(nn.Module):
    """[upsample]: nearest neighbour by an integer factor."""

    def __init__(self, spec: Upsample) -> None:
        super().__init__()
        self.stride = spec.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class FeatureConcat(nn.Module):
    """[route]: concatenate earlier layers' outputs along channels."""

    def __init__(self, spec: Route) -> None:
        super().__init__()
        self.layers = spec.layers

    def forward(self, x: torch.Tensor, outputs: list) -> torch.Tensor:
        if len(self.layers) == 1:
            return outputs[self.layers[0]]
        return torch.cat([outputs[i] for i in self.layers], 1)


class ShortcutAdd(nn.Module):
    """[shortcut]: add an earlier layer's output to the previous one, then the activation."""

    def __init__(self, spec: Shortcut) -> None:
        super().__init__()
        self.source = spec.source
        self.act = activation(spec.activation)

    def forward(self, x: torch.Tensor, outputs: list) -> torch.Tensor:
        return self.act(x + outputs[self.source])


class YoloHead(nn.Module):
    """[yolo]: passes the raw prediction map through; decoding is in postprocess (fp32)."""

    def __init__(self, spec: Yolo) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Darknet(nn.Module):
    """A YOLOv3-family network; forward returns the raw map feeding each [yolo] head."""

    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        self.cfg = cfg
        channels = [cfg.net.channels]  # channels[i + 1] = output channels of layer i
        modules = []
        for spec in cfg.layers:
            c_in = channels[-1]
            if isinstance(spec, Convolutional):
                module, c_out = ConvBlock(spec, c_in), spec.filters
            elif isinstance(spec, Maxpool):
                module, c_out = MaxPool(spec), c_in
            elif isinstance(spec, Upsample):
                module, c_out = Upsampling(spec), c_in
            elif isinstance(spec, Route):
                module, c_out = FeatureConcat(spec), sum(channels[i + 1] for i in spec.layers)
            elif isinstance(spec, Shortcut):
                if channels[spec.source + 1] != c_in:
                    raise CfgError(
                        f"{cfg.path}:{spec.line}: [shortcut] adds layer {spec.source} "
                        f"({channels[spec.source + 1]} channels) to {c_in} channels"
                    )
                module, c_out = ShortcutAdd(spec), c_in
            else:
                expected = len(spec.anchors) * (5 + spec.classes)
                if c_in != expected:
                    raise CfgError(
                        f"{cfg.path}:{spec.line}: [yolo] needs {expected} input channels "
                        f"({len(spec.anchors)} anchors x (5 + {spec.classes} classes)), "
                        f"the layer before gives {c_in}"
                    )
                module, c_out = YoloHead(spec), c_in
            modules.append(module)
            channels.append(c_out)
        self.module_list = nn.ModuleList(modules)
        # Keep only outputs a later route/shortcut reads, and only until its last reader ran.
        self.saved = set()
        last_reader: dict[int, int] = {}
        for index, spec in enumerate(cfg.layers):
            sources = spec.layers if isinstance(spec, Route) else ()
            if isinstance(spec, Shortcut):
                sources = (spec.source,)
            for source in sources:
                self.saved.add(source)
                last_reader[source] = index
        self.release_after: dict[int, list[int]] = {}
        for source, reader in last_reader.items():
            self.release_after.setdefault(reader, []).append(source)

    def conv_blocks(self) -> list[ConvBlock]:
        """Return the conv blocks in weights-file order."""
        return [m for m in self.module_list if isinstance(m, ConvBlock)]

    def fuse(self) -> Darknet:
        """Fold every batch norm into its conv; returns self."""
        for block in self.conv_blocks():
            block.fuse()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list = [None] * len(self.module_list)
        heads = []
        for index, module in enumerate(self.module_list):
            if isinstance(module, (FeatureConcat, ShortcutAdd)):
                x = module(x, outputs)
            else:
                x = module(x)
            if isinstance(module, YoloHead):
                heads.append(x)
            if index in self.saved:
                outputs[index] = x
            for source in self.release_after.get(index, ()):
                outputs[source] = None
        return heads

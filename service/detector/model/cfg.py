"""Parse a darknet .cfg into typed layer blocks, rejecting anything the model cannot build."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Union

ACTIVATIONS = ("linear", "leaky", "relu", "logistic", "mish", "swish")

# [net]: only width, height and channels matter for inference; these are training settings darknet
# (and AlexeyAB's fork) accept, listed so that a typo is still an error.
_NET_TRAINING_KEYS = {
    "batch", "subdivisions", "momentum", "decay", "angle", "saturation", "exposure", "hue",
    "learning_rate", "burn_in", "max_batches", "policy", "steps", "scales", "step", "gamma",
    "power", "max_crop", "min_crop", "aspect", "jitter", "flip", "mosaic", "mixup", "cutmix",
    "blur", "letter_box", "adam", "b1", "b2", "eps", "track", "time_steps", "augment_speed",
    "sequential_subdivisions", "random", "resize", "inputs", "max_chart_loss", "label_smooth_eps",
}  # fmt: skip
_YOLO_TRAINING_KEYS = {
    "jitter", "ignore_thresh", "truth_thresh", "random", "iou_normalizer", "cls_normalizer",
    "iou_loss", "iou_thresh", "nms_kind", "beta_nms", "max_delta", "counters_per_class",
    "label_smooth_eps", "resize", "focal_loss", "max", "obj_normalizer", "beta1",
}  # fmt: skip


class CfgError(ValueError):
    """The cfg cannot be parsed or built; the message names the file, line and section."""


class WeightsError(ValueError):
    """The weights file does not fit the cfg (wrong size, bad header); weights.py raises it."""


@dataclass(frozen=True)
class Net:
    """The [net] block: network input shape."""

    width: int = 416
    height: int = 416
    channels: int = 3
    line: int = 0


@dataclass(frozen=True)
class Convolutional:
    """A [convolutional] block: conv, optional batch norm, activation."""

    filters: int = 1
    size: int = 1
    stride: int = 1
    padding: int = 0
    batch_normalize: bool = False
    activation: str = "logistic"
    line: int = 0


@dataclass(frozen=True)
class Maxpool:
    """A [maxpool] block; `padding` is darknet's total padding (default size - 1)."""

    size: int = 1
    stride: int = 1
    padding: int = 0
    line: int = 0


@dataclass(frozen=True)
class Route:
    """A [route] block: concatenation of earlier layers, as absolute indices."""

    layers: tuple[int, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Shortcut:
    """A [shortcut] block: sum of the previous layer and `source` (absolute index)."""

    source: int = 0
    activation: str = "linear"
    line: int = 0


@dataclass(frozen=True)
class Upsample:
    """An [upsample] block: nearest-neighbour upscaling by `stride`."""

    stride: int = 2
    line: int = 0


@dataclass(frozen=True)
class Yolo:
    """A [yolo] block: the anchors (pixels of the network input) this head predicts with."""

    anchors: tuple[tuple[float, float], ...] = ()
    classes: int = 80
    scale_x_y: float = 1.0
    line: int = 0


Layer = Union[Convolutional, Maxpool, Route, Shortcut, Upsample, Yolo]


@dataclass(frozen=True)
class ModelCfg:
    """A parsed cfg: the [net] block and the layers in file order (index = darknet layer index)."""

    net: Net
    layers: tuple[Layer, ...]
    path: str = "<cfg>"
    yolo_indices: tuple[int, ...] = field(default=())

    @property
    def classes(self) -> int:
        """Return the class count (the same for every [yolo] head)."""
        return self.layers[self.yolo_indices[0]].classes


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(" ", "").split(",") if v]


def _bool01(text: str) -> bool:
    value = int(text)
    if value not in (0, 1):
        raise ValueError(f"expected 0 or 1, got {text}")
    return bool(value)


def _read_sections(text: str, path: str) -> list[tuple[str, int, dict[str, tuple[str, int]]]]:
    """Split cfg text into (section name, line, {key: (value, line)}) in file order."""
    sections: list[tuple[str, int, dict[str, tuple[str, int]]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise CfgError(f"{path}:{number}: malformed section header {raw.strip()!r}")
            sections.append((line[1:-1].strip().lower(), number, {}))
            continue
        if "=" not in line:
            raise CfgError(f"{path}:{number}: expected key=value, got {raw.strip()!r}")
        if not sections:
            raise CfgError(f"{path}:{number}: key {line!r} appears before any [section]")
        key, value = (part.strip() for part in line.split("=", 1))
        options = sections[-1][2]
        if key.lower() in options:
            raise CfgError(f"{path}:{number}: key {key!r} repeated in [{sections[-1][0]}]")
        options[key.lower()] = (value, number)
    return sections


class _Block:
    """Typed access to one section's options; every key must be read or explicitly ignored."""

    def __init__(self, name: str, line: int, options: dict, path: str) -> None:
        self.name, self.line, self.options, self.path = name, line, options, path
        self.used: set[str] = set()

    def where(self, key: str | None = None) -> str:
        line = self.options[key][1] if key in self.options else self.line
        return f"{self.path}:{line}: [{self.name}] (section at line {self.line})"

    def get(self, key: str, convert, default):
        self.used.add(key)
        if key not in self.options:
            return default
        value = self.options[key][0]
        try:
            return convert(value)
        except ValueError as exc:
            raise CfgError(f"{self.where(key)}: bad value {key}={value!r}: {exc}") from None

    def ignore(self, keys) -> None:
        self.used.update(k for k in keys if k in self.options)

    def finish(self) -> None:
        unknown = sorted(set(self.options) - self.used)
        if unknown:
            key = unknown[0]
            raise CfgError(
                f"{self.where(key)}: unknown key {key!r}; this reader supports the yolov3 "
                "family only (remove the key or use a supported layer)"
            )


def _absolute(block: _Block, key: str, value: int, index: int) -> int:
    """Turn a darknet layer reference (negative = relative) into an absolute earlier index."""
    target = index + value if value < 0 else value
    if not 0 <= target < index:
        raise CfgError(
            f"{block.where(key)}: {key}={block.options[key][0]} points at layer {target}, "
            f"but layer {index} can only use layers 0..{index - 1}"
        )
    return target


def _activation(block: _Block, default: str) -> str:
    value = block.get("activation", str.lower, default)
    if value not in ACTIVATIONS:
        raise CfgError(
            f"{block.where('activation')}: activation {value!r} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    return value


def _build(block: _Block, index: int) -> Layer:
    """Convert one section into its typed layer, index being its darknet layer index."""
    name = block.name
    if name in ("convolutional", "conv"):
        size = block.get("size", int, 1)
        pad = block.get("pad", _bool01, False)
        padding = block.get("padding", int, 0)
        if block.get("groups", int, 1) != 1:
            raise CfgError(f"{block.where('groups')}: grouped convolutions are not supported")
        layer = Convolutional(
            filters=block.get("filters", int, 1),
            size=size,
            stride=block.get("stride", int, 1),
            padding=size // 2 if pad else padding,
            batch_normalize=block.get("batch_normalize", _bool01, False),
            activation=_activation(block, "logistic"),
            line=block.line,
        )
        if layer.filters < 1 or layer.size < 1 or layer.stride < 1:
            raise CfgError(f"{block.where()}: filters, size and stride must be positive")
    elif name in ("maxpool", "max"):
        size = block.get("size", int, block.get("stride", int, 1))
        layer = Maxpool(
            size=size,
            stride=block.get("stride", int, 1),
            padding=block.get("padding", int, size - 1),
            line=block.line,
        )
    elif name == "route":
        if "layers" not in block.options:
            raise CfgError(f"{block.where()}: [route] needs layers=")
        values = block.get("layers", _ints, [])
        if not values:
            raise CfgError(f"{block.where('layers')}: [route] layers= is empty")
        layer = Route(
            layers=tuple(_absolute(block, "layers", v, index) for v in values), line=block.line
        )
    elif name == "shortcut":
        if "from" not in block.options:
            raise CfgError(f"{block.where()}: [shortcut] needs from=")
        values = block.get("from", _ints, [])
        if len(values) != 1:
            raise CfgError(f"{block.where('from')}: [shortcut] from= takes exactly one layer")
        layer = Shortcut(
            source=_absolute(block, "from", values[0], index),
            activation=_activation(block, "linear"),
            line=block.line,
        )
    elif name == "upsample":
        layer = Upsample(stride=block.get("stride", int, 2), line=block.line)
        if layer.stride < 1:
            raise CfgError(f"{block.where('stride')}: [upsample] stride must be positive")
    elif name in ("yolo", "region"):
        if name == "region":
            raise CfgError(f"{block.where()}: [region] (YOLOv2) is not supported; use [yolo]")
        classes = block.get("classes", int, 20)
        num = block.get("num", int, 1)
        pairs = block.get("anchors", _floats, [])
        if len(pairs) % 2 or len(pairs) // 2 < num:
            raise CfgError(f"{block.where('anchors')}: anchors= must hold num={num} x,y pairs")
        anchors = [(pairs[2 * i], pairs[2 * i + 1]) for i in range(len(pairs) // 2)]
        mask = block.get("mask", _ints, list(range(num)))
        if any(not 0 <= m < len(anchors) for m in mask):
            raise CfgError(f"{block.where('mask')}: mask={mask} refers to missing anchors")
        block.ignore(_YOLO_TRAINING_KEYS)
        layer = Yolo(
            anchors=tuple(anchors[m] for m in mask),
            classes=classes,
            scale_x_y=block.get("scale_x_y", float, 1.0),
            line=block.line,
        )
    else:
        raise CfgError(
            f"{block.where()}: unknown section [{name}]; supported: [net], [convolutional], "
            "[maxpool], [route], [shortcut], [upsample], [yolo]"
        )
    block.finish()
    return layer


def parse_cfg_text(text: str, path: str = "<cfg>") -> ModelCfg:
    """Parse cfg text; raise CfgError naming file, line and section on anything unsupported."""
    sections = _read_sections(text, path)
    if not sections or sections[0][0] not in ("net", "network"):
        raise CfgError(f"{path}: the first section must be [net]")
    name, line, options = sections[0]
    block = _Block(name, line, options, path)
    net = Net(
        width=block.get("width", int, 416),
        height=block.get("height", int, 416),
        channels=block.get("channels", int, 3),
        line=line,
    )
    block.ignore(_NET_TRAINING_KEYS)
    block.finish()
    layers = tuple(
        _build(_Block(name, line, options, path), index)
        for index, (name, line, options) in enumerate(sections[1:])
    )
    yolo = tuple(i for i, layer in enumerate(layers) if isinstance(layer, Yolo))
    if not yolo:
        raise CfgError(f"{path}: no [yolo] section; this reader builds YOLOv3-family detectors")
    if len({layers[i].classes for i in yolo}) != 1:
        raise CfgError(f"{path}: the [yolo] sections disagree on classes=")
    return ModelCfg(net=net, layers=layers, path=path, yolo_indices=yolo)


def parse_cfg(path: str | Path) -> ModelCfg:
    """Read and parse a darknet cfg file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CfgError(f"cannot read cfg {path}: {exc.strerror}") from None
    return parse_cfg_text(text, str(path))

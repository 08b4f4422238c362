"""int8 post-training quantization of the converted OpenVINO model with NNCF, then the gate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..calibration import calibration_images
from ..calibration import calibration_inputs
from ..calibration import evaluation_images
from .gate import Criteria
from .gate import Engine
from .gate import GateReport
from .gate import run_gate
from .postprocess import HeadSpec

log = logging.getLogger(__name__)
PRESETS = ("performance", "mixed")
# Ops between a head conv and the model output that NNCF's YOLOv8 sample would also skip.
_PASS_THROUGH = ("Add", "Convert", "Reshape", "Transpose", "Result")


@dataclass(frozen=True)
class QuantizeOptions:
    """NNCF settings. The defaults follow NNCF's YOLOv8 OpenVINO sample (preset MIXED: asymmetric
    activations, which suits leaky ReLU); the sample also keeps its box-decoding subgraph in float,
    which this model does not have (its outputs are the head convs' raw maps)."""

    preset: str = "mixed"
    fast_bias_correction: bool = True
    ignore_heads: bool = False  # keep the convs feeding the [yolo] layers in float
    subset_size: int = 0  # calibration inputs NNCF uses; 0 = all given

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.subset_size < 0:
            raise ValueError(f"subset_size must be 0 (all) or positive, got {self.subset_size}")

    def to_dict(self) -> dict:
        """Return the options as stored in the gate report."""
        return asdict(self)


def head_convs(ov_model) -> list[str]:
    """Return the friendly names of the Convolution ops whose outputs are the model's outputs."""
    names = []
    for result in ov_model.get_results():
        node = result.input_value(0).get_node()
        while node.get_type_name() in _PASS_THROUGH:
            node = node.input_value(0).get_node()
        if node.get_type_name() != "Convolution":
            raise ValueError(
                f"model output {result.get_friendly_name()} comes from a {node.get_type_name()}, "
                "not a Convolution: quantize with ignore_heads=False"
            )
        names.append(node.get_friendly_name())
    return names


def quantize_int8(
    ov_model, inputs: Sequence[np.ndarray], options: QuantizeOptions = QuantizeOptions()
):
    """Return an int8 copy of the fp32 OpenVINO model, calibrated with NNCF on `inputs`.

    :param ov_model: the converted fp32 openvino.Model (left unchanged).
    :param inputs: letterboxed 1x3xHxW float32 arrays (calibration.calibration_inputs).
    """
    import nncf

    if not inputs:
        raise ValueError("no calibration inputs: pass calibration_inputs(calibration_images())")
    nncf.set_log_level(logging.ERROR)  # its INFO lines and progress bars would flood the logs
    ignored = None
    if options.ignore_heads:
        ignored = nncf.IgnoredScope(names=head_convs(ov_model))
    return nncf.quantize(
        ov_model.clone(),
        nncf.Dataset(list(inputs)),
        preset=getattr(nncf.QuantizationPreset, options.preset.upper()),
        subset_size=options.subset_size or len(inputs),
        fast_bias_correction=options.fast_bias_correction,
        ignored_scope=ignored,
    )


def quantize_and_gate(
    ov_model,
    reference: Engine,
    compile_fn: Callable[[object], Engine],
    heads: Sequence[HeadSpec],
    input_shape: tuple[int, int],
    options: QuantizeOptions = QuantizeOptions(),
    criteria: Criteria | None = None,
    extra_eval_dir: str | Path | None = None,
) -> tuple[object, GateReport]:
    """Quantize the fp32 model on the calibration photos and gate it against `reference`.

    :param reference: the fp32 engine (engine(x) -> raw maps) the int8 model must agree with.
    :param compile_fn: turns an openvino.Model into such an engine (the caller's threads).
    :param extra_eval_dir: more gate images (*.jpg), e.g. an operator's own photos.
    :return: (int8 openvino.Model, its gate report: store both; use int8 only if report.passed).
    """
    import nncf
    import openvino

    calibration = calibration_images()
    started = time.perf_counter()
    int8 = quantize_int8(ov_model, calibration_inputs(calibration, input_shape), options)
    seconds = time.perf_counter() - started
    meta = {
        "calibration_images": [name for name, _ in calibration],
        "quantize_options": options.to_dict(),
        "quantize_seconds": round(seconds, 1),
        "input": list(input_shape),
        "nncf": nncf.__version__,
        "openvino": openvino.get_version(),
    }
    images = evaluation_images(extra_eval_dir)
    report = run_gate(
        reference, compile_fn(int8), heads, input_shape, images, criteria or Criteria(), meta
    )
    log.info("int8 quantized in %.1f s; gate %s", seconds, report.reason)
    return int8, report

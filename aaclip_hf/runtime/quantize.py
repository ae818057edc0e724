"""Dynamic int8 quantisation of the vision tower's linear layers for CPU inference (`--quantize int8`).

Why these layers: at ViT-L/14 518 px the q/k/v/out projections, the MLPs and the adapters inside the tower are
81 % of the FLOPs (docs/performance.md), and an int8 GEMM does two (AVX2) to four (AVX-512 VNNI) times the fp32
multiply-adds per cycle. Dynamic quantisation needs no calibration data: weights are quantised once (per output channel would
need static quantisation; torch's dynamic linear is per tensor), activations per batch at run time, so it applies
to any AA-CLIP checkpoint. The attention matmuls (18 % of the FLOPs), the norms and the seg/det heads and scoring
stay fp32, which keeps the anomaly maps close to fp32 (accuracy measured in `aaclip bench`, section int8).

The same quantisation through ONNX Runtime (`quantize_onnx_int8`, used by `--backend onnx --quantize int8`) works
on the exported vision graph instead.

Static quantisation fixes the activations' ranges too, from a few calibration images, so no range is computed at
run time and two-activation products (attention) can run in int8 as well: ONNX Runtime's `quantize_static` in QDQ
format (`quantize_onnx_static_int8`, measured by `aaclip bench`; https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)
and NNCF on OpenVINO (`runtime/openvino_tower.py`, what `--quantize int8 --calibration-images` uses where
OpenVINO is installed).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidInputError


__all__ = [
    "QUANTIZE_CHOICES",
    "is_quantized",
    "quantize_dynamic_int8",
    "quantize_onnx_int8",
    "quantize_onnx_static_int8",
]

QUANTIZE_CHOICES = ("none", "int8")


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of `model.vision_model` by torch's dynamic int8 linear, in place; returns `model`.

    CPU only (fbgemm/x86 kernels): the model must be fp32 on the CPU. The text tower (anchors of new classes),
    the seg/det projections and the scoring head are untouched. Inference only: quantised layers have no gradients.
    """
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise InvalidInputError(
            f"int8 quantisation needs an fp32 model on the CPU, got {parameter.dtype} on {parameter.device}; "
            "load it with --device cpu --dtype float32"
        )
    if is_quantized(model):
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization points to torchao
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        torch.ao.quantization.quantize_dynamic(model.vision_model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    model.eval()
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` holds torch dynamic int8 linear layers."""
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    return any(isinstance(module, dynamic) for module in model.modules())


def quantize_onnx_int8(source: str | Path, target: str | Path) -> Path:
    """ONNX Runtime's dynamic int8 quantisation of the MatMul/Gemm weights of an exported graph; returns `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.WARNING)  # its advice to pre-process goes to the root logger; the graph is ours
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            # Only products with a weight (the linear layers), as in the torch path; attention stays fp32.
            extra_options={"MatMulConstBOnly": True},
            use_external_data_format=False,
        )
    finally:
        logging.disable(logging.NOTSET)
    return target


def quantize_onnx_static_int8(source: str | Path, target: str | Path, pixels: torch.Tensor) -> Path:
    """ONNX Runtime's static int8 quantisation (QDQ format) of an exported tower, calibrated on `pixels`
    `(N, 3, S, S)`: per-channel int8 weights and uint8 activations with min/max ranges for every MatMul, the
    attention products included; the graph is first pre-processed (shape inference, fusions) as ONNX Runtime
    recommends. Returns `target`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = [pixels[i : i + 1].detach().to("cpu", torch.float32).numpy() for i in range(len(pixels))]

    class Reader(CalibrationDataReader):
        """The calibration images, one range at a time (`CalibStridedMinMax`: ONNX Runtime's calibrator keeps the
        quantised tensors' values for every image it is given before reducing them, about 4 GB per ViT-L/14 image at
        518 px, so it is handed one image per call and merges the ranges)."""

        def __init__(self):
            self.set_range(0, len(samples))

        def __len__(self):
            return len(samples)

        def set_range(self, start_index: int, end_index: int):
            self.items = iter(samples[start_index:end_index])

        def get_next(self):
            sample = next(self.items, None)
            return None if sample is None else {"pixel_values": sample}

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prepared = target.with_name(target.stem + ".prepared.onnx")
    logging.disable(logging.WARNING)  # the quantiser's advice goes to the root logger; the graph is ours
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibStridedMinMax": 1},
        )
    finally:
        logging.disable(logging.NOTSET)
        prepared.unlink(missing_ok=True)
    return target

"""The vision tower on OpenVINO (`--backend openvino`), in fp32/bf16 or post-training int8 quantised by NNCF.

Conversion: `openvino.convert_model` traces the tower (sdpa attention, which OpenVINO maps to its fused
`ScaledDotProductAttention` operation) with a dynamic batch axis and the feature layers' hidden states as outputs
(https://docs.openvino.ai/2025/openvino-workflow/model-preparation/convert-model-pytorch.html). The result is saved
as OpenVINO IR (`.xml` + `.bin`, fp32 weights) in the cache.

int8 (`--quantize int8 --calibration-images`, or `--backend openvino --quantize int8`): NNCF's post-training
quantisation (`nncf.quantize`, mode `ModelType.TRANSFORMER`,
https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training/basic-quantization-flow.html)
calibrated on a few images (`runtime/calibration.py`): int8 weights (per output channel) and int8 activations
with ranges fixed by the calibration, for every linear layer and for the attention's `Q K^T` product (NNCF
quantises both inputs of a two-activation MatMul in this mode; it leaves the softmax output, the input of
`A V`, unquantised, as its transformer patterns prescribe), with SmoothQuant migrating activation outliers into
the weights first. Norms, softmax and GELU stay in floating point. OpenVINO's CPU plugin runs the quantised
layers with VNNI int8 dot products where the CPU has them (AVX512-VNNI, AVX-VNNI, AMX) and AVX2 int8 otherwise.

Precision of what is not quantised: OpenVINO's CPU plugin defaults to bf16 on CPUs with native bf16; this backend
sets `INFERENCE_PRECISION_HINT` explicitly, to f32 for an fp32 model and to bf16 for a bf16 one, so `--dtype`
means the same here as on torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MissingExtraError
from .exported import ExportedVisionTower, TowerGraph, fp32_tower


logger = logging.getLogger(__name__)

__all__ = [
    "OPENVINO_FILES",
    "OPENVINO_EXTRA",
    "OpenVinoVisionTower",
    "convert_vision_tower_openvino",
    "openvino_settings",
    "quantize_openvino_int8",
    "require_openvino",
]

OPENVINO_EXTRA = "pip install 'aaclip-hf[openvino]'"
OPENVINO_FILES = ("vision_tower.xml", "vision_tower.bin")
# OpenVINO CPU plugin settings: one synchronous request using the process's intra-op threads (LATENCY), and the
# precision of the operations that are not quantised, from the model's dtype.
PERFORMANCE_HINT = "LATENCY"
PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16"}
# NNCF's model type for a ViT (its transformer patterns: SmoothQuant, attention handling).
NNCF_MODEL_TYPE = "TRANSFORMER"
# How activation ranges are estimated from the calibration images: the extremes over all of them (NNCF's MINMAX)
# rather than the mean of each image's extremes (its default for activations), which clipped more of the benchmark
# images' outliers: pixel AUROC change -0.59 against -0.78 points with 8 pictures (docs/performance.md).
ACTIVATION_RANGES = "MINMAX"


def require_openvino(what: str = "--backend openvino", quantize: bool = False):
    """`(openvino, nncf or None)`, or a one-line `MissingExtraError` naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise MissingExtraError(f"{what} needs OpenVINO, which is not installed: {OPENVINO_EXTRA}") from None
    nncf = None
    if quantize:
        try:
            import nncf
        except ImportError:
            raise MissingExtraError(
                f"{what} --quantize int8 needs NNCF, which is not installed: {OPENVINO_EXTRA}"
            ) from None
    return openvino, nncf


def openvino_settings(quantize: str) -> dict:
    """What changes an OpenVINO artefact besides the weights (part of its cache key)."""
    openvino, nncf = require_openvino(quantize=quantize == "int8")
    settings = {"openvino": openvino.__version__, "torch": torch.__version__, "format": "openvino-ir"}
    if quantize == "int8":
        settings.update(nncf=nncf.__version__, model_type=NNCF_MODEL_TYPE, activation_ranges=ACTIVATION_RANGES)
    return settings


def convert_vision_tower_openvino(model):
    """`model.vision_model` as an in-memory `openvino.Model` (fp32, dynamic batch; module docstring)."""
    openvino, _ = require_openvino()
    config = model.config.vision_config
    example = torch.zeros(1, config.num_channels, config.image_size, config.image_size)
    shape = [-1, config.num_channels, config.image_size, config.image_size]
    # sdpa: one fused ScaledDotProductAttention operation per layer
    with fp32_tower(model.vision_model, "sdpa") as tower, torch.no_grad(), warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category=category)
        graph = TowerGraph(tower, list(model.config.feature_layers)).eval()
        converted = openvino.convert_model(graph, example_input=example, input=[shape])
    return converted


@contextlib.contextmanager
def _quiet(progress: bool):
    """NNCF's own progress bars (rich, on stdout) follow ours; its info logging stays off."""
    import nncf

    nncf.set_log_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its advice on dataset sizes and optional packages
        if progress:
            yield
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                yield


def quantize_openvino_int8(ov_model, pixels: torch.Tensor, progress: bool = True):
    """NNCF post-training int8 of a converted tower (module docstring), calibrated on `pixels` `(N, 3, S, S)`."""
    _, nncf = require_openvino(quantize=True)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    samples = [pixels[i : i + 1].detach().to("cpu", torch.float32).numpy() for i in range(len(pixels))]
    ranges = getattr(RangeEstimatorParametersSet, ACTIVATION_RANGES)
    with _quiet(progress):
        return nncf.quantize(
            ov_model,
            nncf.Dataset(samples),
            model_type=getattr(nncf.ModelType, NNCF_MODEL_TYPE),
            subset_size=len(samples),
            advanced_parameters=AdvancedQuantizationParameters(activations_range_estimator_params=ranges),
        )


class OpenVinoVisionTower(ExportedVisionTower):
    """Drop-in for `model.vision_model` that runs a compiled OpenVINO model on the CPU (`exported.py`)."""

    backend = "openvino"

    def __init__(self, path: str | Path, tower: nn.Module, layers: list[int], dtype: torch.dtype = torch.float32):
        super().__init__(tower, layers, dtype)
        openvino, _ = require_openvino()
        core = openvino.Core()
        settings = {
            "PERFORMANCE_HINT": PERFORMANCE_HINT,
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS.get(dtype, "f32"),
        }
        self.path = Path(path)
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", settings)
        self.request = self.compiled.create_infer_request()

    def run(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        """The feature layers' hidden states, then the last one (copies: the request reuses its buffers)."""
        self.request.infer({0: pixel_values})
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self.layers) + 1)]

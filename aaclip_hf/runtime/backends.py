"""Execution backends for the vision tower: eager torch, `torch.compile`, or ONNX Runtime (`--backend`).

The vision tower is 99 % of an inference forward's FLOPs, so only it changes backend. The seg/det heads, the
anchors (stored or computed by the text tower) and the scoring head stay the model's own torch code, so every
backend returns `AAClipOutput` with the same maps (to float rounding) and supports any class name.

* `torch`: the model as loaded (eager; with `--quantize int8`, torch's dynamic int8 linear layers).
* `compile`: `torch.compile` of the tower (inductor; the first call of each batch shape compiles).
* `onnx`: the tower exported once to ONNX (dynamic batch, plain MatMul/Softmax attention, which ONNX Runtime
  fuses) and cached under `cache_dir` (default `$AACLIP_CACHE/onnx`, else `~/.cache/aaclip_hf/onnx`), keyed by
  a hash of the tower's weights, its config and the exporter settings; later runs load the cached file. With
  `--quantize int8`, ONNX Runtime's dynamic int8 quantiser runs on the cached graph (cached too).
* `auto`: `DEFAULT_BACKEND` for the device, chosen from `aaclip bench` (docs/performance.md, section 6); onnx
  needs the `onnx` extra (onnxruntime), else `auto` uses torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import InvalidInputError
from .quantize import QUANTIZE_CHOICES, quantize_dynamic_int8, quantize_onnx_int8


logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_CHOICES",
    "DEFAULT_BACKEND",
    "OnnxVisionTower",
    "add_backend_arguments",
    "apply_backend",
    "export_vision_tower_onnx",
    "onnx_cache_dir",
    "resolve_backend",
    "vision_tower_key",
]

BACKEND_CHOICES = ("auto", "torch", "compile", "onnx")
# Per (device type, quantize), chosen from the benchmark (docs/performance.md, section 6: why CPU fp32 stays eager
# although onnx led at batch 4); `auto` falls back to torch where onnxruntime (the `onnx` extra) is not installed.
DEFAULT_BACKEND = {
    ("cpu", "none"): "torch",
    ("cpu", "int8"): "onnx",
    ("cuda", "none"): "torch",
    ("mps", "none"): "torch",
}
ONNX_OPSET = 17
ONNX_FILE = "vision_tower.onnx"
ONNX_INT8_FILE = "vision_tower.int8.onnx"


def add_backend_arguments(parser, quantize: bool = True) -> None:
    """The shared `--backend` (and `--quantize`) flags."""
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="vision tower backend: torch (eager), compile (torch.compile), onnx (exported once, cached); "
        "auto = the default for the device, chosen from measurements (docs/performance.md, section 6)",
    )
    if quantize:
        parser.add_argument(
            "--quantize",
            choices=QUANTIZE_CHOICES,
            default="none",
            help="int8: dynamic int8 linear layers in the vision tower (CPU; accuracy cost in docs/performance.md)",
        )


def resolve_backend(backend: str, device: str | torch.device, quantize: str = "none") -> str:
    """`auto` -> the default for the device (and quantisation); other names are checked and returned."""
    if backend not in BACKEND_CHOICES:
        raise InvalidInputError(f"--backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if quantize not in QUANTIZE_CHOICES:
        raise InvalidInputError(f"--quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    device = torch.device(device)
    if quantize == "int8" and device.type != "cpu":
        raise InvalidInputError(f"--quantize int8 runs on the CPU only (fbgemm kernels), got device {device}")
    if backend == "auto":
        chosen = DEFAULT_BACKEND.get((device.type, quantize), "torch")
        if chosen == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            logger.info("onnxruntime is not installed (pip install 'aaclip-hf[onnx]'): using the torch backend")
            chosen = "torch"
        return chosen
    if backend == "onnx" and device.type != "cpu":
        raise InvalidInputError(f"--backend onnx runs on the CPU (ONNX Runtime's CPU provider), got device {device}")
    if backend == "compile" and quantize == "int8":
        raise InvalidInputError("--backend compile with --quantize int8 is not supported; use --backend torch or onnx")
    return backend


def onnx_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where exported towers are cached: `cache_dir`, else `$AACLIP_CACHE/onnx`, else `~/.cache/aaclip_hf/onnx`."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("AACLIP_CACHE"):
        return Path(os.environ["AACLIP_CACHE"]) / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aaclip_hf" / "onnx"


def vision_tower_key(model) -> str:
    """Hash of the tower's weights (every tensor's bytes), the vision config, the feature layers and the exporter."""
    hasher = hashlib.blake2b(digest_size=16)
    settings = {
        "vision_config": model.config.vision_config.to_dict(),
        "feature_layers": list(model.config.feature_layers),
        "opset": ONNX_OPSET,
        "torch": torch.__version__,
    }
    hasher.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.vision_model.state_dict().items()):
        hasher.update(name.encode())
        array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        hasher.update(array)
    return hasher.hexdigest()


class _TowerGraph(nn.Module):
    """What the ONNX graph computes: the feature layers' hidden states and the last hidden state."""

    def __init__(self, tower: nn.Module, layers: list[int]):
        super().__init__()
        self.tower, self.layers = tower, layers

    def forward(self, pixel_values: torch.Tensor):
        out = self.tower(pixel_values=pixel_values, output_hidden_states=list(self.layers), return_dict=True)
        return (*[out.hidden_states[layer] for layer in self.layers], out.last_hidden_state)


def _output_names(layers: list[int]) -> list[str]:
    return [f"hidden_state_{layer}" for layer in layers] + ["last_hidden_state"]


def export_vision_tower_onnx(model, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Export `model.vision_model` (feature-layer and last hidden states, dynamic batch) to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tower = model.vision_model
    layers = list(model.config.feature_layers)
    previous = tower.config._attn_implementation
    tower.set_attn_implementation("eager")  # plain MatMul/Softmax: ONNX Runtime fuses attention itself
    size = model.config.vision_config.image_size
    example = torch.randn(2, model.config.vision_config.num_channels, size, size, dtype=torch.float32)
    names = _output_names(layers)
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", category=category)
            torch.onnx.export(
                _TowerGraph(tower, layers).eval(),
                (example,),
                str(partial),
                dynamo=False,
                input_names=["pixel_values"],
                output_names=names,
                dynamic_axes={"pixel_values": {0: "batch"}, **{name: {0: "batch"} for name in names}},
                opset_version=opset,
                do_constant_folding=True,
            )
        os.replace(partial, path)
    finally:
        tower.set_attn_implementation(previous)
        partial.unlink(missing_ok=True)
    return path


class OnnxVisionTower(nn.Module):
    """Drop-in for `model.vision_model` that runs an ONNX Runtime session (CPU); `post_layernorm` stays torch."""

    def __init__(self, path: str | os.PathLike, tower: nn.Module, layers: list[int], num_threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.layers = list(layers)
        self.num_layers = tower.config.num_hidden_layers
        self.config = tower.config
        self.post_layernorm = tower.post_layernorm
        self.output_names = _output_names(self.layers)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states=None,
        output_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutputWithPooling:
        if output_attentions or output_hidden_states is True or interpolate_pos_encoding:
            raise InvalidInputError(
                "the onnx backend returns the feature layers only: output_attentions, output_hidden_states=True and "
                "interpolate_pos_encoding need --backend torch"
            )
        feed = {"pixel_values": pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()}
        values = [torch.from_numpy(value) for value in self.session.run(self.output_names, feed)]
        hidden: list[torch.Tensor | None] = [None] * (self.num_layers + 1)
        for layer, value in zip(self.layers, values):
            hidden[layer] = value
        return BaseModelOutputWithPooling(last_hidden_state=values[-1], hidden_states=tuple(hidden))


def apply_backend(
    model,
    backend: str = "auto",
    quantize: str = "none",
    cache_dir: str | os.PathLike | None = None,
):
    """Put `model` (in place) on `backend`, with optional int8 quantisation; returns `(model, backend used)`.

    `onnx` replaces `model.vision_model` by an `OnnxVisionTower` (the torch tower's memory is released); the rest of
    the model is unchanged. See the module docstring for the cache.
    """
    device = next(model.parameters()).device
    chosen = resolve_backend(backend, device, quantize)
    if chosen != "torch" or quantize == "int8":
        model.pin_vision_fingerprint()  # the same weights in another form: stored references and thresholds apply
    if chosen == "torch":
        if quantize == "int8":
            quantize_dynamic_int8(model)
        return model, chosen
    if chosen == "compile":
        model.vision_model.compile()
        return model, chosen
    if next(model.vision_model.parameters()).dtype != torch.float32:
        raise InvalidInputError("--backend onnx exports an fp32 tower; load the model with --dtype float32")
    folder = onnx_cache_dir(cache_dir) / vision_tower_key(model)
    path = folder / ONNX_FILE
    if path.is_file():
        logger.info("onnx backend: using the cached export %s", path)
    else:
        logger.info("onnx backend: exporting the vision tower once to %s", path)
        export_vision_tower_onnx(model, path)
    if quantize == "int8":
        fp32_path, path = path, folder / ONNX_INT8_FILE
        if not path.is_file():
            partial = path.with_name(path.name + f".partial-{os.getpid()}")
            try:
                quantize_onnx_int8(fp32_path, partial)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
    model.vision_model = OnnxVisionTower(path, model.vision_model, list(model.config.feature_layers))
    return model, chosen

"""Execution backends for the vision tower: eager torch, `torch.compile`, ONNX Runtime or OpenVINO (`--backend`).

The vision tower is 99 % of an inference forward's FLOPs, so only it changes backend. The seg/det heads, the
anchors (stored or computed by the text tower) and the scoring head stay the model's own torch code, so every
backend returns `AAClipOutput` with the same maps (to float rounding) and supports any class name.

* `torch`: the model as loaded (eager; with `--quantize int8`, torch's dynamic int8 linear layers).
* `compile`: `torch.compile` of the tower (inductor; the first call of each batch shape compiles).
* `onnx`: the tower exported once to ONNX (dynamic batch, plain MatMul/Softmax attention, which ONNX Runtime
  fuses); with `--quantize int8`, ONNX Runtime's dynamic int8 quantiser on the exported graph (the library's
  `onnx_int8="static"` selects its static QDQ quantiser, calibrated like OpenVINO's). Needs the `onnx` extra.
* `openvino`: the tower converted once to OpenVINO IR (`runtime/openvino_tower.py`); with `--quantize int8`,
  NNCF's post-training int8 calibrated on a few images (attention's `Q K^T` included). Needs the `openvino` extra.
* `auto`: `DEFAULT_BACKEND` for the device and quantisation (int8 with or without your own calibration images),
  chosen from `aaclip bench` (docs/performance.md, section 6); where the chosen backend's extra is not installed,
  the next of `AUTO_FALLBACKS` that is.

Exported and quantised towers are cached (`runtime/cache.py`: `$AACLIP_CACHE/<backend>`, else
`~/.cache/aaclip_hf/<backend>`), keyed by a SHA-256 of the tower's weights, its config, the feature layers and
every exporter/quantiser setting (versions, calibration images); each entry's files are checked against their
recorded SHA-256 before use and rebuilt when they do not match. The first run shows a progress bar while it
builds; later runs load the cached file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError, MissingExtraError
from .cache import build_steps, cache_root, cached_entry
from .calibration import calibration_digest, calibration_pixels
from .exported import ExportedVisionTower, TowerGraph, fp32_tower, output_names
from .quantize import QUANTIZE_CHOICES, quantize_dynamic_int8, quantize_onnx_int8, quantize_onnx_static_int8


logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_FALLBACKS",
    "BACKEND_CHOICES",
    "BACKEND_EXTRAS",
    "DEFAULT_BACKEND",
    "ONNX_INT8_METHODS",
    "OnnxVisionTower",
    "add_backend_arguments",
    "apply_backend",
    "backend_available",
    "export_vision_tower_onnx",
    "onnx_cache_dir",
    "resolve_backend",
    "vision_tower_key",
]

BACKEND_CHOICES = ("auto", "torch", "compile", "onnx", "openvino")
# Per (device type, quantize), chosen from the benchmark (docs/performance.md, section 6). CPU fp32 stays eager
# torch. CPU int8 without calibration images runs ONNX Runtime's dynamic int8, which needs none and kept the maps and
# AUROCs within the accuracy bounds; with your own normal images (`int8+calibration`: `--calibration-images`,
# `calibration=`) it runs OpenVINO with NNCF's static int8, the fastest path measured, which stays within the bounds
# when calibrated on the parts' own images (on generic pictures it moved the few-shot pixel AUROC by about a point).
DEFAULT_BACKEND = {
    ("cpu", "none"): "torch",
    ("cpu", "int8"): "onnx",
    ("cpu", "int8+calibration"): "openvino",
    ("cuda", "none"): "torch",
    ("mps", "none"): "torch",
}
# Where `auto`'s choice is not installed: the next backend to try, in order (torch is always there).
AUTO_FALLBACKS = {"openvino": ("onnx", "torch"), "onnx": ("torch",)}
# The modules a backend imports, and the extra that installs them.
BACKEND_MODULES = {"onnx": ("onnxruntime",), "openvino": ("openvino",), "openvino-int8": ("openvino", "nncf")}
BACKEND_EXTRAS = {"onnx": "pip install 'aaclip-hf[onnx]'", "openvino": "pip install 'aaclip-hf[openvino]'"}
# The exported backends run on the CPU only (ONNX Runtime's CPU provider, OpenVINO's CPU plugin).
CPU_ONLY_BACKENDS = ("onnx", "openvino")
ONNX_INT8_METHODS = ("dynamic", "static")
ONNX_OPSET = 17
ONNX_FILE = "vision_tower.onnx"
ONNX_INT8_FILE = "vision_tower.int8.onnx"
# Characters of a settings digest in a cache entry's name.
SETTINGS_DIGEST_CHARS = 12


def add_backend_arguments(parser, quantize: bool = True) -> None:
    """The shared `--backend` (and `--quantize`) flags."""
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="vision tower backend: torch (eager), compile (torch.compile), onnx (ONNX Runtime) or openvino, the "
        "last two exported once and cached; auto = the default for the device, chosen from measurements "
        "(docs/performance.md, section 6)",
    )
    if quantize:
        parser.add_argument(
            "--quantize",
            choices=QUANTIZE_CHOICES,
            default="none",
            help="int8 vision tower (CPU): with --backend auto, ONNX Runtime's dynamic int8 (the 'onnx' extra, else "
            "torch's), or with --calibration-images OpenVINO + NNCF static int8 (the 'openvino' extra), built once "
            "and cached; speed and accuracy in docs/performance.md",
        )
        parser.add_argument(
            "--calibration-images",
            nargs="+",
            default=None,
            metavar="IMAGE_OR_FOLDER",
            help="with --quantize int8: a few normal images of your parts; --backend auto then runs OpenVINO's "
            "static int8 calibrated on them (the fastest int8 path; the 'openvino' extra), cached by their pixels",
        )


def backend_available(backend: str, quantize: str = "none") -> bool:
    """Whether the modules `backend` needs (with `quantize`) are installed."""
    key = f"{backend}-int8" if backend == "openvino" and quantize == "int8" else backend
    return all(importlib.util.find_spec(name) is not None for name in BACKEND_MODULES.get(key, ()))


def _missing_extra(backend: str, quantize: str) -> MissingExtraError:
    key = f"{backend}-int8" if backend == "openvino" and quantize == "int8" else backend
    missing = [name for name in BACKEND_MODULES.get(key, ()) if importlib.util.find_spec(name) is None]
    flags = f"--backend {backend}" + (" --quantize int8" if quantize == "int8" else "")
    return MissingExtraError(f"{flags} needs {', '.join(missing)}, which is not installed: {BACKEND_EXTRAS[backend]}")


def resolve_backend(backend: str, device: str | torch.device, quantize: str = "none", calibrated: bool = False) -> str:
    """`auto` -> the default for the device and quantisation (int8 with your own `calibrated` images or without)
    among the installed backends; other names are checked (device, installed extra) and returned."""
    if backend not in BACKEND_CHOICES:
        raise InvalidInputError(f"--backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if quantize not in QUANTIZE_CHOICES:
        raise InvalidInputError(f"--quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    device = torch.device(device)
    if quantize == "int8" and device.type != "cpu":
        raise InvalidInputError(f"--quantize int8 runs on the CPU only (int8 CPU kernels), got device {device}")
    if backend == "auto":
        setting = f"{quantize}+calibration" if quantize == "int8" and calibrated else quantize
        chosen = DEFAULT_BACKEND.get((device.type, setting), "torch")
        for candidate in (chosen, *AUTO_FALLBACKS.get(chosen, ())):
            if backend_available(candidate, quantize):
                if candidate != chosen:
                    logger.info(
                        "%s is not installed (%s): using the %s backend", chosen, BACKEND_EXTRAS[chosen], candidate
                    )
                return candidate
        return "torch"
    if backend in CPU_ONLY_BACKENDS and device.type != "cpu":
        raise InvalidInputError(f"--backend {backend} runs on the CPU, got device {device}")
    if backend == "compile" and quantize == "int8":
        raise InvalidInputError("--backend compile with --quantize int8 is not supported; use --backend auto")
    if backend in BACKEND_EXTRAS and not backend_available(backend, quantize):
        raise _missing_extra(backend, quantize)
    return backend


def onnx_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ONNX towers are cached: `cache_dir`, else `$AACLIP_CACHE/onnx`, else `~/.cache/aaclip_hf/onnx`."""
    return cache_root("onnx", cache_dir)


def vision_tower_key(model) -> str:
    """SHA-256 (32 hex digits) of the tower's weights (every tensor's bytes, as fp32), the vision config, the feature
    layers and the ONNX exporter's settings."""
    hasher = hashlib.sha256()
    settings = {
        "vision_config": model.config.vision_config.to_dict(),
        "feature_layers": list(model.config.feature_layers),
        "opset": ONNX_OPSET,
        "torch": torch.__version__,
    }
    hasher.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.vision_model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().data)
    return hasher.hexdigest()[:32]


def _settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :SETTINGS_DIGEST_CHARS
    ]


def export_vision_tower_onnx(model, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Export `model.vision_model` (feature-layer and last hidden states, dynamic batch) to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = list(model.config.feature_layers)
    size = model.config.vision_config.image_size
    example = torch.randn(2, model.config.vision_config.num_channels, size, size, dtype=torch.float32)
    names = output_names(layers)
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    # eager attention: plain MatMul/Softmax, which ONNX Runtime fuses itself
    with fp32_tower(model.vision_model, "eager") as tower, torch.no_grad(), warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category=category)
        try:
            torch.onnx.export(
                TowerGraph(tower, layers).eval(),
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
            partial.unlink(missing_ok=True)
    return path


class OnnxVisionTower(ExportedVisionTower):
    """Drop-in for `model.vision_model` that runs an ONNX Runtime session on the CPU (`exported.py`)."""

    backend = "onnx"

    def __init__(
        self,
        path: str | os.PathLike,
        tower,
        layers: list[int],
        num_threads: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(tower, layers, dtype)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = output_names(self.layers)

    def run(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {"pixel_values": pixel_values})


def _calibration(model, calibration) -> torch.Tensor:
    """Calibration pixel values: given ones (a tensor, or PIL images), else the default synthetic pictures."""
    if isinstance(calibration, torch.Tensor):
        return calibration.float()
    return calibration_pixels(model.config, images=calibration)


def _onnx_tower(model, quantize: str, cache_dir, calibration, onnx_int8: str, progress) -> OnnxVisionTower:
    if onnx_int8 not in ONNX_INT8_METHODS:
        raise InvalidInputError(f"onnx_int8 must be one of {ONNX_INT8_METHODS}, got {onnx_int8!r}")
    root = onnx_cache_dir(cache_dir)
    key = vision_tower_key(model)

    def export(staging: Path) -> None:
        with build_steps(["export"], "onnx backend: exporting the vision tower (once)", progress) as step:
            step("export to ONNX")
            export_vision_tower_onnx(model, staging / ONNX_FILE)

    folder, _ = cached_entry(root / key, [ONNX_FILE], {"key": key}, export, "onnx backend")
    path = folder / ONNX_FILE
    if quantize == "int8":
        settings: dict = {"key": key, "method": onnx_int8, "onnxruntime": _version("onnxruntime")}
        pixels = None
        if onnx_int8 == "static":
            pixels = _calibration(model, calibration)
            settings["calibration"] = calibration_digest(pixels)
        fp32_path = path

        def quantise(staging: Path) -> None:
            with build_steps(["quantise"], f"onnx backend: {onnx_int8} int8 (once)", progress) as step:
                step(f"{onnx_int8} int8 quantisation")
                if onnx_int8 == "static":
                    quantize_onnx_static_int8(fp32_path, staging / ONNX_INT8_FILE, pixels)
                else:
                    quantize_onnx_int8(fp32_path, staging / ONNX_INT8_FILE)

        name = f"{key}-int8-{onnx_int8}-{_settings_digest(settings)}"
        folder, _ = cached_entry(root / name, [ONNX_INT8_FILE], settings, quantise, "onnx backend")
        path = folder / ONNX_INT8_FILE
    dtype = next(model.parameters()).dtype  # the heads' dtype: the tower's fp32 outputs are cast to it
    return OnnxVisionTower(path, model.vision_model, list(model.config.feature_layers), dtype=dtype)


def _openvino_tower(model, quantize: str, cache_dir, calibration, progress):
    from .openvino_tower import (
        OPENVINO_FILES,
        OpenVinoVisionTower,
        convert_vision_tower_openvino,
        openvino_settings,
        quantize_openvino_int8,
    )

    dtype = next(model.parameters()).dtype  # the heads' dtype, and bf16 inference inside an fp32 tower's graph
    key = vision_tower_key(model)
    settings: dict = {"key": key, "quantize": quantize, **openvino_settings(quantize)}
    pixels = None
    if quantize == "int8":
        pixels = _calibration(model, calibration)
        settings["calibration"] = calibration_digest(pixels)

    def build(staging: Path) -> None:
        import openvino

        steps = ["convert"] + (["calibrate and quantise"] if quantize == "int8" else []) + ["save"]
        what = "openvino backend: " + ("converting and quantising" if quantize == "int8" else "converting")
        with build_steps(steps, f"{what} the vision tower (once)", progress) as step:
            step("convert to OpenVINO")
            graph = convert_vision_tower_openvino(model)
            if quantize == "int8":
                step(f"calibrate ({len(pixels)} images) and quantise to int8 (NNCF)")
                graph = quantize_openvino_int8(graph, pixels, progress=progress)
            step("save IR")
            openvino.save_model(graph, str(staging / OPENVINO_FILES[0]), compress_to_fp16=False)

    variant = "int8" if quantize == "int8" else "fp32"
    name = f"{key}-{variant}-{_settings_digest(settings)}"
    folder, _ = cached_entry(
        cache_root("openvino", cache_dir) / name, list(OPENVINO_FILES), settings, build, "openvino backend"
    )
    return OpenVinoVisionTower(
        folder / OPENVINO_FILES[0], model.vision_model, list(model.config.feature_layers), dtype
    )


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "unknown"


def apply_backend(
    model,
    backend: str = "auto",
    quantize: str = "none",
    cache_dir: str | os.PathLike | None = None,
    *,
    calibration=None,
    onnx_int8: str = "dynamic",
    progress: bool | None = None,
):
    """Put `model` (in place) on `backend`, with optional int8 quantisation; returns `(model, backend used)`.

    `onnx` and `openvino` replace `model.vision_model` by an exported tower (the torch tower's memory is released);
    the rest of the model is unchanged. See the module docstring for the cache. `calibration`: the pixel values
    `(N, 3, S, S)` or PIL images that calibrate static int8 (default: `runtime/calibration.py`'s synthetic
    pictures). `onnx_int8`: ONNX Runtime's `dynamic` (default) or `static` int8. `progress`: the first run's
    build progress bar (None: transformers' progress-bar setting, which `--no-progress` turns off).
    """
    device = next(model.parameters()).device
    chosen = resolve_backend(backend, device, quantize, calibrated=calibration is not None)
    if chosen != "torch" or quantize == "int8":
        model.pin_vision_fingerprint()  # the same weights in another form: stored references and thresholds apply
    if progress is None:
        from transformers.utils import logging as hf_logging

        progress = hf_logging.is_progress_bar_enabled()
    if calibration is not None and not (chosen == "openvino" or onnx_int8 == "static") and quantize == "int8":
        logger.warning("the %s backend quantises dynamically: the calibration images are not used", chosen)
    if chosen == "torch":
        if quantize == "int8":
            quantize_dynamic_int8(model)
        return model, chosen
    if chosen == "compile":
        model.vision_model.compile()
        return model, chosen
    if chosen == "onnx":
        model.vision_model = _onnx_tower(model, quantize, cache_dir, calibration, onnx_int8, progress)
    else:
        model.vision_model = _openvino_tower(model, quantize, cache_dir, calibration, progress)
    return model, chosen

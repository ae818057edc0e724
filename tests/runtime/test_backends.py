"""Backend switch: exported towers (ONNX Runtime, OpenVINO) give the model's maps, the int8 paths track fp32, exports
are cached by weights, a missing extra is a one-line error naming it, and `auto` falls back along its chain."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from aaclip_hf.errors import MissingExtraError
from aaclip_hf.runtime import backends
from aaclip_hf.runtime.backends import (
    AUTO_FALLBACKS,
    DEFAULT_BACKEND,
    OnnxVisionTower,
    apply_backend,
    resolve_backend,
    vision_tower_key,
)
from aaclip_hf.runtime.calibration import calibration_pixels


HAS_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_onnxruntime = pytest.mark.skipif(not HAS_ONNXRUNTIME, reason="the onnx extra is not installed")
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")


def _pixels(model, batch=3, seed=0):
    size = model.config.vision_config.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _outputs(model, pixels):
    with torch.no_grad():
        out = model(pixels, class_ids=model.class_ids(["bottle", "object", "bottle"][: len(pixels)]), output_size=40)
    return out


def _same_outputs(model, reference, pixels):
    a, b = _outputs(reference, pixels), _outputs(model, pixels)
    for name in ("anomaly_map_grid", "anomaly_map", "image_score", "raw_anomaly_score"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-4, rtol=1e-4, msg=name)


@needs_onnxruntime
def test_onnx_backend_gives_the_same_outputs(tiny_model, tmp_path):
    reference = copy.deepcopy(tiny_model)
    model, used = apply_backend(tiny_model, "onnx", cache_dir=tmp_path, progress=False)
    assert used == "onnx" and isinstance(model.vision_model, OnnxVisionTower)
    for batch in (1, 3):  # the exported batch axis is dynamic
        _same_outputs(model, reference, _pixels(model, batch))
    with pytest.raises(ValueError, match="--backend torch"):
        model(_pixels(model, 1), output_attentions=True)


@needs_openvino
def test_openvino_backend_gives_the_same_outputs(tiny_model, tmp_path):
    from aaclip_hf.runtime.openvino_tower import OpenVinoVisionTower

    reference = copy.deepcopy(tiny_model)
    model, used = apply_backend(tiny_model, "openvino", cache_dir=tmp_path, progress=False)
    assert used == "openvino" and isinstance(model.vision_model, OpenVinoVisionTower)
    assert model.vision_model.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    for batch in (1, 3):
        _same_outputs(model, reference, _pixels(model, batch))
    with pytest.raises(ValueError, match="the openvino backend returns the feature layers only"):
        model(_pixels(model, 1), output_attentions=True)


@needs_onnxruntime
def test_onnx_export_is_cached_by_weights(tiny_model, tmp_path, monkeypatch):
    other = copy.deepcopy(tiny_model)
    apply_backend(copy.deepcopy(tiny_model), "onnx", cache_dir=tmp_path, progress=False)
    files = list(tmp_path.rglob("*.onnx"))
    assert len(files) == 1 and files[0].parent.name == vision_tower_key(tiny_model)
    stamp = files[0].stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this tower")

    monkeypatch.setattr(backends, "export_vision_tower_onnx", no_export)
    model, _ = apply_backend(copy.deepcopy(tiny_model), "onnx", cache_dir=tmp_path, progress=False)
    assert model.vision_model.path == files[0] and files[0].stat().st_mtime_ns == stamp
    # Other weights -> another key -> a new export.
    with torch.no_grad():
        other.vision_model.encoder.layers[0].mlp.fc1.weight.add_(1e-3)
    assert vision_tower_key(other) != vision_tower_key(tiny_model)
    with pytest.raises(AssertionError, match="exported again"):
        apply_backend(other, "onnx", cache_dir=tmp_path, progress=False)


@needs_openvino
def test_openvino_export_is_cached_by_weights(tiny_model, tmp_path, monkeypatch):
    from aaclip_hf.runtime import openvino_tower

    apply_backend(copy.deepcopy(tiny_model), "openvino", cache_dir=tmp_path, progress=False)
    entries = [path.parent for path in tmp_path.glob("*/vision_tower.xml")]
    assert len(entries) == 1 and entries[0].name.startswith(vision_tower_key(tiny_model))
    monkeypatch.setattr(openvino_tower, "convert_vision_tower_openvino", lambda model: 1 / 0)
    apply_backend(copy.deepcopy(tiny_model), "openvino", cache_dir=tmp_path, progress=False)  # from the cache
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.vision_model.encoder.layers[-1].self_attn.q_proj.bias.add_(1e-3)
    with pytest.raises(ZeroDivisionError):  # other weights: a new entry is built
        apply_backend(other, "openvino", cache_dir=tmp_path, progress=False)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AACLIP_CACHE", str(tmp_path))
    assert backends.onnx_cache_dir() == tmp_path / "onnx"
    assert backends.onnx_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("AACLIP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert backends.onnx_cache_dir() == tmp_path / "home" / ".cache" / "aaclip_hf" / "onnx"


# Each int8 path against fp32 on inputs like the calibration's (images, not white noise). The dynamic paths quantise
# activations per call; the static ones fix the ranges from 8 calibration pictures and lose more on a 32-wide 4-layer
# tower (a few int8 steps span its small activations): NNCF (MINMAX ranges, SmoothQuant) stays above 0.99 here,
# ONNX Runtime's QDQ (min/max per tensor) above 0.98.
INT8_PATHS = [
    pytest.param("torch", {}, 0.999, id="torch-dynamic"),
    pytest.param("onnx", {}, 0.999, id="onnx-dynamic", marks=needs_onnxruntime),
    pytest.param("onnx", {"onnx_int8": "static"}, 0.98, id="onnx-static", marks=needs_onnxruntime),
    pytest.param("openvino", {}, 0.99, id="openvino-nncf", marks=needs_openvino),
]


@pytest.mark.parametrize(("backend", "options", "correlation"), INT8_PATHS)
def test_int8_paths_track_fp32(tiny_model, tmp_path, backend, options, correlation):
    reference = copy.deepcopy(tiny_model)
    pixels = calibration_pixels(tiny_model.config, count=3, seed=1)  # other pictures than the calibration's
    expected = _outputs(reference, pixels).anomaly_map_grid.flatten()
    model, used = apply_backend(tiny_model, backend, "int8", cache_dir=tmp_path, progress=False, **options)
    assert used == backend
    got = _outputs(model, pixels).anomaly_map_grid.flatten()
    assert torch.corrcoef(torch.stack([expected, got]))[0, 1] >= correlation
    assert (got - expected).abs().max() <= 0.1 * (expected.max() - expected.min())
    assert not torch.equal(got, expected)  # really quantised


def _hide(monkeypatch, *modules):
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None if name in modules else real(name))


def test_missing_extra_is_a_one_line_error_naming_it(tiny_model, monkeypatch):
    _hide(monkeypatch, "openvino", "nncf", "onnxruntime")
    for backend, extra in (("openvino", "aaclip-hf[openvino]"), ("onnx", "aaclip-hf[onnx]")):
        with pytest.raises(MissingExtraError) as caught:
            apply_backend(tiny_model, backend)
        message = str(caught.value)
        assert f"--backend {backend}" in message and extra in message and "\n" not in message


@needs_openvino
def test_openvino_int8_without_nncf_names_the_extra(monkeypatch):
    _hide(monkeypatch, "nncf")
    assert resolve_backend("openvino", "cpu") == "openvino"  # fp32 needs no NNCF
    with pytest.raises(MissingExtraError, match=r"--quantize int8 needs nncf, .*aaclip-hf\[openvino\]"):
        resolve_backend("openvino", "cpu", "int8")


def test_auto_falls_back_along_its_chain(monkeypatch):
    assert DEFAULT_BACKEND[("cpu", "int8")] == "onnx" and DEFAULT_BACKEND[("cpu", "int8+calibration")] == "openvino"
    assert AUTO_FALLBACKS["openvino"] == ("onnx", "torch") and AUTO_FALLBACKS["onnx"] == ("torch",)
    if HAS_OPENVINO:
        assert resolve_backend("auto", "cpu", "int8", calibrated=True) == "openvino"
    assert resolve_backend("auto", "cpu", "int8") == ("onnx" if HAS_ONNXRUNTIME else "torch")
    _hide(monkeypatch, "openvino", "nncf")
    assert resolve_backend("auto", "cpu", "int8", calibrated=True) == ("onnx" if HAS_ONNXRUNTIME else "torch")
    _hide(monkeypatch, "openvino", "nncf", "onnxruntime")
    assert resolve_backend("auto", "cpu", "int8") == "torch"
    assert resolve_backend("auto", "cpu", "int8", calibrated=True) == "torch"
    assert resolve_backend("auto", "cpu") == DEFAULT_BACKEND[("cpu", "none")]


def test_resolve_backend_checks_names_and_devices():
    assert resolve_backend("torch", "cpu", "int8") == "torch"
    with pytest.raises(ValueError, match="--backend must be one of"):
        resolve_backend("tensorrt", "cpu")
    with pytest.raises(ValueError, match="--quantize must be one of"):
        resolve_backend("torch", "cpu", "int4")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("torch", "cuda", "int8")
    for backend in ("onnx", "openvino"):
        with pytest.raises(ValueError, match=f"--backend {backend} runs on the CPU"):
            resolve_backend(backend, "cuda")
    with pytest.raises(ValueError, match="compile with --quantize int8"):
        resolve_backend("compile", "cpu", "int8")


@pytest.mark.parametrize(
    "backend", [pytest.param("onnx", marks=needs_onnxruntime), pytest.param("openvino", marks=needs_openvino)]
)
def test_a_bf16_model_exports_its_tower_from_fp32_weights(tiny_model, tmp_path, backend):
    reference = copy.deepcopy(tiny_model)
    model, _ = apply_backend(tiny_model.to(torch.bfloat16), backend, cache_dir=tmp_path, progress=False)
    assert next(model.parameters()).dtype == torch.bfloat16  # the heads stay bf16; the tower's outputs are cast
    pixels = _pixels(model, 2)
    a, b = _outputs(reference, pixels).anomaly_map_grid, _outputs(model, pixels.to(torch.bfloat16)).anomaly_map_grid
    assert b.dtype == torch.float32  # features leave the bf16 heads in fp32 and are scored there
    assert torch.corrcoef(torch.stack([a.flatten(), b.float().flatten()]))[0, 1] > 0.999


@pytest.mark.slow
def test_compile_backend_gives_the_same_outputs(tiny_model):
    reference = copy.deepcopy(tiny_model)
    model, used = apply_backend(tiny_model, "compile")
    pixels = _pixels(model)
    torch.testing.assert_close(
        _outputs(model, pixels).anomaly_map_grid, _outputs(reference, pixels).anomaly_map_grid, atol=1e-4, rtol=1e-4
    )

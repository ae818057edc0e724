"""Backend switch: the onnx tower gives the model's maps, its export is cached by weights, int8 and errors."""

from __future__ import annotations

import copy

import pytest
import torch

from aaclip_hf.runtime import backends
from aaclip_hf.runtime.backends import (
    DEFAULT_BACKEND,
    OnnxVisionTower,
    apply_backend,
    resolve_backend,
    vision_tower_key,
)


pytest.importorskip("onnxruntime")


def _pixels(model, batch=3, seed=0):
    size = model.config.vision_config.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _outputs(model, pixels):
    with torch.no_grad():
        out = model(pixels, class_ids=model.class_ids(["bottle", "object", "bottle"][: len(pixels)]), output_size=40)
    return out


def test_onnx_backend_gives_the_same_outputs(tiny_model, tmp_path):
    reference = copy.deepcopy(tiny_model)
    model, used = apply_backend(tiny_model, "onnx", cache_dir=tmp_path)
    assert used == "onnx" and isinstance(model.vision_model, OnnxVisionTower)
    for batch in (1, 3):  # the exported batch axis is dynamic
        pixels = _pixels(model, batch)
        a, b = _outputs(reference, pixels), _outputs(model, pixels)
        for name in ("anomaly_map_grid", "anomaly_map", "image_score", "raw_anomaly_score"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-4, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="--backend torch"):
        model(_pixels(model, 1), output_attentions=True)


def test_onnx_export_is_cached_by_weights(tiny_model, tmp_path, monkeypatch):
    other = copy.deepcopy(tiny_model)
    apply_backend(copy.deepcopy(tiny_model), "onnx", cache_dir=tmp_path)
    files = list(tmp_path.rglob("*.onnx"))
    assert len(files) == 1 and files[0].parent.name == vision_tower_key(tiny_model)
    stamp = files[0].stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this tower")

    monkeypatch.setattr(backends, "export_vision_tower_onnx", no_export)
    model, _ = apply_backend(copy.deepcopy(tiny_model), "onnx", cache_dir=tmp_path)
    assert model.vision_model.path == files[0] and files[0].stat().st_mtime_ns == stamp
    # Other weights -> another key -> a new export.
    with torch.no_grad():
        other.vision_model.encoder.layers[0].mlp.fc1.weight.add_(1e-3)
    assert vision_tower_key(other) != vision_tower_key(tiny_model)
    with pytest.raises(AssertionError, match="exported again"):
        apply_backend(other, "onnx", cache_dir=tmp_path)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AACLIP_CACHE", str(tmp_path))
    assert backends.onnx_cache_dir() == tmp_path / "onnx"
    assert backends.onnx_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_int8_backends_track_fp32(tiny_model, tmp_path):
    reference = copy.deepcopy(tiny_model)
    pixels = _pixels(tiny_model)
    expected = _outputs(reference, pixels).anomaly_map_grid.flatten()
    for backend in ("torch", "onnx"):
        model, _ = apply_backend(copy.deepcopy(tiny_model), backend, quantize="int8", cache_dir=tmp_path)
        got = _outputs(model, pixels).anomaly_map_grid.flatten()
        assert torch.corrcoef(torch.stack([expected, got]))[0, 1] >= 0.99, backend
        assert (got - expected).abs().max() <= 0.05 * (expected.max() - expected.min()), backend
        assert not torch.equal(got, expected), backend
    assert (tmp_path / vision_tower_key(tiny_model) / backends.ONNX_INT8_FILE).is_file()


def test_auto_falls_back_to_torch_without_onnxruntime(monkeypatch):
    real = backends.importlib.util.find_spec
    monkeypatch.setattr(
        backends.importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name)
    )
    monkeypatch.setitem(DEFAULT_BACKEND, ("cpu", "int8"), "onnx")
    assert resolve_backend("auto", "cpu", "int8") == "torch"
    assert resolve_backend("onnx", "cpu", "int8") == "onnx"  # asked for explicitly: the import error will say so


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == DEFAULT_BACKEND[("cpu", "none")]
    assert resolve_backend("auto", "cpu", "int8") == DEFAULT_BACKEND[("cpu", "int8")]
    assert resolve_backend("onnx", "cpu") == "onnx"
    with pytest.raises(ValueError, match="--backend must be one of"):
        resolve_backend("tensorrt", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("torch", "cuda", "int8")
    with pytest.raises(ValueError, match="--backend onnx runs on the CPU"):
        resolve_backend("onnx", "cuda")
    with pytest.raises(ValueError, match="compile with --quantize int8"):
        resolve_backend("compile", "cpu", "int8")


@pytest.mark.slow
def test_compile_backend_gives_the_same_outputs(tiny_model):
    reference = copy.deepcopy(tiny_model)
    model, used = apply_backend(tiny_model, "compile")
    pixels = _pixels(model)
    torch.testing.assert_close(
        _outputs(model, pixels).anomaly_map_grid, _outputs(reference, pixels).anomaly_map_grid, atol=1e-4, rtol=1e-4
    )

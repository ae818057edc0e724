"""The backend switch through `aaclip detect`: --backend openvino gives torch's detections, --quantize int8 tracks them
(ONNX Runtime's dynamic int8, or OpenVINO's static int8 with --calibration-images, which key the quantised tower),
and a missing extra is one line naming it (exit status 2)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.cli import main
from aaclip_hf.runtime import backends
from aaclip_hf.runtime.model_folder import save_model_folder


needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="the openvino extra is not installed",
)


@pytest.fixture
def folders(tiny_model, processor, tmp_path, capsys):
    model = save_model_folder(tiny_model, processor, tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (36 + i, 44, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i}.png")
    capsys.readouterr()
    return model, images


def _detect(model, images, out, *extra) -> dict:
    argv = ["detect", str(images), "--model", str(model), "--output", str(out), "--device", "cpu", "--no-progress"]
    assert main([*argv, "--save-maps", "--class-name", "bottle", *extra]) == 0
    records = json.loads((out / "detections.json").read_text())
    return {r["image"]: (r["score"], np.load(out / r["anomaly_map"])) for r in records}


@needs_openvino
def test_openvino_gives_torchs_detections_and_int8_tracks_them(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("AACLIP_CACHE", str(tmp_path / "cache"))
    model, images = folders
    eager = _detect(model, images, tmp_path / "eager", "--backend", "torch")
    openvino = _detect(model, images, tmp_path / "openvino", "--backend", "openvino")
    assert list(openvino) == list(eager)
    for image, (score, anomaly_map) in eager.items():
        assert openvino[image][0] == pytest.approx(score, abs=1e-4)
        np.testing.assert_allclose(openvino[image][1], anomaly_map, atol=1e-4)
    # auto with your own normal images: OpenVINO + NNCF static int8 calibrated on them
    int8 = _detect(model, images, tmp_path / "int8", "--quantize", "int8", "--calibration-images", str(images))
    a = np.concatenate([m.ravel() for _, m in eager.values()])
    b = np.concatenate([m.ravel() for _, m in int8.values()])
    assert np.corrcoef(a, b)[0, 1] >= 0.99 and not np.array_equal(a, b)
    entries = sorted(path.parent.name for path in (tmp_path / "cache" / "openvino").glob("*/vision_tower.xml"))
    assert len(entries) == 2 and any("-int8-" in name for name in entries)
    # Other calibration images: another quantised tower, cached under their pixels.
    _detect(model, images, tmp_path / "own", "--quantize", "int8", "--calibration-images", str(images / "img0.png"))
    assert len(list((tmp_path / "cache" / "openvino").glob("*/vision_tower.xml"))) == 3


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed")
def test_int8_without_calibration_images_runs_onnx_runtimes_dynamic_int8(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("AACLIP_CACHE", str(tmp_path / "cache"))
    model, images = folders
    eager = _detect(model, images, tmp_path / "eager", "--backend", "torch")
    int8 = _detect(model, images, tmp_path / "int8", "--quantize", "int8")
    a = np.concatenate([m.ravel() for _, m in eager.values()])
    b = np.concatenate([m.ravel() for _, m in int8.values()])
    assert np.corrcoef(a, b)[0, 1] >= 0.99 and not np.array_equal(a, b)
    assert list((tmp_path / "cache" / "onnx").glob(f"*/{backends.ONNX_INT8_FILE}"))
    assert not (tmp_path / "cache" / "openvino").exists()


def test_a_missing_extra_is_one_line_naming_it(folders, tmp_path, capsys, monkeypatch):
    model, images = folders
    real = importlib.util.find_spec
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    argv = ["detect", str(images), "--model", str(model), "--output", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--backend", "openvino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backend openvino needs openvino" in err[0] and "aaclip-hf[openvino]" in err[0]
    assert not (tmp_path / "out").exists()


def test_calibration_images_need_int8(folders, tmp_path, capsys):
    model, images = folders
    argv = ["detect", str(images), "--model", str(model), "--output", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--calibration-images", str(images)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calibration-images" in err[0] and "--quantize int8" in err[0]

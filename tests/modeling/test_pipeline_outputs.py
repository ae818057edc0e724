"""The pipeline's segmentation-style outputs (score, label, PIL mask, maps) and its errors without a model, for
non-string class names and for URLs offline."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf.modeling import pipeline_aaclip
from aaclip_hf.modeling.pipeline_aaclip import (
    TASK,
    AAClipAnomalyDetectionPipeline,
    anomaly_probability,
    decision_pixel_threshold,
)


def _image(height=30, width=50, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture
def pipe(tiny_model, processor):
    return AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")


def test_mask_and_probability_at_the_image_size(pipe, tiny_model):
    config = tiny_model.config
    result = pipe(_image(30, 50), class_name="bottle", threshold=0.4)
    levels = config.num_levels
    # the probability map: sigmoid(2 * map / L - 1), by numpy
    expected = _sigmoid(2.0 * result["anomaly_map"].astype(np.float64) / levels - 1.0)
    np.testing.assert_allclose(result["anomaly_probability"], expected, rtol=1e-6, atol=1e-7)
    assert result["anomaly_probability"].shape == (30, 50) and result["anomaly_probability"].dtype == np.float32
    assert 0.0 <= result["anomaly_probability"].min() <= result["anomaly_probability"].max() <= 1.0
    # default pixel threshold: the fused score's decision region, (t - (1 - w) * raw) / w, by hand
    assert config.image_score_mode[config.default_domain] == "fused"
    weight = config.image_score_map_weight
    level = (0.4 - (1.0 - weight) * result["raw_anomaly_score"]) / weight
    assert result["pixel_threshold"] == pytest.approx(level)
    mask = result["mask"]
    assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (50, 30)
    pixels = np.asarray(mask)
    assert set(np.unique(pixels)) <= {0, 255}
    np.testing.assert_array_equal(pixels == 255, result["anomaly_probability"] >= level)
    # label and the kept key agree with the score
    assert result["label"] == ("anomaly" if result["score"] >= 0.4 else "normal")
    assert result["is_anomaly"] == (result["label"] == "anomaly")


def test_pixel_threshold_rules_and_override(pipe, tiny_model):
    image = _image(seed=1)
    medical = pipe(image, class_name="bottle", domain="medical", threshold=0.3)  # "map" score: p >= t
    assert medical["pixel_threshold"] == pytest.approx(0.3)
    np.testing.assert_array_equal(np.asarray(medical["mask"]) > 0, medical["anomaly_probability"] >= 0.3)
    fixed = pipe(image, class_name="bottle", pixel_threshold=0.5)
    assert fixed["pixel_threshold"] == 0.5
    np.testing.assert_array_equal(np.asarray(fixed["mask"]) > 0, fixed["anomaly_probability"] >= 0.5)
    everything = pipe(image, class_name="bottle", pixel_threshold=0.0)
    assert np.asarray(everything["mask"]).min() == 255
    with pytest.raises(ValueError, match="pixel_threshold"):
        pipe(image, pixel_threshold=1.5)
    tiny_model.config.image_score_mode = {"industrial": "raw", "medical": "map"}  # the map plays no part
    raw = pipe(image, class_name="bottle")
    assert raw["pixel_threshold"] is None and not np.asarray(raw["mask"]).any()
    tensors = pipe(image, class_name="bottle", return_tensors=True)
    assert isinstance(tensors["anomaly_probability"], torch.Tensor) and isinstance(tensors["mask"], Image.Image)


def test_one_formula_shared_with_detect(tiny_model):
    detect_module = importlib.import_module("aaclip_hf.inference.detect")
    assert detect_module.anomaly_probability is anomaly_probability
    assert detect_module.decision_pixel_threshold is decision_pixel_threshold
    levels = 3
    np.testing.assert_allclose(
        anomaly_probability(np.array([0.0, 1.5, 3.0]), levels), _sigmoid(np.array([-1.0, 0.0, 1.0])), rtol=1e-6
    )
    config = tiny_model.config
    assert decision_pixel_threshold(config, 0.6, 0.4) == pytest.approx(0.8)  # w = 0.5: (0.6 - 0.2) / 0.5


def test_no_model_is_a_clear_error():
    from transformers import pipeline

    with pytest.raises(ValueError, match="has no default model: pass one"):
        pipeline(TASK)


def test_non_string_class_names_are_refused(pipe):
    image = _image()
    for bad in (3, b"bottle", ["bottle", 7]):
        images = [image, image] if isinstance(bad, list) else image
        with pytest.raises(TypeError, match="class names must be strings"):
            pipe(images, class_name=bad)
    with pytest.raises(TypeError, match="class names must be strings, got 1.5"):
        pipe([{"image": image, "class_name": 1.5}])
    with pytest.raises(ValueError, match="non-empty"):
        pipe(image, class_name="  ")


def test_urls_offline_and_unreachable_say_so(pipe, monkeypatch):
    url = "https://example.com/part.png"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"cannot fetch URL 'https://example.com/part.png': offline"):
        pipe(url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(pipeline_aaclip, "_offline", lambda: False)

    class ConnectError(Exception):  # what an HTTP client raises without a route to the host
        pass

    def unreachable(image, timeout=None):
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(pipeline_aaclip, "load_image", unreachable)
    with pytest.raises(ValueError, match=r"cannot fetch URL .*: ConnectError: .*name resolution"):
        pipe(url)

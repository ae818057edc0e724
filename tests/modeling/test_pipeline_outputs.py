"""The pipeline's segmentation-style outputs (score, label, threshold, PIL mask, maps on the one heat scale) and its
errors without a model, for non-string class names and for URLs offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf.modeling import pipeline_aaclip
from aaclip_hf.modeling.pipeline_aaclip import TASK, AAClipAnomalyDetectionPipeline
from aaclip_hf.modeling.processing_aaclip import normalize_at_threshold, pixel_decision_level


def _image(height=30, width=50, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _heat(probability, level):
    """The heat scale by hand: 0 -> 0, level -> 0.5, 1 -> 1, linear in between."""
    return np.where(probability < level, 0.5 * probability / level, 0.5 + 0.5 * (probability - level) / (1 - level))


@pytest.fixture
def pipe(tiny_model, processor):
    return AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")


def test_heat_map_mask_and_threshold_at_the_image_size(pipe, tiny_model, processor):
    config = tiny_model.config
    image = _image(30, 50)
    result = pipe(image, class_name="bottle", threshold=0.4)
    with torch.no_grad():
        out = tiny_model(processor(images=[image])["pixel_values"], class_ids=tiny_model.class_ids("bottle"))
    # the probability map: sigmoid(2 * grid / L - 1) on the grid, bilinearly resized (zero-shot: no references)
    probability = torch.nn.functional.interpolate(
        _sigmoid_t(2.0 * out.anomaly_map_grid / config.num_levels - 1.0)[:, None],
        size=(30, 50),
        mode="bilinear",
        align_corners=True,
    )[0, 0].numpy()
    # the decision level of the fused score, (t - (1 - w) * raw) / w, by hand
    assert config.image_score_mode[config.default_domain] == "fused"
    weight = config.image_score_map_weight
    level = (0.4 - (1.0 - weight) * result["raw_anomaly_score"]) / weight
    assert result["pixel_threshold"] == pytest.approx(level)
    assert 0 < level < 1
    np.testing.assert_allclose(result["anomaly_probability"], _heat(probability, level), rtol=1e-5, atol=1e-6)
    assert result["anomaly_probability"].shape == (30, 50) and result["anomaly_probability"].dtype == np.float32
    mask = result["mask"]
    assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (50, 30)
    pixels = np.asarray(mask)
    assert set(np.unique(pixels)) <= {0, 255}
    np.testing.assert_array_equal(pixels == 255, result["anomaly_probability"] >= 0.5)
    assert result["label"] == ("anomaly" if result["score"] >= 0.4 else "normal")
    assert result["is_anomaly"] == (result["label"] == "anomaly")
    assert result["threshold"] == 0.4 and result["calibrated"] is False and result["normal_references"] == 0


def _sigmoid_t(x):
    return torch.sigmoid(x)


def test_the_class_threshold_is_used_and_reported(pipe, tiny_model):
    image = _image(seed=2)
    assert pipe(image, class_name="bottle")["threshold"] == 0.5  # nothing calibrated: the default
    tiny_model.config.decision_threshold = 0.45  # the fallback of uncalibrated classes
    tiny_model.config.decision_thresholds = {"bottle": 0.61}
    bottle, pcb = pipe(image, class_name="bottle"), pipe(image, class_name="pcb1")
    assert (bottle["threshold"], bottle["calibrated"]) == (0.61, True)
    assert (pcb["threshold"], pcb["calibrated"]) == (0.45, False)
    assert bottle["is_anomaly"] == (bottle["score"] >= 0.61)
    forced = pipe(image, class_name="bottle", threshold=0.2)
    assert (forced["threshold"], forced["calibrated"]) == (0.2, False)


def test_pixel_threshold_rules_and_override(pipe, tiny_model):
    image = _image(seed=1)
    medical = pipe(image, class_name="bottle", domain="medical", threshold=0.3)  # "map" score: the level is t
    assert medical["pixel_threshold"] == pytest.approx(0.3)
    fixed = pipe(image, class_name="bottle", pixel_threshold=0.5)
    assert fixed["pixel_threshold"] == 0.5
    everything = pipe(image, class_name="bottle", pixel_threshold=0.0)
    assert np.asarray(everything["mask"]).min() == 255
    with pytest.raises(ValueError, match="pixel_threshold"):
        pipe(image, pixel_threshold=1.5)
    tiny_model.config.image_score_mode = {"industrial": "raw", "medical": "map"}  # the map plays no part
    raw = pipe(image, class_name="bottle")
    assert raw["pixel_threshold"] is None and not np.asarray(raw["mask"]).any()
    assert raw["anomaly_probability"].max() <= 0.5
    tensors = pipe(image, class_name="bottle", return_tensors=True)
    assert isinstance(tensors["anomaly_probability"], torch.Tensor) and isinstance(tensors["mask"], Image.Image)


def test_heat_scale_and_decision_level_by_hand():
    probability = np.array([0.0, 0.1, 0.4, 0.7, 1.0], dtype=np.float32)
    np.testing.assert_allclose(normalize_at_threshold(probability, 0.4), [0.0, 0.125, 0.5, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(normalize_at_threshold(probability, 0.0), 0.5 + 0.5 * probability, atol=1e-6)
    np.testing.assert_allclose(normalize_at_threshold(probability, 1.2), 0.5 * probability, atol=1e-6)
    assert pixel_decision_level(0.6, 0.4, 0.5) == pytest.approx(0.8)  # (0.6 - 0.5 * 0.4) / 0.5
    assert pixel_decision_level(0.6, 0.4, 1.0) == pytest.approx(0.6)  # the map alone: the threshold itself
    assert pixel_decision_level(0.6, 0.4, 0.0) == float("inf")  # the image branch alone: no pixel decides


def test_no_model_is_a_clear_error():
    from transformers import pipeline

    with pytest.raises(ValueError, match="has no default model: pass one"):
        pipeline(TASK)


def test_non_string_class_names_are_refused(pipe):
    image = _image()
    for bad in (3, b"bottle", ["bottle", 7], "  "):
        images = [image, image] if isinstance(bad, list) else image
        with pytest.raises(ValueError, match="class names must be non-empty strings"):
            pipe(images, class_name=bad)
    with pytest.raises(ValueError, match="class names must be non-empty strings, got 1.5"):
        pipe([{"image": image, "class_name": 1.5}])


def test_urls_offline_and_unreachable_say_so(pipe, monkeypatch):
    url = "https://example.com/part.png"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"cannot fetch URL 'https://example.com/part.png': offline"):
        pipe(url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    class ConnectError(Exception):  # what an HTTP client raises without a route to the host
        pass

    def unreachable(image, timeout=None):
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(pipeline_aaclip, "load_image", unreachable)
    with pytest.raises(ValueError, match=r"cannot fetch URL .*: ConnectError: .*name resolution"):
        pipe(url)


def test_empty_images_are_refused_naming_their_size(pipe):
    for empty in (Image.new("RGB", (0, 0)), Image.new("RGB", (12, 0)), torch.zeros(3, 0, 8)):
        with pytest.raises(ValueError, match=r"image is \d+x\d+ pixels; expected at least 1x1"):
            pipe(empty, class_name="bottle")


def test_a_bfloat16_tensor_scores_as_its_float32_values(pipe):
    """A bf16 tensor (a model output fed back, a half-precision loader) is an image like any other: its values,
    rounded to bf16, give the score of the same values in float32."""
    image = torch.rand(3, 30, 50, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    low = pipe(image, class_name="bottle")
    full = pipe(image.float(), class_name="bottle")
    assert low["score"] == pytest.approx(full["score"], abs=1e-6)
    assert low["anomaly_map"].shape == (30, 50) and low["anomaly_map"].dtype == np.float32

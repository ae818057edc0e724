"""A class's decision threshold belongs to the scoring it was calibrated on: the same vision weights, the class's
anchors, its references (or none) and the domain. Changed scoring falls back to the model's fallback threshold with a
warning, never silently; the threshold and its fingerprint survive saving and loading."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf.errors import InvalidInputError
from aaclip_hf.modeling import AAClipConfig
from aaclip_hf.modeling.configuration_aaclip import StaleThresholdWarning
from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline
from aaclip_hf.runtime.loading import load_model_and_processor
from aaclip_hf.runtime.model_folder import save_model_folder


def _images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture
def pipe(tiny_model, processor):
    tiny_model.config.decision_threshold = 0.9  # the fallback, easy to tell from a calibrated 0.25
    return AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")


def _calibrate(pipe, class_name="bottle", threshold=0.25, **scoring) -> None:
    pipe.model.config.set_decision_threshold(class_name, threshold, pipe.scoring_fingerprint(class_name, **scoring))


def _decision(pipe, **kwargs) -> tuple[float, bool]:
    result = pipe(_images(1, seed=9)[0], class_name="bottle", **kwargs)
    return result["threshold"], result["calibrated"]


def test_the_threshold_is_used_for_the_scoring_it_was_calibrated_on(pipe, recwarn):
    _calibrate(pipe)
    assert _decision(pipe) == (0.25, True)
    assert not [w for w in recwarn if issubclass(w.category, StaleThresholdWarning)]


def test_trained_vision_weights_make_the_threshold_stale(pipe):
    _calibrate(pipe)
    with torch.no_grad():
        pipe.model.vision_model.post_layernorm.weight.mul_(1.5)  # what a training step does to the weights
    with pytest.warns(
        StaleThresholdWarning, match=r"threshold of 'bottle' \(0.2500\) was calibrated on other scoring"
    ):
        assert _decision(pipe) == (0.9, False)


def test_references_change_the_scoring(pipe, processor):
    _calibrate(pipe)  # zero-shot
    with pytest.warns(StaleThresholdWarning):
        assert _decision(pipe, reference_images=_images(2)) == (0.9, False)  # few-shot scores sit on another scale
    pixels = processor(images=_images(2))["pixel_values"]
    pipe.model.add_references("bottle", pixels)  # drops the zero-shot threshold: it no longer belongs to the class
    assert "bottle" not in pipe.model.config.decision_thresholds
    _calibrate(pipe)  # now with the stored references
    assert _decision(pipe) == (0.25, True)
    with pytest.warns(StaleThresholdWarning):
        assert _decision(pipe, use_references=False) == (0.9, False)


def test_adding_references_drops_the_threshold_and_says_so(pipe, processor, caplog):
    _calibrate(pipe)
    with caplog.at_level(logging.WARNING):
        pipe.model.add_references("bottle", processor(images=_images(2))["pixel_values"])
    assert "decision threshold of 'bottle' (0.2500) was dropped: its references changed" in caplog.text
    _calibrate(pipe)
    pipe.model.remove_references(["bottle"])
    assert "bottle" not in pipe.model.config.decision_thresholds


def test_another_domain_or_other_anchors_is_other_scoring(pipe, processor):
    _calibrate(pipe)
    with pytest.warns(StaleThresholdWarning):
        assert _decision(pipe, domain="medical") == (0.9, False)
    pipe.model.store_text_anchors(["bottle"], torch.randn(1, pipe.model.config.projection_dim, 2))
    with pytest.warns(StaleThresholdWarning):
        assert _decision(pipe) == (0.9, False)


def test_a_threshold_without_fingerprint_is_used_as_written(pipe):
    pipe.model.config.decision_thresholds = {"bottle": 0.4}  # set by hand
    assert _decision(pipe) == (0.4, True)


def test_the_fingerprint_is_of_the_scoring_not_of_the_threshold(pipe):
    """Editing the value by hand keeps the binding: the fingerprint says what was scored, not what was chosen."""
    _calibrate(pipe)
    pipe.model.config.decision_thresholds = {"bottle": 0.3}
    assert _decision(pipe) == (0.3, True)


def test_threshold_and_fingerprint_survive_save_and_load(pipe, processor, tmp_path):
    pipe.model.add_references("bottle", processor(images=_images(2))["pixel_values"])
    _calibrate(pipe)
    save_model_folder(pipe.model, processor, tmp_path / "model")
    model, loaded_processor = load_model_and_processor(tmp_path / "model")
    loaded = AAClipAnomalyDetectionPipeline(model=model, processor=loaded_processor, device="cpu")
    assert loaded.model.config.threshold_fingerprints == pipe.model.config.threshold_fingerprints
    assert _decision(loaded) == (0.25, True)


def test_another_dtype_uses_the_stored_threshold(pipe):
    """Low-precision inference of a calibrated model keeps the class's threshold (its digest cannot match bit for bit;
    the threshold is used as stored)."""
    _calibrate(pipe)
    pipe.model.to(torch.bfloat16)
    assert _decision(pipe) == (0.25, True)


def test_set_decision_threshold_checks_and_reports_what_it_replaced():
    config = AAClipConfig.tiny()
    assert config.set_decision_threshold("bottle", 0.3, "float32:abc") is None
    assert config.set_decision_threshold("bottle", 0.4) == 0.3
    assert config.decision_thresholds == {"bottle": 0.4} and config.threshold_fingerprints == {}
    for bad in (1.5, float("nan"), True, "0.5"):
        with pytest.raises(InvalidInputError, match=r"decision_thresholds\['bottle'\]"):
            config.set_decision_threshold("bottle", bad)
    assert config.set_decision_threshold("bottle", None) == 0.4 and config.decision_thresholds == {}
    with pytest.raises(Exception, match=r"threshold_fingerprints\['bottle'\] must be str"):
        AAClipConfig.tiny(threshold_fingerprints={"bottle": 3})


def test_anchors_are_identified_by_what_they_derive_from(pipe, processor):
    """A class calibrated with anchors the pipeline computed keeps its threshold once the same text branch and prompts
    store them (aaclip add-class), and in calls that compute other classes' anchors next to it."""
    _calibrate(pipe, "pcb4")  # not stored: the pipeline computes its anchors
    result = pipe(_images(2, seed=3), class_name=["pcb4", "capsule"])[0]
    assert (result["threshold"], result["calibrated"]) == (0.25, True)
    pipe.model.update_text_anchors(processor, ["capsule", "pcb4"])
    fresh = AAClipAnomalyDetectionPipeline(model=pipe.model, processor=processor, device="cpu")
    result = fresh(_images(1, seed=3)[0], class_name="pcb4")
    assert (result["threshold"], result["calibrated"]) == (0.25, True)
    pipe.model.refresh_text_anchors(processor.__class__.for_model(pipe.model.config, templates=["a {}."]))
    with pytest.warns(StaleThresholdWarning):  # other prompts made the stored anchors
        assert fresh(_images(1, seed=3)[0], class_name="pcb4")["calibrated"] is False

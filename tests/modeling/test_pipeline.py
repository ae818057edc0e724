"""The zero-shot-anomaly-detection pipeline: inputs, batching, maps at the input size, anchors, thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aaclip_hf.modeling.pipeline_aaclip import TASK, AAClipAnomalyDetectionPipeline
from aaclip_hf.modeling.processing_aaclip import DEFAULT_THRESHOLD

from ..conftest import make_tiny_model


def _image(height=30, width=50, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def pipe(tiny_model, processor):
    return AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")


def test_matches_the_model_and_resizes_the_map_to_the_input(pipe, tiny_model, processor):
    image = _image(30, 50)
    result = pipe(image, class_name="bottle")
    with torch.no_grad():
        out = tiny_model(**processor(images=[image], return_tensors="pt"), class_ids=tiny_model.class_ids(["bottle"]))
    # Independent oracle: the summed grid, bilinearly resized (align_corners=True) to (height, width).
    expected = F.interpolate(out.anomaly_map_grid[:, None], size=(30, 50), mode="bilinear", align_corners=True)[0, 0]
    assert result["anomaly_map"].shape == (30, 50)
    assert isinstance(result["anomaly_map"], np.ndarray) and result["anomaly_map"].dtype == np.float32
    np.testing.assert_allclose(result["anomaly_map"], expected.numpy(), rtol=1e-5, atol=1e-5)
    assert result["score"] == pytest.approx(float(out.image_score[0]), abs=1e-6)
    assert result["raw_anomaly_score"] == pytest.approx(float(out.raw_anomaly_score[0]), abs=1e-6)
    assert result["class_name"] == "bottle"
    assert result["is_anomaly"] == (result["score"] >= DEFAULT_THRESHOLD)
    assert result["label"] == ("anomaly" if result["is_anomaly"] else "normal")
    tensor_result = pipe(image, class_name="bottle", return_tensors=True)
    assert isinstance(tensor_result["anomaly_map"], torch.Tensor)


def test_paths_pil_arrays_and_tensors_give_the_same_result(pipe, tmp_path):
    image = _image(24, 36, seed=3)
    path = tmp_path / "img.png"
    image.save(path)
    array = np.array(image)
    inputs = [
        str(path),
        path,
        image,
        array,
        array.astype(np.float32) / 255.0,
        torch.from_numpy(array).permute(2, 0, 1),
    ]
    scores = [pipe(item, class_name="bottle")["score"] for item in inputs]
    np.testing.assert_allclose(scores, scores[0], atol=1e-6)
    gray = pipe(np.asarray(image.convert("L")), class_name="bottle")
    assert gray["anomaly_map"].shape == (24, 36)


def test_batched_mixed_classes_equal_one_by_one(pipe):
    images = [_image(30, 50, 0), _image(20, 20, 1), _image(41, 17, 2)]
    classes = ["bottle", "pcb1", "object"]
    batched = pipe(images, class_name=classes, batch_size=2)
    single = [pipe(image, class_name=name) for image, name in zip(images, classes)]
    assert [r["class_name"] for r in batched] == classes
    for b, s, image in zip(batched, single, images):
        assert b["score"] == pytest.approx(s["score"], abs=1e-6)
        assert b["anomaly_map"].shape == (image.height, image.width)
        np.testing.assert_allclose(b["anomaly_map"], s["anomaly_map"], atol=1e-5)
    # Same via dict inputs; a list with one class name for all.
    as_dicts = pipe([{"image": im, "class_name": c} for im, c in zip(images, classes)], batch_size=3)
    assert [r["score"] for r in as_dicts] == pytest.approx([r["score"] for r in batched], abs=1e-6)
    same_class = pipe(images, class_name="bottle", batch_size=3)
    assert {r["class_name"] for r in same_class} == {"bottle"}


def test_threshold_default_config_and_override(pipe, tiny_model):
    image = _image()
    score = pipe(image, class_name="bottle")["score"]
    assert pipe(image, class_name="bottle")["threshold"] == DEFAULT_THRESHOLD
    tiny_model.config.decision_threshold = min(1.0, score + 1e-3)
    result = pipe(image, class_name="bottle")
    assert result["threshold"] == pytest.approx(score + 1e-3) and not result["is_anomaly"]
    assert result["label"] == "normal"
    result = pipe(image, class_name="bottle", threshold=max(0.0, score - 1e-3))
    assert result["is_anomaly"] and result["label"] == "anomaly"
    with pytest.raises(ValueError, match="threshold"):
        pipe(image, threshold=1.5)


def test_missing_anchors_are_computed_once_and_cached_in_the_pipeline(processor, monkeypatch):
    """Anchors of new names live in the pipeline instance: the model's weights and config are never written."""
    model = make_tiny_model()
    model.update_text_anchors(processor, ["object"])
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = model.config.to_dict()
    pipe = AAClipAnomalyDetectionPipeline(model=model, processor=processor, device="cpu")
    calls = []
    original = model.compute_text_anchors
    monkeypatch.setattr(
        model, "compute_text_anchors", lambda names, prompts: (calls.append(list(names)), original(names, prompts))[1]
    )
    images = [_image(seed=i) for i in range(3)]
    pipe(images, class_name=["widget", "gear", "widget"], batch_size=2)
    pipe(images[0], class_name="widget")
    assert calls == [["widget", "gear"]]
    assert model.stored_class_names == ["object"] and model.config.to_dict() == config
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    assert set(pipe.anchor_cache) == {"widget", "gear"}
    with torch.no_grad():
        expected = original(["widget"], processor)[0]
    torch.testing.assert_close(pipe.anchor_cache["widget"], expected)


def test_generic_anchor_is_computed_when_never_stored(processor):
    model = make_tiny_model()  # text_anchors all zero: "object" never computed
    pipe = AAClipAnomalyDetectionPipeline(model=model, processor=processor, device="cpu")
    result = pipe(_image())
    assert result["class_name"] == "object" and "object" in pipe.anchor_cache
    assert not bool(model.text_anchors.any())  # the model is not written


def test_inference_only_model_refuses_unknown_classes(tiny_model, processor):
    small = tiny_model.to_inference_only()
    pipe = AAClipAnomalyDetectionPipeline(model=small, processor=processor, device="cpu")
    assert 0.0 <= pipe(_image(), class_name="bottle")["score"] <= 1.0
    with pytest.raises(ValueError, match="inference-only"):
        pipe(_image(), class_name="never_seen")


def test_bad_inputs_say_what_is_wrong(pipe, tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        pipe(str(missing))
    with pytest.raises(ValueError, match="shape"):
        pipe(np.zeros((4, 5, 6, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(np.full((8, 8, 3), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="2 class names for 3 images"):
        pipe([_image()] * 3, class_name=["a", "b"])
    with pytest.raises(TypeError, match="unexpected"):
        pipe(_image(), colour="red")


def test_registered_task_loads_a_saved_folder_in_process(tiny_model, processor, tmp_path, capsys, monkeypatch):
    """The README's line: with the package imported, `pipeline(TASK, model=folder)` needs no trust_remote_code and runs
    the installed classes, for a pipeline-written folder (it declares `custom_pipelines` for the Hub copy) and for a
    plain `save_pretrained` folder alike."""
    from transformers import pipeline

    direct = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")
    direct.save_pretrained(tmp_path / "hub")
    tiny_model.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    assert TASK in json.loads((tmp_path / "hub" / "config.json").read_text())["custom_pipelines"]
    assert (tmp_path / "hub" / "pipeline_aaclip.py").is_file() and (
        tmp_path / "hub" / "processor_config.json"
    ).is_file()
    image = _image()
    expected = direct(image, class_name="bottle")["score"]
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("pipeline() asked on the terminal"))
    for folder in ("hub", "plain"):
        detector = pipeline(TASK, model=str(tmp_path / folder), device="cpu")
        assert "custom code" not in capsys.readouterr().out
        assert type(detector) is AAClipAnomalyDetectionPipeline and type(detector.model) is type(tiny_model)
        assert detector(image, class_name="bottle")["score"] == pytest.approx(expected, abs=1e-6)


def test_generator_inputs_with_per_item_classes(pipe):
    images = [_image(seed=i) for i in range(3)]
    items = ({"image": im, "class_name": name} for im, name in zip(images, ["bottle", "screw", "bottle"]))
    streamed = list(pipe(items, batch_size=2))
    assert [r["class_name"] for r in streamed] == ["bottle", "screw", "bottle"]
    assert streamed[1]["score"] == pytest.approx(pipe(images[1], class_name="screw")["score"], abs=1e-6)

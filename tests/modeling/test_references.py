"""Few-shot normal references: the nearest-neighbour map, its fusion with the zero-shot map, the bank (augmentation,
coreset, chunked search), storage with the weights and its trust (stale or edited banks are refused)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf.errors import InvalidInputError, StaleStateError, UnknownClassError
from aaclip_hf.modeling.modeling_aaclip import greedy_coreset, nearest_neighbour_distance
from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline
from aaclip_hf.runtime.loading import load_model
from aaclip_hf.runtime.model_folder import save_model_folder

from ..conftest import TINY_IMAGE_SIZE, make_tiny_model


def _images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(count)]


def _pixels(processor, count: int, seed: int = 0) -> torch.Tensor:
    return processor(images=_images(count, seed))["pixel_values"]


# ---------------------------------------------------------------------------------- the formulas, by hand


def test_nearest_neighbour_distance_by_hand_and_in_any_chunk_size():
    queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]]])  # unit vectors
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    # best cosine: q1 -> 1 (row 0), q2 -> 0.8 (row 1), q3 -> max(0.6, -0.28, -0.6) = 0.6
    expected = torch.tensor([[0.0, 0.2, 0.4]])
    for chunk in (1, 2, 3, 100):
        torch.testing.assert_close(nearest_neighbour_distance(queries, bank, chunk), expected, rtol=0, atol=1e-6)


def test_greedy_coreset_adds_the_farthest_point_each_step():
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    chosen = greedy_coreset(points, 3, seed=0).tolist()
    assert len(set(chosen)) == 3
    for step in range(1, 3):  # each new point is the farthest from those chosen before it
        distance = torch.cdist(points, points[chosen[:step]]).amin(dim=1)
        assert distance[chosen[step]] == distance.max()
    assert greedy_coreset(points, 3, seed=0).tolist() == chosen  # seeded: reproducible


def test_fusion_rules_by_hand(tiny_model):
    grid_sum = torch.tensor([[[2.0, 6.0]]])  # 4 levels: level-mean logit 2*2/4 - 1 = 0 and 2*6/4 - 1 = 2
    distance = torch.tensor([[[0.4, 1.0]]])  # few-shot probability d / 2 = 0.2 and 0.5
    zero_shot = torch.sigmoid(torch.tensor([0.0, 2.0]))
    few_shot = torch.tensor([0.2, 0.5])
    rules = {
        "mean": (zero_shot + few_shot) / 2,
        "harmonic": 2 * zero_shot * few_shot / (zero_shot + few_shot),
        "references": few_shot,
    }
    for fusion, expected in rules.items():
        tiny_model.config.few_shot_fusion = fusion
        torch.testing.assert_close(tiny_model.anomaly_probability(grid_sum, distance)[0, 0], expected)
    torch.testing.assert_close(tiny_model.anomaly_probability(grid_sum)[0, 0], zero_shot)  # no references


@torch.no_grad()
@pytest.mark.parametrize("fusion", ["references", "harmonic", "mean"])
def test_a_bank_of_the_image_itself_gives_distance_zero_and_the_score_follows(tiny_model, processor, fusion):
    """d = 0 for every patch: the fused probability is 0 with `references` and `harmonic`, and half the zero-shot
    probability with `mean`."""
    tiny_model.config.few_shot_fusion = fusion
    pixels = _pixels(processor, 2)
    bank = tiny_model.reference_features(pixels)
    assert bank.shape == (4, 2 * (TINY_IMAGE_SIZE // 8) ** 2, 24)
    out = tiny_model(pixels, class_ids=tiny_model.class_ids("bottle"), references=bank)
    torch.testing.assert_close(
        out.reference_distance_grid, torch.zeros_like(out.reference_distance_grid), atol=1e-5, rtol=0
    )
    zero_shot = tiny_model(pixels, class_ids=tiny_model.class_ids("bottle")).anomaly_probability_grid
    expected_grid = zero_shot / 2 if fusion == "mean" else torch.zeros_like(zero_shot)
    torch.testing.assert_close(out.anomaly_probability_grid, expected_grid, atol=1e-5, rtol=0)
    weight = out.map_weight
    expected = weight * out.anomaly_probability_grid.flatten(1).amax(1) + (1 - weight) * out.raw_anomaly_score
    torch.testing.assert_close(out.image_score, expected)
    other = tiny_model(_pixels(processor, 2, seed=5), class_ids=tiny_model.class_ids("bottle"), references=bank)
    assert bool((other.reference_distance_grid > 1e-3).all())  # other images are farther from this bank


@torch.no_grad()
def test_augmented_and_coreset_banks(tiny_model, processor):
    pixels = _pixels(processor, 2)
    plain = tiny_model.reference_features(pixels)
    augmented = tiny_model.reference_features(pixels, augmentations=["rot90", "hflip"])
    assert augmented.shape[1] == 3 * plain.shape[1]
    rotated = tiny_model.get_vision_features(torch.rot90(pixels, 1, dims=(-2, -1)))[0]
    torch.testing.assert_close(augmented[0, plain.shape[1] : 2 * plain.shape[1]], rotated[0].reshape(-1, 24))
    small = tiny_model.reference_features(pixels, coreset_ratio=0.25, seed=3)
    assert small.shape[1] == int(np.ceil(0.25 * plain.shape[1]))
    for level in range(4):  # every kept row is a row of the full bank
        assert all(bool((plain[level] == row).all(dim=1).any()) for row in small[level])
    with pytest.raises(InvalidInputError, match="unknown augmentation"):
        tiny_model.reference_features(pixels, augmentations=["rot45"])
    with pytest.raises(InvalidInputError, match="coreset_ratio"):
        tiny_model.reference_features(pixels, coreset_ratio=0.0)


def test_bad_references_are_one_clear_error(tiny_model, processor):
    empty = torch.zeros(0, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with pytest.raises(InvalidInputError, match="non-empty batch preprocessed at the model's 40x40 input"):
        tiny_model.reference_features(empty)
    with pytest.raises(InvalidInputError, match=r"got pixel values of shape \(2, 3, 64, 64\)"):
        tiny_model.reference_features(torch.zeros(2, 3, 64, 64))  # another image size
    with pytest.raises(UnknownClassError, match="'widget' has no stored anchors"):
        tiny_model.add_references("widget", _pixels(processor, 2))
    with pytest.raises(InvalidInputError, match="references must be a bank"):
        tiny_model(_pixels(processor, 1), references=torch.zeros(4, 0, 24))


@torch.no_grad()
def test_a_bf16_model_scores_in_fp32(tiny_model, processor):
    """bf16 would round cosines near 1 to steps of 2^-8: the features leave the bf16 heads in fp32, and the anchors
    and the bank are scored there, so the distances equal a float64 computation on the same features."""
    model = tiny_model.to(torch.bfloat16)
    pixels = _pixels(processor, 2).to(torch.bfloat16)
    bank = model.reference_features(_pixels(processor, 3, seed=1).to(torch.bfloat16))
    assert bank.dtype == torch.float32
    out = model(pixels, references=bank.to(torch.bfloat16))  # a bank stored in bf16 is widened, not the features cut
    assert out.patch_embeds[0].dtype == out.anomaly_probability_grid.dtype == out.image_score.dtype == torch.float32
    rounded = bank.to(torch.bfloat16).double()
    domain = model.config.default_domain
    levels = []
    for features, rows in zip(out.patch_embeds, rounded):
        distance = 1 - (features.double() @ rows.T).amax(dim=-1)  # float64, on the same features
        levels.append(model._blur(model._to_grid(distance.unsqueeze(-1).float()), domain)[:, 0])
    torch.testing.assert_close(out.reference_distance_grid, torch.stack(levels).mean(dim=0), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------- storage and trust


def test_references_survive_save_load_and_the_inference_only_copy(tiny_model, processor, tmp_path):
    tiny_model.add_references("bottle", _pixels(processor, 3))
    record = tiny_model.config.reference_classes["bottle"]
    assert record["images"] == 3 and record["patches"] == 3 * 25
    bank = tiny_model.references_for("bottle").clone()
    save_model_folder(tiny_model, processor, tmp_path / "model")
    loaded, _ = load_model(tmp_path / "model")
    torch.testing.assert_close(loaded.references_for("bottle"), bank, rtol=0, atol=0)
    small = loaded.to_inference_only()
    torch.testing.assert_close(small.references_for("bottle"), bank, rtol=0, atol=0)
    save_model_folder(small, processor, tmp_path / "small")
    assert load_model(tmp_path / "small")[0].config.reference_classes == tiny_model.config.reference_classes
    tiny_model.add_references("pcb1", _pixels(processor, 1, seed=2))  # a second class keeps the first intact
    torch.testing.assert_close(tiny_model.references_for("bottle"), bank, rtol=0, atol=0)
    tiny_model.remove_references(["bottle"])
    assert list(tiny_model.config.reference_classes) == ["pcb1"] and tiny_model.reference_bank.shape[1] == 25
    tiny_model.remove_references()
    assert "reference_bank" not in dict(tiny_model.named_buffers())


def test_a_bank_is_refused_once_the_vision_weights_change(tiny_model, processor):
    tiny_model.add_references("bottle", _pixels(processor, 2))
    with torch.no_grad():
        tiny_model.seg_projections[0].fc.weight.mul_(1.01)  # "training"
    with pytest.raises(StaleStateError, match="other vision weights"):
        tiny_model.references_for("bottle")
    pipe = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")
    with pytest.raises(StaleStateError):
        pipe(_images(1)[0], class_name="bottle")  # never used silently
    assert pipe(_images(1)[0], class_name="bottle", use_references=False)["normal_references"] == 0


def test_an_edited_reference_record_is_refused(tiny_model, processor, tmp_path):
    tiny_model.add_references("bottle", _pixels(processor, 2))
    tiny_model.add_references("pcb1", _pixels(processor, 2, seed=4))
    save_model_folder(tiny_model, processor, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    records = config["reference_classes"]
    config["reference_classes"] = {"pcb1": records["bottle"], "bottle": records["pcb1"]}  # swapped names
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, _ = load_model(tmp_path)
    with pytest.raises(StaleStateError, match="do not match their record"):
        loaded.references_for("bottle")


def test_banks_are_checked_before_a_cast_and_a_backend_pins_the_weights_it_was_made_from(tiny_model, processor):
    """After a cast the digests cannot match, so `to_checked_dtype` checks first and keeps the verdict; a backend that
    runs the same weights in another form pins their fingerprint, so the bank keeps applying."""
    tiny_model.add_references("bottle", _pixels(processor, 2))
    tiny_model.add_references("pcb1", _pixels(processor, 2, seed=4))
    with torch.no_grad():
        tiny_model.reference_bank[0, -1, 0] += 1.0  # pcb1's bank edited
    cast = tiny_model.to_checked_dtype(torch.bfloat16)
    assert cast.references_for("bottle").dtype == torch.bfloat16
    with pytest.raises(StaleStateError, match="do not match their record"):
        cast.references_for("pcb1")

    model = make_tiny_model()
    model.update_text_anchors(processor, ["bottle"])
    model.add_references("bottle", _pixels(processor, 2))
    model.pin_vision_fingerprint()
    with torch.no_grad():
        model.vision_model.post_layernorm.weight.mul_(1.0 + 2**-7)  # what an int8 or exported tower changes
    assert model.references_for("bottle") is not None


# ---------------------------------------------------------------------------------- the pipeline


def test_the_pipeline_uses_stored_references_and_takes_ad_hoc_ones(tiny_model, processor):
    image = _images(1, seed=9)[0]
    pipe = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")
    zero_shot = pipe(image, class_name="bottle")
    assert zero_shot["normal_references"] == 0
    references = _images(3, seed=1)
    ad_hoc = pipe(image, class_name="bottle", reference_images=references)
    assert ad_hoc["normal_references"] == 3 and ad_hoc["score"] != pytest.approx(zero_shot["score"])
    tiny_model.add_references("bottle", processor(images=references)["pixel_values"])
    stored = pipe(image, class_name="bottle")
    assert stored["normal_references"] == 3
    assert stored["score"] == pytest.approx(ad_hoc["score"], abs=1e-6)
    assert pipe(image, class_name="bottle", use_references=False)["score"] == pytest.approx(zero_shot["score"])
    mixed = pipe([image, image], class_name=["bottle", "pcb1"], batch_size=2)  # per class: its own bank or none
    assert [r["normal_references"] for r in mixed] == [3, 0]
    assert mixed[0]["score"] == pytest.approx(stored["score"], abs=1e-6)
    with pytest.raises(InvalidInputError, match="reference_images belong to one class"):
        pipe([image, image], class_name=["bottle", "pcb1"], reference_images=references)
    with pytest.raises(InvalidInputError, match="reference_images is empty"):
        pipe(image, class_name="bottle", reference_images=[])

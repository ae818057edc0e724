"""`aaclip evaluate`: the reference protocol against an independent per-image computation, batching, the
single-label and mask-less rules, original-resolution scoring, and the written tables."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip_hf.data import Sample, load_samples
from aaclip_hf.data.synthetic import generate_synthetic_dataset
from aaclip_hf.evaluation.protocols import domain_for_class, evaluate, reference_image_scores


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(
        root,
        classes=["carpet", "disc"],
        image_size=48,
        n_train_good=0,
        n_test_good=3,
        n_test_defect_per_kind=1,
        defect_kinds=["hole", "stain"],
        progress=False,
    )


@pytest.fixture
def samples(data_root):
    return load_samples(data_root)


@pytest.fixture
def model(tiny_model, processor):
    tiny_model.update_text_anchors(processor, ["carpet", "disc"])
    return tiny_model


def test_reference_image_scores_by_hand():
    map_max, map_min, raw = np.array([2.0, 4.0, 3.0]), np.array([1.0, 0.0, 2.0]), np.array([0.5, 0.7, 0.6])
    # map_norm max = (max_i - 0) / (4 - 0) = [0.5, 1, 0.75]; r_norm = [0, 1, 0.5]
    np.testing.assert_allclose(reference_image_scores(map_max, map_min, raw, "industrial"), [0.25, 1.0, 0.625])
    np.testing.assert_allclose(reference_image_scores(map_max, map_min, raw, "medical"), [0.5, 1.0, 0.75])
    np.testing.assert_allclose(
        reference_image_scores(map_max, map_min, raw, "industrial", map_weight=1.0), [0.5, 1, 0.75]
    )
    # constant inputs (the reference would divide by zero) normalise to 0
    np.testing.assert_allclose(reference_image_scores([1.0, 1.0], [1.0, 1.0], [0.3, 0.3], "industrial"), [0.0, 0.0])


def test_domains_follow_the_reference_table():
    assert [domain_for_class(c) for c in ("Brain", "Liver", "Retina", "Colon_clinicDB", "CVC-300", "Kvasir")] == [
        "medical"
    ] * 6
    assert domain_for_class("bottle") == "industrial" and domain_for_class("bmad/Brain") == "medical"


def _oracle(model, processor, samples):
    """Per class, image by image (batch 1, the model's own 40x40 map): reference fusion + sklearn metrics."""
    size = processor.image_size
    out = {}
    for name in dict.fromkeys(s.class_name for s in samples):
        maps, raws, labels, masks, own = [], [], [], [], []
        for s in samples:
            if s.class_name != name:
                continue
            image = Image.open(s.image_path).convert("RGB")
            with torch.no_grad():
                o = model(
                    **processor(images=[image], return_tensors="pt"),
                    class_ids=model.class_ids([name]),
                    output_size=size,
                )
            maps.append(o.anomaly_map[0].numpy())  # sum of per-level upsampled maps, as in the reference
            raws.append(float(o.raw_anomaly_score[0]))
            own.append(float(o.image_score[0]))
            labels.append(s.label)
            mask = (
                np.zeros(size, bool)
                if s.mask_path is None
                else (np.asarray(Image.open(s.mask_path).convert("L").resize(size[::-1], Image.NEAREST)) != 0)
            )
            masks.append(mask)
        maps = np.stack(maps)
        norm = (maps - maps.min()) / (maps.max() - maps.min())
        r = np.array(raws)
        score = 0.5 * norm.reshape(len(maps), -1).max(1) + 0.5 * (r - r.min()) / (r.max() - r.min())
        gt = np.stack(masks).ravel()
        out[name] = {
            "image_auroc": roc_auc_score(labels, score),
            "image_ap": average_precision_score(labels, score),
            "own_auroc": roc_auc_score(labels, own),
            "pixel_auroc": roc_auc_score(gt, maps.ravel()),
            "pixel_ap": average_precision_score(gt, maps.ravel()),
        }
    return out


def test_reference_protocol_matches_an_independent_computation(model, processor, samples):
    oracle = _oracle(model, processor, samples)
    result = evaluate(model, processor, samples, protocol="reference", batch_size=4, progress=False)
    for name, expected in oracle.items():
        row = result.classes[name]
        for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap"):
            assert row[key] == pytest.approx(expected[key], abs=1e-4), (name, key)
        assert (row["num_normal"], row["num_anomalous"]) == (3, 2)
    assert result.mean["pixel_auroc"] == pytest.approx(np.mean([o["pixel_auroc"] for o in oracle.values()]), abs=1e-4)
    per_image = evaluate(model, processor, samples, protocol="per-image", batch_size=4, progress=False)
    for name, expected in oracle.items():
        assert per_image.classes[name]["image_auroc"] == pytest.approx(expected["own_auroc"], abs=1e-6)
        assert per_image.classes[name]["pixel_auroc"] == pytest.approx(result.classes[name]["pixel_auroc"], abs=1e-9)


def test_mixed_class_batches_equal_batch_size_one(tiny_model, processor, samples):
    # batch 3 over 10 images sorted by class: batch 4 holds carpet and disc images together
    a = evaluate(tiny_model, processor, samples, batch_size=3, progress=False)
    b = evaluate(tiny_model, processor, samples, batch_size=1, progress=False)
    for name in a.classes:
        for key, value in a.classes[name].items():
            if isinstance(value, float):
                assert value == pytest.approx(b.classes[name][key], abs=1e-6, nan_ok=True), (name, key)
    # interleaved input order gives the same per-class result too
    shuffled = [s for pair in zip(samples[:5], samples[5:]) for s in pair]
    c = evaluate(tiny_model, processor, shuffled, batch_size=4, progress=False)
    assert c.classes["disc"]["pixel_auroc"] == pytest.approx(a.classes["disc"]["pixel_auroc"], abs=1e-6)


def test_single_label_class_counts_zero_under_reference_only(tiny_model, processor, samples):
    only_normal = [s for s in samples if s.class_name == "carpet" or s.label == 0]
    ref = evaluate(tiny_model, processor, only_normal, protocol="reference", progress=False)
    assert math.isnan(ref.classes["disc"]["image_auroc"])
    assert ref.mean["image_auroc"] == pytest.approx(ref.classes["carpet"]["image_auroc"] / 2)
    assert any("counted as 0" in note for note in ref.notes)
    per_image = evaluate(tiny_model, processor, only_normal, protocol="per-image", progress=False)
    assert per_image.mean["image_auroc"] == pytest.approx(per_image.classes["carpet"]["image_auroc"])
    assert any("left out" in note for note in per_image.notes)
    assert "-" in ref.to_markdown().splitlines()[3]  # the disc row shows no image value


def test_maskless_data_gets_image_metrics_only(tiny_model, processor, samples):
    no_masks = [Sample(s.image_path, s.label, s.class_name, None, s.defect_type) for s in samples]
    result = evaluate(tiny_model, processor, no_masks, progress=False)
    assert all("pixel_auroc" not in row for row in result.classes.values())
    assert result.columns() == ["image_auroc", "image_ap", "image_f1_max"]
    assert any("image metrics only" in note for note in result.notes)
    with_masks = evaluate(tiny_model, processor, samples, progress=False)
    assert result.mean["image_auroc"] == pytest.approx(with_masks.mean["image_auroc"])


def test_original_resolution_scores_maps_at_each_image_size(model, processor, samples):
    result = evaluate(model, processor, samples, resolution="original", progress=False)
    name = "disc"
    maps, masks = [], []
    for s in samples:
        if s.class_name != name:
            continue
        image = Image.open(s.image_path).convert("RGB")
        with torch.no_grad():
            out = model(**processor(images=[image], return_tensors="pt"), class_ids=model.class_ids([name]))
        grid = out.anomaly_map_grid[:, None]
        maps.append(F.interpolate(grid, size=(48, 48), mode="bilinear", align_corners=True)[0, 0].numpy())
        masks.append(np.zeros((48, 48), bool) if s.mask_path is None else np.asarray(Image.open(s.mask_path)) != 0)
    expected = roc_auc_score(np.stack(masks).ravel(), np.stack(maps).ravel())
    assert result.classes[name]["pixel_auroc"] == pytest.approx(expected, abs=1e-4)
    assert result.settings["resolution"] == "original"


def test_missing_anchors_are_computed_once_for_the_data(processor, samples):
    from ..conftest import make_tiny_model

    model = make_tiny_model()
    model.update_text_anchors(processor, ["object"])
    result = evaluate(model, processor, samples, progress=False)
    assert {"carpet", "disc"} <= set(model.stored_class_names)
    assert any("carpet, disc" in note for note in result.notes)


def test_cli_writes_json_csv_and_markdown(tiny_model, processor, data_root, tmp_path, capsys):
    from aaclip_hf.cli import main

    tiny_model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "model"),
            "--data",
            str(data_root),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
            "--dataset-name",
            "synth",
        ]
    )
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert (
        data["dataset"] == "synth" and data["protocol"] == "reference" and set(data["classes"]) == {"carpet", "disc"}
    )
    assert set(data["mean"]) == {
        "pixel_auroc",
        "pixel_aupro",
        "pixel_ap",
        "pixel_f1_max",
        "image_auroc",
        "image_ap",
        "image_f1_max",
    }
    assert data["settings"]["blur_kernel_size"] == {"industrial": 7, "medical": 9}
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["class"] for r in rows] == ["carpet", "disc", "mean"]
    assert float(rows[2]["pixel_auroc (%)"]) == pytest.approx(100 * data["mean"]["pixel_auroc"], abs=1e-3)
    markdown = (out / "results.md").read_text()
    assert (
        "| Class | #normal | #anomalous | P-AUROC | P-AUPRO | P-AP | P-F1max | I-AUROC | I-AP | I-F1max |" in markdown
    )
    assert "**Mean**" in markdown and "**Mean**" in capsys.readouterr().out


def test_bad_arguments_are_named(tiny_model, processor, samples):
    with pytest.raises(ValueError, match="protocol"):
        evaluate(tiny_model, processor, samples, protocol="paper", progress=False)
    with pytest.raises(ValueError, match="resolution"):
        evaluate(tiny_model, processor, samples, resolution="518", progress=False)
    with pytest.raises(ValueError, match="domain"):
        evaluate(tiny_model, processor, samples, domain="space", progress=False)

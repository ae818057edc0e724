"""Operating points in `aaclip evaluate`: the rates at each class's threshold (hand-computed), `scores.csv`, and the
per-class score picture (histogram with the threshold line, ROC curve)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf.data import load_samples
from aaclip_hf.data.synthetic import generate_synthetic_dataset
from aaclip_hf.evaluation.anomaly_metrics.exact_metrics import auroc
from aaclip_hf.evaluation.operating_points import rates_at
from aaclip_hf.evaluation.protocols import evaluate
from aaclip_hf.evaluation.score_pictures import INK, picture_name, roc_points, score_picture


CLASSES = ["carpet", "disc"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("operating"),
        classes=CLASSES,
        image_size=48,
        n_train_good=0,
        n_test_good=3,
        n_test_defect_per_kind=1,
        defect_kinds=["hole", "stain", "scratch"],
        progress=False,
    )


@pytest.fixture
def model(tiny_model, processor):
    tiny_model.update_text_anchors(processor, CLASSES)
    return tiny_model


def test_rates_by_hand():
    point = rates_at(0.4, [0.1, 0.4, 0.5], [0.3, 0.5, 0.9, 0.2])
    # normal flagged at score >= 0.4: 0.4 and 0.5; anomalous passed at score < 0.4: 0.3 and 0.2
    assert point == {
        "threshold": 0.4,
        "false_reject_rate": 2 / 3,
        "false_rejects": 2,
        "num_normal": 3,
        "escape_rate": 0.5,
        "escapes": 2,
        "num_anomalous": 4,
    }


def _own_scores(model, processor, samples, name):
    """The model's per-image image scores of one class, image by image."""
    scores = {}
    for s in (s for s in samples if s.class_name == name):
        with torch.no_grad():
            out = model(
                **processor(images=[Image.open(s.image_path).convert("RGB")], return_tensors="pt"),
                class_ids=model.class_ids([name]),
            )
        scores[s.image_path] = (s.label, float(out.image_score[0]))
    return scores


def test_each_class_gets_the_rates_at_its_threshold(model, processor, data_root):
    samples = load_samples(data_root)
    own = _own_scores(model, processor, samples, "carpet")
    normal = sorted(score for label, score in own.values() if label == 0)
    anomalous = sorted(score for label, score in own.values() if label == 1)
    # between the 2nd and 3rd normal score: one normal flagged; every anomalous image below it escapes
    threshold = (normal[1] + normal[2]) / 2
    escapes = sum(score < threshold for score in anomalous)
    model.config.decision_thresholds = {"carpet": threshold}
    model.config.decision_threshold = 1.0  # disc has no threshold of its own: the fallback
    result = evaluate(model, processor, samples, protocol="reference", progress=False)
    carpet, disc = result.classes["carpet"], result.classes["disc"]
    assert carpet["threshold_calibrated"] and carpet["threshold"] == pytest.approx(threshold)
    assert carpet["operating_point"]["false_rejects"] == 1 and carpet["operating_point"]["num_normal"] == 3
    assert carpet["operating_point"]["false_reject_rate"] == pytest.approx(1 / 3)
    assert carpet["operating_point"]["escapes"] == escapes and carpet["operating_point"]["num_anomalous"] == 3
    assert carpet["operating_point"]["escape_rate"] == pytest.approx(escapes / 3)
    # the fallback 1.0 flags nothing: no false reject, every anomalous image escapes
    assert not disc["threshold_calibrated"]
    assert (disc["operating_point"]["false_rejects"], disc["operating_point"]["escapes"]) == (0, 3)
    model.config.decision_threshold = None
    no_fallback = evaluate(model, processor, samples, progress=False)
    assert no_fallback.classes["disc"]["operating_point"] is None
    assert no_fallback.classes["disc"]["threshold"] is None


@pytest.mark.parametrize("protocol", ["per-image", "reference"])
def test_scores_csv_holds_every_image(model, processor, data_root, tmp_path, protocol):
    samples = load_samples(data_root)
    result = evaluate(model, processor, samples, protocol=protocol, batch_size=4, progress=False)
    paths = result.save(tmp_path / "eval")
    with open(paths["scores"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = ["path", "class_name", "label", "score"] + (["reference_score"] if protocol == "reference" else [])
    assert list(rows[0]) == expected
    assert [(r["path"], r["class_name"], int(r["label"])) for r in rows] == [
        (s.image_path, s.class_name, s.label) for s in samples
    ]
    for name in CLASSES:
        own = _own_scores(model, processor, samples, name)
        mine = [r for r in rows if r["class_name"] == name]
        for r in mine:
            assert float(r["score"]) == pytest.approx(own[r["path"]][1], abs=1e-5)
        column = "reference_score" if protocol == "reference" else "score"
        labels = [int(r["label"]) for r in mine]
        # the image metric of the table is the AUROC of the scores in the file
        assert auroc([float(r[column]) for r in mine], labels) == pytest.approx(result.classes[name]["image_auroc"])
    assert "scores" not in json.loads(paths["json"].read_text())  # per-image scores live in the CSV only


def test_roc_points_by_hand():
    fpr, tpr = roc_points([0.1, 0.4], [0.4, 0.9])
    # thresholds 0.9, 0.4 (the tie moves a normal and an anomalous image together), 0.1
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])


def test_picture_names_are_safe_and_unique():
    taken: set[str] = set()
    assert [picture_name(n, taken) for n in ("bmad/Brain", "a b", "a/b", "A_B", "..")] == [
        "bmad_Brain.png",
        "a_b.png",
        "a_b-2.png",
        "A_B-3.png",
        "class.png",
    ]


def _dark_rows(picture: Image.Image, x: int, top: int, bottom: int) -> int:
    column = np.asarray(picture)[top:bottom, x]
    return int((np.abs(column.astype(int) - INK).sum(axis=1) < 30).sum())


def test_picture_draws_the_threshold_where_it_lies():
    normal, anomalous = [0.2, 0.3, 0.35], [0.5, 0.6, 1.2]
    # histogram axis from 0.2 to 1.2 over x = 60..560: the threshold 0.7 is at x = 60 + 0.5 * 500 = 310
    with_line = score_picture("t", normal, anomalous, 0.7, True, rates_at(0.7, normal, anomalous))
    without = score_picture("t", normal, anomalous)
    assert with_line.size == (960, 400)
    assert _dark_rows(with_line, 310, 110, 350) > 100 and _dark_rows(without, 310, 110, 350) == 0
    assert _dark_rows(with_line, 250, 110, 350) == 0  # nothing dark elsewhere on the plot


def test_saved_pictures_one_per_class(model, processor, data_root, tmp_path):
    samples = load_samples(data_root)
    model.config.decision_thresholds = {"disc": 0.5}
    result = evaluate(model, processor, samples, progress=False)
    paths = result.save(tmp_path / "eval")
    data = json.loads(paths["json"].read_text())
    assert sorted(p.name for p in paths["pictures"].iterdir()) == ["carpet.png", "disc.png"]
    for name in CLASSES:
        assert data["classes"][name]["picture"] == f"pictures/{name}.png"
        assert Image.open(tmp_path / "eval" / data["classes"][name]["picture"]).size == (960, 400)
    assert data["classes"]["disc"]["operating_point"]["num_normal"] == 3
    result.save(tmp_path / "eval")  # an earlier output with pictures is replaced

"""The bundled `evaluate` module: loads offline, equals the package metrics and sklearn."""

from __future__ import annotations

import ast
import math
import subprocess
import sys

import evaluate
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import aaclip_hf
from aaclip_hf.evaluation import image_metrics, pixel_metrics
from aaclip_hf.evaluation.anomaly_metrics import METRIC_DIR, METRIC_FILES, write_metric_module


TOL = 1e-9


@pytest.fixture(scope="module")
def metric():
    return aaclip_hf.load_metric()


def _data(seed=0, sizes=((12, 10), (12, 10), (9, 14), (9, 14), (7, 7), (7, 7))):
    """Maps of different sizes, masks with blobs on the odd images (normal images have empty masks)."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i, (h, w) in enumerate(sizes):
        mask = np.zeros((h, w), dtype=bool)
        if i % 2:
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            mask[y : y + 3, x : x + 3] = True
            mask[rng.random((h, w)) > 0.9] = True
        m = rng.random((h, w)).astype(np.float32) + 0.6 * mask
        maps.append(m.astype(np.float32))
        masks.append(mask)
    labels = [int(g.any()) for g in masks]
    return maps, masks, labels, rng.random(len(maps))


def _flat(maps, masks):
    return np.concatenate([m.ravel() for m in maps]), np.concatenate([g.ravel() for g in masks])


def test_load_metric_is_an_offline_evaluate_module(metric):
    assert isinstance(metric, evaluate.EvaluationModule)
    assert metric.name == "anomaly_metrics"
    assert "pixel" in metric.description


def test_pixel_metrics_equal_the_package_and_sklearn(metric):
    maps, masks, _, _ = _data()
    result = metric.compute(predictions=maps, references=masks)
    scores, truth = _flat(maps, masks)
    assert abs(result["pixel_auroc"] - roc_auc_score(truth, scores)) < TOL
    assert abs(result["pixel_ap"] - average_precision_score(truth, scores)) < TOL
    own = pixel_metrics(maps, masks)
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"):
        assert abs(result[key] - own[key]) < TOL, key
    assert result["per_class"]["all"]["pixel_f1_threshold"] == own["pixel_f1_threshold"]
    assert result["per_class"]["all"]["num_pixel_images"] == len(maps)


def test_cflow_aupro_and_fpr_limit_are_passed_through(metric):
    maps, masks, _, _ = _data(seed=3)
    result = metric.compute(predictions=maps, references=masks, aupro_variant="cflow", fpr_limit=0.2)
    assert (
        abs(result["pixel_aupro"] - pixel_metrics(maps, masks, fpr_limit=0.2, aupro_variant="cflow")["pixel_aupro"])
        < TOL
    )
    assert result["pixel_aupro"] != metric.compute(predictions=maps, references=masks)["pixel_aupro"]


def test_per_image_protocol_uses_the_given_scores(metric):
    maps, masks, labels, scores = _data(seed=1)
    result = metric.compute(
        predictions=maps, references=masks, image_scores=scores, image_labels=labels, protocol="per-image"
    )
    assert abs(result["image_auroc"] - roc_auc_score(labels, scores)) < TOL
    assert abs(result["image_ap"] - average_precision_score(labels, scores)) < TOL
    assert abs(result["image_f1_max"] - image_metrics(scores, labels)["image_f1_max"]) < TOL


def test_reference_protocol_is_the_per_class_min_max_blend(metric):
    maps, masks, labels, raw = _data(seed=2)
    result = metric.compute(predictions=maps, references=masks, image_scores=raw, image_labels=labels)
    # The reference: map maxima normalised by the extremes of all maps, raw scores normalised, 0.5/0.5 blend.
    low = min(float(m.min()) for m in maps)
    high = max(float(m.max()) for m in maps)
    map_norm = np.array([(float(m.max()) - low) / (high - low) for m in maps])
    raw_norm = (raw - raw.min()) / (raw.max() - raw.min())
    expected = 0.5 * map_norm + 0.5 * raw_norm
    assert abs(result["image_auroc"] - roc_auc_score(labels, expected)) < TOL
    assert abs(result["image_ap"] - average_precision_score(labels, expected)) < TOL
    medical = metric.compute(
        predictions=maps, references=masks, image_scores=raw, image_labels=labels, domain="medical"
    )
    assert abs(medical["image_auroc"] - roc_auc_score(labels, map_norm)) < TOL
    assert medical["per_class"]["all"]["domain"] == "medical"


def test_without_scores_or_labels_the_map_maximum_and_mask_decide(metric):
    maps, masks, labels, _ = _data(seed=4)
    result = metric.compute(predictions=maps, references=masks, protocol="per-image")
    assert abs(result["image_auroc"] - roc_auc_score(labels, [m.max() for m in maps])) < TOL
    assert any("map maximum" in note for note in result["notes"])


def test_add_batch_streaming_equals_one_call(metric):
    maps, masks, labels, raw = _data(seed=5)
    names = ["bottle", "bottle", "bottle", "cable", "cable", "cable"]
    whole = metric.compute(
        predictions=maps, references=masks, image_scores=raw, image_labels=labels, class_names=names
    )
    for lo in range(0, len(maps), 2):
        metric.add_batch(
            predictions=[torch.from_numpy(m) for m in maps[lo : lo + 2]],
            references=masks[lo : lo + 2],
            image_scores=torch.tensor(raw[lo : lo + 2]),
            image_labels=labels[lo : lo + 2],
            class_names=names[lo : lo + 2],
        )
    streamed = metric.compute()
    assert streamed == whole
    metric.add(prediction=maps[0], reference=masks[0], class_name="one")
    metric.add(prediction=maps[1], reference=masks[1], class_name="one")
    single = metric.compute()
    assert abs(single["pixel_auroc"] - pixel_metrics(maps[:2], masks[:2])["pixel_auroc"]) < TOL


def test_class_means_follow_the_protocol_rules(metric):
    maps, masks, labels, raw = _data(seed=6)
    # "b" holds only normal images: no image metrics and no pixel metrics.
    names = ["a", "a", "a", "a", "b", "b"]
    labels = [0, 1, 0, 1, 0, 0]
    masks = [*masks[:4], np.zeros_like(masks[4]), np.zeros_like(masks[5])]
    ref = metric.compute(predictions=maps, references=masks, image_scores=raw, image_labels=labels, class_names=names)
    per = metric.compute(
        predictions=maps,
        references=masks,
        image_scores=raw,
        image_labels=labels,
        class_names=names,
        protocol="per-image",
    )
    a_only = pixel_metrics(maps[:4], masks[:4])
    assert math.isnan(ref["per_class"]["b"]["image_auroc"])
    assert abs(ref["image_auroc"] - ref["per_class"]["a"]["image_auroc"] / 2) < TOL  # "b" counts as 0
    assert abs(per["image_auroc"] - roc_auc_score(labels[:4], raw[:4])) < TOL  # "b" left out
    assert abs(ref["pixel_auroc"] - a_only["pixel_auroc"]) < TOL  # no pixel metrics for "b": left out
    assert any("counted as 0" in note for note in ref["notes"])


def test_missing_masks(metric):
    maps, masks, labels, _ = _data(seed=7)
    # A normal image without a mask counts with an empty one; an anomalous one is left out of the pixels.
    refs = [None, None, *masks[2:]]
    result = metric.compute(predictions=maps, references=refs, image_labels=labels)
    kept = [np.zeros(maps[0].shape, bool), *masks[2:]]
    assert abs(result["pixel_auroc"] - pixel_metrics([maps[0], *maps[2:]], kept)["pixel_auroc"]) < TOL
    assert any("without a mask" in note for note in result["per_class"]["all"]["notes"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"references": [np.zeros((3, 3))]}, "references\\[0\\] has shape"),
        ({"image_labels": [2]}, "image_labels\\[0\\]: expected 0 or 1"),
        ({"image_scores": [1.0, 2.0]}, "image_scores: 2 values for 1 predictions"),
        ({"class_names": [3]}, "class_names\\[0\\]: expected a non-empty string"),
        ({"references": None}, "no image label and no mask"),
        ({"references": [np.ones((4, 4))], "protocol": "mean"}, "protocol: expected one of"),
    ],
)
def test_bad_inputs_name_the_field(metric, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=[np.zeros((4, 4), np.float32)], **kwargs)


def test_compute_without_images_is_a_clear_error(metric):
    with pytest.raises(ValueError, match="no images"):
        metric.compute()


def test_module_files_import_nothing_of_the_package():
    allowed = {"__future__", "math", "collections", "typing", "numpy", "scipy", "datasets", "evaluate"}
    for name in ("anomaly_metrics.py", "exact_metrics.py"):
        tree = ast.parse((METRIC_DIR / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only the sibling file of the module folder
                    assert node.module == "exact_metrics", (name, node.module)
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (name, roots)


def test_written_copy_loads_where_the_package_cannot_be_imported(tmp_path):
    folder = tmp_path / "my_metric"
    written = write_metric_module(folder)
    assert sorted(p.name for p in written) == sorted(["my_metric.py", *METRIC_FILES[1:]])
    assert (folder / "README.md").read_text(encoding="utf-8").startswith("---\n")
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "aaclip_hf":
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import evaluate, numpy as np
m = evaluate.load({str(folder)!r})
r = m.compute(predictions=[np.array([[0.1, 0.9], [0.2, 0.8]], np.float32)], references=[np.array([[0, 1], [0, 1]])])
print(r["pixel_auroc"], sorted(k for k in sys.modules if k.startswith("aaclip")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["1.0", "[]"], out.stderr[-2000:]


def test_write_metric_module_refuses_a_name_the_loader_cannot_import(tmp_path):
    with pytest.raises(ValueError, match="Python identifier"):
        write_metric_module(tmp_path / "my-metric")

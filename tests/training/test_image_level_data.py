"""Image-level data trains both stages: anomalies without masks (no `ground_truth` folder) get image-level terms
only, never a pixel term; with no mask at all, stage 1's default loss becomes BCE + orthogonality."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from aaclip_hf.cli import main


def _data_without_masks(training_root, tmp_path, classes):
    """A copy of the synthetic set whose `classes` lose their `ground_truth` folders (image-level labels only)."""
    data = tmp_path / "data"
    shutil.copytree(training_root / "data", data)
    for name in classes:
        shutil.rmtree(data / name / "ground_truth")
    return data


@pytest.mark.parametrize("dropped", [("stripes", "disc"), ("disc",)], ids=["no-masks", "some-masks"])
def test_image_level_data_trains_both_stages_with_finite_losses(training_root, tmp_path, dropped):
    data = _data_without_masks(training_root, tmp_path, dropped)
    out = tmp_path / "out"
    argv = ["train", "--model", str(training_root / "model"), "--train-data", str(data), "--output", str(out)]
    argv += ["--text-epochs", "1", "--vision-epochs", "1", "--text-batch-size", "4", "--vision-batch-size", "4"]
    argv += ["--num-workers", "0", "--no-progress", "--log-every", "1"]
    assert main(argv) == 0
    records = [json.loads(line) for line in open(out / "train_log.jsonl", encoding="utf-8")]
    text = [r for r in records if r["stage"] == "text"]
    vision = [r for r in records if r["stage"] == "vision"]
    assert len(text) == len(vision) == 4  # 16 images, global batch 4: every step of both stages ran
    for record in records:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record
    if dropped == ("stripes", "disc"):  # no pixel truth anywhere: image terms (+ orthogonality) only
        assert all(set(r) >= {"image", "disentangle"} and "seg" not in r for r in text)
        assert all("image" in r and "seg" not in r for r in vision)
    else:  # pixel terms over the masked samples, the image term for the others
        assert all("seg" in r for r in text + vision)
        assert any("image" in r for r in text)
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    before = load_file(training_root / "model" / "model.safetensors")
    assert not torch.equal(weights["text_projector.fc.weight"], before["text_projector.fc.weight"])
    assert not torch.equal(weights["det_projection.fc.weight"], before["det_projection.fc.weight"])

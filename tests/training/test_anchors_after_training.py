"""Anchors are derived state: text training recomputes EVERY stored class, also those not in the training data.

The case: a model storing `bottle` is trained on other classes; before the fix its `bottle` anchor kept
the old text branch's value (max abs difference 0.12 from what the trained branch gives).
"""

from __future__ import annotations

import torch

from aaclip_hf import AAClipModel, AAClipProcessor
from aaclip_hf.training.trainer import AAClipTrainer

from ..conftest import tiny_training_args


def test_text_training_recomputes_stored_classes_outside_the_training_data(training_root, tmp_path):
    start = tmp_path / "start"
    model = AAClipModel.from_pretrained(training_root / "model")
    processor = AAClipProcessor.from_pretrained(training_root / "model")
    model.update_text_anchors(processor, ["bottle"])  # stored, but the training data holds stripes and disc
    model.save_pretrained(start)
    processor.save_pretrained(start)
    before = model.text_anchors_for(["bottle"])[0].clone()

    args = tiny_training_args(training_root, tmp_path / "out", model=str(start), stage="text", text_lr=1e-2)
    AAClipTrainer(args).train()

    trained = AAClipModel.from_pretrained(tmp_path / "out")
    assert "bottle" in trained.stored_class_names
    with torch.no_grad():
        expected = trained.compute_text_anchors(["bottle"], processor)[0]
    stored = trained.text_anchors_for(["bottle"])[0]
    assert (stored - before).abs().max() > 1e-3  # the text branch really moved...
    torch.testing.assert_close(stored, expected, atol=1e-6, rtol=0)  # ...and the stored anchor followed it
    assert trained.anchor_status()["state"] == "fresh"

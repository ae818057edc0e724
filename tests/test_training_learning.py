"""Learning evidence (slow): training a tiny random backbone's AA-CLIP branches on synthetic
training classes raises pixel AUROC, on the training classes and on held-out classes.

Run with ``pytest -m slow tests/test_training_learning.py -s`` to see the table. A random backbone
has no pretrained notion of "defect", so transfer to unseen classes is modest next to CLIP's; the
test asserts a fixed-seed margin on both and prints the numbers.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from aaclip_hf import AAClipConfig, AAClipModel
from aaclip_hf.data import AnomalyDataset, load_samples
from aaclip_hf.metrics import auroc
from aaclip_hf.synthetic import SYNTHETIC_HELD_OUT_CLASSES, SYNTHETIC_TRAIN_CLASSES, generate_synthetic_dataset
from aaclip_hf.training.trainer import Trainer, TrainingArguments, _collate, processor_for_size

IMAGE_SIZE, PATCH, WIDTH = 64, 4, 64
HELD_OUT_MARGIN = 0.03
FIT_MIN, FIT_MARGIN = 0.8, 0.15


def _pixel_auroc(model, processor, data: str, classes) -> dict[str, float]:
    samples = load_samples(data, classes=list(classes))
    dataset = AnomalyDataset(samples, processor)
    model.eval()
    model.update_text_anchors(processor, sorted(set(classes)))
    per_class = {}
    with torch.no_grad():
        for cls in classes:
            items = [dataset[i] for i, s in enumerate(samples) if s.class_name == cls]
            batch = _collate(items)
            maps = model(batch["pixel_values"], class_names=batch["class_name"]).anomaly_map
            per_class[cls] = auroc(maps.numpy().ravel(), batch["mask"].numpy().ravel() > 0)
    return per_class


@pytest.mark.slow
def test_training_raises_pixel_auroc(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = str(tmp_path / "data")
        generate_synthetic_dataset(data, image_size=IMAGE_SIZE, n_train_good=0, n_test_good=10,
                                   n_test_defect_per_kind=2, seed=0, progress=False)
        torch.manual_seed(0)
        config = AAClipConfig.tiny(
            vision_config=dict(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=WIDTH, intermediate_size=2 * WIDTH),
            text_config=dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH),
        )
        model = AAClipModel(config)
        model.init_adapter_weights(seed=0)
        processor = processor_for_size(IMAGE_SIZE)
        model.update_text_anchors(processor, ["object"])
        model.save_pretrained(tmp_path / "model")
        processor.save_pretrained(tmp_path / "model")
        before_held = _pixel_auroc(model, processor, data, SYNTHETIC_HELD_OUT_CLASSES)
        before_fit = _pixel_auroc(model, processor, data, SYNTHETIC_TRAIN_CLASSES)

        args = TrainingArguments(
            model=str(tmp_path / "model"), train_data=[f"{data}::classes={','.join(SYNTHETIC_TRAIN_CLASSES)}"],
            output_dir=str(tmp_path / "out"), text_epochs=3, text_lr=1e-4, text_batch_size=8,
            vision_epochs=8, vision_batch_size=4, num_workers=0, progress=False, log_every=50,
        )
        started = time.time()
        Trainer(args).train()
        seconds = time.time() - started
        trained = AAClipModel.from_pretrained(tmp_path / "out")
        after_held = _pixel_auroc(trained, processor, data, SYNTHETIC_HELD_OUT_CLASSES)
        after_fit = _pixel_auroc(trained, processor, data, SYNTHETIC_TRAIN_CLASSES)
    finally:
        torch.set_num_threads(threads)

    print(f"\ntraining took {seconds:.0f}s on {len(SYNTHETIC_TRAIN_CLASSES)} classes")
    print(f"{'class':<10} {'split':<9} {'untrained':>9} {'trained':>8}")
    for split, before, after in (("held-out", before_held, after_held), ("training", before_fit, after_fit)):
        for cls in before:
            print(f"{cls:<10} {split:<9} {before[cls]:>9.3f} {after[cls]:>8.3f}")
        print(f"{'mean':<10} {split:<9} {np.mean(list(before.values())):>9.3f} {np.mean(list(after.values())):>8.3f}")
    held_gain = np.mean(list(after_held.values())) - np.mean(list(before_held.values()))
    fit_after = np.mean(list(after_fit.values()))
    assert held_gain >= HELD_OUT_MARGIN
    assert fit_after >= FIT_MIN and fit_after - np.mean(list(before_fit.values())) >= FIT_MARGIN

"""`--save-epoch-models`: one complete model per stage-2 epoch, as the reference keeps
``image_adapter_{epoch}``; keeping them does not change the run."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from aaclip_hf import AAClipModel
from aaclip_hf.training.arguments import AAClipTrainingArguments
from aaclip_hf.training.trainer import AAClipTrainer


def _args(training_root, out, **kw) -> AAClipTrainingArguments:
    base = {
        "model": str(training_root / "model"),
        "train_data": [str(training_root / "data")],
        "output_dir": str(out),
        "stage": "vision",
        "vision_epochs": 3,
        "vision_batch_size": 8,  # 16 images: 2 steps per epoch
        "num_workers": 0,
        "progress": False,
    }
    base.update(kw)
    return AAClipTrainingArguments(**base)


def _trained(state: dict) -> dict:
    return {
        k: v for k, v in state.items() if ".adapter." in k or k.startswith(("seg_projections.", "det_projection."))
    }


def test_one_model_per_stage2_epoch_and_the_run_is_unchanged(training_root, tmp_path):
    AAClipTrainer(_args(training_root, tmp_path / "plain")).train()
    AAClipTrainer(_args(training_root, tmp_path / "kept", save_epoch_models=True)).train()
    assert not (tmp_path / "plain" / "epoch_models").exists()
    folder = tmp_path / "kept" / "epoch_models"
    assert sorted(os.listdir(folder)) == ["epoch_1", "epoch_2", "epoch_3"]
    final = load_file(tmp_path / "kept" / "model.safetensors")
    assert all(torch.equal(v, load_file(tmp_path / "plain" / "model.safetensors")[k]) for k, v in final.items())
    epochs = [load_file(folder / f"epoch_{k}" / "model.safetensors") for k in (1, 2, 3)]
    for k, v in _trained(final).items():
        assert torch.equal(epochs[2][k], v), k  # the last epoch's model is the final one
    assert any(not torch.equal(epochs[0][k], epochs[1][k]) for k in _trained(final))  # each epoch its own weights
    model = AAClipModel.from_pretrained(folder / "epoch_1")  # a complete, loadable model folder
    assert model.anchor_status()["state"] == "fresh"
    assert os.path.isfile(folder / "epoch_1" / "preprocessor_config.json") or os.path.isfile(
        folder / "epoch_1" / "processor_config.json"
    )

"""Resume keeps its word and weights stay finite: changed arguments are refused, a torn log
line is repaired, stray checkpoint folders are ignored, a non-finite weight stops the run before it is saved."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import pytest
import torch

from aaclip_hf.errors import NonFiniteWeightsError, WeightsError
from aaclip_hf.runtime.serialization import safe_torch_load
from aaclip_hf.training import trainer as trainer_mod
from aaclip_hf.training.arguments import AAClipTrainingArguments
from aaclip_hf.training.checkpointing import changed_arguments, checkpoint_is_finite, list_checkpoints, repair_log
from aaclip_hf.training.steps import StageLosses
from aaclip_hf.training.trainer import AAClipTrainer


def _args(training_root, out, **kw) -> AAClipTrainingArguments:
    base = {
        "model": str(training_root / "model"),
        "train_data": [str(training_root / "data")],
        "output_dir": str(out),
        "stage": "text",
        "text_epochs": 1,
        "text_batch_size": 4,
        "num_workers": 0,
        "progress": False,
        "log_every": 1,
    }
    base.update(kw)
    return AAClipTrainingArguments(**base)


def _crash_after(monkeypatch, steps: int) -> None:
    original = AAClipTrainer.train_step
    calls = {"n": 0}

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(AAClipTrainer, "train_step", crashing)


@pytest.fixture
def interrupted(training_root, tmp_path, monkeypatch):
    """A text-stage run (4 steps per epoch, 2 epochs) killed after 3 steps, with a checkpoint every step."""
    args = _args(training_root, tmp_path / "run", text_epochs=2, checkpointing_steps=1)
    _crash_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        AAClipTrainer(args).train()
    monkeypatch.undo()
    assert [os.path.basename(p) for p in list_checkpoints(tmp_path / "run" / "checkpoints")[0]] == ["checkpoint-3"]
    return args


def test_changed_result_arguments_are_refused_and_listed(interrupted, caplog):
    args = dataclasses.replace(interrupted, resume="latest", text_lr=1e-3, seed=5, text_batch_size=8)
    with pytest.raises(ValueError) as info:
        AAClipTrainer(args).train()
    message = str(info.value)
    assert "3 argument(s)" in message and "--resume-changed-args" in message
    assert (
        "text_lr: 1e-05 -> 0.001" in message and "seed: 111 -> 5" in message and "text_batch_size: 4 -> 8" in message
    )
    # arguments that cannot change the result are not compared
    neutral = dataclasses.replace(interrupted, resume="latest", num_workers=1, log_every=3, checkpointing_steps=2)
    assert changed_arguments(list_checkpoints(interrupted.output_dir + "/checkpoints")[0][-1], neutral) == []
    # the explicit opt-in continues, and says what changed
    forced = dataclasses.replace(interrupted, resume="latest", aug_hflip_p=0.0, resume_changed_args=True)
    with caplog.at_level(logging.WARNING, logger="aaclip_hf.training"):
        AAClipTrainer(forced).train()
    assert "aug_hflip_p: 0.5 -> 0.0" in caplog.text
    assert os.path.isfile(os.path.join(interrupted.output_dir, "model.safetensors"))


def test_torn_last_log_line_is_dropped_on_resume(interrupted, caplog):
    log = os.path.join(interrupted.output_dir, "train_log.jsonl")
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"stage": "text", "epoch": 0, "st')  # a write cut short by the crash
    with caplog.at_level(logging.WARNING, logger="aaclip_hf.training"):
        AAClipTrainer(dataclasses.replace(interrupted, resume="latest")).train()
    assert "dropped 1 unreadable line(s) (line 4" in caplog.text
    steps = [json.loads(line)["step"] for line in open(log, encoding="utf-8")]
    assert steps == list(range(1, 9))


def test_repair_log_unit(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n{"step": 5}\n{"step": 3, "lo', encoding="utf-8")
    repair_log(str(log), 3)
    assert log.read_text(encoding="utf-8") == '{"step": 1}\n{"step": 2}\n'


def test_stray_folders_under_checkpoints_are_ignored_with_a_warning(interrupted, caplog):
    root = os.path.join(interrupted.output_dir, "checkpoints")
    os.makedirs(os.path.join(root, "checkpoint-final"))
    os.makedirs(os.path.join(root, "checkpoint-99"))  # incomplete: no trainer_state.json
    os.makedirs(os.path.join(root, "backup"))
    open(os.path.join(root, "notes.txt"), "w").close()
    with caplog.at_level(logging.WARNING, logger="aaclip_hf.training"):
        AAClipTrainer(dataclasses.replace(interrupted, resume="latest")).train()
    assert "ignoring backup, checkpoint-99, checkpoint-final, notes.txt" in caplog.text
    assert caplog.text.count("ignoring") == 1  # said once, not at every save
    steps = [json.loads(line)["step"] for line in open(os.path.join(interrupted.output_dir, "train_log.jsonl"))]
    assert steps == list(range(1, 9))  # resumed from checkpoint-3, not from the stray checkpoint-99
    assert {"checkpoint-final", "checkpoint-99", "backup", "notes.txt"} <= set(os.listdir(root))  # left alone


def test_text_lr_inf_stops_naming_the_parameter_and_saves_nothing(training_root, tmp_path, capsys):
    from aaclip_hf.cli import main

    out = tmp_path / "nan"
    argv = ["train", "--model", str(training_root / "model"), "--train-data", str(training_root / "data")]
    argv += ["--output", str(out), "--stage", "text", "--max-steps", "1", "--text-lr", "inf"]
    argv += ["--text-batch-size", "4", "--num-workers", "0", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "made parameter text_model.encoder.layers.0.adapter.fc.weight non-finite" in err, err
    assert "step 1" in err and "The last good checkpoint is (none yet)" in err
    assert not (out / "model.safetensors").exists()
    assert not (out / "checkpoints").exists() or not os.listdir(out / "checkpoints")


def test_non_finite_loss_is_one_line_on_the_cli(training_root, tmp_path, capsys, monkeypatch):
    """`aaclip_hf.errors.NonFiniteLossError` is an expected failure: one line, exit 2, no traceback."""
    from aaclip_hf.cli import main

    def nan_terms(self, batch, pixel_values, masks):
        terms = original(self, batch, pixel_values, masks)
        return {key: value * float("nan") for key, value in terms.items()}

    original = StageLosses.stage1
    monkeypatch.setattr(StageLosses, "stage1", nan_terms)
    out = tmp_path / "nan"
    argv = ["train", "--model", str(training_root / "model"), "--train-data", str(training_root / "data")]
    argv += ["--output", str(out), "--stage", "text", "--max-steps", "1", "--text-batch-size", "4"]
    assert main([*argv, "--num-workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("aaclip train")]
    assert len(lines) == 1 and "the loss became nan at stage text, epoch 0, step 1" in lines[0], err
    assert "Traceback" not in err
    assert not (out / "model.safetensors").exists()


def test_non_finite_step_names_a_finite_last_good_checkpoint(training_root, tmp_path, monkeypatch):
    args = _args(training_root, tmp_path / "run", text_epochs=2, checkpointing_steps=1)
    original = trainer_mod.average_gradients
    calls = {"n": 0}

    def poisoned(params, world):
        calls["n"] += 1
        original(params, world)
        if calls["n"] == 3:  # the loss is finite; the third step's gradient is not
            params[0].grad.fill_(float("nan"))

    monkeypatch.setattr(trainer_mod, "average_gradients", poisoned)
    with pytest.raises(NonFiniteWeightsError) as info:
        AAClipTrainer(args).train()
    assert isinstance(info.value, WeightsError)  # an expected failure (AAClipError), one line on the CLI
    root = tmp_path / "run" / "checkpoints"
    assert f"The last good checkpoint is {root / 'checkpoint-2'}" in str(info.value) and "step 3" in str(info.value)
    assert sorted(os.listdir(root)) == ["checkpoint-2"] and checkpoint_is_finite(str(root / "checkpoint-2"))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_last_good_checkpoint_skips_a_non_finite_one(interrupted):
    root = os.path.join(interrupted.output_dir, "checkpoints")
    shutil.copytree(os.path.join(root, "checkpoint-3"), os.path.join(root, "checkpoint-1"))
    newest = os.path.join(root, "checkpoint-3")
    for name in os.listdir(newest):
        if name.startswith("custom_checkpoint_"):
            state = safe_torch_load(os.path.join(newest, name))
            if isinstance(state, dict) and "params" in state:
                next(iter(state["params"].values())).fill_(float("inf"))
                torch.save(state, os.path.join(newest, name))
    assert not checkpoint_is_finite(newest) and checkpoint_is_finite(os.path.join(root, "checkpoint-1"))
    trainer = AAClipTrainer(dataclasses.replace(interrupted, resume="latest"))
    assert trainer.checkpoints.last_good() == os.path.join(root, "checkpoint-1")

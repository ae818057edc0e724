"""`aaclip train --report-to`: Accelerate trackers, TensorBoard event files offline."""

from __future__ import annotations

import argparse
import glob
import json
import os

import pytest
import torch

from aaclip_hf.training import trackers as T
from aaclip_hf.training.arguments import AAClipTrainingArguments, add_arguments, arguments_from_namespace
from aaclip_hf.training.checkpointing import changed_arguments, write_run_arguments
from aaclip_hf.training.trainer import AAClipTrainer

from .test_trainer import _args


def test_report_to_choices_and_missing_packages(monkeypatch):
    assert T.trackers("none") == []
    assert T.trackers("tensorboard") == ["tensorboard"]
    assert T.accelerator_kwargs("none", "out") == {}
    kwargs = T.accelerator_kwargs("tensorboard", "out")
    assert kwargs["log_with"] == ["tensorboard"]
    assert kwargs["project_config"].logging_dir == os.path.join("out", "runs")
    with pytest.raises(ValueError, match="--report-to must be one of"):
        T.trackers("mlflow")
    monkeypatch.setitem(T._AVAILABLE, "wandb", (lambda: False, "wandb"))
    with pytest.raises(ValueError, match=r"the wandb package is not installed; pip install aaclip-hf\[wandb\]"):
        T.trackers("all")
    with pytest.raises(ValueError, match="wandb package is not installed"):
        AAClipTrainingArguments(model="m", train_data=["d"], output_dir="o", report_to="wandb").validate()


def test_cli_flag_defaults_to_none():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "m", "--train-data", "d", "--output", "o"]
    assert arguments_from_namespace(parser.parse_args(base)).report_to == "none"
    assert (
        arguments_from_namespace(parser.parse_args([*base, "--report-to", "tensorboard"])).report_to == "tensorboard"
    )


def test_step_values_and_run_config():
    record = {"stage": "vision", "epoch": 0, "step": 3, "loss": 0.5, "lr": 1e-3, "grad_norm": 2.0}
    assert T.step_values(record) == {"vision/loss": 0.5, "vision/lr": 1e-3, "vision/grad_norm": 2.0}
    assert T.run_config({"a": [1, 2], "b": None, "c": 3, "d": "x", "e": True}) == {
        "a": "[1, 2]",
        "b": "None",
        "c": 3,
        "d": "x",
        "e": True,
    }


def test_grad_norm_is_the_global_l2_norm():
    a, b, c = (
        torch.nn.Parameter(torch.zeros(2)),
        torch.nn.Parameter(torch.zeros(3)),
        torch.nn.Parameter(torch.zeros(1)),
    )
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 12.0])
    assert T.grad_norm([a, b, c]) == pytest.approx(13.0)
    assert T.grad_norm([c]) == 0.0


def test_tensorboard_event_files_hold_the_logged_scalars(training_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    AAClipTrainer(_args(training_root, out, text_epochs=1, report_to="tensorboard")).train()
    events = glob.glob(str(out / "runs" / T.PROJECT_NAME / "events.out.tfevents.*"))
    assert events, os.listdir(out)
    acc = EventAccumulator(str(out / "runs" / T.PROJECT_NAME))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for stage in ("text", "vision"):
        assert {f"{stage}/loss", f"{stage}/lr", f"{stage}/grad_norm", f"{stage}/epoch_seconds"} <= tags, tags
    # The tracker's values are the train log's, step for step.
    log = [json.loads(line) for line in open(out / "train_log.jsonl", encoding="utf-8")]
    for stage in ("text", "vision"):
        records = [r for r in log if r["stage"] == stage]
        for key in ("loss", "lr", "grad_norm"):
            scalars = acc.Scalars(f"{stage}/{key}")
            assert [s.step for s in scalars] == [r["step"] for r in records]
            assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6)
        assert all(r["grad_norm"] > 0 for r in records)


def test_no_tracker_by_default_writes_no_runs_folder(training_root, tmp_path):
    out = tmp_path / "run"
    AAClipTrainer(_args(training_root, out, stage="text", max_steps=1)).train()
    assert not (out / "runs").exists()
    assert "grad_norm" in json.loads(open(out / "train_log.jsonl", encoding="utf-8").readline())


def test_switching_trackers_does_not_block_resume(tmp_path):
    base = {"model": "m", "train_data": ["d"], "output_dir": str(tmp_path)}
    write_run_arguments(str(tmp_path), AAClipTrainingArguments(**base, report_to="none"))
    assert changed_arguments(str(tmp_path), AAClipTrainingArguments(**base, report_to="tensorboard")) == []
    assert changed_arguments(str(tmp_path), AAClipTrainingArguments(**base, seed=1)) == ["seed: 111 -> 1"]

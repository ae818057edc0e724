"""The trainer: what each stage changes, exact resume (in process and after kill -9), two
processes equal one, mask-less data, non-finite losses, CLI defaults."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from aaclip_hf import AAClipModel
from aaclip_hf.data import load_samples
from aaclip_hf.errors import NonFiniteLossError
from aaclip_hf.training.arguments import AAClipTrainingArguments, add_arguments, arguments_from_namespace
from aaclip_hf.training.batches import collate as _collate
from aaclip_hf.training.batches import epoch_batches
from aaclip_hf.training.steps import StageLosses
from aaclip_hf.training.trainer import AAClipTrainer

from ..conftest import accelerate_cpu_launch, tiny_training_args


PYTHON = sys.executable


def _args(training_root, out, **kw) -> AAClipTrainingArguments:
    """Two text epochs, one vision epoch (16 images, global batch 4)."""
    return tiny_training_args(training_root, out, **{"text_epochs": 2, **kw})


def _cli(args: AAClipTrainingArguments) -> list[str]:
    out = [
        "--model",
        args.model,
        "--train-data",
        *args.train_data,
        "--output",
        args.output_dir,
        "--text-epochs",
        str(args.text_epochs),
        "--vision-epochs",
        str(args.vision_epochs),
        "--text-batch-size",
        str(args.text_batch_size),
        "--vision-batch-size",
        str(args.vision_batch_size),
        "--vision-milestones",
        *map(str, args.vision_milestones),
        "--num-workers",
        "0",
        "--no-progress",
        "--log-every",
        "1",
    ]
    if args.checkpointing_steps:
        out += ["--checkpointing-steps", str(args.checkpointing_steps)]
    return out


def _weights(out) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(out, "model.safetensors"))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference_run(training_root, tmp_path_factory):
    """An uninterrupted single-process run; its final weights are the yardstick below."""
    out = tmp_path_factory.mktemp("ref")
    t0 = time.time()
    AAClipTrainer(_args(training_root, out)).train()
    print(f"reference run: {time.time() - t0:.1f}s")
    return _weights(out)


def _first_batch(trainer, stage, size):
    dataset = trainer._dataset()
    return _collate([dataset[i] for i in range(size)])


@pytest.mark.parametrize(
    "stage,extra",
    [
        ("text", {}),
        ("vision", {}),
        ("text", {"stage1_loss": "paper", "dpam_mode": "batch_axis"}),
        ("vision", {"mixed_precision": "bf16"}),
    ],
    ids=["text", "vision", "text-paper-batch_axis", "vision-bf16"],
)
def test_one_step_changes_exactly_the_stage_parameters(training_root, tmp_path, stage, extra):
    trainer = AAClipTrainer(_args(training_root, tmp_path, stage=stage, **extra))
    model = trainer.model
    trainer._start_stage(stage)
    backbone = [
        n
        for n, p in model.named_parameters()
        if ".adapter." not in n and not n.startswith(("text_projector.", "seg_projections.", "det_projection."))
    ]
    assert backbone and not any(dict(model.named_parameters())[n].requires_grad for n in backbone)
    before = _snapshot(model)
    # a batch with both labels, so every trained parameter receives a gradient
    batch = _collate([trainer._dataset()[i] for i in (0, 1, 10, 12)])
    assert set(batch["label"].tolist()) == {0, 1}
    logged = trainer.train_step(stage, batch, epoch=0)
    assert logged is not None and torch.isfinite(torch.tensor(logged["loss"]))
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if stage == "text":
        expected = {k for k in before if k.startswith("text_model.") and ".adapter." in k} | {
            "text_projector.fc.weight"
        }
    else:
        expected = {k for k in before if k.startswith("vision_model.") and ".adapter." in k}
        expected |= {k for k in before if k.startswith(("seg_projections.", "det_projection."))}
    assert len(expected) == (2 if stage == "text" else 2 + 4 + 1)
    assert changed == expected
    assert all(p.grad is None for n, p in model.named_parameters() if n in backbone)


def test_resume_mid_run_is_identical(training_root, tmp_path, reference_run, monkeypatch):
    """Crash after 6 steps (inside stage 1, epoch 2) with checkpoints every 2 steps; resume; compare."""
    args = _args(training_root, tmp_path, checkpointing_steps=2)
    calls = {"n": 0}
    original = AAClipTrainer.train_step

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(AAClipTrainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        AAClipTrainer(args).train()
    monkeypatch.setattr(AAClipTrainer, "train_step", original)
    ckpts = sorted(os.listdir(tmp_path / "checkpoints"))
    assert ckpts == ["checkpoint-6"]
    state = json.load(open(tmp_path / "checkpoints" / "checkpoint-6" / "trainer_state.json"))
    assert (state["stage_index"], state["epoch"], state["step_in_epoch"]) == (0, 1, 2)
    with pytest.raises(FileExistsError):
        AAClipTrainer(args).train()  # no silent overwrite
    AAClipTrainer(dataclasses.replace(args, resume="latest")).train()
    got = _weights(tmp_path)
    assert got.keys() == reference_run.keys()
    for key in got:
        assert torch.equal(got[key], reference_run[key]), key
    steps = [json.loads(line)["step"] for line in open(tmp_path / "train_log.jsonl")]
    assert steps == list(range(1, 13))


def test_kill_9_then_resume_is_identical(training_root, tmp_path, reference_run):
    args = _args(training_root, tmp_path, checkpointing_steps=1)
    cmd = [PYTHON, "-m", "aaclip_hf.training", *_cli(args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = tmp_path / "checkpoints"
    deadline, found = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None and not found:
        found = ckpt_dir.is_dir() and any(
            n.startswith("checkpoint-") and int(n.split("-")[1]) >= 3 for n in os.listdir(ckpt_dir)
        )
        time.sleep(0.02)
    assert found and proc.poll() is None, (
        "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "model.safetensors").exists()
    left = sorted(os.listdir(ckpt_dir))
    print(f"killed with {left} on disk")
    AAClipTrainer(dataclasses.replace(args, resume="latest")).train()  # resume in process: one start-up less
    steps = [json.loads(line)["step"] for line in open(tmp_path / "train_log.jsonl")]
    assert steps == list(range(1, 13))  # the second run continued at the checkpoint; redone steps logged once
    got = _weights(tmp_path)
    for key in got:
        assert torch.allclose(got[key], reference_run[key], atol=1e-6, rtol=0), key


def test_two_processes_equal_one(training_root, tmp_path, reference_run):
    args = _args(training_root, tmp_path)
    cmd, env = accelerate_cpu_launch(2, "-m", "aaclip_hf.training", *_cli(args))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.load(open(tmp_path / "training_args.json"))["num_processes"] == 2
    assert "global batch 4 (2 per process)" in done.stderr
    got = _weights(tmp_path)
    worst = max((got[k] - reference_run[k]).abs().max().item() for k in got)
    print(f"2 processes vs 1: max |diff| = {worst:.2e}")
    assert worst < 1e-5
    trained = [k for k in got if ".adapter." in k or k.startswith(("seg_", "det_", "text_projector"))]
    assert trained and all(not torch.equal(got[k], _weights_initial(training_root)[k]) for k in trained)


def _weights_initial(training_root):
    return _weights(training_root / "model")


def test_epoch_batches_shards_form_the_global_batch():
    one = epoch_batches(10, 4, seed=3, stage=0, epoch=1, rank=0, world=1)
    two = [epoch_batches(10, 4, 3, 0, 1, r, 2) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one
    assert sorted(i for b in one for i in b) == list(range(10))
    assert epoch_batches(10, 4, 3, 0, 2, 0, 1) != one  # reshuffled each epoch
    # a last batch smaller than the number of processes cannot be split and is dropped
    assert len(epoch_batches(9, 4, 3, 0, 0, 0, 2)) == 2


def test_maskless_data_trains_image_loss_only(training_root, tmp_path, caplog):
    samples = [
        s if s.label == 0 else dataclasses.replace(s, mask_path=None)
        for s in load_samples(str(training_root / "data"))
    ]
    trainer = AAClipTrainer(_args(training_root, tmp_path, stage="vision"), samples=samples)
    assert "image-level loss only" in caplog.text
    trainer._start_stage("vision")
    before = _snapshot(trainer.model)
    logged = trainer.train_step("vision", _collate([trainer._dataset()[i] for i in (0, 1, 10, 12)]), 0)
    assert set(logged) == {"image", "loss"}
    after = _snapshot(trainer.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "det_projection.fc.weight" in changed and not any(k.startswith("seg_projections") for k in changed)


def test_nonfinite_loss_stops_or_skips(training_root, tmp_path, monkeypatch):
    def nan_terms(self, batch, pixel_values, masks):
        loss = self.model.det_projection.fc.weight.sum() * float("nan")
        return {"loss": loss, "image": loss}

    monkeypatch.setattr(StageLosses, "stage2", nan_terms)
    args = _args(training_root, tmp_path, stage="vision")
    with pytest.raises(NonFiniteLossError, match="--resume"):
        AAClipTrainer(args).train()
    trainer = AAClipTrainer(dataclasses.replace(args, skip_nonfinite=True, overwrite_output_dir=True))
    trainer._start_stage("vision")
    before = _snapshot(trainer.model)
    assert trainer.train_step("vision", _first_batch(trainer, "vision", 2), 0) is None
    assert all(torch.equal(before[k], v) for k, v in _snapshot(trainer.model).items())


def test_cli_defaults_are_the_paper_setting():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = arguments_from_namespace(parser.parse_args(["--model", "m", "--train-data", "d", "--output", "o"]))
    assert (args.text_epochs, args.vision_epochs, args.text_lr, args.vision_lr) == (5, 20, 1e-5, 5e-4)
    assert (args.text_batch_size, args.vision_batch_size, args.adam_betas) == (16, 2, (0.5, 0.999))
    assert (args.vision_milestones, args.lr_gamma, args.disentangle_weight, args.seed) == (
        [16000, 32000],
        0.5,
        0.1,
        111,
    )
    assert (args.stage1_loss, args.dpam_mode, args.augment, args.shots, args.stage) == (
        "reference",
        "per_image",
        True,
        "full",
        "both",
    )
    from aaclip_hf.cli import build_parser, train

    assert build_parser()[1]["train"].get_default("func") is train.run_train
    with pytest.raises(ValueError, match="per_image"):
        dataclasses.replace(args, cache_stage1_features=True, augment=False, dpam_mode="batch_axis").validate()


def test_cached_stage1_features_give_the_same_run(training_root, tmp_path):
    """Without augmentation, per-image DPAM features are fixed: caching them changes nothing."""
    kw = {"stage": "text", "augment": False, "text_epochs": 2}
    plain = AAClipTrainer(_args(training_root, tmp_path / "plain", **kw))
    plain.train()
    cached = AAClipTrainer(_args(training_root, tmp_path / "cached", cache_stage1_features=True, **kw))
    cached.train()
    assert len(cached.cache) == 16
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "cached")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["text_projector.fc.weight"], _weights_initial(training_root)["text_projector.fc.weight"])


def test_aaclip_train_cli_end_to_end(training_root, tmp_path):
    from aaclip_hf.cli import main

    out = tmp_path / "cli"
    argv = [
        "train",
        "--model",
        str(training_root / "model"),
        "--train-data",
        str(training_root / "data"),
        "--output",
        str(out),
        "--shots",
        "2",
        "--text-batch-size",
        "4",
        "--max-steps",
        "1",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    trained = AAClipModel.from_pretrained(out)
    assert trained.stored_class_names == ["object", "disc", "stripes"]
    assert json.load(open(out / "training_args.json"))["shots"] == "2"
    bad = [str(tmp_path / "bad") if a == str(out) else a for a in argv] + ["--vision-lr", "0"]
    assert main(bad) == 2  # a clear one-line error, no traceback

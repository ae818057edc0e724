"""Reliability of `aaclip train`: a crash at any point of a checkpoint write leaves a
complete latest checkpoint and `--resume` ends with the same weights as an uninterrupted run; a non-finite
loss stops with the last good checkpoint kept; bad files are caught by a pre-flight scan before any step;
`--resume` never unpickles code. (kill -9 at a random step, 2 processes = 1 and `--skip-nonfinite` are in
tests/training/test_trainer.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from aaclip_hf.cli import train as train_cli
from aaclip_hf.data.image_io import BadInputError
from aaclip_hf.errors import NonFiniteLossError
from aaclip_hf.runtime.serialization import UnsafeCheckpointError, safe_torch_load
from aaclip_hf.training import checkpointing as checkpointing_mod
from aaclip_hf.training.arguments import AAClipTrainingArguments
from aaclip_hf.training.checkpointing import CheckpointManager
from aaclip_hf.training.steps import StageLosses
from aaclip_hf.training.trainer import AAClipTrainer

from ..conftest import tiny_training_args


CHECKPOINT_FILES = (
    "trainer_state.json",
    "optimizer.bin",
    "random_states_0.pkl",
    "custom_checkpoint_0.pkl",
    "custom_checkpoint_1.pkl",
)


def _args(training_root, out, **kw) -> AAClipTrainingArguments:
    """Both stages, 4 steps each (16 images, global batch 4)."""
    return tiny_training_args(training_root, out, **kw)


def _weights(out) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(out, "model.safetensors"))


@pytest.fixture(scope="module")
def reference(training_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    AAClipTrainer(_args(training_root, out)).train()
    return _weights(out)


def _assert_identical(out, reference) -> None:
    got = _weights(out)
    assert got.keys() == reference.keys()
    for key in got:
        assert torch.equal(got[key], reference[key]), key


def _checkpoints(out) -> list[str]:
    root = os.path.join(out, "checkpoints")
    names = [n for n in os.listdir(root) if n.startswith("checkpoint-")] if os.path.isdir(root) else []
    return sorted(names, key=lambda n: int(n.split("-")[1]))


def _assert_complete(folder) -> dict:
    """Every file a resume reads is there and loads with the safe unpickler (accelerate's allow-list adds the
    numpy RNG state types)."""
    from accelerate.utils import load

    for name in CHECKPOINT_FILES:
        assert os.path.isfile(os.path.join(folder, name)), f"{folder} lacks {name}"
    for name in os.listdir(folder):
        if name.endswith((".pkl", ".bin")):
            load(os.path.join(folder, name), map_location="cpu", weights_only=True)
    return json.load(open(os.path.join(folder, "trainer_state.json")))


class Crash(BaseException):
    """Stands in for the process dying (not an Exception, so nothing in the trainer can catch it)."""


def _arm_on_save(monkeypatch, target: int) -> dict:
    """Count checkpoint saves (`CheckpointManager.save`); `flag["armed"]` is True during the `target`-th one."""
    flag = {"calls": 0, "armed": False}
    original = CheckpointManager.save

    def counting(self, state):
        flag["calls"] += 1
        flag["armed"] = flag["calls"] == target
        try:
            return original(self, state)
        finally:
            flag["armed"] = False

    monkeypatch.setattr(CheckpointManager, "save", counting)
    return flag


@pytest.mark.parametrize("point", ["inside_save_state", "before_rename", "deleting_previous"])
def test_crash_during_checkpoint_write_keeps_a_complete_latest_and_resume_is_identical(
    training_root, tmp_path, reference, monkeypatch, point
):
    """The 3rd checkpoint write (after step 3) dies: half-way through accelerate's files, just before the
    atomic rename, or half-way through deleting the previous checkpoint."""
    import accelerate.accelerator as acc_module

    args = _args(training_root, tmp_path, checkpointing_steps=1)
    with monkeypatch.context() as m:
        flag = _arm_on_save(m, target=3)
        if point == "inside_save_state":
            real = acc_module.save_custom_state

            def torn(obj, path, index=0, **kw):
                real(obj, path, index, **kw)
                if flag["armed"] and index == 1:  # the trainable weights: leave half the file, then die
                    file = os.path.join(path, f"custom_checkpoint_{index}.pkl")
                    data = open(file, "rb").read()
                    open(file, "wb").write(data[: len(data) // 2])
                    raise Crash(point)

            m.setattr(acc_module, "save_custom_state", torn)
        elif point == "before_rename":
            real_replace = os.replace

            def replace(src, dst):
                if flag["armed"]:
                    raise Crash(point)
                return real_replace(src, dst)

            m.setattr(checkpointing_mod.os, "replace", replace)
        else:
            real_rmtree = shutil.rmtree

            def rmtree(path, *a, **kw):
                if flag["armed"] and os.path.basename(path) == "checkpoint-2":
                    os.remove(os.path.join(path, "optimizer.bin"))  # part-deleted, then die
                    raise Crash(point)
                return real_rmtree(path, *a, **kw)

            m.setattr(checkpointing_mod.shutil, "rmtree", rmtree)
        with pytest.raises(Crash):
            AAClipTrainer(args).train()
    latest = _checkpoints(tmp_path)[-1]
    expected_latest = "checkpoint-3" if point == "deleting_previous" else "checkpoint-2"
    assert latest == expected_latest
    state = _assert_complete(tmp_path / "checkpoints" / latest)
    assert state["global_step"] == int(latest.split("-")[1])
    leftovers = [n for n in os.listdir(tmp_path / "checkpoints") if n.startswith(".tmp-")]
    assert bool(leftovers) == (point != "deleting_previous")

    AAClipTrainer(dataclasses.replace(args, resume="latest")).train()
    _assert_identical(tmp_path, reference)
    assert not [n for n in os.listdir(tmp_path / "checkpoints") if n.startswith(".tmp-")]  # cleaned on resume


DIE_IN_SAVE = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    import accelerate.accelerator as acc_module
    from aaclip_hf.cli import train as train_cli

    real, saves = acc_module.save_custom_state, []
    def torn(obj, path, index=0, **kw):
        real(obj, path, index, **kw)
        saves.append(index)
        if saves.count(0) == 3 and index == 1:  # third checkpoint, after the weights file: kill the process
            os._exit(137)
    acc_module.save_custom_state = torn
    sys.exit(train_cli.main(sys.argv[1:]))
    """
)


def test_process_killed_inside_a_checkpoint_write_then_resume(training_root, tmp_path, reference):
    """A real death (os._exit: no cleanup, no exception handling) in the middle of accelerate's writes."""
    args = _args(training_root, tmp_path, checkpointing_steps=1)
    argv = [
        "--model",
        args.model,
        "--train-data",
        *args.train_data,
        "--output",
        args.output_dir,
        "--text-epochs",
        "1",
        "--vision-epochs",
        "1",
        "--text-batch-size",
        "4",
        "--vision-batch-size",
        "4",
        "--vision-milestones",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        "--checkpointing-steps",
        "1",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", DIE_IN_SAVE, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 137, done.stderr[-2000:]
    assert _checkpoints(tmp_path) == ["checkpoint-2"]
    _assert_complete(tmp_path / "checkpoints" / "checkpoint-2")
    assert os.path.isdir(tmp_path / "checkpoints" / ".tmp-checkpoint-3")
    assert not (tmp_path / "model.safetensors").exists()
    AAClipTrainer(dataclasses.replace(args, resume="latest")).train()
    _assert_identical(tmp_path, reference)


def test_no_step_is_checkpointed_twice(training_root, tmp_path, monkeypatch):
    """Saving a step again would delete its only complete checkpoint before the new one is in place; with
    checkpoints every step, the epoch-end save must not repeat the last batch's."""
    steps = []
    original = CheckpointManager.save

    def record(self, state):
        steps.append(state.global_step)
        return original(self, state)

    monkeypatch.setattr(CheckpointManager, "save", record)
    AAClipTrainer(_args(training_root, tmp_path, checkpointing_steps=1)).train()
    assert steps == list(range(1, 9))


def test_nonfinite_loss_stops_keeps_last_good_checkpoint_and_resume_is_identical(
    training_root, tmp_path, reference, monkeypatch
):
    args = _args(training_root, tmp_path, checkpointing_steps=1)
    with monkeypatch.context() as m:
        calls = {"n": 0}
        original = StageLosses.stage1

        def nan_at_step_3(self, *a, **k):
            terms = original(self, *a, **k)
            calls["n"] += 1
            return {key: value * float("nan") for key, value in terms.items()} if calls["n"] == 3 else terms

        m.setattr(StageLosses, "stage1", nan_at_step_3)
        with pytest.raises(NonFiniteLossError, match=r"nan at stage text, epoch 0, step 3.*checkpoint-2.*--resume"):
            AAClipTrainer(args).train()
    assert _checkpoints(tmp_path) == ["checkpoint-2"]
    state = _assert_complete(tmp_path / "checkpoints" / "checkpoint-2")
    assert state["global_step"] == 2
    weights = safe_torch_load(tmp_path / "checkpoints" / "checkpoint-2" / "custom_checkpoint_1.pkl")["params"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    AAClipTrainer(dataclasses.replace(args, resume="latest")).train()
    _assert_identical(tmp_path, reference)


# ---------------------------------------------------------------------------------- pre-flight scan


@pytest.fixture
def data_copy(training_root, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(training_root / "data", folder)
    return folder


def test_corrupt_image_is_caught_before_the_first_step(training_root, data_copy, tmp_path, monkeypatch, capsys):
    bad = data_copy / "disc" / "test" / "stain" / "000.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a truncated download
    monkeypatch.setattr(
        AAClipTrainer, "train_step", lambda *a, **k: pytest.fail("a step ran before the data was checked")
    )
    out = tmp_path / "out"
    argv = [
        "--model",
        str(training_root / "model"),
        "--train-data",
        str(data_copy),
        "--output",
        str(out),
        "--no-progress",
        "--num-workers",
        "0",
    ]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "truncated" in err and "image_path" in err
    assert not (out / "checkpoints").exists()


def test_mask_of_another_size_is_caught_before_the_first_step(training_root, data_copy, tmp_path):
    from PIL import Image

    mask = data_copy / "stripes" / "ground_truth" / "hole" / "000_mask.png"
    Image.new("L", (20, 10), 255).save(mask)
    with pytest.raises(BadInputError, match=r"mask is 20x10 but its image .*000.png is 32x32") as info:
        AAClipTrainer(_args(training_root, tmp_path / "out", train_data=[str(data_copy)]))
    assert info.value.path == str(mask) and info.value.field == "mask_path"


def test_skip_bad_files_drops_counts_and_trains(training_root, data_copy, tmp_path, caplog):
    (data_copy / "disc" / "test" / "good" / "001.png").write_text("not a png")
    trainer = AAClipTrainer(_args(training_root, tmp_path / "out", train_data=[str(data_copy)], skip_bad_files=True))
    assert len(trainer.samples) == 15
    assert not any(
        s.image_path.endswith(os.path.join("good", "001.png")) and s.class_name == "disc" for s in trainer.samples
    )
    assert "skipped 1 bad entry" in caplog.text and "001.png" in caplog.text
    trainer.train()
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # the trained model is safetensors only; pickles live in checkpoints/ (optimizer/RNG state, read weights-only)
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_training_data_without_anomalies_is_a_clear_error(training_root, tmp_path):
    from aaclip_hf.data import load_samples

    normal = [s for s in load_samples(str(training_root / "data")) if s.label == 0]
    with pytest.raises(BadInputError, match="has no anomalous image"):
        AAClipTrainer(_args(training_root, tmp_path), samples=normal)


def test_class_with_normal_images_only_is_named_and_trains(training_root, tmp_path, caplog):
    from aaclip_hf.data import load_samples

    samples = [s for s in load_samples(str(training_root / "data")) if not (s.class_name == "disc" and s.label == 1)]
    trainer = AAClipTrainer(_args(training_root, tmp_path), samples=samples)
    assert "['disc'] have no anomalous image" in caplog.text
    trainer.train()
    assert (tmp_path / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------- safe resume


class _Payload:
    """Unpickling this object would run `touch marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["custom_checkpoint_0.pkl", "optimizer.bin"])
def test_resume_refuses_a_checkpoint_that_would_run_code(training_root, tmp_path, victim):
    args = _args(training_root, tmp_path, stage="text", checkpointing_steps=1, max_steps=1)
    AAClipTrainer(args).train()
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "checkpoints" / _checkpoints(tmp_path)[-1]
    torch.save({"state": _Payload(marker)}, checkpoint / victim)
    with pytest.raises((UnsafeCheckpointError, pickle.UnpicklingError)) as info:
        AAClipTrainer(dataclasses.replace(args, resume="latest", max_steps=2)).train()
    assert not marker.exists(), "the checkpoint's pickle ran code"
    if victim.startswith("custom"):
        assert isinstance(info.value, UnsafeCheckpointError) and victim in str(info.value)

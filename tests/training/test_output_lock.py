"""One run per output folder: `aaclip train` holds `<output>.lock` (`aaclip_hf.runtime.outputs.output_lock`, as
`aaclip detect` does), so a second run into the same folder, a `--resume` too, is refused before it reads, deletes
or writes anything there: it would otherwise remove the first run's checkpoint save in progress."""

from __future__ import annotations

import argparse

import pytest

from aaclip_hf import errors
from aaclip_hf.cli import main
from aaclip_hf.cli import train as train_cli
from aaclip_hf.runtime import outputs
from aaclip_hf.runtime.outputs import lock_path, output_lock
from aaclip_hf.training.trainer import AAClipTrainer

from ..conftest import tiny_training_args


# `output_lock` raises the runtime module's class for now; the package's one family has its own.
IN_USE = tuple({errors.OutputInUseError, getattr(outputs, "OutputInUseError", errors.OutputInUseError)})


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def running(training_root, tmp_path):
    """The output folder of a first run that is saving its next checkpoint (`.tmp-checkpoint-2` half written)."""
    out = tmp_path / "out"
    args = tiny_training_args(training_root, out, stage="text", max_steps=1, checkpointing_steps=1)
    AAClipTrainer(args).train()
    saving = out / "checkpoints" / ".tmp-checkpoint-2"
    saving.mkdir()
    (saving / "optimizer.bin").write_bytes(b"half written")
    return args, saving


def _argv(args) -> list[str]:
    argv = ["--model", args.model, "--train-data", *args.train_data, "--output", args.output_dir, "--stage", "text"]
    argv += ["--max-steps", "1", "--checkpointing-steps", "1", "--text-epochs", "1", "--vision-epochs", "1"]
    argv += ["--text-batch-size", "4", "--vision-batch-size", "4", "--vision-milestones", "2"]
    return argv + ["--num-workers", "0", "--no-progress", "--log-every", "1", "--resume"]


def test_resume_into_a_held_output_is_refused_and_touches_nothing(running, tmp_path, capsys):
    args, saving = running
    out = tmp_path / "out"
    before = _snapshot(out)
    parser = argparse.ArgumentParser()
    train_cli.add_train_arguments(parser)
    with output_lock(out, "aaclip train"):  # the first run, still going
        with pytest.raises(IN_USE, match=r"in use by another run \(aaclip train, pid \d+"):
            train_cli.run_train(parser.parse_args(_argv(args)))
        capsys.readouterr()
        assert main(["train", *_argv(args)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aaclip train: error: ") and str(lock_path(out)) in lines[0]
        with pytest.raises(IN_USE):  # the Python API holds the same lock
            AAClipTrainer(args).train()
    assert _snapshot(out) == before and saving.is_dir()
    # once the first run is gone, the same command resumes (and clears the save it never finished)
    assert main(["train", *_argv(args)]) == 0
    assert not saving.exists() and not lock_path(out).exists()

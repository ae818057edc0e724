"""Distributed runs: `aaclip evaluate` under 2 processes gives the same metrics as 1, with
every image scored exactly once although the dataset's size (15) does not split evenly (accelerate pads the
tail with repeats; `gather_for_metrics` must drop them).

Training under 2 processes equals 1 process with the same global batch:
tests/training/test_trainer.py::test_two_processes_equal_one."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from aaclip_hf.cli.evaluate import add_evaluate_arguments as add_arguments
from aaclip_hf.cli.evaluate import run_evaluate as evaluate_cli
from aaclip_hf.data.synthetic import generate_synthetic_dataset

from ..conftest import accelerate_cpu_launch, make_tiny_model


NUM_IMAGES = 15  # 3 classes x (3 normal + 2 anomalous): odd, and not a multiple of 2 processes x batch 2

# Runs `aaclip evaluate` and records, on the main process, every image index the gathered batches carry.
SCRIPT = textwrap.dedent(
    """
    import argparse, json, os, sys
    import torch
    torch.set_num_threads(1)
    from aaclip_hf.cli import evaluate as evaluate_cli
    from aaclip_hf.evaluation import protocols

    seen = []
    real_consume = protocols._consume
    def consume(gathered, *args, **kwargs):
        seen.extend(int(i) for i in gathered["index"].tolist())
        return real_consume(gathered, *args, **kwargs)
    protocols._consume = consume

    parser = argparse.ArgumentParser()
    evaluate_cli.add_evaluate_arguments(parser)
    args = parser.parse_args(sys.argv[1:])
    code = evaluate_cli.run_evaluate(args)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(args.output, "seen.json"), "w") as f:
            json.dump(seen, f)
    sys.exit(code)
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel_dist")
    model = make_tiny_model()
    from aaclip_hf import AAClipProcessor

    processor = AAClipProcessor.for_model(model.config)
    model.update_text_anchors(processor, ["object", "stripes", "disc", "pill"])
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    generate_synthetic_dataset(
        root / "data",
        classes=["stripes", "disc", "pill"],
        image_size=32,
        n_train_good=0,
        n_test_good=3,
        n_test_defect_per_kind=1,
        defect_kinds=["hole", "stain"],
        progress=False,
    )
    (root / "evaluate.py").write_text(SCRIPT)
    return root


def _argv(setup, out) -> list[str]:
    return [
        "--model",
        str(setup / "model"),
        "--data",
        str(setup / "data"),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]


def test_two_process_evaluation_equals_one_without_tail_duplicates(setup, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert evaluate_cli(parser.parse_args(_argv(setup, tmp_path / "one"))) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["settings"]["num_images"] == NUM_IMAGES

    cmd, env = accelerate_cpu_launch(2, str(setup / "evaluate.py"), *_argv(setup, tmp_path / "two"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())

    seen = json.loads((tmp_path / "two" / "seen.json").read_text())
    assert sorted(seen) == list(range(NUM_IMAGES)), "gathered rows must cover every image exactly once"
    assert two["settings"]["num_images"] == NUM_IMAGES
    assert two["classes"].keys() == one["classes"].keys() == {"stripes", "disc", "pill"}
    for name, row in one["classes"].items():
        assert (two["classes"][name]["num_normal"], two["classes"][name]["num_anomalous"]) == (3, 2)
        assert two["classes"][name]["num_pixel_images"] == row["num_pixel_images"] == 5
        for key, value in row.items():
            if isinstance(value, float):
                assert two["classes"][name][key] == pytest.approx(value, abs=1e-6), (name, key)
    for key, value in one["mean"].items():
        if value is not None:
            assert two["mean"][key] == pytest.approx(value, abs=1e-6), key

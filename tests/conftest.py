"""Shared fixtures: tiny random AA-CLIP models and the bundled processor, all offline."""

from __future__ import annotations

import os


# Read at import time by huggingface_hub: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny tensors gain nothing from intra-op threads and lose a lot on a busy 2-core machine; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import socket
import sys

import pytest
import torch

from aaclip_hf import AAClipConfig, AAClipModel, AAClipProcessor
from aaclip_hf.data.synthetic import generate_synthetic_dataset
from aaclip_hf.training.arguments import AAClipTrainingArguments


TINY_IMAGE_SIZE = 40
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    """Every test gets its own HF cache, so no test sees another's downloads or dynamic modules."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))


@pytest.fixture(scope="session")
def processor() -> AAClipProcessor:
    proc = AAClipProcessor.for_model(AAClipConfig.tiny())
    assert proc.image_size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    return proc


def make_tiny_model(seed: int = 0, **overrides) -> AAClipModel:
    torch.manual_seed(seed)
    model = AAClipModel(AAClipConfig.tiny(**overrides))
    model.init_adapter_weights(seed=seed)
    return model.eval()


@pytest.fixture
def tiny_model(processor) -> AAClipModel:
    model = make_tiny_model()
    model.update_text_anchors(processor, ["object", "bottle", "pcb1"])
    return model


@pytest.fixture(scope="session")
def training_root(tmp_path_factory):
    """A saved tiny AA-CLIP (`model/`) and a small synthetic defect set (`data/`) for training tests."""

    root = tmp_path_factory.mktemp("train")
    model = make_tiny_model(seed=0)
    processor = AAClipProcessor.for_model(model.config)
    model.update_text_anchors(processor, ["object"])
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    generate_synthetic_dataset(
        root / "data",
        classes=["stripes", "disc"],
        image_size=32,
        n_train_good=0,
        n_test_good=4,
        n_test_defect_per_kind=1,
        defect_kinds=["hole", "stain", "scratch", "color_spot"],
        progress=False,
    )
    return root


@pytest.fixture
def pixel_values() -> torch.Tensor:
    return torch.randn(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def accelerate_cpu_launch(num_processes: int, *target: str) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` of `target` on `num_processes` CPU processes (a free local port), and its env."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *target]
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    return cmd, env


def tiny_training_args(training_root, out, **overrides):
    """`AAClipTrainingArguments` for the `training_root` fixture: both stages, 1 epoch each, global batch 4, quiet."""
    base = {
        "model": str(training_root / "model"),
        "train_data": [str(training_root / "data")],
        "output_dir": str(out),
        "text_epochs": 1,
        "vision_epochs": 1,
        "text_batch_size": 4,
        "vision_batch_size": 4,
        "vision_milestones": [2],
        "num_workers": 0,
        "progress": False,
        "log_every": 1,
    }
    return AAClipTrainingArguments(**(base | overrides))

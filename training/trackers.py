"""Experiment trackers for `aaclip train --report-to`: Accelerate's TensorBoard / W&B trackers.

The trainer hands `accelerator_kwargs(args)` to its `Accelerator` (`log_with` and a `ProjectConfiguration`
whose logging folder is `OUTPUT/runs`), calls `init_trackers(PROJECT_NAME, run_config(args))` once and
`accelerator.log(step_values(record), step=global_step)` at every logged step. Tags are `<stage>/<name>`:
`text/loss`, `vision/lr`, `vision/grad_norm`, `vision/epoch_seconds`, ... TensorBoard writes event files
under `OUTPUT/runs/aaclip-train/`; W&B needs `pip install aaclip-hf[wandb]` (offline: `WANDB_MODE=offline`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from accelerate.utils import ProjectConfiguration, is_tensorboard_available, is_wandb_available

from ..errors import InvalidInputError


__all__ = ["PROJECT_NAME", "REPORT_TO", "accelerator_kwargs", "grad_norm", "run_config", "step_values", "trackers"]

REPORT_TO = ("none", "tensorboard", "wandb", "all")
PROJECT_NAME = "aaclip-train"
LOGGING_SUBDIR = "runs"
# What each tracker needs installed, and the extra that installs it.
_AVAILABLE = {"tensorboard": (is_tensorboard_available, "tensorboard"), "wandb": (is_wandb_available, "wandb")}
# Record keys that are positions, not values to plot.
_NOT_LOGGED = ("stage", "epoch", "step")


def trackers(report_to: str) -> list[str]:
    """The Accelerate tracker names for `--report-to` (`all`: TensorBoard and W&B); [] for `none`.

    Raises a one-line `ValueError` when a requested tracker's package is missing (Accelerate would drop it
    silently).
    """
    if report_to not in REPORT_TO:
        raise InvalidInputError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    names = ["tensorboard", "wandb"] if report_to == "all" else [] if report_to == "none" else [report_to]
    for name in names:
        available, extra = _AVAILABLE[name]
        if not available():
            raise InvalidInputError(
                f"--report-to {report_to}: the {name} package is not installed; pip install aaclip-hf[{extra}]"
            )
    return names


def accelerator_kwargs(report_to: str, output_dir: str | os.PathLike) -> dict[str, Any]:
    """`Accelerator(**...)` arguments that enable the trackers, logging under `output_dir/runs`."""
    names = trackers(report_to)
    if not names:
        return {}
    output_dir = os.fspath(output_dir)
    config = ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, LOGGING_SUBDIR))
    return {"log_with": names, "project_config": config}


def run_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The run's arguments as tracker hyper-parameters: numbers, strings and booleans kept, the rest as text
    (TensorBoard's hparams refuse lists and None)."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in values.items()}


def step_values(record: Mapping[str, Any]) -> dict[str, float]:
    """A train-log record (`stage`, `epoch`, `step`, losses, `lr`, `grad_norm`, ...) as `<stage>/<name>` scalars."""
    stage = record["stage"]
    return {
        f"{stage}/{key}": float(value)
        for key, value in record.items()
        if key not in _NOT_LOGGED and isinstance(value, (int, float))
    }


def grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """The L2 norm of all gradients together (parameters without a gradient count as zero)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

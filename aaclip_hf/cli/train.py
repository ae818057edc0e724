"""`aaclip train` (also `python -m aaclip_hf.training` / `accelerate launch -m aaclip_hf.training`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers,
        "train",
        "Two-stage AA-CLIP training (text, then vision) with Accelerate.",
        run_train,
        add_train_arguments,
    )


logger = logging.getLogger("aaclip_hf.training")

__all__ = ["add_train_arguments", "main", "run_train"]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training run's flags (`aaclip_hf.training.arguments`, shared with `python -m aaclip_hf.training`)."""
    from ..training.arguments import add_arguments

    add_arguments(parser)


def _is_main_process() -> bool:
    """Rank 0, read from the launcher's environment (`accelerate launch` / torchrun set RANK) before any
    Accelerator exists; a plain run is the main process."""
    return os.environ.get("RANK", "0") == "0"


def run_train(args: argparse.Namespace) -> int:
    """Train; with `--push-to-hub`, the main process then uploads the folder (allowlisted, with a card).

    One run per output folder, as `aaclip detect`: the main process holds `<output>.lock` from before anything
    is loaded until the upload is done, so a second run into the same folder (a `--resume` too) is refused with
    `OutputInUseError` before it reads, deletes or writes anything there. An output that is the base model or a
    training dataset, or a folder holding one, is refused first (`check_output_apart`).
    """
    from accelerate import PartialState

    from ..hub.publish import push_folder_to_hub
    from ..runtime.loading import check_model_source
    from ..runtime.outputs import check_output_apart, output_lock
    from ..training.arguments import arguments_from_namespace
    from ..training.trainer import train
    from .data import data_spec_paths

    training_args = arguments_from_namespace(args)
    # Before anything is read or written: the run never writes onto its base model or its training data.
    check_output_apart(
        training_args.output_dir, inputs=data_spec_paths(training_args.train_data), model=training_args.model
    )
    lock = output_lock(training_args.output_dir, "aaclip train") if _is_main_process() else contextlib.nullcontext()
    with lock:
        check_model_source(training_args.model)  # a missing folder is named here, not by a network traceback
        output_dir = train(training_args, lock=False)
        if training_args.push_to_hub and PartialState().is_main_process:
            repo = training_args.hub_model_id or os.path.basename(os.path.abspath(output_dir))
            push_folder_to_hub(output_dir, repo)
            logger.info("pushed to the Hub as %s", repo)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `-m aaclip_hf.training` entry point: the `aaclip train` subcommand behind the CLI's error boundary."""
    from . import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])

"""`aaclip demo` (what `make demo` runs): the offline end-to-end workflow of `aaclip_hf.demo`."""

from __future__ import annotations

import argparse

from .parsing import add_command


def register(subparsers) -> None:
    help_text = (
        "The offline end-to-end demo: synthetic data, train, zero- and few-shot evaluation, detect, Hub folder."
    )
    add_command(subparsers, "demo", help_text, run_demo, add_demo_arguments)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="CLIP Hub id / folder, or an AA-CLIP folder (default: a tiny random CLIP, fully offline)",
    )
    parser.add_argument("--output", default="demo_output", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smaller run (tests; well under a minute)")
    parser.add_argument("--seed", type=int, default=111, help="seed of model init and training (the paper's)")
    parser.add_argument("--text-epochs", type=int, default=None, help="override stage-1 epochs")
    parser.add_argument("--vision-epochs", type=int, default=None, help="override stage-2 epochs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_demo(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from ..demo import FULL, QUICK, run_demo
    from ..runtime.loading import check_model_source

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = QUICK if args.quick else FULL
    overrides = {k: v for k, v in (("text_epochs", args.text_epochs), ("vision_epochs", args.vision_epochs)) if v}
    settings = dataclasses.replace(settings, **overrides)
    if args.model is not None:
        check_model_source(args.model)  # named in one line before any step runs
    run_demo(args.output, args.model, settings=settings, seed=args.seed, progress=not args.no_progress)
    return 0

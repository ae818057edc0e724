"""The `aaclip` command line: one entry point, one module per subcommand.

Each subcommand lives in the module that owns its concern and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
subcommand runs, so ``aaclip --help`` stays fast and light. `main` is the one error boundary: expected
failures print one line naming the file or field and exit 2 (see ``cli/errors.py``; ``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..runtime.cpu import tune_cpu_runtime
from .errors import debug_requested, expected_error_message


# name -> (module, suffix, one-line help): the module defines `add_<suffix>_arguments(parser)` and
# `run_<suffix>(args) -> int` (suffix "" : `add_arguments` / `run`). Sorted by workflow: set up, train, use, publish.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("aaclip_hf.cli.info", "", "Show versions, devices and what a model folder holds."),
    "convert-tokenizer": (
        "aaclip_hf.cli.convert",
        "tokenizer",
        "Write HF CLIP tokenizer files from OpenAI's BPE merges file.",
    ),
    "convert-clip": (
        "aaclip_hf.cli.convert",
        "clip",
        "Convert an OpenAI/OpenCLIP/HF CLIP checkpoint into an AA-CLIP (or CLIP) folder.",
    ),
    "convert-original": (
        "aaclip_hf.cli.convert",
        "original",
        "Convert the reference AA-CLIP checkpoints (backbone + adapters) into an AA-CLIP folder.",
    ),
    "make-synthetic": (
        "aaclip_hf.cli.data",
        "make_synthetic",
        "Write a synthetic defect dataset (MVTec layout) with exact masks.",
    ),
    "sample-shots": (
        "aaclip_hf.cli.data",
        "sample_shots",
        "Draw a k-shot split (k/2 normal + k/2 anomalous per class) as JSON-lines.",
    ),
    "export-dataset": (
        "aaclip_hf.cli.data",
        "export_dataset",
        "Write any supported layout as a Hugging Face datasets folder (save_to_disk) with a dataset card.",
    ),
    "train": ("aaclip_hf.cli.train", "", "Two-stage AA-CLIP training (text, then vision) with Accelerate."),
    "evaluate": (
        "aaclip_hf.cli.evaluate",
        "",
        "Per-class and mean AUROC/AP/F1-max/AUPRO in the paper's protocol and table layout.",
    ),
    "detect": (
        "aaclip_hf.cli.detect",
        "detect",
        "Score your images: overlays (image | heat map | decision contour), JSON and CSV.",
    ),
    "calibrate": (
        "aaclip_hf.cli.detect",
        "calibrate",
        "Set the model's decision threshold from a few normal (and anomalous) images.",
    ),
    "push": (
        "aaclip_hf.cli.hub",
        "push",
        "Upload a model folder to the Hub with remote code, pipeline code and a model card.",
    ),
    "push-metric": (
        "aaclip_hf.cli.hub",
        "push_metric",
        "Upload the `evaluate` metric module as a Hub Space that evaluate.load reads.",
    ),
    "export-onnx": (
        "aaclip_hf.cli.hub",
        "export_onnx",
        "Export the vision path with stored anchors to ONNX (dynamic batch, no text tower).",
    ),
    "bench": ("aaclip_hf.cli.bench", "", "Run the performance benchmarks and write a markdown + JSON report."),
    "demo": (
        "aaclip_hf.cli.demo",
        "",
        "The offline end-to-end demo: synthetic data, train, zero-shot eval, detect, Hub folder.",
    ),
    "app": (
        "aaclip_hf.cli.app",
        "",
        "Serve the Gradio app (upload an image, pick class and domain, move the threshold); also a Space's app.py.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aaclip",
        description="AA-CLIP zero-shot anomaly detection and segmentation on Hugging Face transformers.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of its one-line message (also AACLIP_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, _suffix, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == "--debug":  # the global flag, before the subcommand
        debug, argv = True, argv[1:]
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name = argv[0]
    module_name, suffix, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    prefix = f"_{suffix}" if suffix else ""
    sub_parser = argparse.ArgumentParser(prog=f"aaclip {name}", description=help_text)
    try:
        getattr(module, f"add{prefix}_arguments")(sub_parser)
        args = sub_parser.parse_args(argv[1:])
        # Fast from the first call: freed activations stay resident, one thread per core (runtime/cpu.py).
        tune_cpu_runtime()
        return int(getattr(module, f"run{prefix}")(args) or 0)
    except Exception as error:
        # The one error boundary (cli/errors.py): expected failures are one line, exit 2; bugs keep their traceback.
        message = expected_error_message(error)
        if message is None or debug or debug_requested():
            raise
        print(f"aaclip {name}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

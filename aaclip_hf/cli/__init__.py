"""The `aaclip` command line: one entry point, one module per concern, each subcommand registered by its function.

Every module of `COMMAND_MODULES` has a `register(subparsers)` that adds its subcommands with
`set_defaults(func=run_..., configure=add_..._arguments)`, as transformers' `commands/` do, so a grep for a `run_`
function finds its caller. The modules import the library inside those functions: `aaclip --help` and
`aaclip --version` then start without torch or transformers, and a subcommand pays only for what it uses. `main` is the
one error boundary (`errors.py`): expected failures print one line naming the file or field and exit 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..version import __version__
from . import app, bench, classes, convert, data, demo, detect, evaluate, hub, info, train
from .errors import report_failure
from .lean import skip_unused_imports


# In the order of the workflow: set up, data, train, use, publish.
COMMAND_MODULES = (info, convert, data, train, evaluate, detect, classes, hub, bench, demo, app)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser, which has no arguments yet (`configure` adds them)."""
    parser = argparse.ArgumentParser(
        prog="aaclip",
        description="AA-CLIP zero- and few-shot anomaly detection and segmentation on Hugging Face transformers.",
    )
    parser.add_argument("--version", action="version", version=f"aaclip-hf {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an expected failure instead of its one-line message (also AACLIP_DEBUG=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser, subparsers.choices


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 0
    skip_unused_imports(known.command)  # before the subcommand's arguments import the library
    command = commands[known.command]
    command.add_argument("-h", "--help", action="help", help="show this help message and exit")
    known.configure(command)
    args = parser.parse_args(argv)
    try:
        from ..runtime.cpu import tune_cpu_runtime

        tune_cpu_runtime()  # fast from the first call: freed activations stay resident, one thread per core
        return int(args.func(args) or 0)
    except Exception as error:
        return report_failure(error, f"aaclip {known.command}", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())

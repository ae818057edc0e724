"""`aaclip bench`: runs `benchmarks/run.py` of a source checkout (the benchmarks are not installed).

The benchmark suite lives in `benchmarks/` next to the package sources, like the tests; this thin
entry point finds it from the editable install and forwards the arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def _load_runner():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found; aaclip bench needs a source checkout: clone the repository and "
            "`pip install -e .` it, or run `python benchmarks/run.py` there"
        )
    spec = importlib.util.spec_from_file_location("aaclip_benchmarks_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _load_runner().add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _load_runner().run(args)

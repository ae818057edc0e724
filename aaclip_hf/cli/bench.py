"""`aaclip bench` (also `python -m aaclip_hf.benchmark`): the performance benchmarks, one markdown + JSON report.

The benchmark app is `aaclip_hf.benchmark`; this module reads the flags and calls it: a full run (every section,
or `--only` some, `--merge` keeping the others), the GPU section alone (`--gpu`, what `benchmarks/gpu.sh` runs),
or `--render` (report.md again from report.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .parsing import add_command


def register(subparsers) -> None:
    help_text = "Run the performance benchmarks and write a markdown + JSON report."
    add_command(subparsers, "bench", help_text, run_bench, add_bench_arguments)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from ..benchmark.presets import PRESETS, SECTION_GROUPS, SECTIONS

    parser.add_argument(
        "--quick", action="store_true", help="ViT-B/16-sized model at 224 px, fewer iterations (minutes)"
    )
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="explicit preset (overrides --quick)")
    parser.add_argument("--output", default="benchmarks/results", help="folder for report.md, report.json, bench.log")
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(SECTIONS)}; 'runtime' = {','.join(SECTION_GROUPS['runtime'])}",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the sections of the existing report.json (same preset) that this run does not measure",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    parser.add_argument("--gpu", action="store_true", help="only the CUDA section, added to an existing report")
    parser.add_argument("--gpu-batches", default="1,8,32", help="batch sizes of the CUDA section")
    parser.add_argument(
        "--gpu-device", default="cuda", help="device of --gpu; cpu = a dry run of the same code (use --preset smoke)"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite report.md (and goals) from report.json")


def run_bench(args: argparse.Namespace) -> int:
    from ..benchmark.runner import render, run_benchmarks, run_gpu, select_sections

    output = Path(args.output)
    if args.render:
        print(render(output))
        return 0
    if args.gpu:
        batches = [int(b) for b in args.gpu_batches.split(",")]
        return run_gpu(output, batches, args.gpu_device, args.preset or "full")
    only = select_sections(args.only)
    preset = args.preset or ("quick" if args.quick else "full")
    report = run_benchmarks(preset, output, only, args.threads, merge=getattr(args, "merge", False))
    print((output / "report.md").read_text())
    failed = [key for key, value in report.items() if isinstance(value, dict) and "error" in value]
    if failed:
        print(f"failed jobs: {failed} (see {output / 'bench.log'})", file=sys.stderr)
    return 1 if failed else 0

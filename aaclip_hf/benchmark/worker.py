"""One measurement in its own process, so it starts from a clean allocator and its peak memory is its own.

    python -m aaclip_hf.benchmark.worker NAME --preset full [--kwargs JSON] [--threads N]

The runner (`runner.py`) starts this module once per job and reads the result from the line of stdout that
starts with `RESULT_TAG` (JSON); everything else a worker prints, and its traceback if it fails, is logged.
"""

from __future__ import annotations

import argparse
import json
import sys

from .metrics import worker_metrics
from .presets import PRESETS
from .workers_gpu import worker_gpu
from .workers_int8 import worker_backends, worker_int8, worker_int8_speed
from .workers_model import worker_load, worker_peak, worker_save, worker_vision
from .workers_runtime import worker_detect, worker_first_call, worker_startup
from .workers_training import worker_stage1, worker_stage2


RESULT_TAG = "@@AACLIP_BENCH_RESULT@@"

WORKERS = {
    "peak": worker_peak,
    "vision": worker_vision,
    "save": worker_save,
    "load": worker_load,
    "metrics": worker_metrics,
    "stage1": worker_stage1,
    "stage2": worker_stage2,
    "gpu": worker_gpu,
    "startup": worker_startup,
    "first_call": worker_first_call,
    "detect": worker_detect,
    "int8": worker_int8,
    "backends": worker_backends,
    "int8_speed": worker_int8_speed,
}


def run_worker(name: str, preset_name: str, kwargs: dict, threads: int | None) -> dict:
    """Run the worker `name` here, tuned as the CLI runs (`first_call` measures both ways itself)."""
    import torch

    from aaclip_hf.runtime.cpu import tune_cpu_runtime

    if threads:
        torch.set_num_threads(threads)
    if name != "first_call":
        tune_cpu_runtime(torch.get_num_threads())
    result = WORKERS[name](PRESETS[preset_name], **kwargs)
    result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aaclip_hf.benchmark.worker",
        description="Run one benchmark worker and print its result as tagged JSON.",
    )
    parser.add_argument("name", choices=sorted(WORKERS))
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--kwargs", default="{}", help="the worker's keyword arguments as a JSON object")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    result = run_worker(args.name, args.preset, json.loads(args.kwargs), args.threads)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark tests share: the runner loaded from benchmarks/run.py and a report's hand-written header."""

import importlib.util
from pathlib import Path


RUN_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def load_bench(name: str = "aaclip_benchmarks_run_test"):
    """benchmarks/run.py as a module (the benchmarks are not installed)."""
    spec = importlib.util.spec_from_file_location(name, RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_report() -> dict:
    """The machine, FLOP and parameter fields every report holds, with made-up numbers (no timing is real)."""
    return {
        "preset": "full",
        "model": "m",
        "settings": {"matmul_repeats": 3},
        "machine": {"cpu": "cpu", "simd": ["avx2"], "logical_cpus": 2, "torch": "2", "torch_threads": 2, "cuda": None},
        "started": "now",
        "total_seconds": 60.0,
        "load_average_start": (1.0, 1, 1),
        "load_average_end": (1.0, 1, 1),
        "flops": {
            "vision_forward_per_image": {"terms": {"mlp": 2e9}, "elementwise_estimate": 1e8, "total": 2e9},
            "text_anchors_per_class_77_tokens": {"total": 1e9},
        },
        "parameters": {"full_parameters": 100, "inference_only_parameters": 70},
    }

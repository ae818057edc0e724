"""The benchmark harness: memory measurement, goal checks, report rendering (timings are never asserted)."""

import json
import subprocess
import sys

import pytest

from aaclip_hf.benchmark.common import PeakMemory
from aaclip_hf.benchmark.goals import evaluate_goals
from aaclip_hf.benchmark.report import to_markdown

from .bench_report import base_report


def test_peak_memory_sees_a_native_allocation():
    import torch

    with PeakMemory() as memory:
        block = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB of float32, touched
        del block
    assert memory.delta >= 200 * 2**20, memory.to_dict()  # tracemalloc would report ~0 here
    with PeakMemory() as idle:
        pass
    assert idle.delta < 64 * 2**20


def test_goals_and_markdown_from_a_report():
    report = {
        **base_report(),
        "peak": {"gflops": 100.0, "matrix_size": 2048},
        "vision_sdpa": {
            "attn": "sdpa",
            "batches": {"1": {"seconds_per_image": 0.04, "gflops_per_second": 50.0, "memory": {"peak_delta": 2**30}}},
            "references": {
                "shots": 4,
                "bank_rows_per_level": 5476,
                "bank_bytes": 64 * 2**20,
                "chunk_size": 4096,
                "seconds_bank": 40.0,
                "seconds_zero_shot": 10.0,
                "seconds_few_shot": 10.3,
                "seconds_search": 0.3,
                "search_share": 0.03,
                "flops_search": 46e9,
            },
        },
        "stage1": {
            "speedup": 4.5,
            "image_size": 224,
            "num_images": 2,
            "batch_size": 2,
            "epochs": 5,
            "predicted_speedup_at_default_size": 4.9,
            "seconds_recomputed": 9.0,
            "seconds_cached": 2.0,
            "memory_recomputed": {"peak_delta": 0},
            "memory_cached": {"peak_delta": 0},
            "max_abs_loss_diff": 0.0,
            "dpam_seconds_per_image": 1.0,
            "text_seconds_per_step": 0.1,
            "flop_scale_to_default_size": 6.0,
        },
    }
    goals = {g["goal"]: g for g in evaluate_goals(report)}
    assert goals["vision forward >= 85 % of the measured fp32 matmul peak"]["met"] is False  # 50 of 100
    assert "50 %" in goals["vision forward >= 85 % of the measured fp32 matmul peak"]["value"]
    assert goals["inference-only model >= 25 % fewer parameters"]["met"] is True  # 30 % fewer
    assert goals["stage 1 (5 epochs) with cached frozen features >= 4x faster"]["met"] is True
    search = goals["few-shot bank search (4-shot) <= 10 % of the forward"]
    assert search["met"] is True and search["value"].startswith("3.0 % (0.300 of 10.00 s; bank 64.0 MiB")
    report["goals"] = list(goals.values())
    text = to_markdown(report)
    assert "| sdpa | 1 | 0.04 | 50.0 | 50 % | 1.00 GiB |" in text
    assert "| 5476 | 64.0 MiB | 40.00 | 10.00 | 10.30 | 0.300 | 3.0 % |" in text
    json.dumps(report)


@pytest.mark.slow
def test_smoke_preset_runs_every_worker(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "aaclip_hf.benchmark", "--preset", "smoke", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert not [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    assert report["stage1"]["max_abs_loss_diff"] < 1e-6  # the feature cache is exact
    assert report["stage2_plain"]["grad_norm"] == pytest.approx(report["stage2_checkpointing"]["grad_norm"], rel=1e-5)
    assert (tmp_path / "report.md").read_text().startswith("# AA-CLIP benchmark report")

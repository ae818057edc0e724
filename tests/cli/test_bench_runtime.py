"""The benchmark's runtime rows (goals, report, --only runtime, --merge) and benchmarks/gpu.sh's CPU path.

Timings are never asserted: the reports are built from hand-written numbers and the goal checks are tested.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aaclip_hf.benchmark import runner
from aaclip_hf.benchmark.goals import evaluate_goals, runtime_goals
from aaclip_hf.benchmark.report import to_markdown
from aaclip_hf.cli import bench
from aaclip_hf.runtime.backends import DEFAULT_BACKEND

from .bench_report import base_report


ROOT = Path(__file__).resolve().parents[2]


def _int8_row(seconds, corr, image_change, pixel_change):
    return {
        "seconds_per_image": seconds,
        "speedup_vs_fp32": 8.0 / seconds,
        "image_auroc": 0.5 + image_change / 100,
        "pixel_auroc": 0.6 + pixel_change / 100,
        "max_abs_map_diff": 0.1,
        "mean_abs_map_diff": 0.01,
        "map_correlation": corr,
        "map_range_fp32": 10.0,
        "image_auroc_change_points": image_change,
        "pixel_auroc_change_points": pixel_change,
    }


def _report():
    return {
        **base_report(),
        "first_call_default": {"seconds": [20.0, 9.0, 11.0], "first": 20.0, "steady": 10.0, "first_over_steady": 2.0},
        "first_call_tuned": {
            "seconds": [8.4, 8.0, 7.6],
            "first": 8.4,
            "steady": 7.8,
            "first_over_steady": 8.4 / 7.8,
            "tuning": {"mallopt": {"M_MMAP_THRESHOLD": 1}, "num_threads": 2},
        },
        "detect": {
            "num_images": 8,
            "width": 640,
            "height": 480,
            "wall_seconds_process": 80.0,
            "seconds_per_image": 10.0,
            "floor_seconds_per_image": 6.0,
            "ratio_to_floor": 10.0 / 6.0,
            "batch_size_auto": 4,
            "peak_gflops_before": 170.0,
            "peak_gflops_after": 160.0,
        },
        "int8": {
            "num_images": 12,
            "batch_size": 4,
            "num_pixels": 100,
            "anomalous_pixels": 5,
            "setup_seconds": {"torch_int8": 1.0, "onnx_int8": 60.0},
            "variants": {
                "fp32": _int8_row(8.0, 1.0, 0.0, 0.0),
                "torch_int8": _int8_row(4.0, 0.995, 0.0, -0.2),  # 2.0x: the faster int8 path
                "onnx_int8": _int8_row(5.0, 0.999, 0.0, 0.0),
            },
        },
        "backends": {
            "batches": [1, 4],
            "backends": {
                "torch": {
                    "setup_seconds": 0.0,
                    "batches": {
                        "1": {"first_call_seconds": 9, "seconds_per_image": 8.0},
                        "4": {"first_call_seconds": 30, "seconds_per_image": 7.0},
                    },
                },
                "onnx": {
                    "setup_seconds": 50.0,
                    "batches": {
                        "1": {"first_call_seconds": 9, "seconds_per_image": 7.5},
                        "4": {"first_call_seconds": 30, "seconds_per_image": 7.2},
                    },
                },
                "compile": {"error": "RuntimeError: no compiler"},
            },
        },
    }


def test_runtime_goals_from_hand_numbers(monkeypatch):
    monkeypatch.setitem(DEFAULT_BACKEND, ("cpu", "int8"), "onnx")
    goals = {g["goal"].split(" ")[0] + g["goal"].split(" ")[1]: g for g in runtime_goals(_report())}
    first = goals["firstcall"]
    assert first["met"] is True and "1.08x" in first["value"] and "2.00x" in first["value"]
    detect = goals["aaclipdetect"]
    assert detect["met"] is False and "1.67x" in detect["value"] and detect["reason"]
    int8 = goals["int8>="]
    # judged on the path --quantize int8 uses (DEFAULT_BACKEND: onnx): 8 / 5 = 1.6x misses 1.8x
    assert int8["met"] is False and int8["value"].startswith("onnx_int8: 1.60x") and "0.20x short" in int8["reason"]
    backends = goals["torch.compileand"]
    assert backends["value"].startswith("batch 1: onnx (7.50 s/image); batch 4: torch (7.00 s/image)")
    assert backends["met"] is False  # two winners (onnx, torch): one default cannot be both
    assert backends["reason"]
    report = _report()
    report["int8"]["variants"]["onnx_int8"] = _int8_row(6.0, 0.98, -1.0, 0.0)  # 1.33x, low corr, -1 point
    monkeypatch.setitem(DEFAULT_BACKEND, ("cpu", "int8"), "onnx")
    int8 = {g["goal"]: g for g in runtime_goals(report)}[int8["goal"]]
    assert int8["met"] is False and int8["value"].startswith("onnx_int8: 1.33x")
    assert (
        "0.47x short" in int8["reason"] and "0.9800 below 0.99" in int8["reason"] and "1.00 points" in int8["reason"]
    )


def test_int8_speed_at_full_size_judges_the_speed(monkeypatch):
    monkeypatch.setitem(DEFAULT_BACKEND, ("cpu", "int8"), "onnx")
    report = _report()
    report["int8"]["image_size"] = 224
    report["int8_speed"] = {
        "image_size": 518,
        "batch_size": 4,
        "rounds": 1,
        "setup_seconds": {},
        "variants": {
            "fp32": {
                "seconds_per_image": 8.0,
                "cpu_seconds_per_image": 16.0,
                "speedup_vs_fp32": 1.0,
                "cpu_speedup_vs_fp32": 1.0,
            },
            "torch_int8": {
                "seconds_per_image": 6.0,
                "cpu_seconds_per_image": 12.0,
                "speedup_vs_fp32": 8 / 6,
                "cpu_speedup_vs_fp32": 16 / 12,
            },
            "onnx_int8": {
                "seconds_per_image": 5.0,
                "cpu_seconds_per_image": 10.0,
                "speedup_vs_fp32": 1.6,
                "cpu_speedup_vs_fp32": 1.6,
            },
        },
    }
    goal = next(g for g in runtime_goals(report) if g["goal"].startswith("int8"))
    # the kept path (onnx) is judged with its 518 px speed: 1.6x misses 1.8x by 0.20x
    assert goal["met"] is False and goal["value"].startswith("onnx_int8 (speed at 518 px, accuracy at 224 px): 1.60x")
    assert "0.20x short" in goal["reason"]
    assert "### int8 speed at 518 px" in to_markdown({**report, "goals": []})


def test_runtime_rows_in_the_markdown():
    report = _report()
    report["goals"] = evaluate_goals(report)
    text = to_markdown(report)
    assert "| tune_cpu_runtime() | 8.40, 8.00, 7.60 | 1.08x | - | - | - |" in text
    assert "| ratio | **1.67x** |" in text
    assert "| torch_int8 | 4 | 2.00x / nanx | 0.1 / 0.01 | 0.99500 | 50.00 (+0.00) | 59.80 (-0.20) | 1.0 s |" in text
    assert "| compile | RuntimeError: no compiler |" in text
    assert "| onnx | 50.0 s | 9.0 s / 7.5 (1.07x) |" not in text  # the speed-up is only set by the worker
    assert "| onnx | 50.0 s | 9.0 s / 7.5 (nanx) | 30.0 s / 7.2 (nanx) |" in text


def test_only_runtime_and_merge_keep_the_earlier_sections(tmp_path, monkeypatch):
    earlier = _report()
    earlier["vision_sdpa"] = {"attn": "sdpa", "batches": {}}
    earlier["first_call_tuned"] = {"old": True}
    (tmp_path / "report.json").write_text(json.dumps(earlier))
    spawned = []

    def fake_spawn(worker, preset, threads, log, **kwargs):
        spawned.append(worker)
        return {"error": "not run in this test"}

    monkeypatch.setattr(runner, "_spawn", fake_spawn)
    monkeypatch.setattr(runner, "machine_info", lambda: earlier["machine"])
    args = argparse.Namespace(
        output=str(tmp_path),
        render=False,
        gpu=False,
        only="runtime",
        preset="smoke",
        quick=False,
        threads=None,
        merge=True,
    )
    earlier["preset"] = "smoke"
    (tmp_path / "report.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(bench, "print", lambda *a, **k: None, raising=False)
    bench.run(args)
    assert spawned == ["first_call", "first_call", "detect", "int8", "int8_speed", "backends"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["vision_sdpa"] == {"attn": "sdpa", "batches": {}}  # kept from the earlier run
    assert report["first_call_tuned"] == {"error": "not run in this test"}  # replaced by this run
    assert "vision_sdpa" in report["merged_from"]["sections"]
    assert "Merged (`--merge`)" in (tmp_path / "report.md").read_text()


def test_gpu_script_skips_cleanly_without_a_gpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU, skipped" in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_section_dry_run_on_cpu(tmp_path):
    """The GPU worker's code on the CPU (smoke preset): every table of report_gpu.md is filled."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aaclip_hf.benchmark",
            "--gpu",
            "--gpu-device",
            "cpu",
            "--preset",
            "smoke",
            "--gpu-batches",
            "1,2",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report_gpu.md").read_text()
    for row in (
        "| float32 | 2 |",
        "| bfloat16 | 1 |",
        "| float16 | 2 |",
        "### Stage 2: 3 steps, batch 2",
        "loss curve",
    ):
        assert row in text
    raw = json.loads(text.split("```json\n")[1].split("\n```")[0])
    assert len(raw["stage2"]["loss_curve"]) == 3

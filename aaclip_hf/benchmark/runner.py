"""The benchmark runner: the jobs of a run, each in its own worker process, and the report they fill.

A job is one worker call (`python -m aaclip_hf.benchmark.worker NAME ...`); the report (`report.json` and
`report.md`) is rewritten after every job, so an interrupted run leaves a partial report with the headline
numbers first. `--merge` keeps the sections of an earlier report (same preset) that this run does not measure.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from . import worker
from .common import preset_config
from .goals import evaluate_goals
from .presets import PRESETS, SECTION_GROUPS, SECTIONS
from .report import gpu_markdown, to_markdown


# The keys of a report that describe the run rather than a measured section (never merged from an earlier run).
REPORT_METADATA = (
    "preset",
    "model",
    "settings",
    "machine",
    "load_average_start",
    "load_average_end",
    "started",
    "flops",
    "parameters",
    "total_seconds",
    "goals",
    "merged_from",
    "section_runs",
)
# Sections whose workers write into the run's temporary folder.
_TMP_SECTIONS = ("detect", "int8", "int8_speed", "backends")


def _spawn(job: str, preset: str, threads: int | None, log, **kwargs) -> dict:
    """Run the worker `job` in a fresh process: its result, or `{"error": ...}` (its stderr goes to `log`)."""
    command = [
        sys.executable,
        "-m",
        worker.__name__,
        job,
        "--preset",
        preset,
        "--kwargs",
        json.dumps(kwargs),
    ]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    log.write(
        f"### worker {job} {kwargs} rc={proc.returncode} ({time.perf_counter() - start:.0f} s)\n{proc.stderr[-4000:]}\n"
    )
    log.flush()
    for line in proc.stdout.splitlines():
        if line.startswith(worker.RESULT_TAG):
            result = json.loads(line[len(worker.RESULT_TAG) :])
            result["wall_seconds"] = time.perf_counter() - start
            return result
    return {"error": f"worker {job} failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}"}


def machine_info() -> dict:
    """CPU model and SIMD flags, core and thread counts, torch/Python versions, the CUDA device if any."""
    import torch

    from aaclip_hf.runtime.cpu import SIMD_FLAGS, cpu_flags

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    flags = cpu_flags()
    simd = [name for name in SIMD_FLAGS if name in flags]
    return {
        "cpu": cpu,
        "simd": simd,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def select_sections(only: str | None) -> list[str] | None:
    """`--only`'s comma-separated sections (group names such as `runtime` expanded); None = every section."""
    if not only:
        return None
    names = [part for name in only.split(",") for part in SECTION_GROUPS.get(name.strip(), (name.strip(),))]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise BadInputError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}", field="--only")
    return names


def _jobs(sections: list[str]) -> list[tuple[str, str, dict]]:
    """(worker, report key, keyword arguments) per job, in the sections' order."""
    jobs: list[tuple[str, str, dict]] = []
    for section in sections:
        if section == "vision":
            jobs += [("vision", "vision_sdpa", {"attn": "sdpa"}), ("vision", "vision_eager", {"attn": "eager"})]
        elif section == "inference_only":
            jobs += [
                ("save", "save", {}),
                ("load", "load_full", {"name": "full"}),
                ("load", "load_inference_only", {"name": "inference_only"}),
            ]
        elif section == "stage2":
            jobs += [
                ("stage2", "stage2_plain", {"checkpointing": False}),
                ("stage2", "stage2_checkpointing", {"checkpointing": True}),
            ]
        elif section == "first_call":
            jobs += [
                ("first_call", "first_call_default", {"tuned": False}),
                ("first_call", "first_call_tuned", {"tuned": True}),
            ]
        elif section in _TMP_SECTIONS:
            jobs.append((section, section, {"tmp": None}))
        else:
            jobs.append((section, section, {}))
    return jobs


def _merge_previous(report: dict, previous: dict, measured: set[str]) -> None:
    """Keep the earlier report's sections this run does not measure, with the run each came from."""
    kept = [key for key in previous if key not in REPORT_METADATA and key not in measured]
    report.update({key: previous[key] for key in kept})
    origins = previous.get("section_runs") or {}
    report["section_runs"] = {key: origins.get(key, previous.get("started")) for key in kept}
    report["merged_from"] = {
        "started": previous.get("started"),
        "sections": kept,
        "load_average_start": previous.get("load_average_start"),
        "load_average_end": previous.get("load_average_end"),
        "total_seconds": previous.get("total_seconds"),
        "machine": previous.get("machine"),
    }


def _report_header(preset_name: str) -> dict[str, Any]:
    """What a report says before any job ran: preset, machine, analytic FLOPs and parameter counts."""
    from aaclip_hf.runtime.flops import parameter_bytes, text_anchor_flops, vision_forward_flops

    preset = PRESETS[preset_name]
    config = preset_config(preset)
    return {
        "preset": preset_name,
        "model": preset["model_name"],
        "settings": preset,
        "machine": machine_info(),
        "load_average_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "flops": {
            "vision_forward_per_image": vision_forward_flops(config).to_dict(),
            "text_anchors_per_class_77_tokens": text_anchor_flops(config).to_dict(),
        },
        "parameters": parameter_bytes(config),
    }


def run_benchmarks(
    preset_name: str, output: Path, only: list[str] | None = None, threads: int | None = None, merge: bool = False
) -> dict:
    """Run the sections (all, or `only`) of a preset, one worker process per job; the report goes to `output`."""
    from tqdm.auto import tqdm

    output.mkdir(parents=True, exist_ok=True)
    sections = [s for s in SECTIONS if not only or s in only]
    report = _report_header(preset_name)
    start = time.perf_counter()
    jobs = _jobs(sections)
    previous_path = output / "report.json"
    if merge and previous_path.is_file():
        previous = json.loads(previous_path.read_text())
        if previous.get("preset") == preset_name:
            measured = {key for _, key, _ in jobs} | ({"peak_end"} if "peak" in sections else set())
            _merge_previous(report, previous, measured)
    with tempfile.TemporaryDirectory(prefix="aaclip-bench-") as tmp, open(output / "bench.log", "w") as log:
        for job, key, kwargs in tqdm(jobs, desc=f"aaclip bench ({preset_name})", unit="job"):
            if job in ("save", "load") or "tmp" in kwargs:
                kwargs = {**kwargs, "tmp": tmp}
            report[key] = _spawn(job, preset_name, threads, log, **kwargs)
            _write(report, output, start)  # partial report after every job
        if "peak" in sections:  # the attainable peak again at the end: the machine's load may have changed
            report["peak_end"] = _spawn("peak", preset_name, threads, log)
    _write(report, output, start)
    return report


def _write(report: dict, output: Path, start: float) -> None:
    report["total_seconds"] = time.perf_counter() - start
    report["load_average_end"] = os.getloadavg()
    report["goals"] = evaluate_goals(report)
    (output / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (output / "report.md").write_text(to_markdown(report))


def render(output: Path) -> Path:
    """Rewrite `report.md` (and the goals in `report.json`) from `output/report.json`; returns report.md's path."""
    report = json.loads((output / "report.json").read_text())
    report["goals"] = evaluate_goals(report)
    (output / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (output / "report.md").write_text(to_markdown(report))
    return output / "report.md"


def run_gpu(output: Path, batches: list[int], device: str = "cuda", preset: str = "full") -> int:
    """The GPU section in one report file, `OUTPUT/report_gpu.md` (tables + raw JSON). Without CUDA (and
    `device="cuda"`) it prints "no CUDA GPU, skipped" and returns 0; `device="cpu"` is a dry run of the same code."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU, skipped")
        return 0
    output.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aaclip-gpu-") as tmp, open(output / "bench_gpu.log", "w") as log:
        gpu = _spawn("gpu", preset, None, log, batches=batches, device=device, tmp=tmp)
    text = (
        f"# AA-CLIP GPU report ({preset} preset: {PRESETS[preset]['model_name']}, random weights)\n\n"
        f"Started {started}, {time.perf_counter() - start:.0f} s in all (`bash benchmarks/gpu.sh`).\n\n"
        + gpu_markdown(gpu)
        + "\n## Raw numbers\n\n```json\n"
        + json.dumps(gpu, indent=2, default=str)
        + "\n```\n"
    )
    (output / "report_gpu.md").write_text(text)
    print(text)
    return 0 if "error" not in gpu else 1

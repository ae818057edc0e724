"""Workers that measure the runtime: start-up (`aaclip --help`/`--version` and `import aaclip_hf` against
transformers' own imports), the first call against the steady state, and `aaclip detect` from process start to exit
against the fp32 floor, phase by phase. Each runs in its own process. (int8, bf16 and the backends:
`workers_int8.py`.)"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

from .common import preset_config, random_model
from .workers_model import matmul_peak


def startup_commands() -> dict[str, list[str]]:
    """The start-up commands, each a fresh interpreter: the `aaclip` console script as users run it, the package
    import, and what they are compared with (an empty interpreter, a bare transformers import, and the transformers
    CLIP classes the package registers beside)."""
    script = Path(sys.executable).with_name("aaclip")
    aaclip = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "import sys; from aaclip_hf.cli import main; sys.exit(main())"]
    )
    python = [sys.executable, "-c"]
    return {
        "python": [*python, "pass"],
        "import transformers": [*python, "import transformers"],
        "import CLIP classes": [
            *python,
            "from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer",
        ],
        "import aaclip_hf": [*python, "import aaclip_hf"],
        "aaclip --help": [*aaclip, "--help"],
        "aaclip --version": [*aaclip, "--version"],
    }


def worker_startup(preset: dict) -> dict:
    """Each start-up command `rounds` times, the commands alternating round by round so a change of load hits all
    of them alike; the median and best wall seconds per command (process start to exit)."""
    import statistics

    commands = startup_commands()
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(preset["startup"]["rounds"]):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
    return {
        "rounds": preset["startup"]["rounds"],
        "seconds": seconds,
        "median_seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "best_seconds": {name: min(values) for name, values in seconds.items()},
    }


def worker_first_call(preset: dict, tuned: bool) -> dict:
    """Batch-1 forwards in a fresh process, one after the other: the first call against the steady state, with
    or without `tune_cpu_runtime` (glibc keeps freed activations; see aaclip_hf/runtime/cpu.py)."""
    import statistics

    import torch

    from aaclip_hf.runtime.cpu import tune_cpu_runtime

    tuning = tune_cpu_runtime(torch.get_num_threads()).to_dict() if tuned else None
    config = preset_config(preset, include_text_model=False)
    model = random_model(config)
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    seconds, cpu_seconds, page_faults = [], [], []
    with torch.inference_mode():
        for _ in range(preset["first_call"]["calls"]):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            cpu = time.process_time()
            start = time.perf_counter()
            model(pixels)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu)
            page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    steady = statistics.median(seconds[1:])
    steady_cpu = statistics.median(cpu_seconds[1:])
    # CPU time (user + sys of all threads) barely depends on how many other processes share the cores; wall time
    # does. Minor page faults count the pages the allocator had to map (and the kernel to zero) afresh.
    return {
        "tuned": tuned,
        "tuning": tuning,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "minor_page_faults": page_faults,
        "first": seconds[0],
        "steady": steady,
        "first_over_steady": seconds[0] / steady,
        "first_cpu": cpu_seconds[0],
        "steady_cpu": steady_cpu,
        "first_over_steady_cpu": cpu_seconds[0] / steady_cpu,
    }


def _detect_inputs(preset: dict, config, tmp: str) -> tuple[Path, Path, int]:
    """A saved random-weight model folder, a folder of random PNGs, and the batch size `aaclip detect` picks."""
    import numpy as np
    from PIL import Image

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.runtime.batching import choose_batch_size

    spec = preset["detect"]
    folder = Path(tmp) / "detect_model"
    model = random_model(config)
    model.save_pretrained(folder)
    AAClipProcessor.for_model(config).save_pretrained(folder)
    batch = choose_batch_size(config, "cpu", num_images=spec["num_images"])
    del model
    images = Path(tmp) / "detect_images"
    images.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(spec["num_images"]):
        pixels = rng.integers(0, 256, (spec["height"], spec["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i:03d}.png")
    return folder, images, batch


def _profiled_detect(folder: Path, images: Path, tmp: str, label: str, flags: list[str], env: dict) -> dict:
    """One `aaclip detect` process under the phase profiler (`detect_profile.py`): wall time from before the process
    starts to after it exits, its CPU time, and the seconds per phase."""
    import json

    from .detect_phases import summarise

    result = Path(tmp) / f"profile-{label}.json"
    command = [
        sys.executable,
        "-m",
        "aaclip_hf.benchmark.detect_profile",
        str(result),
        "--",
        "detect",
        str(images),
        "--model",
        str(folder),
        "--output",
        str(Path(tmp) / f"detect_out_{label}"),
        "--device",
        "cpu",
        "--no-progress",
        *flags,
    ]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"aaclip detect {' '.join(flags)} failed: {proc.stderr[-2000:]}")
    summary = summarise(json.loads(result.read_text()), start, end)
    summary["cpu_seconds"] = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    summary["flags"] = flags
    return summary


def worker_detect(preset: dict, tmp: str) -> dict:
    """`aaclip detect` over N images, each run a fresh process from start to exit (imports, loading, decoding,
    overlays and writing included), against the fp32 floor N x FLOPs / matmul peak (the peak measured in this worker
    before and after the runs, the higher counting). Runs: fp32 with the default flags, and each of `variants` (extra
    flags, e.g. `--quantize int8`): first with an empty cache (the first run's export and quantisation), then
    `rounds` rounds alternating all of them with warm caches. Every run is profiled by phase."""
    import os
    import statistics

    from aaclip_hf.runtime.flops import vision_forward_flops

    spec = preset["detect"]
    config = preset_config(preset, include_text_model=False)
    folder, images, batch = _detect_inputs(preset, config, tmp)
    env = {**os.environ, "AACLIP_CACHE": str(Path(tmp) / "detect_cache")}
    runs: dict[str, list[dict]] = {"fp32": []}
    first_runs: dict[str, dict] = {}
    peak = matmul_peak(preset)
    for label, flags in spec["variants"].items():
        first_runs[label] = _profiled_detect(folder, images, tmp, f"{label}-first", flags, env)
        runs[label] = []
    for index in range(spec["rounds"]):
        for label in runs:
            flags = [] if label == "fp32" else spec["variants"][label]
            runs[label].append(_profiled_detect(folder, images, tmp, f"{label}-{index}", flags, env))
    peak_after = matmul_peak(preset)
    flops = vision_forward_flops(config).total
    floor = spec["num_images"] * flops / (max(peak, peak_after) * 1e9)
    summary = {}
    for label, profiles in runs.items():
        walls = [profile["total_seconds"] for profile in profiles]
        best = profiles[walls.index(min(walls))]
        summary[label] = {
            "best": best,
            "wall_seconds": walls,
            "median_seconds": statistics.median(walls),
            "ratio_to_floor": best["total_seconds"] / floor,
        }
    for row in summary.values():
        row["speedup_vs_fp32"] = summary["fp32"]["best"]["total_seconds"] / row["best"]["total_seconds"]
    fp32 = summary["fp32"]["best"]
    overlays = fp32["main_thread_seconds"]["overlays"] + fp32["main_thread_seconds"]["png"]
    return {
        **{key: spec[key] for key in ("num_images", "height", "width", "rounds")},
        "batch_size_auto": batch,
        "peak_gflops_before": peak,
        "peak_gflops_after": peak_after,
        "flops_per_image": flops,
        "floor_seconds": floor,
        "floor_seconds_per_image": floor / spec["num_images"],
        "runs": summary,
        "first_runs": first_runs,
        "wall_seconds_process": fp32["total_seconds"],
        "seconds_per_image": fp32["total_seconds"] / spec["num_images"],
        "ratio_to_floor": summary["fp32"]["ratio_to_floor"],
        "overlay_and_writing_share": (overlays + fp32["main_thread_seconds"]["tables"]) / fp32["total_seconds"],
    }

"""Workers that measure the runtime: the first call against the steady state, `aaclip detect` against the fp32
floor, dynamic int8 (accuracy and speed) and the backends (eager, torch.compile, ONNX Runtime). Each runs in
its own process."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import preset_config, random_model, section_config
from .workers_model import matmul_peak


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


def worker_detect(preset: dict, tmp: str) -> dict:
    """`aaclip detect` over a folder of N images in a fresh process (start-up, loading, decoding, overlays
    included) against the fp32 floor N x FLOPs / matmul peak, the peak measured in this run just before."""
    from aaclip_hf.runtime.flops import vision_forward_flops

    spec = preset["detect"]
    config = preset_config(preset, include_text_model=False)
    folder, images, batch = _detect_inputs(preset, config, tmp)
    peak = matmul_peak(preset)
    command = [
        sys.executable,
        "-c",
        "import sys; from aaclip_hf.cli import main; sys.exit(main())",
        "detect",
        str(images),
        "--model",
        str(folder),
        "--output",
        str(Path(tmp) / "detect_out"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"aaclip detect failed: {proc.stderr[-2000:]}")
    peak_after = matmul_peak(preset)
    flops = vision_forward_flops(config).total
    per_image = wall / spec["num_images"]
    floor = flops / (max(peak, peak_after) * 1e9)
    return {
        **spec,
        "wall_seconds_process": wall,
        "cpu_seconds_process": cpu,
        "seconds_per_image": per_image,
        "batch_size_auto": batch,
        "peak_gflops_before": peak,
        "peak_gflops_after": peak_after,
        "floor_seconds_per_image": floor,
        "ratio_to_floor": per_image / floor,
    }


def _synthetic_eval_set(preset: dict, tmp: str, size: int):
    """The synthetic benchmark's test images at the model size: pixel values, masks, labels, class names."""
    import numpy as np
    from PIL import Image

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.data.readers import load_samples
    from aaclip_hf.data.synthetic import generate_synthetic_dataset

    spec = preset["int8"]
    root = generate_synthetic_dataset(
        Path(tmp) / "synthetic",
        classes=spec["classes"],
        image_size=size,
        n_train_good=1,
        n_test_good=spec["good"],
        n_test_defect_per_kind=spec["defects_per_kind"],
        defect_kinds=spec["kinds"],
        progress=False,
    )
    samples = load_samples(root, "test")
    processor = AAClipProcessor()
    processor.image_processor.size = {"height": size, "width": size}
    images = [Image.open(s.image_path).convert("RGB") for s in samples]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    masks = []
    for s in samples:
        if s.mask_path:
            mask = Image.open(s.mask_path).convert("L").resize((size, size), Image.NEAREST)
            masks.append(np.asarray(mask) > 0)
        else:
            masks.append(np.zeros((size, size), dtype=bool))
    return pixels, np.stack(masks), np.array([s.label for s in samples]), [s.class_name for s in samples]


def _int8_variants(base, cache: Path) -> tuple[dict, dict]:
    """fp32 and its int8 / ONNX copies (same weights), with the seconds each took to set up."""
    import copy

    from aaclip_hf.runtime.backends import apply_backend
    from aaclip_hf.runtime.quantize import quantize_dynamic_int8

    variants, setup = {"fp32": base}, {}
    start = time.perf_counter()
    variants["torch_int8"] = quantize_dynamic_int8(copy.deepcopy(base))
    setup["torch_int8"] = time.perf_counter() - start
    start = time.perf_counter()
    variants["onnx_fp32"] = apply_backend(copy.deepcopy(base), "onnx", cache_dir=cache)[0]
    setup["onnx_fp32"] = time.perf_counter() - start
    start = time.perf_counter()
    variants["onnx_int8"] = apply_backend(copy.deepcopy(base), "onnx", "int8", cache_dir=cache)[0]
    setup["onnx_int8"] = time.perf_counter() - start
    return variants, setup


def _int8_row(name: str, maps: dict, scores: dict, seconds: dict, cpu_seconds: dict, masks, labels, n: int) -> dict:
    """One path's speed and accuracy against fp32 on the same images."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    reference = maps["fp32"].ravel()
    flat = maps[name].ravel()
    return {
        "seconds_per_image": seconds[name] / n,
        "speedup_vs_fp32": seconds["fp32"] / seconds[name],
        "cpu_seconds_per_image": cpu_seconds[name] / n,
        "cpu_speedup_vs_fp32": cpu_seconds["fp32"] / cpu_seconds[name],
        "image_auroc": float(roc_auc_score(labels, scores[name])),
        "pixel_auroc": float(roc_auc_score(masks.ravel(), flat)),
        "max_abs_map_diff": float(np.abs(flat - reference).max()),
        "mean_abs_map_diff": float(np.abs(flat - reference).mean()),
        "map_correlation": float(np.corrcoef(flat, reference)[0, 1]),
        "map_range_fp32": float(reference.max() - reference.min()),
    }


def worker_int8(preset: dict, tmp: str) -> dict:
    """fp32 vs dynamic int8 (torch.ao and ONNX Runtime) on the same weights and the same synthetic test images,
    batch by batch side by side: s/image at the preset batch, map differences, image/pixel AUROC."""
    import numpy as np
    import torch

    config = section_config(preset, "int8")
    size = config.vision_config.image_size
    pixels, masks, labels, _names = _synthetic_eval_set(preset, tmp, size)
    variants, setup = _int8_variants(random_model(config), Path(tmp) / "onnx_cache")
    batch = preset["int8"]["batch"]
    seconds = dict.fromkeys(variants, 0.0)
    cpu_seconds = dict.fromkeys(variants, 0.0)
    maps = {name: [] for name in variants}
    scores = {name: [] for name in variants}
    with torch.inference_mode():
        for model in variants.values():  # warm-up (untimed): first-touch pages, ORT session set-up
            model(pixels[:batch])
        for first in range(0, len(pixels), batch):
            chunk = pixels[first : first + batch]
            for name, model in variants.items():  # interleaved: load changes hit every variant alike
                cpu, start = time.process_time(), time.perf_counter()
                out = model(chunk, output_size=size)
                seconds[name] += time.perf_counter() - start
                cpu_seconds[name] += time.process_time() - cpu
                maps[name].append(out.anomaly_map.float().numpy())
                scores[name].append(out.image_score.float().numpy())
    maps = {k: np.concatenate(v) for k, v in maps.items()}
    scores = {k: np.concatenate(v) for k, v in scores.items()}
    n = len(pixels)
    result: dict[str, Any] = {
        "image_size": size,
        "num_images": n,
        "batch_size": batch,
        "setup_seconds": setup,
        "num_pixels": int(masks.size),
        "anomalous_pixels": int(masks.sum()),
        "variants": {name: _int8_row(name, maps, scores, seconds, cpu_seconds, masks, labels, n) for name in variants},
    }
    for row in result["variants"].values():
        row["image_auroc_change_points"] = 100 * (row["image_auroc"] - result["variants"]["fp32"]["image_auroc"])
        row["pixel_auroc_change_points"] = 100 * (row["pixel_auroc"] - result["variants"]["fp32"]["pixel_auroc"])
    return result


def worker_int8_speed(preset: dict, tmp: str) -> dict:
    """int8 speed at the preset's full image size (ViT-L/14 518 px): fp32 eager, torch.ao int8 and ONNX Runtime
    int8 on the same weights, one warm-up call each, then `rounds` interleaved batches (best round counts)."""
    import copy

    import torch

    from aaclip_hf.runtime.backends import apply_backend
    from aaclip_hf.runtime.quantize import quantize_dynamic_int8

    spec = preset["int8_speed"]
    config = preset_config(preset, include_text_model=False)
    size = config.vision_config.image_size
    base = random_model(config)
    setup = {}
    start = time.perf_counter()
    torch_int8 = quantize_dynamic_int8(copy.deepcopy(base))
    setup["torch_int8"] = time.perf_counter() - start
    start = time.perf_counter()
    onnx_int8 = apply_backend(copy.deepcopy(base), "onnx", "int8", cache_dir=Path(tmp) / "onnx_cache")[0]
    setup["onnx_int8"] = time.perf_counter() - start
    variants = {"fp32": base, "torch_int8": torch_int8, "onnx_int8": onnx_int8}
    batch = spec["batch"]
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with torch.inference_mode():
        for model in variants.values():
            model(pixels[:1])  # warm-up (untimed)
        for _ in range(spec["rounds"]):
            for name, model in variants.items():
                cpu, start = time.process_time(), time.perf_counter()
                model(pixels)
                rounds[name].append((time.perf_counter() - start, time.process_time() - cpu))
    best = {name: min(values) for name, values in rounds.items()}
    return {
        "image_size": size,
        "batch_size": batch,
        "rounds": spec["rounds"],
        "setup_seconds": setup,
        "variants": {
            name: {
                "seconds_per_image": wall / batch,
                "cpu_seconds_per_image": cpu / batch,
                "speedup_vs_fp32": best["fp32"][0] / wall,
                "cpu_speedup_vs_fp32": best["fp32"][1] / cpu,
            }
            for name, (wall, cpu) in best.items()
        },
    }


def _backend_models(base, names: list[str], tmp: str, out: dict) -> dict:
    """Each backend applied to a copy of `base`; one that cannot run here is reported in `out`, not fatal."""
    import copy

    from aaclip_hf.runtime.backends import apply_backend

    models = {}
    for name in names:
        start = time.perf_counter()
        try:
            models[name] = apply_backend(copy.deepcopy(base), name, cache_dir=Path(tmp) / "onnx_cache")[0]
        except Exception as error:  # a backend that cannot run here is reported, not fatal
            out["backends"][name] = {"error": f"{type(error).__name__}: {error}"[:500]}
            continue
        out["backends"][name] = {"setup_seconds": time.perf_counter() - start, "batches": {}}
    return models


def _time_backends(models: dict, batch: int, size: int, repeats: int, out: dict) -> None:
    """At one batch size: each backend's first call on its own, then `repeats` interleaved rounds (best counts)."""
    import torch

    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for name, model in list(models.items()):
        try:
            start = time.perf_counter()
            model(pixels)
            out["backends"][name]["batches"][str(batch)] = {"first_call_seconds": time.perf_counter() - start}
        except Exception as error:
            out["backends"][name]["batches"][str(batch)] = {"error": f"{type(error).__name__}: {error}"[:500]}
            timings.pop(name)
    for _ in range(repeats):
        for name in timings:
            cpu, start = time.process_time(), time.perf_counter()
            models[name](pixels)
            timings[name].append((time.perf_counter() - start, time.process_time() - cpu))
    for name, rounds in timings.items():
        wall, cpu = min(rounds)
        out["backends"][name]["batches"][str(batch)].update(
            seconds_per_image=wall / batch, cpu_seconds_per_image=cpu / batch
        )


def worker_backends(preset: dict, tmp: str) -> dict:
    """Eager fp32 vs torch.compile vs ONNX Runtime: set-up (compile / export) time and s/image at each batch.

    Per backend and batch the first call is timed on its own (for compile it includes compiling that shape).
    The steady calls then run interleaved, `repeats` rounds of one call per backend, so load changes on a
    shared machine hit every backend alike; the best round counts."""
    import torch

    spec = preset["backends"]
    # A cold inductor cache, so the first calls of `compile` include its real compile time.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor_cache")
    config = section_config(preset, "backends")
    size = config.vision_config.image_size
    base = random_model(config)
    names = ["torch", "onnx"] + (["compile"] if spec.get("compile") else [])
    out: dict[str, Any] = {"batches": spec["batches"], "image_size": size, "repeats": spec["repeats"], "backends": {}}
    models = _backend_models(base, names, tmp, out)
    del base
    with torch.inference_mode():
        for batch in spec["batches"]:
            _time_backends(models, batch, size, spec["repeats"], out)
    eager = out["backends"].get("torch", {}).get("batches", {})
    for row in out["backends"].values():
        for batch, cell in row.get("batches", {}).items():
            if "seconds_per_image" in cell and "seconds_per_image" in eager.get(batch, {}):
                cell["speedup_vs_eager"] = eager[batch]["seconds_per_image"] / cell["seconds_per_image"]
                cell["cpu_speedup_vs_eager"] = eager[batch]["cpu_seconds_per_image"] / cell["cpu_seconds_per_image"]
    return out

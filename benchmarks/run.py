"""AA-CLIP performance benchmarks: one command, one report (markdown + JSON), everything side by side.

    aaclip bench [--quick] [--output benchmarks/results] [--only vision,stage2] [--threads N]
    python benchmarks/run.py ...                      (same, from a source checkout)
    python benchmarks/run.py --gpu ...                (CUDA section only; see benchmarks/gpu.sh)

Every measurement runs in its own subprocess (`--worker NAME`), so each starts from a clean
allocator and its peak memory is its own: the peak resident set (Linux `VmHWM`, reset through
`/proc/self/clear_refs` right before the measured region; `ru_maxrss` elsewhere) minus the
resident set just before it. Python-level tracing (tracemalloc) does not see torch's buffers.

Presets (`PRESETS`): `full` is the paper setting (ViT-L/14 at 518 px, fp32, random weights);
`quick` is a ViT-B/16-sized model at 224 px with fewer iterations (a smoke run in minutes).
Timings are reported, never asserted; the goals of issue 6 are checked in the report with the
reason and the remedy for each one missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "@@AACLIP_BENCH_RESULT@@"

VIT_L_518 = {}  # AAClipConfig() defaults: ViT-L/14 towers, vision at 518 px
VIT_B16_224 = {
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "projection_dim": 512},
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 16,
        "projection_dim": 512,
    },
    "projection_dim": 512,
    "feature_layers": [3, 6, 9, 12],
    "vision_adapter_layers": 3,
}

PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "model": VIT_L_518,
        "model_name": "ViT-L/14 @ 518 px (AAClipConfig() defaults)",
        "matmul_size": 4096,
        "matmul_repeats": 3,
        "vision_batches": [1, 4],
        "eager_batches": [1],
        "warmup": 1,
        "iterations": 1,
        # stage 1 at 224 px on 2 shared CPU cores (518 px is ~6x the vision work); the report predicts 518 from it
        "stage1": {"image_size": 224, "num_images": 2, "batch_size": 2, "epochs": 5},
        "stage2_batch": 2,
        "metrics": {"num_maps": 400, "size": 518, "check_f1": True},
        # issue 12 rows: kept short on 2 shared cores (each ViT-L/14 518 px forward is 7-30 s there)
        "first_call": {"calls": 3},
        "detect": {"num_images": 8, "height": 480, "width": 640},
        "int8": {
            "classes": ["bottle", "carpet"],
            "good": 3,
            "defects_per_kind": 1,
            "kinds": ["scratch", "hole", "stain"],
            "batch": 4,
            # ViT-L/14's towers (same GEMM shapes and depth) at 224 px: 6x fewer FLOPs, so the 4 paths x 12 images
            # fit in minutes on 2 shared cores; attention is 4 % of the FLOPs here against 18 % at 518 px.
            "image_size": 224,
        },
        "int8_speed": {"batch": 4, "rounds": 2},
        "backends": {"batches": [1, 4], "compile": True, "image_size": 224, "repeats": 2},
        "gpu": {"repeats": 5, "stage2_batch": 8, "stage2_steps": 30, "stage2_warmup_steps": 5, "stage2_lr": 5e-4},
    },
    "quick": {
        "model": VIT_B16_224,
        "model_name": "ViT-B/16-sized @ 224 px (quick preset)",
        "matmul_size": 1024,
        "matmul_repeats": 3,
        "vision_batches": [1, 2],
        "eager_batches": [1],
        "warmup": 1,
        "iterations": 1,
        "stage1": {"image_size": 224, "num_images": 4, "batch_size": 2, "epochs": 5},
        "stage2_batch": 2,
        "metrics": {"num_maps": 40, "size": 518, "check_f1": False},
        "first_call": {"calls": 3},
        "detect": {"num_images": 8, "height": 480, "width": 640},
        "int8": {
            "classes": ["bottle", "carpet"],
            "good": 4,
            "defects_per_kind": 1,
            "kinds": ["scratch", "hole", "stain", "crack"],
            "batch": 4,
        },
        "int8_speed": {"batch": 4, "rounds": 2},
        "backends": {"batches": [1, 4], "compile": True, "repeats": 2},
        "gpu": {"repeats": 5, "stage2_batch": 8, "stage2_steps": 30, "stage2_warmup_steps": 5, "stage2_lr": 5e-4},
    },
}
# A seconds-long smoke preset (tiny towers) that exercises every worker; used by the slow test.
PRESETS["smoke"] = {
    **PRESETS["quick"],
    "model": {
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 24,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
            "projection_dim": 24,
        },
        "projection_dim": 24,
        "feature_layers": [1, 2, 3, 4],
        "vision_adapter_layers": 2,
        "text_adapter_layers": 1,
    },
    "model_name": "tiny smoke-test towers @ 64 px",
    "gpu": {"repeats": 1, "stage2_batch": 2, "stage2_steps": 3, "stage2_warmup_steps": 1, "stage2_lr": 5e-4},
    "stage1": {"image_size": 64, "num_images": 4, "batch_size": 2, "epochs": 5},
    "metrics": {"num_maps": 4, "size": 64, "check_f1": True},
}
# Run order: the headline numbers first, so a partial report (written after every job) has them.
SECTIONS = (
    "peak",
    "vision",
    "inference_only",
    "stage2",
    "stage1",
    "metrics",
    "first_call",
    "detect",
    "int8",
    "int8_speed",
    "backends",
)
# `--only` shorthands: the rows of issue 12 (runtime: allocator, batching, int8, backends).
SECTION_GROUPS = {"runtime": ("first_call", "detect", "int8", "int8_speed", "backends")}


# ----------------------------------------------------------------------------------------------
# memory: peak resident set of the measured region
# ----------------------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak RSS of a code region: resets the kernel's high-water mark on entry where Linux allows it."""

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.exact = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.exact = True
        except OSError:
            pass
        self.before = _proc_status_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc) -> None:
        peak = _proc_status_bytes("VmHWM") if self.exact else None
        self.peak = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta = max(self.peak - self.before, 0)

    def to_dict(self) -> dict:
        return {"rss_before": self.before, "peak_rss": self.peak, "peak_delta": self.delta, "exact_reset": self.exact}


# ----------------------------------------------------------------------------------------------
# workers (each runs in its own process)
# ----------------------------------------------------------------------------------------------


def _config(preset: dict, **overrides):
    from aaclip_hf import AAClipConfig

    fields = json.loads(json.dumps(preset["model"]))
    for key in ("text_config", "vision_config"):
        if key in overrides:
            fields[key] = {**fields.get(key, {}), **overrides.pop(key)}
    fields.update(overrides)
    return AAClipConfig(**fields)


def _model(config, seed: int = 0):
    import torch

    from aaclip_hf import AAClipModel

    torch.manual_seed(seed)
    model = AAClipModel(config).eval()
    model.init_adapter_weights(seed=seed)
    anchors = torch.nn.functional.normalize(torch.randn(1, config.projection_dim, 2), dim=1)
    model.store_text_anchors(["object"], anchors)
    return model


def _timed(fn, warmup: int, iterations: int) -> tuple[float, Any]:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iterations):
        result = fn()
    return (time.perf_counter() - start) / iterations, result


def worker_peak(preset: dict) -> dict:
    """Best-of-N fp32 `torch.matmul` throughput on square matrices: this machine's attainable peak."""
    import torch

    n = preset["matmul_size"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b), 0, 1)[0] for _ in range(preset["matmul_repeats"]))
    return {"matrix_size": n, "seconds": best, "gflops": 2 * n**3 / best / 1e9}


def worker_vision(preset: dict, attn: str) -> dict:
    """Inference forward (stored anchors) at each batch size; with sdpa also the anchors-recomputed forward."""
    import torch

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.runtime.flops import text_anchor_flops, vision_forward_flops

    config = _config(preset, include_text_model=(attn == "sdpa"))
    with PeakMemory() as build_memory:
        build_start = time.perf_counter()
        model = _model(config)
        build_seconds = time.perf_counter() - build_start
    model.set_attn_implementation(attn)
    flops_per_image = vision_forward_flops(config).total
    size = config.vision_config.image_size
    batches = preset["vision_batches"] if attn == "sdpa" else preset["eager_batches"]
    out: dict[str, Any] = {
        "attn": attn,
        "build_seconds": build_seconds,
        "build_memory": build_memory.to_dict(),
        "batches": {},
    }
    with torch.inference_mode():
        for batch in batches:
            pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            with PeakMemory() as memory:
                seconds, _ = _timed(lambda pixels=pixels: model(pixels), preset["warmup"], preset["iterations"])
            out["batches"][str(batch)] = {
                "seconds_per_batch": seconds,
                "seconds_per_image": seconds / batch,
                "gflops_per_second": flops_per_image * batch / seconds / 1e9,
                "memory": memory.to_dict(),
            }
        if attn == "sdpa":
            processor = AAClipProcessor.for_model(model.config)
            pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
            anchors = model.compute_text_anchors(["bottle"], processor)
            model.store_text_anchors(["bottle"], anchors)

            def recompute():
                fresh = model.compute_text_anchors(["bottle"], processor)
                return model(pixels, text_anchors=fresh)

            cached_seconds, cached = _timed(
                lambda: model(pixels, class_names="bottle"), preset["warmup"], preset["iterations"]
            )
            recompute_seconds, recomputed = _timed(recompute, preset["warmup"], preset["iterations"])
            tokens = processor.tokenize_prompts(["bottle"])["input_ids"].shape[1]
            out["anchors"] = {
                "seconds_cached": cached_seconds,
                "seconds_recomputed": recompute_seconds,
                "ratio": recompute_seconds / cached_seconds,
                "flops_cached": flops_per_image,
                "flops_recomputed": flops_per_image + text_anchor_flops(config, context_length=tokens).total,
                "flops_recomputed_reference_77_tokens": flops_per_image + text_anchor_flops(config).total,
                "prompt_tokens": tokens,
                "max_abs_diff": float((cached.anomaly_map_grid - recomputed.anomaly_map_grid).abs().max()),
            }
    return out


def worker_save(preset: dict, tmp: str) -> dict:
    """Full and inference-only models: parameter counts, and their save_pretrained folders for the load workers."""
    from aaclip_hf import AAClipProcessor
    from aaclip_hf.runtime.flops import parameter_bytes

    config = _config(preset)
    model = _model(config)
    processor = AAClipProcessor.for_model(config)
    model.update_text_anchors(processor, ["object", "bottle"])
    lean = model.to_inference_only()
    out = {"meta_device_counts": parameter_bytes(config)}
    for name, m in (("full", model), ("inference_only", lean)):
        folder = Path(tmp) / name
        m.save_pretrained(folder)
        processor.save_pretrained(folder)
        out[name] = {
            "parameters": sum(p.numel() for p in m.parameters()),
            "folder_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
        }
    out["parameter_reduction"] = 1 - out["inference_only"]["parameters"] / out["full"]["parameters"]
    return out


def worker_load(preset: dict, tmp: str, name: str) -> dict:
    """Load time and memory of a saved folder; the inference-only one then runs through the pipeline."""
    import numpy as np
    import torch
    from PIL import Image

    from aaclip_hf import AAClipModel, AAClipProcessor

    folder = Path(tmp) / name
    with PeakMemory() as memory:
        start = time.perf_counter()
        model = AAClipModel.from_pretrained(folder).eval()
        seconds = time.perf_counter() - start
        # safetensors are memory-mapped: touch every weight so the pages really count (what a first forward does)
        with torch.no_grad():
            checksum = sum(float(p.double().sum()) for p in model.parameters())
        touched = time.perf_counter() - start
    out = {
        "load_seconds": seconds,
        "load_and_touch_seconds": touched,
        "memory": memory.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weight_checksum": checksum,
    }
    if name == "inference_only":
        processor = AAClipProcessor.from_pretrained(folder)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
        start = time.perf_counter()
        try:
            from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline

            detector = AAClipAnomalyDetectionPipeline(model=model, processor=processor, device=torch.device("cpu"))
            result = detector(image, class_name="bottle")
            out["ran_through"] = "pipeline"
        except ImportError:
            with torch.inference_mode():
                outputs = model(processor(images=[image], return_tensors="pt")["pixel_values"], class_names="bottle")
            result = processor.post_process_anomaly_detection(outputs, target_sizes=[(300, 400)])[0]
            out["ran_through"] = "model + processor"
        out["run_seconds"] = time.perf_counter() - start
        out["anomaly_map_shape"] = list(np.asarray(result["anomaly_map"]).shape)
        out["score"] = float(result["score"])
    return out


def worker_metrics(preset: dict) -> dict:
    """Pixel metrics of one MVTec-sized class: ours (AUROC+AP+F1-max+AUPRO) vs sklearn (AUROC+AP)."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import bench_metrics

    with PeakMemory() as memory:
        out = bench_metrics.run(**preset["metrics"])
    out["memory"] = memory.to_dict()
    return out


def _random_masks(num: int, size: int, seed: int):
    """Rectangular defects on the odd-indexed images, none on the even ones."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(num, size, size)
    for i in range(1, num, 2):
        y, x = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        h, w = torch.randint(size // 8, size // 3, (2,), generator=generator).tolist()
        masks[i, y : y + h, x : x + w] = 1.0
    return masks


def worker_stage1(preset: dict) -> dict:
    """Stage 1 (text) for E epochs on N images: frozen DPAM features recomputed every step vs cached."""
    import torch

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.training import Stage1FeatureCache, dpam_features, stage1_loss
    from aaclip_hf.training.trainer import set_trainable, stage_parameters

    spec = preset["stage1"]
    size = spec["image_size"]
    config = _config(preset, vision_config={"image_size": size})
    model = _model(config)
    processor = AAClipProcessor.for_model(config)
    params = stage_parameters(model, "text")
    set_trainable(model, params)
    initial = [p.detach().clone() for p in params]
    n, batch = spec["num_images"], spec["batch_size"]
    pixels = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = _random_masks(n, size, seed=1)
    labels = (masks.flatten(1).amax(1) > 0).long()
    classes = ["bottle"]

    def train(cache: Stage1FeatureCache | None) -> tuple[float, list[float], dict]:
        with torch.no_grad():
            for p, p0 in zip(params, initial):
                p.copy_(p0)
        optimizer = torch.optim.Adam(params, lr=1e-5, betas=(0.5, 0.999))
        losses, vision_seconds = [], 0.0
        with PeakMemory() as memory:
            start = time.perf_counter()
            for _epoch in range(spec["epochs"]):
                for first in range(0, n, batch):
                    index = list(range(first, min(first + batch, n)))
                    t0 = time.perf_counter()
                    if cache is not None and cache.has_all(index):
                        feats = cache.get(index, "cpu", torch.float32)
                    else:
                        with torch.no_grad():
                            feats = dpam_features(model, pixels[index])
                        if cache is not None:
                            cache.put(index, feats)
                    vision_seconds += time.perf_counter() - t0
                    anchors = model.compute_text_anchors(classes, processor)
                    sample_anchors = anchors[[0] * len(index)]
                    maps = model.training_maps(feats.patch_embeds[-1:], sample_anchors, (size, size))
                    terms = stage1_loss(
                        maps,
                        masks[index],
                        torch.ones(len(index), dtype=torch.bool),
                        sample_anchors,
                        image_embeds=feats.image_embeds,
                        labels=labels[index],
                    )
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    optimizer.step()
                    losses.append(float(terms["loss"]))
            seconds = time.perf_counter() - start
        return seconds, losses, {"vision_seconds": vision_seconds, "memory": memory.to_dict()}

    # Untimed warm-up of both paths (first-touch page faults and kernel setup would be charged to the first run).
    with torch.no_grad():
        dpam_features(model, pixels[:batch])
    model.compute_text_anchors(classes, processor).sum().backward()
    recompute_seconds, recompute_losses, recompute_info = train(None)
    cached_seconds, cached_losses, cached_info = train(Stage1FeatureCache())
    steps = len(recompute_losses)
    text_seconds_per_step = (cached_seconds - cached_info["vision_seconds"]) / steps
    vision_seconds_per_image = recompute_info["vision_seconds"] / (spec["epochs"] * n)
    out = {
        **spec,
        "steps": steps,
        "seconds_recomputed": recompute_seconds,
        "seconds_cached": cached_seconds,
        "speedup": recompute_seconds / cached_seconds,
        "dpam_seconds_per_image": vision_seconds_per_image,
        "text_seconds_per_step": text_seconds_per_step,
        "max_abs_loss_diff": max(abs(a - b) for a, b in zip(recompute_losses, cached_losses)),
        "memory_recomputed": recompute_info["memory"],
        "memory_cached": cached_info["memory"],
    }
    # The same loop at the paper's 518 px, predicted from the measured parts: DPAM time scales with its FLOPs.
    from aaclip_hf.runtime.flops import vision_forward_flops

    scale = vision_forward_flops(_config(preset)).total / vision_forward_flops(config).total
    v518 = vision_seconds_per_image * scale * n
    e = spec["epochs"]
    out["predicted_speedup_at_default_size"] = (
        e * (v518 + text_seconds_per_step * steps / e) / (v518 + text_seconds_per_step * steps)
    )
    out["flop_scale_to_default_size"] = scale
    return out


def worker_stage2(preset: dict, checkpointing: bool) -> dict:
    """One stage-2 (vision) optimizer step at the preset size, batch 2: time, peak memory, gradient check."""
    import warnings

    import torch

    from aaclip_hf.training import stage2_loss
    from aaclip_hf.training.trainer import set_trainable, stage_parameters

    config = _config(preset, include_text_model=False)
    model = _model(config)
    params = stage_parameters(model, "vision")
    set_trainable(model, params)
    if checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable()
            else:
                model.gradient_checkpointing_enable()
    model.train()
    batch, size = preset["stage2_batch"], config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = _random_masks(batch, size, seed=1)
    labels = (masks.flatten(1).amax(1) > 0).long()
    anchors = model.anchors_for(["object"] * batch)
    optimizer = torch.optim.Adam(params, lr=5e-4, betas=(0.5, 0.999))

    def step():
        patch_embeds, image_embeds = model.get_vision_features(pixels)
        maps = model.training_maps(patch_embeds, anchors, (size, size))
        loss = stage2_loss(maps, masks, torch.ones(batch, dtype=torch.bool), image_embeds, anchors, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)))
        optimizer.step()
        return float(loss), grad_norm

    state = {id(p): p.detach().clone() for p in params}
    # The memory region includes the untimed warm-up step: freed pages may stay resident, and a baseline taken
    # after the warm-up would hide the step's activations.
    with PeakMemory() as memory:
        for _ in range(preset["warmup"]):  # untimed; the weights are then put back so the timed step is the first
            step()
        with torch.no_grad():
            for p in params:
                p.copy_(state[id(p)])
        optimizer = torch.optim.Adam(params, lr=5e-4, betas=(0.5, 0.999))
        seconds, (loss, grad_norm) = _timed(step, 0, 1)
    return {
        "checkpointing": checkpointing,
        "batch_size": batch,
        "seconds": seconds,
        "loss": loss,
        "grad_norm": grad_norm,
        "trainable_parameters": sum(p.numel() for p in params),
        "memory": memory.to_dict(),
    }


def worker_gpu(
    preset: dict, batches: list[int], device: str = "cuda", steps: int | None = None, tmp: str | None = None
) -> dict:
    """GPU readiness (`benchmarks/gpu.sh`): forward throughput in fp32/bf16/fp16 per batch size, and a stage-2
    run (real loss, synthetic defect images with exact masks, bf16 autocast where supported) with its loss curve,
    peak memory and images/s. `device="cpu"` runs the same code as a dry run (tests, smoke preset)."""
    import numpy as np
    import torch
    from PIL import Image

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.data.readers import load_samples
    from aaclip_hf.data.synthetic import generate_synthetic_dataset
    from aaclip_hf.runtime.devices import dtype_supported
    from aaclip_hf.runtime.flops import vision_forward_flops
    from aaclip_hf.training import stage2_loss
    from aaclip_hf.training.trainer import set_trainable, stage_parameters

    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def reset_peak():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def peak():
        return torch.cuda.max_memory_allocated(device) if cuda else None

    spec = preset["gpu"]
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu (dry run)",
        "torch": torch.__version__,
        "forward": {},
        "stage2": {},
    }
    config = _config(preset, include_text_model=False)
    flops = vision_forward_flops(config).total
    base = _model(config).to(device)
    size = config.vision_config.image_size
    for dtype_name in ("float32", "bfloat16", "float16"):
        dtype = getattr(torch, dtype_name)
        if not dtype_supported(dtype, device):
            out["forward"][dtype_name] = {"error": f"{dtype_name} not supported on {device}"}
            continue
        model = base.to(dtype=dtype)
        for batch in batches:
            pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            reset_peak()
            try:
                with torch.inference_mode():
                    model(pixels)  # warm-up: kernel selection, allocator
                    sync()
                    start = time.perf_counter()
                    for _ in range(spec["repeats"]):
                        model(pixels)
                    sync()
                seconds = (time.perf_counter() - start) / spec["repeats"]
                out["forward"][f"{dtype_name}/{batch}"] = {
                    "seconds_per_image": seconds / batch,
                    "images_per_second": batch / seconds,
                    "tflops": flops * batch / seconds / 1e12,
                    "peak_allocated": peak(),
                }
            except torch.OutOfMemoryError:
                out["forward"][f"{dtype_name}/{batch}"] = {"error": "out of memory"}
            del pixels
    model = base.to(dtype=torch.float32)
    # Stage 2 on the synthetic benchmark's defect images (exact masks), cycling through them.
    batch, steps = spec["stage2_batch"], steps or spec["stage2_steps"]
    root = generate_synthetic_dataset(
        Path(tmp) / "gpu_synthetic",
        classes=["bottle", "carpet"],
        image_size=size,
        n_train_good=1,
        n_test_good=batch // 2,
        n_test_defect_per_kind=1,
        progress=False,
    )
    samples = load_samples(root, "test")
    processor = AAClipProcessor()
    processor.image_processor.size = {"height": size, "width": size}
    pixels_all = processor(images=[Image.open(s.image_path).convert("RGB") for s in samples], return_tensors="pt")[
        "pixel_values"
    ]
    masks_all = torch.from_numpy(
        np.stack(
            [
                np.asarray(Image.open(s.mask_path).convert("L").resize((size, size), Image.NEAREST)) > 0
                if s.mask_path
                else np.zeros((size, size), dtype=bool)
                for s in samples
            ]
        )
    ).float()
    params = stage_parameters(model, "vision")
    set_trainable(model, params)
    model.train()
    autocast = cuda and torch.cuda.is_bf16_supported()
    optimizer = torch.optim.Adam(params, lr=spec["stage2_lr"], betas=(0.5, 0.999))
    losses, times = [], []
    reset_peak()
    for step in range(steps):
        index = [(step * batch + i) % len(samples) for i in range(batch)]
        pixels = pixels_all[index].to(device)
        masks = masks_all[index].to(device)
        labels = (masks.flatten(1).amax(1) > 0).long()
        anchors = model.anchors_for(["object"] * batch)
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            patch_embeds, image_embeds = model.get_vision_features(pixels)
        maps = model.training_maps([f.float() for f in patch_embeds], anchors, (size, size))
        loss = stage2_loss(
            maps, masks, torch.ones(batch, dtype=torch.bool, device=device), image_embeds.float(), anchors, labels
        )["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    steady = times[min(spec["stage2_warmup_steps"], len(times) - 1) :]
    out["stage2"] = {
        "batch_size": batch,
        "steps": steps,
        "precision": "bf16 autocast" if autocast else "fp32",
        "loss_curve": losses,
        "step_seconds": times,
        "images_per_second": batch * len(steady) / sum(steady),
        "peak_allocated": peak(),
        "num_images": len(samples),
    }
    return out


# ----------------------------------------------------------------------------------------------
# issue 12: first call vs steady state, detect against the floor, int8, backends
# ----------------------------------------------------------------------------------------------


def _matmul_peak(preset: dict) -> float:
    """The fp32 matmul peak measured inside the calling worker (GFLOP/s), so a floor is from the same run."""
    return worker_peak(preset)["gflops"]


def _section_config(preset: dict, section: str):
    """The preset's inference-only config, at the section's own `image_size` where it sets one."""
    size = preset[section].get("image_size")
    return _config(preset, include_text_model=False, **({"vision_config": {"image_size": size}} if size else {}))


def worker_first_call(preset: dict, tuned: bool) -> dict:
    """Batch-1 forwards in a fresh process, one after the other: the first call against the steady state, with
    or without `tune_cpu_runtime` (glibc keeps freed activations; see aaclip_hf/runtime/cpu.py)."""
    import statistics

    import torch

    from aaclip_hf.runtime.cpu import tune_cpu_runtime

    tuning = tune_cpu_runtime(torch.get_num_threads()).to_dict() if tuned else None
    config = _config(preset, include_text_model=False)
    model = _model(config)
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


def worker_detect(preset: dict, tmp: str) -> dict:
    """`aaclip detect` over a folder of N images in a fresh process (start-up, loading, decoding, overlays
    included) against the fp32 floor N x FLOPs / matmul peak, the peak measured in this run just before."""
    import numpy as np
    from PIL import Image

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.runtime.batching import choose_batch_size
    from aaclip_hf.runtime.flops import vision_forward_flops

    spec = preset["detect"]
    config = _config(preset, include_text_model=False)
    folder = Path(tmp) / "detect_model"
    model = _model(config)
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
    peak = _matmul_peak(preset)
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
    proc = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO_ROOT))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"aaclip detect failed: {proc.stderr[-2000:]}")
    peak_after = _matmul_peak(preset)
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


def worker_int8(preset: dict, tmp: str) -> dict:
    """fp32 vs dynamic int8 (torch.ao and ONNX Runtime) on the same weights and the same synthetic test images,
    batch by batch side by side: s/image at the preset batch, map differences, image/pixel AUROC."""
    import copy

    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from aaclip_hf.runtime.backends import apply_backend
    from aaclip_hf.runtime.quantize import quantize_dynamic_int8

    config = _section_config(preset, "int8")
    size = config.vision_config.image_size
    pixels, masks, labels, _names = _synthetic_eval_set(preset, tmp, size)
    base = _model(config)
    cache = Path(tmp) / "onnx_cache"
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
        "variants": {},
    }
    reference = maps["fp32"].ravel()
    for name in variants:
        flat = maps[name].ravel()
        row = {
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
        result["variants"][name] = row
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
    config = _config(preset, include_text_model=False)
    size = config.vision_config.image_size
    base = _model(config)
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


def worker_backends(preset: dict, tmp: str) -> dict:
    """Eager fp32 vs torch.compile vs ONNX Runtime: set-up (compile / export) time and s/image at each batch.

    Per backend and batch the first call is timed on its own (for compile it includes compiling that shape).
    The steady calls then run interleaved, `repeats` rounds of one call per backend, so load changes on a
    shared machine hit every backend alike; the best round counts."""
    import copy

    import torch

    from aaclip_hf.runtime.backends import apply_backend

    spec = preset["backends"]
    # A cold inductor cache, so the first calls of `compile` include its real compile time.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor_cache")
    config = _section_config(preset, "backends")
    size = config.vision_config.image_size
    base = _model(config)
    names = ["torch", "onnx"] + (["compile"] if spec.get("compile") else [])
    out: dict[str, Any] = {"batches": spec["batches"], "image_size": size, "repeats": spec["repeats"], "backends": {}}
    models = {}
    for name in names:
        start = time.perf_counter()
        try:
            models[name] = apply_backend(copy.deepcopy(base), name, cache_dir=Path(tmp) / "onnx_cache")[0]
        except Exception as error:  # a backend that cannot run here is reported, not fatal
            out["backends"][name] = {"error": f"{type(error).__name__}: {error}"[:500]}
            continue
        out["backends"][name] = {"setup_seconds": time.perf_counter() - start, "batches": {}}
    del base
    with torch.inference_mode():
        for batch in spec["batches"]:
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
            for _ in range(spec["repeats"]):
                for name in timings:
                    cpu, start = time.process_time(), time.perf_counter()
                    models[name](pixels)
                    timings[name].append((time.perf_counter() - start, time.process_time() - cpu))
            for name, rounds in timings.items():
                wall, cpu = min(rounds)
                out["backends"][name]["batches"][str(batch)].update(
                    seconds_per_image=wall / batch, cpu_seconds_per_image=cpu / batch
                )
    eager = out["backends"].get("torch", {}).get("batches", {})
    for row in out["backends"].values():
        for batch, cell in row.get("batches", {}).items():
            if "seconds_per_image" in cell and "seconds_per_image" in eager.get(batch, {}):
                cell["speedup_vs_eager"] = eager[batch]["seconds_per_image"] / cell["seconds_per_image"]
                cell["cpu_speedup_vs_eager"] = eager[batch]["cpu_seconds_per_image"] / cell["cpu_seconds_per_image"]
    return out


WORKERS = {
    "peak": worker_peak,
    "vision": worker_vision,
    "save": worker_save,
    "load": worker_load,
    "metrics": worker_metrics,
    "stage1": worker_stage1,
    "stage2": worker_stage2,
    "gpu": worker_gpu,
    "first_call": worker_first_call,
    "detect": worker_detect,
    "int8": worker_int8,
    "backends": worker_backends,
    "int8_speed": worker_int8_speed,
}


def _worker_main(name: str, preset_name: str, kwargs_json: str, threads: int | None) -> None:
    import torch

    from aaclip_hf.runtime.cpu import tune_cpu_runtime

    if threads:
        torch.set_num_threads(threads)
    if name != "first_call":  # the benchmarks run tuned, as the CLI does; first_call measures both ways itself
        tune_cpu_runtime(torch.get_num_threads())
    result = WORKERS[name](PRESETS[preset_name], **json.loads(kwargs_json))
    result["threads"] = torch.get_num_threads()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def _spawn(worker: str, preset: str, threads: int | None, log, **kwargs) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        worker,
        "--preset",
        preset,
        "--worker-kwargs",
        json.dumps(kwargs),
    ]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(REPO_ROOT))
    log.write(
        f"### worker {worker} {kwargs} rc={proc.returncode} ({time.perf_counter() - start:.0f} s)\n{proc.stderr[-4000:]}\n"
    )
    log.flush()
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
            result["wall_seconds"] = time.perf_counter() - start
            return result
    return {"error": f"worker {worker} failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}"}


def machine_info() -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    simd = [
        name for name in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f" {name}" in flags
    ]
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


def run_benchmarks(
    preset_name: str, output: Path, only: list[str] | None = None, threads: int | None = None, merge: bool = False
) -> dict:
    from tqdm.auto import tqdm

    from aaclip_hf.runtime.flops import parameter_bytes, text_anchor_flops, vision_forward_flops

    preset = PRESETS[preset_name]
    output.mkdir(parents=True, exist_ok=True)
    sections = [s for s in SECTIONS if not only or s in only]
    config = _config(preset)
    report: dict[str, Any] = {
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
    start = time.perf_counter()
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
        elif section in ("detect", "int8", "int8_speed", "backends"):
            jobs.append((section, section, {"tmp": None}))
        else:
            jobs.append((section, section, {}))
    previous_path = output / "report.json"
    if merge and previous_path.is_file():
        previous = json.loads(previous_path.read_text())
        if previous.get("preset") == preset_name:
            measured = {key for _, key, _ in jobs} | ({"peak_end"} if "peak" in sections else set())
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
    with tempfile.TemporaryDirectory(prefix="aaclip-bench-") as tmp, open(output / "bench.log", "w") as log:
        for worker, key, kwargs in tqdm(jobs, desc=f"aaclip bench ({preset_name})", unit="job"):
            if worker in ("save", "load") or "tmp" in kwargs:
                kwargs = {**kwargs, "tmp": tmp}
            report[key] = _spawn(worker, preset_name, threads, log, **kwargs)
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


# ----------------------------------------------------------------------------------------------
# goals and the markdown report
# ----------------------------------------------------------------------------------------------


def _get(report: dict, *keys, default=None):
    value: Any = report
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def evaluate_goals(report: dict) -> list[dict]:
    goals = []
    peak = attainable_peak(report)
    best = None
    for key in ("vision_sdpa", "vision_eager"):
        for batch, row in (_get(report, key, "batches", default={}) or {}).items():
            if best is None or row["gflops_per_second"] > best[2]:
                best = (key.split("_")[1], batch, row["gflops_per_second"])
    if peak and best:
        fraction = best[2] / peak
        goals.append(
            {
                "goal": "vision forward >= 85 % of the measured fp32 matmul peak",
                "value": f"{100 * fraction:.0f} % ({best[2]:.1f} of {peak:.1f} GFLOP/s, {best[0]}, batch {best[1]})",
                "met": fraction >= 0.85,
                "reason": "18 % of the FLOPs (ViT-L at 518 px) are attention matmuls over 64-wide heads, less efficient "
                "than the square peak matmul; softmax over heads x tokens^2 scores per layer, GELU, 2 layer "
                "norms and the adapters' norm rescale are memory-bound work the FLOP count does not credit; "
                "glibc's allocator page-faults the activations afresh on every call (docs/performance.md); "
                "other processes shared the 2 cores (load average above)",
                "remedy": "the allocator setting, now applied by tune_cpu_runtime() in the CLI and the benchmarks (this "
                "row's run predates it; see the first-call row), torch.compile to fuse the elementwise chains, bf16 matmuls on AMX/AVX512-BF16 CPUs or "
                "a GPU (benchmarks/gpu.sh), an otherwise idle machine",
            }
        )
    reduction = _get(report, "save", "parameter_reduction") or (
        1 - report["parameters"]["inference_only_parameters"] / report["parameters"]["full_parameters"]
    )
    goals.append(
        {
            "goal": "inference-only model >= 25 % fewer parameters",
            "value": f"{100 * reduction:.1f} % fewer",
            "met": reduction >= 0.25,
            "reason": "" if reduction >= 0.25 else "the text tower is small next to the vision tower of this preset",
            "remedy": "",
        }
    )
    metrics = report.get("metrics")
    if metrics and "speedup" in metrics:
        met = metrics["speedup"] >= 5 and metrics["max_abs_diff_vs_sklearn"] <= 1e-6
        goals.append(
            {
                "goal": "pixel metrics >= 5x faster than sklearn AUROC+AP, equal to 1e-6",
                "value": f"{metrics['speedup']:.1f}x, max diff {metrics['max_abs_diff_vs_sklearn']:.1e}",
                "met": met,
                "reason": "" if met else "see benchmarks/bench_metrics.py",
                "remedy": "",
            }
        )
    stage1 = report.get("stage1")
    if stage1 and "speedup" in stage1:
        met = stage1["speedup"] >= 4
        goals.append(
            {
                "goal": "stage 1 (5 epochs) with cached frozen features >= 4x faster",
                "value": f"{stage1['speedup']:.2f}x at {stage1['image_size']} px, N={stage1['num_images']}, batch "
                f"{stage1['batch_size']} (predicted {stage1['predicted_speedup_at_default_size']:.2f}x at the "
                "preset's full size)",
                "met": met,
                "reason": ""
                if met
                else "the speed-up is bounded by E*(V+T)/(V+E*T) (E epochs, V = DPAM time per "
                "epoch, T = text time per epoch): T is a large share at small images or few images per class",
                "remedy": ""
                if met
                else "larger images (V grows with the token count squared) or more images per class and "
                "step: the bound approaches E = 5",
            }
        )
    plain, ckpt = report.get("stage2_plain"), report.get("stage2_checkpointing")
    if plain and ckpt and "seconds" in plain and "seconds" in ckpt:
        goals.append(
            {
                "goal": "stage-2 step measured with and without activation checkpointing (no numeric goal)",
                "value": f"memory {ckpt['memory']['peak_delta'] / plain['memory']['peak_delta']:.2f}x, time "
                f"{ckpt['seconds'] / plain['seconds']:.2f}x with checkpointing",
                "met": True,
                "reason": "",
                "remedy": "",
            }
        )
    goals += runtime_goals(report)
    return goals


FIRST_CALL_GOAL = 1.15  # issue 12: the first call within 15 % of the steady state
DETECT_FLOOR_GOAL = 1.4  # issue 12: per-image wall time of `aaclip detect` over 8 images <= 1.4x the fp32 floor
INT8_SPEEDUP_GOAL, INT8_CORRELATION_GOAL, INT8_AUROC_GOAL_POINTS = 1.8, 0.99, 0.5


def best_int8(report: dict) -> tuple[str, dict] | None:
    """The int8 path `--quantize int8` uses on CPU (`DEFAULT_BACKEND`), else the faster one: its accuracy from the
    int8 row, its speed from the int8_speed row (the preset's full image size) where that was measured."""
    from aaclip_hf.runtime.backends import DEFAULT_BACKEND

    variants = _get(report, "int8", "variants") or {}
    speed = _get(report, "int8_speed", "variants") or {}
    rows = {name: row for name, row in variants.items() if name.endswith("int8")}
    if not rows:
        return None
    kept = f"{DEFAULT_BACKEND.get(('cpu', 'int8'), 'torch')}_int8"
    timing = speed if any(name in speed for name in rows) else rows
    name = (
        kept
        if kept in rows and kept in timing
        else min((n for n in rows if n in timing), key=lambda n: timing[n]["seconds_per_image"])
    )
    row = dict(rows[name])
    if timing is speed:
        row.update(
            speedup_vs_fp32=speed[name]["speedup_vs_fp32"],
            cpu_speedup_vs_fp32=speed[name]["cpu_speedup_vs_fp32"],
            speed_image_size=report["int8_speed"]["image_size"],
        )
    return name, row


def runtime_goals(report: dict) -> list[dict]:
    """The goals of issue 12, each with its measured value and, when missed, why and what would close it."""
    goals = []
    tuned, default = report.get("first_call_tuned") or {}, report.get("first_call_default") or {}
    if "first" in tuned:
        ratio = tuned["first_over_steady"]
        contrast = (
            f"; default allocator {default['first']:.1f} s vs {default['steady']:.1f} s ({default['first_over_steady']:.2f}x)"
            if "first" in default
            else ""
        )
        if "first_over_steady_cpu" in tuned:
            contrast += f"; CPU time (robust to other processes) {tuned['first_over_steady_cpu']:.2f}x tuned"
            if "first_over_steady_cpu" in default:
                contrast += f", {default['first_over_steady_cpu']:.2f}x default"
        goals.append(
            {
                "goal": "first call within 15 % of the steady state (tune_cpu_runtime, batch 1)",
                "value": f"first {tuned['first']:.1f} s vs steady {tuned['steady']:.1f} s ({ratio:.2f}x){contrast}",
                "met": ratio <= FIRST_CALL_GOAL,
                "reason": ""
                if ratio <= FIRST_CALL_GOAL
                else "the first call still grows the heap to the forward's peak (first-touch page faults, kept for "
                "later calls) and sets up oneDNN/sdpa kernels; other processes shared the 2 cores, so single "
                "calls vary by more than the goal's 15 %",
                "remedy": ""
                if ratio <= FIRST_CALL_GOAL
                else "one untimed warm-up call at start-up (the app and "
                "long-running services), an otherwise idle machine",
            }
        )
    detect = report.get("detect") or {}
    if "ratio_to_floor" in detect:
        ratio = detect["ratio_to_floor"]
        met = ratio <= DETECT_FLOOR_GOAL
        goals.append(
            {
                "goal": f"aaclip detect over {detect['num_images']} images, process start included, <= 1.4x the "
                "fp32 floor per image",
                "value": f"{detect['seconds_per_image']:.2f} s/image vs floor {detect['floor_seconds_per_image']:.2f} s "
                f"({ratio:.2f}x; auto batch {detect['batch_size_auto']})",
                "met": met,
                "reason": ""
                if met
                else "outside the FLOP count: the process start (importing torch and transformers), loading "
                "the weights, decoding and writing overlays; inside it the forward runs at 72-78 % of the matmul "
                "peak at best (attention over 64-wide heads, memory-bound norms/softmax/GELU); other "
                "processes shared the 2 cores",
                "remedy": ""
                if met
                else "more images per process (start-up amortised), the int8 path (--quantize int8), a GPU",
            }
        )
    best = best_int8(report)
    if best:
        name, row = best
        worst_auroc = max(abs(row["image_auroc_change_points"]), abs(row["pixel_auroc_change_points"]))
        speed_ok = row["speedup_vs_fp32"] >= INT8_SPEEDUP_GOAL
        corr_ok = row["map_correlation"] >= INT8_CORRELATION_GOAL
        auroc_ok = worst_auroc <= INT8_AUROC_GOAL_POINTS
        reasons, remedies = [], []
        if not speed_ok:
            reasons.append(
                f"speed {row['speedup_vs_fp32']:.2f}x is {INT8_SPEEDUP_GOAL - row['speedup_vs_fp32']:.2f}x short: only "
                "the linear layers (81 % of the FLOPs at 518 px) run int8; the attention matmuls (18 %) and the "
                "memory-bound softmax, GELU and norms stay fp32 and bound the gain (Amdahl), and every linear input is "
                "quantised per call (an extra pass over the activations); on a shared machine the wall-time ratio "
                "also carries the other processes' load (see the CPU-time ratio)"
            )
            remedies.append(
                "int8 attention (static quantisation with calibration images), fused int8 kernels (oneDNN/IPEX "
                "graph mode), an otherwise idle machine, or bf16 on AMX CPUs / a GPU"
            )
        if not corr_ok:
            reasons.append(f"map correlation {row['map_correlation']:.4f} below 0.99")
            remedies.append("keep the adapters and the last layers in fp32, or per-channel weight scales")
        if not auroc_ok:
            reasons.append(
                f"AUROC change {worst_auroc:.2f} points above 0.5 (image AUROC over {report['int8']['num_images']} "
                "images moves in steps of several points)"
            )
            remedies.append("a larger evaluation set to resolve sub-point changes; per-channel weight scales")
        cpu_note = f" (CPU time {row['cpu_speedup_vs_fp32']:.2f}x)" if "cpu_speedup_vs_fp32" in row else ""
        size_note = f" at {report['int8']['image_size']} px" if "image_size" in report["int8"] else ""
        if "speed_image_size" in row:
            size_note = f" (speed at {row['speed_image_size']} px, accuracy{size_note})"
        goals.append(
            {
                "goal": "int8 >= 1.8x fp32 at batch 4, map correlation >= 0.99, AUROC change <= 0.5 points",
                "value": f"{name}{size_note}: {row['speedup_vs_fp32']:.2f}x{cpu_note}, correlation {row['map_correlation']:.4f}, image "
                f"AUROC {row['image_auroc_change_points']:+.2f} / pixel AUROC {row['pixel_auroc_change_points']:+.2f} "
                "points",
                "met": speed_ok and corr_ok and auroc_ok,
                "reason": "; ".join(reasons),
                "remedy": "; ".join(remedies),
            }
        )
    backends = _get(report, "backends", "backends") or {}
    if backends:
        from aaclip_hf.runtime.backends import DEFAULT_BACKEND

        default = DEFAULT_BACKEND.get(("cpu", "none"), "torch")
        winners, names = [], set()
        for batch in _get(report, "backends", "batches") or []:
            cells = [
                (name, row["batches"][str(batch)]["seconds_per_image"])
                for name, row in backends.items()
                if "seconds_per_image" in (row.get("batches", {}).get(str(batch)) or {})
            ]
            if cells:
                winner = min(cells, key=lambda cell: cell[1])
                names.add(winner[0])
                winners.append(f"batch {batch}: {winner[0]} ({winner[1]:.2f} s/image)")
        met = names <= {default}
        goals.append(
            {
                "goal": "torch.compile and ONNX Runtime measured against eager fp32; the winner is the CPU default",
                "value": "; ".join(winners) + f"; CPU fp32 default (`--backend auto`): {default}",
                "met": met,
                "reason": ""
                if met
                else "kept eager torch: onnx's lead is 1.1-1.4x in CPU time at batch 4 and was not reproducible at "
                "batch 1 across runs (docs/performance.md, section 6), while the first run of every model pays the "
                "export (tens of seconds at 224 px, about 40 s and 1.2 GB of cache at 518 px) and the onnx tower "
                "lacks output_attentions, all hidden states and position interpolation",
                "remedy": ""
                if met
                else "`--backend onnx` on long-running stations (the export is cached); make it the CPU default once "
                "an idle-machine run confirms the batch-1 gain",
            }
        )
    return goals


def runtime_markdown(report: dict) -> list[str]:
    """The issue-12 sections of the report."""
    lines: list[str] = []
    tuned, default = report.get("first_call_tuned") or {}, report.get("first_call_default") or {}
    if "first" in tuned or "first" in default:
        lines += [
            "",
            "## First call vs steady state (batch 1, a fresh process each)",
            "",
            "| allocator | wall s per call | first / steady (wall) | CPU s per call | first / steady (CPU) | "
            "minor page faults per call |",
            "|---|---|---|---|---|---|",
        ]
        for label, row in (("glibc default", default), ("tune_cpu_runtime()", tuned)):
            if "first" in row:
                calls = ", ".join(f"{value:.2f}" for value in row["seconds"])
                cpu = ", ".join(f"{value:.1f}" for value in row.get("cpu_seconds", []))
                faults = ", ".join(f"{value:,}" for value in row.get("minor_page_faults", []))
                cpu_ratio = f"{row['first_over_steady_cpu']:.2f}x" if "first_over_steady_cpu" in row else "-"
                lines.append(
                    f"| {label} | {calls} | {row['first_over_steady']:.2f}x | {cpu or '-'} | {cpu_ratio} | "
                    f"{faults or '-'} |"
                )
            elif row:
                lines.append(f"| {label} | {row.get('error')} | | | | |")
        lines += [
            "",
            "CPU time is user + sys of all the process's threads: it hardly changes when other processes share "
            "the cores, wall time does. Each minor page fault maps (and the kernel zeroes) a fresh 4 KiB page.",
        ]
        if tuned.get("tuning"):
            lines += [
                "",
                f"Tuning applied: `{json.dumps(tuned['tuning']['mallopt'])}`, {tuned['tuning']['num_threads']} threads.",
            ]
    detect = report.get("detect") or {}
    if "ratio_to_floor" in detect:
        lines += [
            "",
            f"## `aaclip detect` over {detect['num_images']} images ({detect['width']}x{detect['height']} PNG), fresh process",
            "",
            "| measure | value |",
            "|---|---|",
            f"| wall time, process start to exit | {detect['wall_seconds_process']:.1f} s |",
            f"| CPU time of that process (user + sys, all threads) | {detect.get('cpu_seconds_process', float('nan')):.1f} s |",
            f"| per image | {detect['seconds_per_image']:.2f} s |",
            f"| fp32 floor per image (FLOPs / matmul peak {max(detect['peak_gflops_before'], detect['peak_gflops_after']):.1f} GFLOP/s, same worker) | {detect['floor_seconds_per_image']:.2f} s |",
            f"| ratio | **{detect['ratio_to_floor']:.2f}x** |",
            f"| batch size chosen (auto) | {detect['batch_size_auto']} |",
        ]
    int8 = report.get("int8") or {}
    if "variants" in int8:
        lines += [
            "",
            f"## int8 vs fp32 (same weights, {int8['num_images']} synthetic test images at "
            f"{int8.get('image_size', '?')} px, batch {int8['batch_size']}, interleaved)",
            "",
            "| path | s/image | speed-up (wall / CPU time) | max / mean abs map diff | map correlation | "
            "image AUROC (change) | pixel AUROC (change) | set-up |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in int8["variants"].items():
            setup = int8["setup_seconds"].get(name)
            lines.append(
                f"| {name} | {row['seconds_per_image']:.3g} | {row['speedup_vs_fp32']:.2f}x / "
                f"{row.get('cpu_speedup_vs_fp32', float('nan')):.2f}x | "
                f"{row['max_abs_map_diff']:.3g} / {row['mean_abs_map_diff']:.3g} | {row['map_correlation']:.5f} | "
                f"{100 * row['image_auroc']:.2f} ({row['image_auroc_change_points']:+.2f}) | "
                f"{100 * row['pixel_auroc']:.2f} ({row['pixel_auroc_change_points']:+.2f}) | "
                f"{'-' if setup is None else f'{setup:.1f} s'} |"
            )
        lines += [
            "",
            f"Maps are the summed anomaly maps at the model's input size (fp32 range {int8['variants']['fp32']['map_range_fp32']:.3g}); "
            f"{int8['num_pixels']:,} pixels, {int8['anomalous_pixels']:,} anomalous. Random weights: the AUROCs "
            "themselves mean nothing, their change under int8 is the measurement. onnx set-up = export (or cache hit) "
            "+ session; onnx_int8 adds ONNX Runtime's quantiser.",
        ]
    speed = report.get("int8_speed") or {}
    if "variants" in speed:
        lines += [
            "",
            f"### int8 speed at {speed['image_size']} px (batch {speed['batch_size']}, same weights, best of "
            f"{speed['rounds']} interleaved round(s))",
            "",
            "| path | s/image | speed-up (wall / CPU time) | set-up |",
            "|---|---|---|---|",
        ]
        for name, row in speed["variants"].items():
            setup = speed["setup_seconds"].get(name)
            lines.append(
                f"| {name} | {row['seconds_per_image']:.3g} | {row['speedup_vs_fp32']:.2f}x / "
                f"{row['cpu_speedup_vs_fp32']:.2f}x | {'-' if setup is None else f'{setup:.1f} s'} |"
            )
    backends = _get(report, "backends", "backends") or {}
    if backends:
        batches = report["backends"]["batches"]
        header = " | ".join(f"batch {b}: first call / steady s/image (vs eager)" for b in batches)
        lines += [
            "",
            f"## Backends (fp32, {report['backends'].get('image_size', '?')} px)",
            "",
            f"| backend | set-up | {header} |",
            "|---|---|" + "---|" * len(batches),
        ]
        for name, row in backends.items():
            if "error" in row:
                lines.append(f"| {name} | {row['error']} |" + " |" * len(batches))
                continue
            cells = []
            for b in batches:
                cell = row["batches"].get(str(b)) or {}
                if "seconds_per_image" in cell:
                    cpu = cell.get("cpu_speedup_vs_eager")
                    cells.append(
                        f"{cell['first_call_seconds']:.1f} s / {cell['seconds_per_image']:.3g} "
                        f"({cell.get('speedup_vs_eager', float('nan')):.2f}x"
                        + (f"; CPU {cpu:.2f}x)" if cpu is not None else ")")
                    )
                else:
                    cells.append(cell.get("error", "-"))
            lines.append(f"| {name} | {row['setup_seconds']:.1f} s | " + " | ".join(cells) + " |")
        lines += [
            "",
            "set-up: torch = none, onnx = export once (cached by weights hash) + session, compile = wrapping; the "
            "compile cost itself is in each batch's first call (one compilation per batch shape).",
        ]
    return lines


def attainable_peak(report: dict) -> float | None:
    """The best matmul throughput measured in the run (start or end): on a shared machine the lower one was
    measured under more contention, and a forward pass must not look faster than the machine can go."""
    values = [v for v in (_get(report, "peak", "gflops"), _get(report, "peak_end", "gflops")) if v]
    return max(values) if values else None


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# AA-CLIP benchmark report ({report['preset']} preset)",
        "",
        f"Model: {report['model']}, fp32, random weights. Machine: {m['cpu']} ({', '.join(m['simd'])}), "
        f"{m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} threads"
        f"{', CUDA: ' + m['cuda'] if m['cuda'] else ', no GPU'}. Started {report['started']}, total "
        f"{report['total_seconds'] / 60:.1f} min; load average {report['load_average_start'][0]:.1f} at start, "
        f"{report['load_average_end'][0]:.1f} at end (above the core count means other processes shared the CPU "
        "and every time below is inflated).",
        "",
        "Memory = peak resident set during the measured region minus the resident set just before it "
        "(`VmHWM` reset per region; each job is its own process).",
    ]
    merged = report.get("merged_from")
    if merged:
        runs: dict[str, list[str]] = {}
        for key in merged["sections"]:
            runs.setdefault((report.get("section_runs") or {}).get(key, merged["started"]), []).append(key)
        loads = merged.get("runs") or {}

        def load_note(started: str) -> str:
            info = loads.get(started) or {}
            if not info.get("load_average_start"):
                return ""
            return (
                f" (load average {info['load_average_start'][0]:.1f} at its start, "
                f"{info['load_average_end'][0]:.1f} at its end)"
            )

        earlier = "; ".join(
            f"{', '.join(keys)} from the run started {started}{load_note(started)}" for started, keys in runs.items()
        )
        lines += [
            "",
            f"Merged (`--merge`): {earlier}; every other section is from this run. Each ratio is measured side by "
            "side inside one run (one worker process).",
        ]
    lines += [
        "",
        "## Goals",
        "",
        "| goal | measured | met | reason if missed | what would close it |",
        "|---|---|---|---|---|",
    ]
    for goal in report["goals"]:
        lines.append(
            f"| {goal['goal']} | {goal['value']} | {'yes' if goal['met'] else '**no**'} | {goal['reason']} | "
            f"{goal['remedy']} |"
        )
    flops = report["flops"]["vision_forward_per_image"]
    lines += ["", "## FLOPs per image (analytic, matches `FlopCounterMode`)", "", "| term | GFLOP |", "|---|---|"]
    lines += [f"| {k} | {v / 1e9:.4g} |" for k, v in flops["terms"].items()]
    lines += [
        f"| **total** | **{flops['total'] / 1e9:.1f}** |",
        f"| (not counted: norms, softmax, GELU, residuals; estimate) | {flops['elementwise_estimate'] / 1e9:.1f} |",
    ]
    text = report["flops"]["text_anchors_per_class_77_tokens"]
    lines += [
        "",
        f"Recomputing one class's anchors (16 prompts x 77 tokens, the reference's padding): "
        f"{text['total'] / 1e9:.1f} GFLOP.",
    ]
    peak = attainable_peak(report)
    if peak:
        lines += [
            "",
            "## Vision forward (inference, stored anchors)",
            "",
            f"fp32 matmul peak: **{peak:.1f} GFLOP/s** ({report['peak']['matrix_size']}^2 matrices, best of "
            f"{report['settings']['matmul_repeats']}; the higher of {report['peak']['gflops']:.1f} GFLOP/s "
            "before the forward passes"
            + (
                f" and {report['peak_end']['gflops']:.1f} GFLOP/s at the end of the run"
                if "gflops" in (report.get("peak_end") or {})
                else ""
            )
            + ").",
            "",
        ]
    if report.get("vision_sdpa") or report.get("vision_eager"):
        lines += [
            "| attention | batch | s/image | GFLOP/s | % of matmul peak | peak memory (delta) |",
            "|---|---|---|---|---|---|",
        ]
    for key in ("vision_sdpa", "vision_eager"):
        part = report.get(key) or {}
        if "error" in part:
            lines.append(f"| {key} | - | {part['error']} | | | |")
        for batch, row in (part.get("batches") or {}).items():
            pct = f"{100 * row['gflops_per_second'] / peak:.0f} %" if peak else "-"
            lines.append(
                f"| {part['attn']} | {batch} | {row['seconds_per_image']:.2f} | {row['gflops_per_second']:.1f} | "
                f"{pct} | {_gib(row['memory']['peak_delta'])} |"
            )
    if report.get("vision_eager"):
        lines += [
            "",
            f"Eager attention runs at batch {', '.join(map(str, report['settings']['eager_batches']))} only "
            "(time budget); warm-up iterations: "
            f"{report['settings']['warmup']}, timed iterations: {report['settings']['iterations']}.",
        ]
    anchors = _get(report, "vision_sdpa", "anchors")
    if anchors:
        lines += [
            "",
            "## Full model: anchors cached vs recomputed per call (batch 1, sdpa)",
            "",
            "| anchors | s/call | GFLOP/call |",
            "|---|---|---|",
            f"| stored (cached) | {anchors['seconds_cached']:.2f} | {anchors['flops_cached'] / 1e9:.0f} |",
            f"| recomputed ({anchors['prompt_tokens']} tokens/prompt) | {anchors['seconds_recomputed']:.2f} | "
            f"{anchors['flops_recomputed'] / 1e9:.0f} |",
            f"| recomputed, reference padding to 77 tokens (FLOPs only) | - | "
            f"{anchors['flops_recomputed_reference_77_tokens'] / 1e9:.0f} |",
            "",
            f"Ratio recomputed / cached: **{anchors['ratio']:.2f}x**; max |map difference| "
            f"{anchors['max_abs_diff']:.1e}.",
        ]
    save = report.get("save")
    if save and "full" in save:
        full, lean = report.get("load_full") or {}, report.get("load_inference_only") or {}
        lines += [
            "",
            "## Inference-only model (text tower dropped, anchors kept)",
            "",
            "| model | parameters | folder size | from_pretrained | + touching every weight | memory (delta) |",
            "|---|---|---|---|---|---|",
        ]
        for name, load in (("full", full), ("inference_only", lean)):
            lines.append(
                f"| {name} | {save[name]['parameters'] / 1e6:.1f} M | {_gib(save[name]['folder_bytes'])} | "
                f"{load.get('load_seconds', float('nan')):.2f} s | "
                f"{load.get('load_and_touch_seconds', float('nan')):.2f} s | "
                f"{_gib(_get(load, 'memory', 'peak_delta'))} |"
            )
        lines += [
            "",
            "`from_pretrained` memory-maps the safetensors file, so it returns before the weights are read; "
            "the memory column is measured after every weight has been read once (paged in).",
        ]
        lines += [
            "",
            f"{100 * save['parameter_reduction']:.1f} % fewer parameters. The inference-only folder loaded "
            f"and ran through the {lean.get('ran_through', '?')} in {lean.get('run_seconds', float('nan')):.2f} s "
            f"(anomaly map {lean.get('anomaly_map_shape')} for a 400x300 image, score {lean.get('score', float('nan')):.3f}).",
        ]
    metrics = report.get("metrics")
    if metrics:
        lines += ["", "## Pixel metrics, one MVTec-sized class", ""]
        if "error" in metrics:
            lines.append(metrics["error"])
        else:
            sys.path.insert(0, str(REPO_ROOT))
            from benchmarks import bench_metrics

            lines.append(bench_metrics.to_markdown(metrics))
    stage1 = report.get("stage1")
    if stage1 and "speedup" in stage1:
        lines += [
            "",
            f"## Stage 1: {stage1['epochs']} epochs, {stage1['num_images']} images at {stage1['image_size']} px, "
            f"batch {stage1['batch_size']}",
            "",
            "| frozen DPAM features | total s | peak memory (delta) |",
            "|---|---|---|",
            f"| recomputed every step | {stage1['seconds_recomputed']:.1f} | {_gib(stage1['memory_recomputed']['peak_delta'])} |",
            f"| cached after epoch 1 | {stage1['seconds_cached']:.1f} | {_gib(stage1['memory_cached']['peak_delta'])} |",
            "",
            f"Speed-up **{stage1['speedup']:.2f}x**; the two runs' losses differ by at most "
            f"{stage1['max_abs_loss_diff']:.1e} (the cache is exact). DPAM features cost "
            f"{stage1['dpam_seconds_per_image']:.2f} s/image, a text step {stage1['text_seconds_per_step']:.2f} s; "
            f"scaled by FLOPs ({stage1['flop_scale_to_default_size']:.1f}x) to the preset's full image size the "
            f"same loop would gain {stage1['predicted_speedup_at_default_size']:.2f}x (prediction, not measured).",
        ]
    plain, ckpt = report.get("stage2_plain"), report.get("stage2_checkpointing")
    if plain or ckpt:
        lines += [
            "",
            "## Stage 2: one training step (adapters + heads trainable, backbone frozen)",
            "",
            "| activation checkpointing | batch | s/step | peak memory (delta) | loss | grad norm |",
            "|---|---|---|---|---|---|",
        ]
        for part in (plain, ckpt):
            if part and "seconds" in part:
                lines.append(
                    f"| {'on' if part['checkpointing'] else 'off'} | {part['batch_size']} | {part['seconds']:.1f} | "
                    f"{_gib(part['memory']['peak_delta'])} | {part['loss']:.6f} | {part['grad_norm']:.6e} |"
                )
            elif part:
                lines.append(f"| ? | - | {part.get('error')} | | | |")
    lines += runtime_markdown(report)
    gpu = report.get("gpu")
    if gpu:
        lines += ["", gpu_markdown(gpu)]
    lines += ["", "Raw numbers: `report.json`; worker logs: `bench.log`."]
    return "\n".join(lines) + "\n"


def gpu_markdown(gpu: dict) -> str:
    """The GPU report (`benchmarks/gpu.sh`): forward throughput table, stage-2 run with its loss curve."""
    if "error" in gpu:
        return f"## GPU\n\n{gpu['error']}\n"
    lines = [
        f"## GPU: {gpu['device']} (torch {gpu.get('torch', '?')})",
        "",
        "| dtype | batch | ms/image | images/s | TFLOP/s | peak allocated |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in gpu["forward"].items():
        dtype, _, batch = key.partition("/")
        if "error" in row:
            lines.append(f"| {dtype} | {batch or '-'} | {row['error']} | | | |")
        else:
            lines.append(
                f"| {dtype} | {batch} | {row['seconds_per_image'] * 1e3:.2f} | {row['images_per_second']:.1f} | "
                f"{row['tflops']:.3g} | {_gib(row['peak_allocated'])} |"
            )
    stage2 = gpu.get("stage2") or {}
    if "loss_curve" in stage2:
        curve = ", ".join(f"{value:.4f}" for value in stage2["loss_curve"])
        lines += [
            "",
            f"### Stage 2: {stage2['steps']} steps, batch {stage2['batch_size']}, {stage2['precision']}",
            "",
            f"- images/s (after the warm-up steps): **{stage2['images_per_second']:.1f}**",
            f"- peak allocated: {_gib(stage2['peak_allocated'])}",
            f"- step seconds: first {stage2['step_seconds'][0]:.3f}, last {stage2['step_seconds'][-1]:.3f}",
            f"- loss curve: {curve}",
        ]
    return "\n".join(lines) + "\n"


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


# ----------------------------------------------------------------------------------------------
# CLI (`aaclip bench` forwards here)
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if args.render:
        report = json.loads((output / "report.json").read_text())
        report["goals"] = evaluate_goals(report)
        (output / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (output / "report.md").write_text(to_markdown(report))
        print(output / "report.md")
        return 0
    if args.gpu:
        batches = [int(b) for b in args.gpu_batches.split(",")]
        return run_gpu(output, batches, args.gpu_device, args.preset or "full")
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if only:
        only = [part for name in only for part in SECTION_GROUPS.get(name, (name,))]
    unknown = sorted(set(only or []) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    preset = args.preset or ("quick" if args.quick else "full")
    report = run_benchmarks(preset, output, only, args.threads, merge=getattr(args, "merge", False))
    print((output / "report.md").read_text())
    failed = [key for key, value in report.items() if isinstance(value, dict) and "error" in value]
    if failed:
        print(f"failed jobs: {failed} (see {output / 'bench.log'})", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="AA-CLIP performance benchmarks")
    add_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.worker, args.preset or "full", args.worker_kwargs, args.threads)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Workers that measure the model itself: the machine's matmul peak, the vision forward, anchors cached vs
recomputed, and the full vs inference-only model (parameters, folder size, loading). Each runs in its own
process (`aaclip_hf.benchmark.worker`) and returns a JSON-able dict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import PeakMemory, preset_config, random_model, timed


def worker_peak(preset: dict) -> dict:
    """Best-of-N fp32 `torch.matmul` throughput on square matrices: this machine's attainable peak."""
    import torch

    n = preset["matmul_size"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(timed(lambda: torch.matmul(a, b), 0, 1)[0] for _ in range(preset["matmul_repeats"]))
    return {"matrix_size": n, "seconds": best, "gflops": 2 * n**3 / best / 1e9}


def matmul_peak(preset: dict) -> float:
    """The fp32 matmul peak measured inside the calling worker (GFLOP/s), so a floor is from the same run."""
    return worker_peak(preset)["gflops"]


def worker_vision(preset: dict, attn: str) -> dict:
    """Inference forward (stored anchors) at each batch size; with sdpa also the anchors-recomputed forward."""
    import torch

    from aaclip_hf.runtime.flops import vision_forward_flops

    config = preset_config(preset, include_text_model=(attn == "sdpa"))
    with PeakMemory() as build_memory:
        build_start = time.perf_counter()
        model = random_model(config)
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
                seconds, _ = timed(lambda pixels=pixels: model(pixels), preset["warmup"], preset["iterations"])
            out["batches"][str(batch)] = {
                "seconds_per_batch": seconds,
                "seconds_per_image": seconds / batch,
                "gflops_per_second": flops_per_image * batch / seconds / 1e9,
                "memory": memory.to_dict(),
            }
        if attn == "sdpa":
            out["anchors"] = _anchor_timings(preset, model, config, flops_per_image)
            out["references"] = _reference_timings(preset, model, config)
    return out


# Normal references per class in the few-shot row (the shots of the peers' few-shot tables: 1, 2, 4).
REFERENCE_SHOTS = 4


def _reference_timings(preset: dict, model, config) -> dict:
    """Batch 1 zero-shot against `REFERENCE_SHOTS`-shot: the bank (built once per class), the nearest-neighbour
    search over it (its share of the zero-shot forward), and its size."""
    import torch

    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(3)
    references = torch.randn(REFERENCE_SHOTS, 3, size, size, generator=generator)
    pixels = torch.randn(1, 3, size, size, generator=generator)
    anchors = torch.nn.functional.normalize(torch.randn(1, config.projection_dim, 2, generator=generator), dim=1)
    bank_seconds, bank = timed(lambda: model.reference_features(references), 0, 1)
    patch_embeds = model.get_vision_features(pixels)[0]
    warmup, iterations = preset["warmup"], preset["iterations"]
    zero_seconds, _ = timed(lambda: model(pixels, text_anchors=anchors), warmup, iterations)
    few_seconds, _ = timed(lambda: model(pixels, text_anchors=anchors, references=bank), warmup, iterations)
    search_seconds, _ = timed(lambda: model.reference_distance_grid(patch_embeds, bank), warmup, iterations)
    levels, rows, width = bank.shape
    return {
        "shots": REFERENCE_SHOTS,
        "bank_rows_per_level": rows,
        "bank_bytes": bank.numel() * bank.element_size(),
        "chunk_size": config.reference_chunk_size,
        "seconds_bank": bank_seconds,
        "seconds_zero_shot": zero_seconds,
        "seconds_few_shot": few_seconds,
        "seconds_search": search_seconds,
        "search_share": search_seconds / zero_seconds,
        "flops_search": 2 * levels * patch_embeds[0].shape[1] * rows * width,
    }


def _anchor_timings(preset: dict, model, config, flops_per_image: float) -> dict:
    """Batch 1 with the class's stored anchors against recomputing them (text tower) on every call."""
    import torch

    from aaclip_hf import AAClipProcessor
    from aaclip_hf.runtime.flops import text_anchor_flops

    size = config.vision_config.image_size
    processor = AAClipProcessor.for_model(model.config)
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    anchors = model.compute_text_anchors(["bottle"], processor)
    model.store_text_anchors(["bottle"], anchors)

    def recompute():
        fresh = model.compute_text_anchors(["bottle"], processor)
        return model(pixels, text_anchors=fresh)

    cached_seconds, cached = timed(
        lambda: model(pixels, class_ids=model.class_ids("bottle")), preset["warmup"], preset["iterations"]
    )
    recompute_seconds, recomputed = timed(recompute, preset["warmup"], preset["iterations"])
    tokens = processor.tokenize_prompts(["bottle"])["input_ids"].shape[1]
    return {
        "seconds_cached": cached_seconds,
        "seconds_recomputed": recompute_seconds,
        "ratio": recompute_seconds / cached_seconds,
        "flops_cached": flops_per_image,
        "flops_recomputed": flops_per_image + text_anchor_flops(config, context_length=tokens).total,
        "flops_recomputed_reference_77_tokens": flops_per_image + text_anchor_flops(config).total,
        "prompt_tokens": tokens,
        "max_abs_diff": float((cached.anomaly_map_grid - recomputed.anomaly_map_grid).abs().max()),
    }


def worker_save(preset: dict, tmp: str) -> dict:
    """Full and inference-only models: parameter counts, and their save_pretrained folders for the load workers."""
    from aaclip_hf import AAClipProcessor
    from aaclip_hf.runtime.flops import parameter_bytes

    config = preset_config(preset)
    model = random_model(config)
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
    import torch

    from aaclip_hf import AAClipModel

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
        out.update(_run_loaded(model, folder))
    return out


def _run_loaded(model, folder: Path) -> dict:
    """One 400x300 image through the pipeline (or model + processor where the pipeline is unavailable)."""
    import numpy as np
    import torch
    from PIL import Image

    from aaclip_hf import AAClipProcessor

    out: dict[str, Any] = {}
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
            outputs = model(
                processor(images=[image], return_tensors="pt")["pixel_values"], class_ids=model.class_ids("bottle")
            )
        result = processor.post_process_anomaly_detection(outputs, target_sizes=[(300, 400)])[0]
        out["ran_through"] = "model + processor"
    out["run_seconds"] = time.perf_counter() - start
    out["anomaly_map_shape"] = list(np.asarray(result["anomaly_map"]).shape)
    out["score"] = float(result["score"])
    return out

"""The benchmark presets (model size, iteration counts per section) and the report's sections in run order.

`full` is the paper setting (ViT-L/14 at 518 px, fp32, random weights); `quick` is a ViT-B/16-sized model at
224 px with fewer iterations (a smoke run in minutes); `smoke` has tiny towers and exercises every worker in
seconds (the slow tests use it).
"""

from __future__ import annotations

from typing import Any


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

# The execution paths the int8 rows compare (aaclip_hf/benchmark/workers_int8.py), each against eager fp32. ONNX
# Runtime's static quantiser comes first: its calibrator is the most memory-hungry step (13.2 GB peak measured for one
# ViT-L/14 image at 518 px: it records every quantised tensor's values), so it runs while the fewest models are loaded.
INT8_SPEED_PATHS = ["onnx_static_int8", "bf16", "torch_int8", "onnx_int8", "openvino_fp32", "openvino_int8"]
INT8_ACCURACY_PATHS = [*INT8_SPEED_PATHS, "openvino_int8_normals"]
# At 518 px ONNX Runtime's static calibration gets one picture, which bounds its memory on a 24 GB machine; its speed
# does not depend on the ranges, and its accuracy is measured at 224 px with the default 8.
SPEED_CALIBRATION_IMAGES = {"onnx_static_int8": 1}

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
        # runtime rows: kept short on 2 shared cores (each ViT-L/14 518 px forward is 7-30 s there)
        "startup": {"rounds": 5},
        "first_call": {"calls": 3},
        # 6 images, fp32 with the default flags and each variant's flags; each run a fresh process, profiled by phase
        "detect": {
            "num_images": 6,
            "height": 480,
            "width": 640,
            "rounds": 2,
            "variants": {"int8": ["--quantize", "int8"]},
        },
        "int8": {
            "classes": ["bottle", "carpet"],
            "good": 10,
            "defects_per_kind": 3,
            "kinds": ["scratch", "hole", "stain"],
            # normal training images per class: the "calibrated on your own good images" path
            "normals_per_class": 2,
            "batch": 4,
            # ViT-L/14's towers (same GEMM shapes and depth) at 224 px: 6x fewer FLOPs, so every path x 38 images
            # fits in minutes on 2 shared cores; attention is 4 % of the FLOPs here against 18 % at 518 px.
            "image_size": 224,
            "paths": INT8_ACCURACY_PATHS,
        },
        "int8_speed": {
            "batches": [1, 4],
            "rounds": 2,
            "paths": INT8_SPEED_PATHS,
            "calibration_images": SPEED_CALIBRATION_IMAGES,
        },
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
        "startup": {"rounds": 5},
        "first_call": {"calls": 3},
        "detect": {
            "num_images": 6,
            "height": 480,
            "width": 640,
            "rounds": 1,
            "variants": {"int8": ["--quantize", "int8"]},
        },
        "int8": {
            "classes": ["bottle", "carpet"],
            "good": 4,
            "defects_per_kind": 1,
            "kinds": ["scratch", "hole", "stain", "crack"],
            "normals_per_class": 2,
            "batch": 4,
            "paths": INT8_ACCURACY_PATHS,
        },
        "int8_speed": {"batches": [1, 4], "rounds": 2, "paths": INT8_SPEED_PATHS},
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
    "startup",
    "first_call",
    "detect",
    "int8",
    "int8_speed",
    "backends",
)
# `--only` shorthands: the runtime rows (allocator, batching, int8, backends).
SECTION_GROUPS = {"runtime": ("startup", "first_call", "detect", "int8", "int8_speed", "backends")}

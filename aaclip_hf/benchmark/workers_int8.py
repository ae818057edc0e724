"""Workers that compare the execution paths of the vision tower on the same weights: int8 accuracy on the synthetic
benchmark (`int8`), int8/bf16 speed at the preset's full size with the first run's set-up cost (`int8_speed`), and
the fp32 backends (`backends`). Each runs in its own process; every ratio is measured side by side in it, the paths
interleaved call by call so a change of load hits all of them alike.

The paths (`PATHS`):
- `fp32`: eager torch, the reference precision; `bf16`: eager torch in bf16 (`--dtype bfloat16`);
- `torch_int8`: torch's dynamic int8 linear layers (`--backend torch --quantize int8`);
- `onnx_int8`: ONNX Runtime's dynamic int8 (`--quantize int8`); `onnx_static_int8`: its static QDQ
  int8 calibrated on the default pictures (library option `onnx_int8="static"`; one picture in the speed row);
- `openvino_fp32`: OpenVINO (`--backend openvino`); `openvino_int8`: NNCF's post-training int8 calibrated on the
  default pictures (`--backend openvino --quantize int8`); in the accuracy worker also `openvino_int8_normals`,
  calibrated on normal images of the benchmark's classes (what `--quantize int8 --calibration-images` gives).
Each exported path builds in its own empty cache, so its set-up time is the first run's export and quantisation;
`warm_setup_seconds` is a second set-up from that cache (what every later run pays: weights hash, file check, load).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from .common import preset_config, random_model, section_config


# name -> (backend, quantize, apply_backend options); fp32 and bf16 are the eager model itself.
PATHS = {
    "torch_int8": ("torch", "int8", {}),
    "onnx_int8": ("onnx", "int8", {}),
    "onnx_static_int8": ("onnx", "int8", {"onnx_int8": "static"}),
    "openvino_fp32": ("openvino", "none", {}),
    "openvino_int8": ("openvino", "int8", {}),
}
EXPORTED = ("onnx", "openvino")


def _paths(
    base, names: list[str], tmp: str, calibration=None, counts: dict | None = None
) -> tuple[dict, dict, dict, dict]:
    """`(models, set-up seconds, warm set-up seconds, errors)` for the named paths on copies of `base`;
    `calibration` for the `_normals` paths, `counts` of default calibration pictures per path where not the
    default."""
    import torch

    from aaclip_hf.runtime.backends import apply_backend
    from aaclip_hf.runtime.calibration import calibration_pixels

    models: dict[str, Any] = {}
    setup: dict[str, float] = {}
    warm: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in names:
        start = time.perf_counter()
        try:
            if name == "fp32":
                models[name] = base
            elif name == "bf16":
                models[name] = copy.deepcopy(base).to(torch.bfloat16)
            else:
                backend, quantize, options = PATHS[name.removesuffix("_normals")]
                options = {**options, "calibration": calibration} if name.endswith("_normals") else options
                if name in (counts or {}):
                    options = {**options, "calibration": calibration_pixels(base.config, count=counts[name])}
                cache = Path(tmp) / "cache" / name
                models[name] = apply_backend(copy.deepcopy(base), backend, quantize, cache, progress=False, **options)[
                    0
                ]
                setup[name] = time.perf_counter() - start
                if backend in EXPORTED:
                    start = time.perf_counter()
                    apply_backend(copy.deepcopy(base), backend, quantize, cache, progress=False, **options)
                    warm[name] = time.perf_counter() - start
        except Exception as error:  # a path that cannot run here is reported, not fatal
            errors[name] = f"{type(error).__name__}: {error}"[:500]
    return models, setup, warm, errors


def _call(model, pixels, **kwargs):
    return model(pixels.to(next(model.parameters()).dtype), **kwargs)


def _synthetic_eval_set(preset: dict, tmp: str, size: int) -> dict:
    """The synthetic benchmark's test images at the model size (`pixels`, `masks`, `labels`, `classes`) and its
    normal training images (`normals` as PIL for calibrating on the classes' own good images, `normal_pixels` per
    class for the few-shot banks)."""
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
        n_train_good=spec.get("normals_per_class", 1),
        n_test_good=spec["good"],
        n_test_defect_per_kind=spec["defects_per_kind"],
        defect_kinds=spec["kinds"],
        progress=False,
    )
    samples = sorted(load_samples(root, "test"), key=lambda s: s.class_name)  # one class per batch
    processor = AAClipProcessor()
    processor.image_processor.size = {"height": size, "width": size}

    def pixels_of(images: list):
        return processor(images=images, return_tensors="pt")["pixel_values"]

    masks = []
    for s in samples:
        if s.mask_path:
            mask = Image.open(s.mask_path).convert("L").resize((size, size), Image.NEAREST)
            masks.append(np.asarray(mask) > 0)
        else:
            masks.append(np.zeros((size, size), dtype=bool))
    train = load_samples(root, "train")
    normals = [Image.open(s.image_path).convert("RGB") for s in train]
    return {
        "pixels": pixels_of([Image.open(s.image_path).convert("RGB") for s in samples]),
        "masks": np.stack(masks),
        "labels": np.array([s.label for s in samples]),
        "classes": [s.class_name for s in samples],
        "normals": normals,
        "normal_pixels": {
            name: pixels_of([image for image, s in zip(normals, train) if s.class_name == name])
            for name in sorted({s.class_name for s in train})
        },
    }


def _batches(classes: list[str], batch: int) -> list[tuple[str, int, int]]:
    """`(class, first, end)` slices of at most `batch` consecutive images of one class (the bank is per class)."""
    slices, first = [], 0
    while first < len(classes):
        end = first
        while end < len(classes) and end - first < batch and classes[end] == classes[first]:
            end += 1
        slices.append((classes[first], first, end))
        first = end
    return slices


def _accuracy(maps: dict, scores: dict, masks, labels) -> dict:
    """Every path's maps and scores against fp32's on the same images (fp32's AUROCs computed once)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    pixel_labels, reference = masks.ravel(), maps["fp32"].ravel()
    aurocs = {
        name: (roc_auc_score(labels, scores[name]), roc_auc_score(pixel_labels, maps[name].ravel())) for name in maps
    }
    rows = {}
    for name, (image_auroc, pixel_auroc) in aurocs.items():
        flat = maps[name].ravel()
        rows[name] = {
            "image_auroc": float(image_auroc),
            "pixel_auroc": float(pixel_auroc),
            "image_auroc_change_points": 100 * float(image_auroc - aurocs["fp32"][0]),
            "pixel_auroc_change_points": 100 * float(pixel_auroc - aurocs["fp32"][1]),
            "max_abs_map_diff": float(np.abs(flat - reference).max()),
            "mean_abs_map_diff": float(np.abs(flat - reference).mean()),
            "map_correlation": float(np.corrcoef(flat, reference)[0, 1]),
            "map_range_fp32": float(reference.max() - reference.min()),
        }
    return rows


def worker_int8(preset: dict, tmp: str) -> dict:
    """Every path against fp32 on the same weights and synthetic test images, batch by batch side by side: s/image
    at the preset batch, and the accuracy of two settings from the same forward: zero-shot (the summed anomaly maps
    and image scores from the text anchors alone) and few-shot (the maps and scores with a bank of the class's
    normal training images, built once by the fp32 model as `add-references` stores it).

    Random weights leave the zero-shot scores of different images near-tied (fp32 AUROC near chance), so their AUROC
    changes mostly count swaps among ties; the bank's nearest-neighbour distance separates the images even with
    random weights, so the few-shot setting measures what a path's rounding does to a score that carries signal."""
    import numpy as np
    import torch

    from aaclip_hf.modeling.modeling_aaclip import upsample_grid

    spec = preset["int8"]
    config = section_config(preset, "int8")
    size = config.vision_config.image_size
    data = _synthetic_eval_set(preset, tmp, size)
    pixels = data["pixels"]
    names = ["fp32", *spec["paths"]]
    base = random_model(config)
    with torch.inference_mode():
        banks = {name: base.reference_features(images) for name, images in data["normal_pixels"].items()}
    models, setup, warm, errors = _paths(base, names, tmp, calibration=data["normals"])
    batch = spec["batch"]
    seconds = dict.fromkeys(models, 0.0)
    cpu_seconds = dict.fromkeys(models, 0.0)
    settings = ("zero_shot", "few_shot")
    maps: dict = {setting: {name: [] for name in models} for setting in settings}
    scores: dict = {setting: {name: [] for name in models} for setting in settings}
    with torch.inference_mode():
        for model in models.values():  # warm-up (untimed): first-touch pages, session set-up
            _call(model, pixels[:batch])
        for class_name, first, end in _batches(data["classes"], batch):
            chunk = pixels[first:end]
            for name, model in models.items():  # interleaved: load changes hit every path alike
                # a stored bank is kept in the model's dtype (the checked loader casts it), as here
                bank = banks[class_name].to(next(model.parameters()).dtype)
                cpu, start = time.process_time(), time.perf_counter()
                out = _call(model, chunk, output_size=size, references=bank)
                seconds[name] += time.perf_counter() - start
                cpu_seconds[name] += time.process_time() - cpu
                zero_shot = model.image_scores(
                    model.anomaly_probability(out.anomaly_map_grid), out.image_embeds, out.text_anchors
                )[0]
                maps["zero_shot"][name].append(out.anomaly_map.float().numpy())
                scores["zero_shot"][name].append(zero_shot.float().numpy())
                maps["few_shot"][name].append(upsample_grid(out.anomaly_probability_grid, size).float().numpy())
                scores["few_shot"][name].append(out.image_score.float().numpy())
    masks, labels, n = data["masks"], data["labels"], len(pixels)
    accuracy = {
        setting: _accuracy(
            {k: np.concatenate(v) for k, v in maps[setting].items()},
            {k: np.concatenate(v) for k, v in scores[setting].items()},
            masks,
            labels,
        )
        for setting in settings
    }
    variants = {
        name: {
            "seconds_per_image": seconds[name] / n,
            "speedup_vs_fp32": seconds["fp32"] / seconds[name],
            "cpu_seconds_per_image": cpu_seconds[name] / n,
            "cpu_speedup_vs_fp32": cpu_seconds["fp32"] / cpu_seconds[name],
            **accuracy["zero_shot"][name],
            "few_shot": accuracy["few_shot"][name],
        }
        for name in models
    }
    return {
        "image_size": size,
        "num_images": n,
        "num_anomalous": int(labels.sum()),
        "calibration_normals": len(data["normals"]),
        "references_per_class": spec.get("normals_per_class", 1),
        "batch_size": batch,
        "setup_seconds": setup,
        "warm_setup_seconds": warm,
        "errors": errors,
        "num_pixels": int(masks.size),
        "anomalous_pixels": int(masks.sum()),
        "variants": variants,
    }


def worker_int8_speed(preset: dict, tmp: str) -> dict:
    """Every path's speed at the preset's full image size (ViT-L/14 518 px) and batch sizes, on the same weights: one
    warm-up call each, then `rounds` interleaved rounds per batch size (best round counts); the first run's set-up
    (export, calibration, quantisation) and a warm set-up from its cache; and what `--dtype auto` picks here."""
    import torch

    from aaclip_hf.runtime.cpu import cpu_flags
    from aaclip_hf.runtime.devices import choose_cpu_dtype

    spec = preset["int8_speed"]
    config = preset_config(preset, include_text_model=False)
    size = config.vision_config.image_size
    choice = choose_cpu_dtype().to_dict()  # the probe, before anything else loads the machine
    names = ["fp32", *spec["paths"]]
    counts = spec.get("calibration_images")
    models, setup, warm, errors = _paths(random_model(config), names, tmp, counts=counts)
    batches: dict[str, Any] = {}
    with torch.inference_mode():
        for batch in spec["batches"]:
            pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            for model in models.values():
                _call(model, pixels)  # warm-up (untimed) at this batch size
            rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
            for _ in range(spec["rounds"]):
                for name, model in models.items():
                    cpu, start = time.process_time(), time.perf_counter()
                    _call(model, pixels)
                    rounds[name].append((time.perf_counter() - start, time.process_time() - cpu))
            best = {name: min(values) for name, values in rounds.items()}
            batches[str(batch)] = {
                name: {
                    "seconds_per_image": wall / batch,
                    "cpu_seconds_per_image": cpu / batch,
                    "speedup_vs_fp32": best["fp32"][0] / wall,
                    "cpu_speedup_vs_fp32": best["fp32"][1] / cpu,
                    "rounds_seconds": [value[0] for value in rounds[name]],
                }
                for name, (wall, cpu) in best.items()
            }
    return {
        "image_size": size,
        "batches": batches,
        "batch_sizes": spec["batches"],
        "rounds": spec["rounds"],
        "setup_seconds": setup,
        "warm_setup_seconds": warm,
        "errors": errors,
        "calibration_images": counts or {},
        "dtype_auto": choice,
        "cpu_flags": sorted(cpu_flags()),
    }


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
    """Eager fp32 vs torch.compile vs ONNX Runtime vs OpenVINO (fp32): set-up (compile / export) time and s/image at
    each batch. Per backend and batch the first call is timed on its own (for compile it includes compiling that
    shape); the steady calls then run interleaved, `repeats` rounds of one call per backend (best counts)."""
    import os

    import torch

    from aaclip_hf.runtime.backends import apply_backend

    spec = preset["backends"]
    # A cold inductor cache, so the first calls of `compile` include its real compile time.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor_cache")
    config = section_config(preset, "backends")
    size = config.vision_config.image_size
    base = random_model(config)
    names = ["torch", "onnx", "openvino"] + (["compile"] if spec.get("compile") else [])
    out: dict[str, Any] = {"batches": spec["batches"], "image_size": size, "repeats": spec["repeats"], "backends": {}}
    models = {}
    for name in names:
        start = time.perf_counter()
        try:
            models[name] = apply_backend(
                copy.deepcopy(base), name, cache_dir=Path(tmp) / "cache" / name, progress=False
            )[0]
        except Exception as error:  # a backend that cannot run here is reported, not fatal
            out["backends"][name] = {"error": f"{type(error).__name__}: {error}"[:500]}
            continue
        out["backends"][name] = {"setup_seconds": time.perf_counter() - start, "batches": {}}
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

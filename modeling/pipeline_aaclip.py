# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""The `zero-shot-anomaly-detection` pipeline for AA-CLIP.

```python
>>> from transformers import pipeline
>>> detector = pipeline("zero-shot-anomaly-detection", model="org/aaclip-model", trust_remote_code=True)
>>> result = detector("bottle.png", class_name="bottle")
>>> result["score"], result["label"], result["mask"].size  # mask: PIL "L", 255 = anomalous, at the image's size
>>> result["anomaly_map"].shape, result["anomaly_probability"].max()  # (H, W) numpy maps; probability in [0, 1]
```

This file is pushed to the Hub next to the model (`config.custom_pipelines`), so it imports only torch,
transformers, numpy, PIL and its flat siblings: the Hub copy and the installed copy behave the same.

The pipeline never writes into the model: anchors of class names the model has not stored are computed
with the processor's prompt ensemble and kept in this pipeline instance.
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import Pipeline
from transformers.image_utils import load_image
from transformers.utils.hub import is_offline_mode

from .configuration_aaclip import (
    GENERIC_CLASS,
    StaleAnchorsWarning,
    UnknownClassNameWarning,
    check_class_name,
    image_to_rgb,
    load_rgb_image,
)


# One pipeline input: a PIL image, an (H, W[, C]) array, a file path or URL, or {"image": ..., "class_name": ...}.
PipelineInput = Image.Image | np.ndarray | str | os.PathLike | dict


TASK = "zero-shot-anomaly-detection"
# Used only when neither the call nor `config.decision_threshold` (set by `aaclip calibrate`) gives one: the
# image score is in [0, 1] and 0.5 is its midpoint (for the map part, an anomaly logit of 0).
DEFAULT_THRESHOLD = 0.5
LABELS = ("normal", "anomaly")
# How many spelling suggestions an unknown class name gets.
CLOSE_MATCHES = 3
# Values of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE that switch the network off (huggingface_hub's reading).
OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")


class _NoDefaultModel(str):
    """The registry's `default=` model for this task: AA-CLIP has no canonical checkpoint, so `pipeline(TASK)`
    without `model=` must say so. transformers unpacks `(model, revision)` from the default; that unpacking
    raises this clear error instead of a `KeyError 'default'`. A `str` so that a saved registry entry stays JSON."""

    def __iter__(self):
        raise ValueError(
            f"the {TASK!r} pipeline has no default model: pass one, e.g. "
            f"pipeline({TASK!r}, model='path/or/org-name', trust_remote_code=True)"
        )


NO_DEFAULT_MODEL = _NoDefaultModel("no default model: pass model=")


def anomaly_probability(anomaly_map: np.ndarray | torch.Tensor, num_levels: int) -> np.ndarray:
    """Per-pixel anomaly probability `sigmoid(2 * map / L - 1)` of a summed `L`-level map, in [0, 1].

    The map sums `L` softmax anomaly probabilities, so `2 * map / L - 1` is the level-averaged logit: its sigmoid is
    what the model's `"map"` image score takes the maximum of. The one definition the pipeline, `aaclip detect`
    and the app share."""
    values = torch.as_tensor(np.asarray(anomaly_map), dtype=torch.float64)
    return torch.sigmoid(2.0 * values / num_levels - 1.0).numpy().astype(np.float32)


def decision_pixel_threshold(config, threshold: float, raw_score: float, domain: str | None = None) -> float:
    """The level of `anomaly_probability` above which a pixel alone makes the image score reach `threshold`.

    `"map"` score: `p >= t`. `"fused"` score `w * p + (1 - w) * r` (r the image branch's raw score, w
    `config.image_score_map_weight`): `p >= (t - (1 - w) * r) / w`. `"raw"` score: the map plays no part, so no
    pixel decides (`inf`: an empty mask)."""
    mode = config.image_score_mode[domain or config.default_domain]
    if mode == "map":
        return threshold
    if mode == "raw":
        return math.inf
    weight = config.image_score_map_weight
    return (threshold - (1.0 - weight) * raw_score) / weight if weight > 0 else math.inf


def _offline() -> bool:
    """Offline mode as the environment says now (huggingface_hub reads it once, at import)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return is_offline_mode() or any(flag.upper() in OFFLINE_VALUES for flag in flags)


def _to_pil(image: Any, timeout: float | None = None) -> Image.Image:
    """A path/URL, PIL image, numpy array or torch tensor -> an RGB PIL image (EXIF orientation applied)."""
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(("http://", "https://", "data:image/")):
            remote = image.startswith(("http://", "https://"))
            if remote and _offline():
                raise ValueError(
                    f"cannot fetch URL {image[:200]!r}: offline (HF_HUB_OFFLINE is set); pass a local file"
                )
            try:
                return load_image(image, timeout=timeout)
            except (OSError, ValueError) as error:  # UnidentifiedImageError and truncated data are OSErrors
                raise ValueError(f"image {image[:200]!r}: not a complete, readable image ({error})") from None
            except Exception as error:  # the HTTP client's own errors (no route, DNS, timeout): name the URL
                if not remote:
                    raise
                raise ValueError(f"cannot fetch URL {image[:200]!r}: {type(error).__name__}: {error}") from None
        return load_rgb_image(image)  # 16-bit scaled, alpha on black, errors name the file
    if isinstance(image, Image.Image):
        return image_to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # channels first (torchvision layout) -> channels last
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(f"image array must be (H, W), (H, W, 3|4) or (3|4, H, W), got shape {tuple(image.shape)}")
        if array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating):
                if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
                    raise ValueError(
                        "float image arrays must hold values in [0, 1] (scale them or pass uint8 0..255), "
                        f"got range [{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]"
                    )
                array = np.rint(np.nan_to_num(array) * 255.0)
            elif array.size and (array.min() < 0 or array.max() > 255):
                raise ValueError(f"integer image arrays must hold values in 0..255, got dtype {array.dtype}")
            array = array.astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    raise TypeError(f"image must be a path, URL, PIL.Image, numpy array or torch tensor, got {type(image).__name__}")


class AAClipAnomalyDetectionPipeline(Pipeline):
    r"""
    Zero-shot anomaly detection and segmentation with AA-CLIP.

    Call arguments:
        inputs: an image (path, URL, `PIL.Image`, `numpy` array `(H, W[, C])` uint8 or float in [0, 1], torch tensor
            `(C, H, W)`), a list of them, or dicts `{"image": ..., "class_name": ...}`.
        class_name (`str` or `list[str]`, *optional*): the object class, one for all images or one per image
            (mixed classes batch fine). Defaults to the generic `"object"`. Anchors of classes the model has not
            stored are computed once with the processor's prompt ensemble and cached in this pipeline (the model
            is never changed). A name that is neither stored nor in the processor's class-name table is used as
            written, with an `UnknownClassNameWarning` that shows its prompt (typo protection).
        threshold (`float`, *optional*): decision threshold on `score`. Defaults to `config.decision_threshold`
            (written by `aaclip calibrate`), else 0.5.
        domain (`str`, *optional*): `"industrial"` or `"medical"` smoothing and image score (config default).
        pixel_threshold (`float` in [0, 1], *optional*): level of `anomaly_probability` for `mask`. Defaults to the
            decision-region rule (`decision_pixel_threshold`): the level at which a pixel by itself makes the image
            score reach `threshold` (`"map"` score: `threshold`; `"fused"`: `(t - (1 - w) * raw) / w`; `"raw"`: none,
            an empty mask).
        return_tensors (`bool`, *optional*, defaults to `False`): `anomaly_map` and `anomaly_probability` as torch
            tensors instead of numpy.
        batch_size (`int`, *optional*): images per forward pass. Default for a list: `choose_batch_size` (from the
            device and its free memory); pass `batch_size=` to the call or to `pipeline(...)` to fix it.

    Returns, per image, a dict in the image-segmentation style (`score`, `label`, `mask`):
        - `score` (`float` in [0, 1]): the model's per-image anomaly score (`AAClipOutput.image_score`; it depends
          on this image only).
        - `label` (`"anomaly"` or `"normal"`): `score >= threshold`; `is_anomaly` (`bool`) says the same.
        - `mask` (`PIL.Image`, mode `"L"`, the input image's size): 255 where `anomaly_probability >= pixel_threshold`,
          else 0.
        - `anomaly_map` (`np.ndarray` `(H, W)` float32 at the input image's size): the summed multi-level map,
          bilinearly resized from the patch grid; larger is more anomalous, in [0, L] for L feature levels.
        - `anomaly_probability` (`np.ndarray` `(H, W)` float32 in [0, 1]): `sigmoid(2 * anomaly_map / L - 1)`
          (`anomaly_probability()`), the map part of the image score.
        - `raw_anomaly_score`, `class_name`, `threshold`, `pixel_threshold` (`None` when no pixel decides): for
          bookkeeping.

    `pipeline("zero-shot-anomaly-detection")` without `model=` raises a `ValueError`: there is no default model.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Anchors `(E, 2)` of class names the model has not stored, computed once per pipeline.
        self.anchor_cache: dict[str, torch.Tensor] = {}
        self._prompts_checked = False

    def _sanitize_parameters(
        self,
        class_name: str | Sequence[str] | None = None,
        threshold: float | None = None,
        domain: str | None = None,
        return_tensors: bool | None = None,
        timeout: float | None = None,
        pixel_threshold: float | None = None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"unexpected argument(s) for {TASK}: {sorted(kwargs)}")
        preprocess, forward, postprocess = {}, {}, {}
        if class_name is not None:
            preprocess["class_name"] = class_name
        if timeout is not None:
            preprocess["timeout"] = timeout
        if domain is not None:
            forward["domain"] = domain
            postprocess["domain"] = domain  # the decision region follows the domain's image-score definition
        if pixel_threshold is not None:
            pixel_threshold = float(pixel_threshold)
            if not 0.0 <= pixel_threshold <= 1.0:
                raise ValueError(
                    f"pixel_threshold must be in [0, 1] (anomaly probabilities are), got {pixel_threshold}"
                )
            postprocess["pixel_threshold"] = pixel_threshold
        if threshold is not None:
            threshold = float(threshold)
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be in [0, 1] (scores are), got {threshold}")
            postprocess["threshold"] = threshold
        if return_tensors is not None:
            postprocess["return_tensors"] = bool(return_tensors)
        return preprocess, forward, postprocess

    # ------------------------------------------------------------------ call

    def __call__(self, inputs: PipelineInput | Sequence[PipelineInput], **kwargs: Any) -> dict | list[dict]:
        """Run on one image or a list (see the class docstring). A list `class_name` pairs with a list of images."""
        class_name = kwargs.get("class_name")
        single = not isinstance(inputs, (list, tuple))
        if isinstance(class_name, (list, tuple)):
            images = [inputs] if single else list(inputs)
            if len(class_name) != len(images):
                raise ValueError(f"got {len(class_name)} class names for {len(images)} images")
            inputs = [
                {"image": image["image"] if isinstance(image, dict) else image, "class_name": name}
                for image, name in zip(images, class_name)
            ]
            kwargs.pop("class_name")
        elif not single:
            inputs = list(inputs)
        self._ensure_anchors(self._requested_classes(inputs, kwargs.get("class_name")))
        if kwargs.get("batch_size") is None and self._batch_size is None and not single:
            # Batched by default: as many images per forward as the device and its free memory allow.
            count = len(inputs) if isinstance(inputs, list) else None
            kwargs["batch_size"] = choose_batch_size(self.model.config, self.device, self.model.dtype, count)
        outputs = super().__call__(inputs, **kwargs)
        return outputs[0] if single and isinstance(outputs, list) else outputs

    @staticmethod
    def _requested_classes(inputs, default: str | None) -> list[str]:
        items = inputs if isinstance(inputs, list) else [inputs]
        names = []
        for item in items:
            name = item.get("class_name") if isinstance(item, dict) else None
            name = default if name is None else name
            names.append(check_class_name(GENERIC_CLASS if name is None else name))
        return list(dict.fromkeys(names))

    def _has_stored_anchor(self, name: str) -> bool:
        model = self.model
        if name not in model.stored_class_names:
            return False
        # The generic anchor row exists from construction, but is all zero until it is computed.
        return name != GENERIC_CLASS or bool(model.text_anchors[model.stored_class_names.index(name)].any())

    def _check_prompts_once(self) -> None:
        """Warn when the stored anchors were made with another prompt ensemble than this pipeline's processor."""
        if self._prompts_checked:
            return
        self._prompts_checked = True
        recorded = getattr(self.model.config, "anchor_fingerprint", None)
        if recorded and self.processor is not None and hasattr(self.processor, "prompt_fingerprint"):
            if self.processor.prompt_fingerprint() != recorded.get("prompts"):
                warnings.warn(
                    "the model's stored anchors were computed with another prompt ensemble or class-name table than "
                    "this pipeline's processor holds; stored classes keep their stored anchors. To use this "
                    "processor's prompts, run model.refresh_text_anchors(processor) and save the model.",
                    StaleAnchorsWarning,
                    stacklevel=3,
                )

    def _ensure_anchors(self, class_names: Sequence[str]) -> None:
        """Compute once, and keep in this pipeline, the anchors of classes the model has not stored."""
        self._check_prompts_once()
        model = self.model
        missing = [
            check_class_name(name)
            for name in dict.fromkeys(class_names)
            if name not in self.anchor_cache and not self._has_stored_anchor(name)
        ]
        if not missing:
            return
        stored = model.stored_class_names
        if not getattr(model.config, "include_text_model", True):
            raise ValueError(
                f"class(es) {missing} have no stored anchors and this inference-only model has no text tower; "
                f"use one of {stored} or load the full model"
            )
        if self.processor is None or not hasattr(self.processor, "tokenize_prompts"):
            raise ValueError(f"class(es) {missing} need anchors but the pipeline has no AA-CLIP processor")
        for name in missing:
            if name not in stored and not self.processor.is_known_class(name):
                _, anomaly = self.processor.build_prompts(name)
                known = stored + sorted(self.processor.class_name_table)
                close = difflib.get_close_matches(name, known, n=CLOSE_MATCHES)
                warnings.warn(
                    f"class name {name!r} is neither stored in the model nor in the processor's class-name table; "
                    f"it is used as written, e.g. in the prompt {anomaly[0]!r}"
                    + (f". Did you mean one of {close}?" if close else ""),
                    UnknownClassNameWarning,
                    stacklevel=3,
                )
        with torch.no_grad():
            anchors = model.compute_text_anchors(missing, self.processor.tokenize_prompts(missing))
        self.anchor_cache.update(zip(missing, anchors))

    def _anchors(self, names: Sequence[str]) -> torch.Tensor:
        """`(B, E, 2)` anchors per item: from this pipeline's cache, else the model's stored table."""
        return torch.stack(
            [
                self.anchor_cache[name] if name in self.anchor_cache else self.model.anchors_for([name])[0]
                for name in names
            ]
        )

    # ------------------------------------------------------------------ steps

    def preprocess(self, inputs: PipelineInput, class_name: str | None = None, timeout: float | None = None) -> dict:
        if isinstance(inputs, dict):
            if "image" not in inputs:
                raise ValueError(f"dict inputs need an 'image' key, got keys {sorted(inputs)}")
            class_name = inputs["class_name"] if inputs.get("class_name") is not None else class_name
            inputs = inputs["image"]
        if class_name is not None:
            check_class_name(class_name)
        image = _to_pil(inputs, timeout=timeout)
        pixel_values = self.processor(images=[image], return_tensors="pt")["pixel_values"]
        return {
            "pixel_values": pixel_values,
            "class_name": GENERIC_CLASS if class_name is None else class_name,
            "target_size": (image.height, image.width),
        }

    def _forward(self, model_inputs: dict, domain: str | None = None) -> dict:
        names = model_inputs["class_name"]
        names = [names] if isinstance(names, str) else list(names)
        self._ensure_anchors(list(dict.fromkeys(names)))  # no-op unless inputs came from a generator or dataset
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        # Grid-level maps only: postprocess resizes them straight to each image's own size.
        outputs = self.model(pixel_values=pixel_values, text_anchors=self._anchors(names), domain=domain)
        return {
            "anomaly_map_grid": outputs.anomaly_map_grid.float(),
            "image_score": outputs.image_score.float(),
            "raw_anomaly_score": outputs.raw_anomaly_score.float(),
            "target_size": model_inputs["target_size"],
            "class_name": model_inputs["class_name"],
        }

    def postprocess(
        self,
        model_outputs: dict,
        threshold: float | None = None,
        return_tensors: bool = False,
        pixel_threshold: float | None = None,
        domain: str | None = None,
    ) -> dict:
        if threshold is None:
            threshold = getattr(self.model.config, "decision_threshold", None)
        if threshold is None:
            threshold = DEFAULT_THRESHOLD
        grids = model_outputs["anomaly_map_grid"]
        outputs = SimpleNamespace(
            anomaly_map_grid=grids.reshape(-1, *grids.shape[-2:]),
            image_score=model_outputs["image_score"].reshape(-1),
            raw_anomaly_score=model_outputs["raw_anomaly_score"].reshape(-1),
        )
        size = tuple(int(v) for v in model_outputs["target_size"])
        result = self.processor.post_process_anomaly_detection(outputs, target_sizes=[size], threshold=threshold)[0]
        name = model_outputs["class_name"]
        anomaly_map = result["anomaly_map"]
        probability = anomaly_probability(anomaly_map, self.model.config.num_levels)
        level = pixel_threshold
        if level is None:
            level = decision_pixel_threshold(self.model.config, threshold, result["raw_anomaly_score"], domain)
        mask = Image.fromarray(np.where(probability >= level, 255, 0).astype(np.uint8))  # mode "L"
        return {
            "score": result["score"],
            "label": LABELS[int(result["is_anomaly"])],
            "mask": mask,
            "anomaly_map": anomaly_map if return_tensors else anomaly_map.numpy().astype(np.float32, copy=False),
            "anomaly_probability": torch.from_numpy(probability) if return_tensors else probability,
            "is_anomaly": bool(result["is_anomaly"]),
            "raw_anomaly_score": result["raw_anomaly_score"],
            "class_name": name if isinstance(name, str) else name[0],
            "threshold": float(threshold),
            "pixel_threshold": float(level) if math.isfinite(level) else None,
        }


# ---------------------------------------------------------------------- batch size from device and free memory
# Largest automatic batch per device type. CPU: fp32 matmul efficiency rises from batch 1 to 4 (72 % of the
# measured peak at ViT-L/14 518 px, docs/performance.md) and larger batches add only memory and latency;
# GPUs keep gaining up to a few dozen images.
MAX_AUTO_BATCH_SIZE = {"cpu": 4, "cuda": 32, "mps": 8}
# Share of the free memory an automatic batch may fill with activations (the rest: allocator slack, other jobs).
AUTO_BATCH_MEMORY_FRACTION = 0.5


def inference_activation_bytes(config, batch_size: int = 1, dtype_bytes: int = 4, fused_attention: bool = True) -> int:
    """Peak live activation bytes of an inference forward (vision side, stored anchors), by a simple model.

    Layers run one after the other and free their temporaries, so the peak is the hidden states the model keeps
    (one `T x D` per feature layer, plus the residual stream) plus one layer's working set: layer-norm output,
    q, k, v, attention output and out-projection (6 x `T x D`), and the MLP's fc1 and GELU outputs (2 x `T x F`).
    Eager attention also holds the scores and probabilities (2 x heads x `T^2`); a fused kernel does not. The
    seg/det heads' `N x E` outputs are small but counted. The model (weights) is not included.
    """
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens, width = patches + 1, vision.hidden_size
    kept = (len(config.feature_layers) + 1) * tokens * width
    layer = 6 * tokens * width + 2 * tokens * vision.intermediate_size
    if not fused_attention:
        layer += 2 * vision.num_attention_heads * tokens * tokens
    heads = (len(config.feature_layers) + 1) * patches * config.projection_dim
    return (kept + layer + heads) * dtype_bytes * batch_size


def free_memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """Free memory on `device`: CUDA's `mem_get_info`; on CPU (and MPS, whose memory is shared) the smaller of
    `MemAvailable` and the cgroup's remaining limit. `None` when it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(device)[0])
    values = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    values.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            values.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    if not values and hasattr(os, "sysconf"):
        try:
            values.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(values) if values else None


def choose_batch_size(
    config,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_images: int | None = None,
    free_bytes: int | None = None,
    max_batch_size: int | None = None,
    memory_fraction: float = AUTO_BATCH_MEMORY_FRACTION,
) -> int:
    """Images per forward from the device and its free memory (`--batch-size auto`).

    The largest batch up to `max_batch_size` (default `MAX_AUTO_BATCH_SIZE` for the device type) whose
    `inference_activation_bytes` fit in `memory_fraction` of `free_bytes` (default: measured now), at least 1.
    With `num_images`, never more than that, and balanced: 5 images at a limit of 4 run as 3 + 2, not 4 + 1.
    """
    device = torch.device(device)
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    limit = MAX_AUTO_BATCH_SIZE.get(device.type, 1) if max_batch_size is None else int(max_batch_size)
    if limit < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    free = free_memory_bytes(device) if free_bytes is None else int(free_bytes)
    fused = getattr(config.vision_config, "_attn_implementation", "sdpa") != "eager"
    per_image = inference_activation_bytes(config, 1, torch.finfo(dtype).bits // 8, fused_attention=fused)
    if free is not None:
        limit = min(limit, max(int(memory_fraction * free) // per_image, 1))
    if num_images is None:
        return limit
    limit = min(limit, num_images)
    batches = -(-num_images // limit)
    return -(-num_images // batches)


__all__ = [
    "AAClipAnomalyDetectionPipeline",
    "NO_DEFAULT_MODEL",
    "TASK",
    "anomaly_probability",
    "choose_batch_size",
    "decision_pixel_threshold",
    "free_memory_bytes",
    "inference_activation_bytes",
]

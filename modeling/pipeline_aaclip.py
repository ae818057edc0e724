# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""The `zero-shot-anomaly-detection` pipeline for AA-CLIP.

```python
>>> from transformers import pipeline
>>> detector = pipeline("zero-shot-anomaly-detection", model="org/aaclip-model")  # trust_remote_code=True without aaclip_hf
>>> result = detector("bottle.png", class_name="bottle")
>>> result["score"], result["label"], result["threshold"], result["mask"].size
>>> detector("bottle.png", class_name="bottle", reference_images=["good1.png", "good2.png"])  # few-shot
```

The pipeline never writes into the model: anchors of class names the model has not stored are computed with the
processor's prompt ensemble and kept in this pipeline instance. Stored normal references of a class are used
automatically (`use_references=False` turns them off); `reference_images` gives references for one call.
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

from .configuration_aaclip import (
    GENERIC_CLASS,
    TASK,
    InvalidInputError,
    StaleAnchorsWarning,
    UnknownClassNameWarning,
    check_class_name,
)
from .image_processing_aaclip import check_not_empty


# How many spelling suggestions an unknown class name gets.
CLOSE_MATCHES = 3
# Model outputs the post-processing reads, per image.
KEPT_OUTPUTS = (
    "anomaly_map_grid",
    "anomaly_probability_grid",
    "image_score",
    "map_score",
    "raw_anomaly_score",
    "map_weight",
)


class _NoDefaultModel(str):
    """The registry's `default=` model: AA-CLIP has no canonical checkpoint, so `pipeline(TASK)` without `model=` says
    so (transformers unpacks `(model, revision)` from the default; this unpacking raises). A `str`, so a saved
    registry entry stays JSON."""

    def __iter__(self):
        raise InvalidInputError(
            f"the {TASK!r} pipeline has no default model: pass one, e.g. pipeline({TASK!r}, model=...)"
        )


NO_DEFAULT_MODEL = _NoDefaultModel("no default model: pass model=")


def to_pil_image(image: Any, timeout: float | None = None) -> Image.Image:
    """A path or URL, PIL image, `(H, W[, C])` uint8 or [0, 1] float array, or `(C, H, W)` tensor -> a PIL image in
    its own mode (the image processor converts it to RGB); EXIF orientation applied."""
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(("http://", "https://", "data:image/")):
            return _fetch(image, timeout)
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{image}: no such image file")
        try:
            with Image.open(image) as opened:
                opened.load()
                return ImageOps.exif_transpose(opened)
        except (OSError, SyntaxError) as error:
            raise InvalidInputError(f"{image}: not a readable image file ({error})") from None
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy() if image.is_floating_point() else image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image must be a path, URL, PIL.Image, array or tensor, got {type(image).__name__}")
    array = image
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first (torchvision layout) -> channels last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidInputError(
            f"image array must be (H, W), (H, W, 3|4) or (3|4, H, W), got shape {tuple(image.shape)}"
        )
    check_not_empty(array.shape[1], array.shape[0])
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidInputError("image array holds NaN/inf values; expected finite intensities")
        if array.min() < 0 or array.max() > 1:
            raise InvalidInputError(
                f"float image arrays must hold values in [0, 1], got [{array.min()}, {array.max()}]"
            )
        array = np.rint(array * 255.0)
    elif array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
        raise InvalidInputError(f"integer image arrays must hold values in 0..255, got dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def _fetch(url: str, timeout: float | None) -> Image.Image:
    """An image URL (or `data:` URI) through transformers' `load_image`; every failure names the URL in one line."""
    shown = repr(url[:200])
    remote = url.startswith(("http://", "https://"))
    offline = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    if remote and offline.upper() in ("1", "ON", "YES", "TRUE"):
        raise InvalidInputError(f"cannot fetch URL {shown}: offline (HF_HUB_OFFLINE is set); pass a local file")
    try:
        return load_image(url, timeout=timeout)
    except Exception as error:  # the HTTP client's own errors (no route, DNS, timeout) and undecodable data
        raise InvalidInputError(f"cannot fetch URL {shown}: {type(error).__name__}: {error}") from None


class AAClipAnomalyDetectionPipeline(Pipeline):
    r"""
    Zero- and few-shot anomaly detection and segmentation with AA-CLIP.

    Call arguments:
        inputs: an image (path, URL, `PIL.Image`, array, tensor), a list of them, or dicts `{"image": ...,
            "class_name": ..., "name": ...}` (`name` labels the image in error messages).
        class_name (`str` or `list[str]`, *optional*): the object class, one for all images or one per image.
            Defaults to the generic `"object"`. Classes the model has not stored get anchors from the processor's
            prompt ensemble (cached here; the model is never changed); a name that is neither stored nor in the
            class-name table warns (`UnknownClassNameWarning`), showing its prompt.
        threshold (`float`, *optional*): decision threshold on `score`. Default: the class's calibrated threshold
            (`config.decision_thresholds`) when it was calibrated on this scoring (`AAClipModel.decision_threshold`:
            same weights, anchors, references and domain), else `config.decision_threshold`, else 0.5.
        reference_images (list of images, *optional*): normal images of the call's one class: their patches form a
            reference bank for this call (few-shot).
        use_references (`bool`, defaults to `True`): use the class's stored references, when it has some.
        domain (`str`, *optional*): `"industrial"` or `"medical"` smoothing and image score (config default).
        pixel_threshold (`float` in [0, 1], *optional*): a fixed anomaly-probability level for `mask`.
        return_tensors (`bool`, defaults to `False`): maps as torch tensors instead of numpy arrays.
        batch_size (`int`, *optional*): images per forward pass.

    Returns per image the keys of `AAClipProcessor.post_process_anomaly_detection` (`score`, `label`, `is_anomaly`,
    `threshold`, `mask`, `anomaly_map`, `anomaly_probability` (0.5 = decision), ...) and `class_name`, `calibrated`
    (whether the threshold is the class's own) and `normal_references` (reference images used, 0 for zero-shot).
    """

    # The processor carries everything. Loading nothing else matters: transformers derives a video processor from the
    # image processor's `auto_map` and would otherwise ask on the terminal whether to run the folder's code.
    _load_processor = True
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model_size = self.model.config.vision_config.image_size
        if tuple(self.processor.image_size) != (model_size, model_size):
            raise InvalidInputError(
                f"the processor resizes to {self.processor.image_size} but the model expects {model_size}x{model_size}"
            )
        self.anchor_cache: dict[str, torch.Tensor] = {}
        self._prompts_checked = False
        self._prompt_fingerprint = self.processor.prompt_fingerprint()

    def save_pretrained(self, save_directory, **kwargs):
        """transformers' `Pipeline.save_pretrained` (model, pipeline code, `custom_pipelines`) plus the processor,
        which it leaves out: the folder then loads as this pipeline anywhere."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)

    def _sanitize_parameters(
        self,
        threshold=None,
        domain=None,
        return_tensors=None,
        timeout=None,
        pixel_threshold=None,
        reference_images=None,
        use_references=None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"unexpected argument(s) for {TASK}: {sorted(kwargs)}")
        preprocess, forward, postprocess = {}, {}, {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if domain is not None:
            forward["domain"] = domain
        for name, value in (("threshold", threshold), ("pixel_threshold", pixel_threshold)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                    raise InvalidInputError(f"{name} must be a number in [0, 1], got {value!r}")
                postprocess[name] = float(value)
        if return_tensors is not None:
            postprocess["return_tensors"] = bool(return_tensors)
        if use_references is not None:
            forward["use_references"] = bool(use_references)
        if reference_images is not None:
            forward["reference_images"] = reference_images
        return preprocess, forward, postprocess

    def __call__(self, inputs, **kwargs: Any) -> dict | list[dict]:
        """Run on one image, a list, or a stream (a generator or dataset) of them (see the class docstring). A list
        `class_name` pairs with a list of images."""
        class_name = kwargs.pop("class_name", None)
        if _is_stream(inputs):  # classes are resolved item by item, in `_forward`
            names = {class_name} if isinstance(class_name, str) else set()
            if kwargs.get("reference_images") is not None:
                kwargs["reference_images"] = self._reference_bank(
                    kwargs["reference_images"], names, kwargs.get("timeout")
                )
            return super().__call__((_item(item, class_name) for item in inputs), **kwargs)
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        names = class_name if isinstance(class_name, (list, tuple)) else [class_name] * len(items)
        if len(names) != len(items):
            raise InvalidInputError(f"got {len(names)} class names for {len(items)} images")
        items = [_item(item, name) for item, name in zip(items, names)]
        self._ensure_anchors([item["class_name"] for item in items])
        if kwargs.get("reference_images") is not None:
            classes = {item["class_name"] for item in items}
            kwargs["reference_images"] = self._reference_bank(
                kwargs["reference_images"], classes, kwargs.get("timeout")
            )
        outputs = super().__call__(items, **kwargs)
        return outputs[0] if single else outputs

    # ------------------------------------------------------------------ anchors and references

    def _check_prompts_once(self) -> None:
        """Warn when the stored anchors were made with another prompt ensemble than this pipeline's processor."""
        if self._prompts_checked:
            return
        self._prompts_checked = True
        recorded = self.model.config.anchor_fingerprint or {}
        if recorded.get("prompts") not in (None, "external", self.processor.prompt_fingerprint()):
            warnings.warn(
                "the model's stored anchors were computed with another prompt ensemble or class-name table than this "
                "pipeline's processor holds; stored classes keep their stored anchors. To use this processor's "
                "prompts, run model.refresh_text_anchors(processor) and save the model.",
                StaleAnchorsWarning,
                stacklevel=3,
            )

    def _ensure_anchors(self, class_names: Sequence[str]) -> None:
        """Compute once, and keep in this pipeline, the anchors of classes the model has not stored."""
        self._check_prompts_once()
        stored = self.model.stored_class_names
        computed = [name for name, row in zip(stored, self.model.text_anchors) if bool(row.any())]
        missing = [
            name for name in dict.fromkeys(class_names) if name not in computed and name not in self.anchor_cache
        ]
        if not missing:
            return
        if not self.model.config.include_text_model:
            raise InvalidInputError(
                f"class(es) {missing} have no stored anchors and this inference-only model has no text tower; use one "
                f"of {stored} or load the full model"
            )
        for name in missing:
            if not self.processor.is_known_class(name):
                close = difflib.get_close_matches(
                    name, stored + sorted(self.processor.class_name_table), n=CLOSE_MATCHES
                )
                warnings.warn(
                    f"class name {name!r} is neither stored in the model nor in the processor's class-name table; it "
                    f"is used as written, e.g. in the prompt {self.processor.build_prompts(name)[1][0]!r}"
                    + (f". Did you mean one of {close}?" if close else ""),
                    UnknownClassNameWarning,
                    stacklevel=3,
                )
        with torch.no_grad():
            anchors = self.model.compute_text_anchors(missing, self.processor.tokenize_prompts(missing))
        self.anchor_cache.update(zip(missing, anchors))

    def _reference_bank(self, images, classes: set[str], timeout) -> tuple[str, int, torch.Tensor]:
        """`(class, K, bank)` of ad hoc reference images, for a call whose images are all of one class."""
        if len(classes) != 1:
            raise InvalidInputError(
                f"reference_images belong to one class; give one class_name for the call (got {sorted(classes)})"
            )
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise InvalidInputError("reference_images is empty; pass at least one normal image of the class")
        pixels = self.processor(images=[to_pil_image(image, timeout) for image in images])["pixel_values"]
        with torch.no_grad():
            bank = self.model.reference_features(pixels.to(self.device, self.model.dtype))
        return classes.pop(), len(images), bank

    # ------------------------------------------------------------------ steps

    def preprocess(self, item: dict, timeout: float | None = None) -> dict:
        image = item.get("image")
        source = item.get("name") or (os.fspath(image) if isinstance(image, (str, os.PathLike)) else "an input image")
        image = to_pil_image(image, timeout)
        return {
            "pixel_values": self.processor(images=[image])["pixel_values"],
            "class_name": item["class_name"],
            "target_size": (image.height, image.width),
            "source": str(source),
        }

    def _forward(self, model_inputs: dict, domain=None, use_references: bool = True, reference_images=None) -> dict:
        names = model_inputs["class_name"]
        names = [names] if isinstance(names, str) else list(names)
        self._ensure_anchors(names)  # inputs from a generator or dataset arrive here first
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        kept = {key: [None] * len(names) for key in KEPT_OUTPUTS}
        counts = [0] * len(names)
        thresholds, calibrated = [math.nan] * len(names), [False] * len(names)
        for name in dict.fromkeys(names):
            index = [i for i, n in enumerate(names) if n == name]
            references, count = self._references(name, use_references, reference_images)
            anchors = self._anchors(name)
            outputs = self.model(pixel_values[index], text_anchors=anchors, references=references, domain=domain)
            for key in KEPT_OUTPUTS:
                for position, i in enumerate(index):
                    kept[key][i] = getattr(outputs, key)[position].float()
            threshold, own = self.model.decision_threshold(name, self._anchor_source(name), references, domain)
            for i in index:
                counts[i], calibrated[i] = count, own
                thresholds[i] = math.nan if threshold is None else threshold
        result = {key: torch.stack(values) for key, values in kept.items()}
        result.update(
            normal_references=torch.tensor(counts),
            class_threshold=torch.tensor(thresholds, dtype=torch.float64),
            calibrated=torch.tensor(calibrated),
            target_size=model_inputs["target_size"],
            class_name=model_inputs["class_name"],
            source=model_inputs["source"],
        )
        return result

    def _anchors(self, name: str) -> torch.Tensor:
        """`(1, E, 2)` anchors of `name`: stored, else computed once by this pipeline (`_ensure_anchors`)."""
        anchors = self.anchor_cache[name][None] if name in self.anchor_cache else self.model.text_anchors_for(name)
        return anchors.to(self.device)

    def scoring_fingerprint(
        self, class_name: str, domain: str | None = None, use_references: bool = True, reference_images=None
    ) -> str:
        """The model's `scoring_fingerprint` for `class_name` as this pipeline scores it: what `aaclip calibrate`
        records with a threshold, so that the threshold is used only for that scoring."""
        self._ensure_anchors([class_name])
        bank = None if reference_images is None else self._reference_bank(reference_images, {class_name}, None)
        references, _ = self._references(class_name, use_references, bank)
        return self.model.scoring_fingerprint(class_name, self._anchor_source(class_name), references, domain)

    def _anchor_source(self, name: str) -> str:
        return self.model.anchor_source(name, None if name not in self.anchor_cache else self._prompt_fingerprint)

    def _references(self, name: str, use_references: bool, reference_images) -> tuple[torch.Tensor | None, int]:
        if reference_images is not None:
            return reference_images[2], reference_images[1]
        record = self.model.config.reference_classes.get(name)
        if not use_references or record is None:
            return None, 0
        return self.model.references_for(name), record["images"]

    def postprocess(self, model_outputs: dict, threshold=None, return_tensors: bool = False, pixel_threshold=None):
        name = model_outputs["class_name"]
        name = name if isinstance(name, str) else name[0]
        source = model_outputs["source"]
        source = source if isinstance(source, str) else source[0]
        outputs = SimpleNamespace(**{key: _one_image(model_outputs[key], key) for key in KEPT_OUTPUTS})
        if not all(math.isfinite(float(getattr(outputs, key)[0])) for key in ("image_score", "raw_anomaly_score")):
            raise InvalidInputError(
                f"{source}: the model gave a non-finite anomaly score (NaN/inf), so no decision can be made; check "
                "the model's weights and config (aaclip info --verify)"
            )
        calibrated = False
        if threshold is None:
            threshold = float(model_outputs["class_threshold"].reshape(-1)[0])
            threshold = None if math.isnan(threshold) else threshold
            calibrated = bool(model_outputs["calibrated"].reshape(-1)[0])
        size = tuple(int(v) for v in model_outputs["target_size"])
        result = self.processor.post_process_anomaly_detection(
            outputs, target_sizes=[size], thresholds=threshold, pixel_threshold=pixel_threshold
        )[0]
        if return_tensors:
            result["anomaly_map"] = torch.from_numpy(result["anomaly_map"])
            result["anomaly_probability"] = torch.from_numpy(result["anomaly_probability"])
        result.update(
            class_name=name,
            calibrated=calibrated,
            normal_references=int(model_outputs["normal_references"].reshape(-1)[0]),
        )
        return result


def _one_image(value: torch.Tensor, key: str) -> torch.Tensor:
    """One image's output with a batch axis of 1, however the pipeline's batching left it."""
    return value.reshape(-1, *value.shape[-2:]) if key.endswith("_grid") else value.reshape(-1)


def _item(item, default_class: str | None) -> dict:
    """One input as `{"image", "class_name"[, "name"]}`: its own class, else the call's, else the generic one."""
    item = item if isinstance(item, dict) else {"image": item}
    if "image" not in item:
        raise InvalidInputError(f"dict inputs need an 'image' key, got keys {sorted(item)}")
    name = item.get("class_name")
    name = default_class if name is None else name
    return {**item, "class_name": check_class_name(GENERIC_CLASS if name is None else name)}


def _is_stream(inputs) -> bool:
    """A generator, iterator or dataset of inputs (not one image, a path, a dict or a list)."""
    single = (str, os.PathLike, dict, list, tuple, Image.Image, np.ndarray, torch.Tensor, bytes)
    return not isinstance(inputs, single) and (hasattr(inputs, "__iter__") or hasattr(inputs, "__next__"))


__all__ = ["NO_DEFAULT_MODEL", "TASK", "AAClipAnomalyDetectionPipeline", "to_pil_image"]

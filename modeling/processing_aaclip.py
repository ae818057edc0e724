# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""AA-CLIP processor: images (`AAClipImageProcessor`), the prompt ensemble and class-name table that make text
anchors, and the post-processing that turns model outputs into decisions, masks and heat maps.

The prompt ensemble and the class-name table are saved with the processor, so a user can edit them and publish them
with the model. Post-processing holds the one definition of the heat map that every surface shows
(`normalize_at_threshold`: 0.5 is the decision boundary).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_aaclip import GENERIC_CLASS, InvalidInputError, check_class_name
from .image_processing_aaclip import AAClipImageProcessor, reference_image_processor


BUNDLED_TOKENIZER_DIR = Path(__file__).parent / "clip_tokenizer"
# The decision threshold on image scores when neither the call nor the model's config gives one: scores lie in
# [0, 1] and 0.5 is their midpoint (for the map part, an anomaly logit of 0).
DEFAULT_THRESHOLD = 0.5
LABELS = ("normal", "anomaly")

# CLIP's text context: prompts longer than this are refused, never truncated.
CONTEXT_LENGTH = 77

# The reference prompt ensemble: sentences = template(state(name)), states in the outer loop.
NORMAL_STATES = ["{}", "a {}", "the {}"]
ANOMALY_STATES = ["a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage"]
TEMPLATES = ["{}.", "a photo of {}."]

# The reference's descriptive class names (MVTec, VisA, MPDD, BTAD, medical). Unknown names use
# themselves with "_" read as a space; "dataset/class" keys fall back to "class".
CLASS_NAME_TABLE = {
    # MVTec-AD
    "bottle": "dark bottle",
    "cable": "top view of three cables",
    "capsule": "black and orange capsule",
    "carpet": "gray carpet",
    "grid": "metal or plastic mesh",
    "hazelnut": "single brown hazelnut",
    "leather": "brown leather",
    "metal_nut": "metal nut which has four notched edges",
    "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
    "screw": "screw",
    "tile": "speckled tile surface",
    "transistor": "a three-legged transistor placed vertically",
    "toothbrush": "toothbrush head",
    "wood": "wood surface",
    "zipper": "a black zipper",
    # VisA
    "candle": "candle",
    "pcb3": "infrared sensor pcb module",
    "capsules": "capsules",
    "pipe_fryum": "pipe-shaped fryum",
    "pcb4": "battery charging pcb module",
    "macaroni2": "scattered yellow macaroni",
    "pcb2": "integrated circuits board",
    "chewinggum": "chewing gum",
    "macaroni1": "orange macaroni",
    "cashew": "cashew nut",
    "fryum": "wheel-shaped fryum snack",
    "pcb1": "dual ultrasonic distance sensor pcb module",
    # MPDD
    "connector": "metal clamps with black adjustment knobs",
    "tubes": "scattered metal objects",
    "metal_plate": "blue rectangular metal plate with a notch on one side",
    "bracket_white": "white, elongated triangular metal bracket with a smooth, matte finish",
    "bracket_brown": "brown L-shaped metal bracket with smooth, glossy finish and multiple mounting holes along its arms",
    "bracket_black": "black ornamental metal bracket with spiral design attached to a rectangular frame",
    # BTAD
    "01": "Bright concentric rings in neon yellow and blue tones against a dark blue background, resembling a "
    "stylized wave or energy field radiating outward.",
    "02": "vertical fabric lines in warm, dusty pink and beige tones",
    "03": "oval concentric circular rings in gradient shades of blue and white",
    # Medical
    "Brain": "scan",
    "Liver": "scan",
    "Retina": "scan",
    "Colon_clinicDB": "colon endoscopy image",
    "Colon_colonDB": "colon endoscopy image",
    "CVC-300": "colon endoscopy image",
    "Kvasir": "colon endoscopy image",
}


def pixel_decision_level(threshold: float, raw_score: float, map_weight: float) -> float:
    """The level of the anomaly probability at which one pixel alone makes the image score reach `threshold`.

    The image score is `w * max(P) + (1 - w) * r` (`AAClipOutput`), so a pixel decides when `P >= (t - (1 - w) r) / w`;
    with `w = 0` (the image branch alone) no pixel decides (`inf`).
    """
    if map_weight <= 0:
        return math.inf
    return (threshold - (1.0 - map_weight) * raw_score) / map_weight


def normalize_at_threshold(probability: np.ndarray, level: float) -> np.ndarray:
    """The heat map every surface shows: the anomaly probability `P` mapped piecewise-linearly so that 0 stays 0, 1
    stays 1 and the decision level becomes 0.5 (anomalib's convention: 0.5 = threshold).

    Below the level `0.5 * P / level`, above it `0.5 + 0.5 * (P - level) / (1 - level)`. A level at or below 0 (the
    image is anomalous whatever its map) gives `0.5 + 0.5 * P`; a level at or above 1 (no pixel can decide) gives
    `0.5 * P`. Heat maps of different images of a class are therefore on one scale: red means "decides".
    """
    probability = np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0)
    if level <= 0.0:
        return 0.5 + 0.5 * probability
    if level >= 1.0:
        return 0.5 * probability
    below = 0.5 * probability / level
    above = 0.5 + 0.5 * (probability - level) / (1.0 - level)
    return np.where(probability < level, below, above).astype(np.float32)


def _resize(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A `(G, G)` grid bilinearly resized (align_corners=True) to `size`, as a float32 array."""
    resized = torch.nn.functional.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=True)
    return resized[0, 0].detach().cpu().numpy().astype(np.float32, copy=False)


class AAClipProcessor(ProcessorMixin):
    r"""
    Wraps an `AAClipImageProcessor` (518 px, bicubic, no crop, OpenAI mean/std) and a `CLIPTokenizer`, and owns the
    prompt ensemble used to build text anchors. `AAClipProcessor()` works offline with the bundled CLIP tokenizer.

    Args:
        image_processor (`AAClipImageProcessor`, *optional*): defaults to the reference preprocessing at 518 px.
        tokenizer (`CLIPTokenizer`, *optional*): defaults to the bundled OpenAI CLIP tokenizer.
        normal_states / anomaly_states (`list[str]`, *optional*): state phrases with one `{}` for the class name.
        templates (`list[str]`, *optional*): sentence templates with one `{}` for the state phrase.
        class_name_table (`dict[str, str]`, *optional*): class key -> descriptive name used in the prompts.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        normal_states: list[str] | None = None,
        anomaly_states: list[str] | None = None,
        templates: list[str] | None = None,
        class_name_table: dict[str, str] | None = None,
        **kwargs,
    ):
        image_processor = image_processor if image_processor is not None else reference_image_processor()
        tokenizer = tokenizer if tokenizer is not None else self.bundled_tokenizer()
        self.normal_states = list(normal_states if normal_states is not None else NORMAL_STATES)
        self.anomaly_states = list(anomaly_states if anomaly_states is not None else ANOMALY_STATES)
        self.templates = list(templates if templates is not None else TEMPLATES)
        self.class_name_table = dict(class_name_table if class_name_table is not None else CLASS_NAME_TABLE)
        for field in ("normal_states", "anomaly_states", "templates"):
            phrases = getattr(self, field)
            if not phrases or any(not isinstance(p, str) or p.count("{}") != 1 for p in phrases):
                raise InvalidInputError(
                    f"{field} must be a non-empty list of phrases with exactly one '{{}}', got {phrases}"
                )
        super().__init__(image_processor, tokenizer, **kwargs)

    @staticmethod
    def bundled_tokenizer() -> CLIPTokenizer:
        if not (BUNDLED_TOKENIZER_DIR / "tokenizer.json").is_file():
            raise OSError(
                f"no tokenizer given and no bundled tokenizer at {BUNDLED_TOKENIZER_DIR}; install aaclip-hf or pass "
                "tokenizer=CLIPTokenizer.from_pretrained(...)"
            )
        return CLIPTokenizer.from_pretrained(str(BUNDLED_TOKENIZER_DIR))

    @classmethod
    def for_model(cls, config, **kwargs) -> AAClipProcessor:
        """The reference preprocessing that fits a model (`config`: an `AAClipConfig` or a model); `kwargs` go to
        `__init__` (prompt ensemble, class-name table, tokenizer)."""
        config = getattr(config, "config", config)
        return cls(image_processor=reference_image_processor(config.vision_config.image_size), **kwargs)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_processor.image_size

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """`pixel_values` for images and/or `input_ids`/`attention_mask` for text (max 77 tokens, never truncated)."""
        if images is None and text is None:
            raise InvalidInputError("AAClipProcessor needs images and/or text")
        data = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **kwargs))
        if text is not None:
            data.update(self.tokenize(text if isinstance(text, list) else [text]))
        return BatchFeature(data, tensor_type=return_tensors)

    def preprocess_masks(self, masks, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Ground-truth masks -> `(B, H, W)` float {0, 1} (`AAClipImageProcessor.preprocess_masks`)."""
        return self.image_processor.preprocess_masks(masks, size)

    # ------------------------------------------------------------------ prompts

    def prompt_name(self, class_name: str) -> str:
        """The descriptive name used in prompts for a class key (`dataset/class` keys fall back to `class`; unknown
        names read `_` as a space)."""
        check_class_name(class_name)
        if class_name == GENERIC_CLASS:
            return GENERIC_CLASS
        short = class_name.rsplit("/", 1)[-1]
        return self.class_name_table.get(class_name, self.class_name_table.get(short, short.replace("_", " ")))

    def is_known_class(self, class_name: str) -> bool:
        """Whether the class-name table (or the generic class) knows `class_name` or its `dataset/` suffix."""
        short = check_class_name(class_name).rsplit("/", 1)[-1]
        return class_name == GENERIC_CLASS or class_name in self.class_name_table or short in self.class_name_table

    def prompt_fingerprint(self) -> str:
        """SHA-256 of the prompt ensemble and class-name table, recorded with the anchors they produce."""
        ensemble = {
            "normal_states": self.normal_states,
            "anomaly_states": self.anomaly_states,
            "templates": self.templates,
            "class_name_table": self.class_name_table,
        }
        return hashlib.sha256(json.dumps(ensemble, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def build_prompts(self, class_name: str) -> tuple[list[str], list[str]]:
        """`(normal_sentences, anomaly_sentences)`: template(state(name)), states in the outer loop."""
        name = self.prompt_name(class_name)

        def sentences(states: list[str]) -> list[str]:
            return [template.format(state.format(name)) for state in states for template in self.templates]

        return sentences(self.normal_states), sentences(self.anomaly_states)

    def tokenize(self, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise with padding to the longest sentence; refuse (never truncate) past the 77-token context."""
        encoded = self.tokenizer(list(sentences), padding=False, truncation=False)
        for sentence, ids in zip(sentences, encoded["input_ids"]):
            if len(ids) > CONTEXT_LENGTH:
                raise InvalidInputError(
                    f"prompt is {len(ids)} tokens, over CLIP's {CONTEXT_LENGTH}-token context: {sentence[:120]!r}. "
                    "Shorten the class name (processor.class_name_table) or the templates."
                )
        return dict(self.tokenizer.pad(encoded, padding="longest", return_tensors="pt"))

    def tokenize_prompts(self, class_names: Sequence[str]) -> dict:
        """All anchor prompts of `class_names`, laid out per class as `[normal..., anomaly...]`: what the model's
        anchor methods take. `num_normal` says where each class's anomaly sentences start; `prompt_fingerprint`
        names the ensemble that made them."""
        if isinstance(class_names, str):
            raise InvalidInputError(f"class_names must be a list of strings, got the string {class_names!r}")
        sentences = []
        for name in class_names:
            normal, anomaly = self.build_prompts(name)
            sentences += normal + anomaly
        encoded = self.tokenize(sentences)
        encoded["num_normal"] = len(self.normal_states) * len(self.templates)
        encoded["prompt_fingerprint"] = self.prompt_fingerprint()
        return encoded

    # ------------------------------------------------------------------ post-processing

    def post_process_anomaly_detection(
        self,
        outputs,
        target_sizes: Sequence[tuple[int, int]] | None = None,
        thresholds: float | Sequence[float | None] | None = None,
        pixel_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """Decisions, maps and masks per image, as the pipeline returns them (no tensor tracks gradients).

        `target_sizes[i]` (default: the input size) is the size of image i's maps. `thresholds`: one decision
        threshold on `image_score` for all images or one per image (`None`: `DEFAULT_THRESHOLD`).
        `pixel_threshold`: a fixed level of the anomaly probability for `mask`, instead of the decision level.

        Per image: `score`, `label` (`"anomaly"` iff `score >= threshold`), `is_anomaly`, `threshold`, `map_score`,
        `raw_anomaly_score`; `anomaly_map` (the zero-shot summed map, reference units) and `anomaly_probability`
        (the heat map in [0, 1], `normalize_at_threshold`: 0.5 = decision) as float32 arrays at the target size;
        `mask` (PIL `"L"`, 255 where the heat map reaches 0.5: the pixels that alone make the image anomalous);
        `pixel_threshold` (that level of the probability, `None` when no pixel decides).
        """
        count = outputs.image_score.shape[0]
        sizes = [self.image_size] * count if target_sizes is None else [tuple(map(int, s)) for s in target_sizes]
        if len(sizes) != count:
            raise InvalidInputError(f"got {len(sizes)} target sizes for {count} images")
        if thresholds is None or isinstance(thresholds, (int, float)):
            thresholds = [thresholds] * count
        if len(thresholds) != count:
            raise InvalidInputError(f"got {len(thresholds)} thresholds for {count} images")
        return [self._post_process_one(outputs, i, sizes[i], thresholds[i], pixel_threshold) for i in range(count)]

    def _post_process_one(self, outputs, index: int, size, threshold, pixel_threshold) -> dict[str, Any]:
        threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        score, raw = float(outputs.image_score[index]), float(outputs.raw_anomaly_score[index])
        level = pixel_threshold
        if level is None:
            level = pixel_decision_level(threshold, raw, float(outputs.map_weight[index]))
        probability = _resize(outputs.anomaly_probability_grid[index], size)
        heat = normalize_at_threshold(probability, level)
        is_anomaly = score >= threshold
        return {
            "score": score,
            "label": LABELS[int(is_anomaly)],
            "is_anomaly": is_anomaly,
            "threshold": threshold,
            "map_score": float(outputs.map_score[index]),
            "raw_anomaly_score": raw,
            "anomaly_map": _resize(outputs.anomaly_map_grid[index], size),
            "anomaly_probability": heat,
            "mask": Image.fromarray(np.where(heat >= 0.5, 255, 0).astype(np.uint8)),
            "pixel_threshold": float(level) if math.isfinite(level) else None,
        }


AAClipProcessor.register_for_auto_class()

__all__ = [
    "ANOMALY_STATES",
    "CLASS_NAME_TABLE",
    "DEFAULT_THRESHOLD",
    "LABELS",
    "NORMAL_STATES",
    "TEMPLATES",
    "AAClipImageProcessor",
    "AAClipProcessor",
    "normalize_at_threshold",
    "pixel_decision_level",
]

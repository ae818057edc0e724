# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""AA-CLIP processor: image and mask preprocessing, the prompt ensemble, and post-processing.

Images follow the reference exactly (PIL bicubic resize to a square, no crop, OpenAI mean/std).
The prompt ensemble and the class-name table (SPEC section 3) are saved with the processor, so a
user can edit them and push them with the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_aaclip import DEFAULT_IMAGE_SIZE, GENERIC_CLASS, binarize_mask, check_class_name, image_to_rgb
from .modeling_aaclip import AAClipOutput, upsample_grid


# What the processor accepts: one image (or mask) as PIL, or an (H, W[, C]) array or tensor.
ImageInput = Image.Image | np.ndarray | torch.Tensor
MaskInput = Image.Image | np.ndarray | torch.Tensor


CONTEXT_LENGTH = 77
BUNDLED_TOKENIZER_DIR = Path(__file__).parent / "clip_tokenizer"

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


def reference_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """The reference preprocessing at `image_size`: PIL bicubic resize to a square, no crop, OpenAI mean/std."""
    return CLIPImageProcessorPil(size={"height": image_size, "width": image_size}, do_center_crop=False)


def _decode(image):
    """PIL images follow the package's one decoding policy (`image_to_rgb`); arrays and tensors pass through."""
    return image_to_rgb(image) if isinstance(image, Image.Image) else image


class AAClipProcessor(ProcessorMixin):
    r"""
    Wraps a `CLIPImageProcessorPil` (518 px, bicubic, no crop, OpenAI mean/std) and a `CLIPTokenizer`, and owns the
    prompt ensemble used to build text anchors. `AAClipProcessor()` works offline with the bundled CLIP BPE tokenizer.

    Args:
        image_processor (`CLIPImageProcessorPil`, *optional*): defaults to the reference preprocessing.
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
        if image_processor is None:
            image_processor = reference_image_processor(DEFAULT_IMAGE_SIZE)
        if tokenizer is None:
            tokenizer = self.bundled_tokenizer()
        self.normal_states = list(normal_states if normal_states is not None else NORMAL_STATES)
        self.anomaly_states = list(anomaly_states if anomaly_states is not None else ANOMALY_STATES)
        self.templates = list(templates if templates is not None else TEMPLATES)
        self.class_name_table = dict(class_name_table if class_name_table is not None else CLASS_NAME_TABLE)
        for field in ("normal_states", "anomaly_states", "templates"):
            phrases = getattr(self, field)
            if not phrases or any(phrase.count("{}") != 1 for phrase in phrases):
                raise ValueError(f"{field} must be a non-empty list of phrases with exactly one '{{}}', got {phrases}")
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
        """The one way to build the reference preprocessing that fits a model: resize to its input size, no crop.

        `config` is an `AAClipConfig` (or any config with a `vision_config`, or a model); `kwargs` go to `__init__`
        (prompt ensemble, class-name table, tokenizer).
        """
        config = getattr(config, "config", config)
        return cls(image_processor=reference_image_processor(config.vision_config.image_size), **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # The reference numerics are PIL bicubic; never switch silently to the torchvision backend.
        kwargs.setdefault("backend", "pil")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ images and masks

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.image_processor.size
        return (size["height"], size["width"])

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """`pixel_values` for images and/or `input_ids`/`attention_mask` for text (max 77 tokens, never truncated)."""
        if images is None and text is None:
            raise ValueError("AAClipProcessor needs images and/or text")
        data = {}
        if images is not None:
            images = [_decode(i) for i in images] if isinstance(images, (list, tuple)) else _decode(images)
            data.update(self.image_processor(images, return_tensors=return_tensors, **kwargs))
        if text is not None:
            data.update(self.tokenize(text if isinstance(text, list) else [text]))
        return BatchFeature(data, tensor_type=return_tensors)

    def preprocess_masks(
        self, masks: MaskInput | Sequence[MaskInput], size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Ground-truth masks -> `(B, H, W)` float {0, 1}: PIL nearest resize and `!= 0`, as the reference does.

        (torch's `interpolate(mode="nearest")` samples different source pixels than PIL and would move edges.)
        """
        height, width = (size, size) if isinstance(size, int) else tuple(size or self.image_size)
        if isinstance(masks, Image.Image) or (isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 2):
            masks = [masks]
        out = []
        for index, mask in enumerate(masks):
            if isinstance(mask, torch.Tensor):
                mask = mask.detach().cpu().numpy()
            try:
                binary = binarize_mask(mask, (height, width))
            except ValueError as error:
                raise ValueError(f"mask {index} {error}") from None
            out.append(torch.from_numpy(binary.astype(np.float32)))
        return torch.stack(out)

    # ------------------------------------------------------------------ prompts (SPEC section 3)

    def prompt_name(self, class_name: str) -> str:
        """The descriptive name used in prompts for a class key."""
        check_class_name(class_name)
        if class_name == GENERIC_CLASS:
            return GENERIC_CLASS
        if class_name in self.class_name_table:
            return self.class_name_table[class_name]
        short = class_name.rsplit("/", 1)[-1]
        if short in self.class_name_table:
            return self.class_name_table[short]
        return short.replace("_", " ")

    def is_known_class(self, class_name: str) -> bool:
        """Whether the class-name table (or the generic class) knows `class_name` or its `dataset/` suffix."""
        short = check_class_name(class_name).rsplit("/", 1)[-1]
        return class_name == GENERIC_CLASS or class_name in self.class_name_table or short in self.class_name_table

    def prompt_fingerprint(self) -> str:
        """SHA-256 of the prompt ensemble and class-name table: recorded with the anchors they produce, so a model
        can tell whether its stored anchors came from this processor's prompts."""
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
        """Tokenise with padding to the longest sentence; raise (never truncate) past the 77-token context."""
        encoded = self.tokenizer(list(sentences), padding=False, truncation=False)
        for sentence, ids in zip(sentences, encoded["input_ids"]):
            if len(ids) > CONTEXT_LENGTH:
                raise ValueError(
                    f"prompt is {len(ids)} tokens, over CLIP's {CONTEXT_LENGTH}-token context: {sentence[:120]!r}. "
                    "Shorten the class name (processor.class_name_table) or the templates."
                )
        return dict(self.tokenizer.pad(encoded, padding="longest", return_tensors="pt"))

    def tokenize_prompts(self, class_names: Sequence[str]) -> dict:
        """All anchor prompts of `class_names`, laid out per class as `[normal..., anomaly...]`: what the model's
        anchor methods take. `num_normal` says where each class's anomaly sentences start; `prompt_fingerprint`
        names the ensemble that made them."""
        if isinstance(class_names, str):
            raise TypeError(f"class_names must be a list of strings, got the string {class_names!r}")
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
        outputs: AAClipOutput,
        target_sizes: Sequence[tuple[int, int]] | None = None,
        threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """Per image: `score`, `raw_anomaly_score`, `anomaly_map` at `target_sizes[i]` (default: this processor's
        input size) bilinearly resized from the model's patch grid (`outputs.anomaly_map_grid`), and `is_anomaly`
        when a `threshold` on the score is given. The model computes no full-size map itself (transformers'
        segmentation convention)."""
        grids = outputs.anomaly_map_grid
        if target_sizes is not None and len(target_sizes) != grids.shape[0]:
            raise ValueError(f"got {len(target_sizes)} target sizes for {grids.shape[0]} images")
        results = []
        for index in range(grids.shape[0]):
            size = tuple(target_sizes[index]) if target_sizes is not None else self.image_size
            result = {
                "score": float(outputs.image_score[index]),
                "raw_anomaly_score": float(outputs.raw_anomaly_score[index]),
                "anomaly_map": upsample_grid(grids[index : index + 1].float(), size)[0],
            }
            if threshold is not None:
                result["is_anomaly"] = result["score"] >= threshold
            results.append(result)
        return results


AAClipProcessor.register_for_auto_class()

__all__ = ["AAClipProcessor", "CLASS_NAME_TABLE", "NORMAL_STATES", "ANOMALY_STATES", "TEMPLATES"]

# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""AA-CLIP model configuration.

Every knob of the method lives here with the paper's (reference implementation's) default,
so a saved `config.json` fully describes what the model computes. The backbone is described by
two stock HF CLIP sub-configs; everything AA-CLIP adds is a flat, validated field.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping

import numpy as np
from huggingface_hub.dataclasses import strict
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging


logger = logging.get_logger(__name__)

# AA-CLIP's input side (the paper's and the reference's 518 px: 37 x 37 patches of ViT-L/14).
DEFAULT_IMAGE_SIZE = 518
# The generic class: its anchor is always stored first and used when no class name is given.
GENERIC_CLASS = "object"


def check_class_name(name) -> str:
    """A class name must be a non-empty string: anything else is refused, naming the value."""
    if not isinstance(name, str):
        raise TypeError(f"class names must be strings, got {name!r} ({type(name).__name__})")
    if not name.strip():
        raise ValueError(f"class names must be non-empty strings, got {name!r}")
    return name


class AAClipError(Exception):
    """Base class of aaclip-hf's expected failures: bad input or a bad environment, never a bug.

    The message names what was wrong (a file, a field, a class) and what was expected; the `aaclip` command line
    prints it as one line. Each subclass also derives from the built-in exception a caller would catch.
    """


class InvalidInputError(AAClipError, ValueError):
    """An argument, config field or input the method cannot use."""


class UnknownClassError(AAClipError, KeyError):
    """A class name with no stored anchors or references."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StaleStateError(AAClipError, ValueError):
    """Derived state (stored anchors, reference banks) that no longer matches the weights or names it came from."""


class StaleAnchorsWarning(UserWarning):
    """Stored text anchors that disagree with the text branch or prompts they are used with."""


class UnknownClassNameWarning(UserWarning):
    """A class name that is neither stored nor in the class-name table (often a typo): it is used as written."""


# OpenAI CLIP ViT-L/14-336 towers, with the vision input at AA-CLIP's 518 px (37 x 37 patches).
VIT_L14_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
VIT_L14_518_VISION_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": DEFAULT_IMAGE_SIZE,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
}

DOMAINS = ("industrial", "medical")
IMAGE_SCORE_MODES = ("fused", "raw", "map")
TEXT_HEADS = ("adapter", "clip")

# ----------------------------------------------------------------------------------------------
# Image and mask rules shared by the processor, the pipeline and `aaclip_hf.data.image_io`
# (here, because this file travels to the Hub with every model).
# ----------------------------------------------------------------------------------------------

# PIL modes whose convert("RGB") clips instead of scaling: 16-bit PNG/TIFF scans, 32-bit integer, float.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# "range": the image's own min..max -> 0..255 (display windowing of scans); "max": divide by 65535.
HIGH_BIT_POLICIES = ("range", "max")
UINT16_MAX = 65535.0
# Modes that carry transparency; composited onto black so what is stored under transparent pixels never shows.
ALPHA_MODES = ("RGBA", "LA", "RGBa", "La", "PA")


def finite_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """The pixel array of an image; NaN/inf in a float image are refused (no windowing can place them, and
    `nan_to_num` would silently make them black, or "normal" in a mask)."""
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"float image holds {bad} NaN/inf pixel value(s); expected finite intensities")
    return array


def high_bit_to_uint8(image: Image.Image | np.ndarray, policy: str = "range") -> np.ndarray:
    """A high-bit-depth image as uint8, scaled and never clipped (PIL's `convert("RGB")` clips: a scan turns white).

    `"range"` stretches the image's own min..max to 0..255 (a constant image maps to 0); `"max"` divides by
    65535 and keeps intensities comparable across images (float images always use `"range"`). NaN/inf pixels
    are refused: no stretch of them is meaningful.
    """
    if policy not in HIGH_BIT_POLICIES:
        raise ValueError(f"high-bit-depth policy must be one of {HIGH_BIT_POLICIES}, got {policy!r}")
    array = finite_pixels(image)
    is_float = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float64)
    if policy == "max" and not is_float:
        scaled = array / UINT16_MAX * 255.0
    else:
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def image_to_rgb(image: Image.Image, high_bit_depth: str = "range") -> Image.Image:
    """The one decoding policy for a PIL image: high bit depth scaled (`high_bit_to_uint8`), transparency
    (RGBA, LA, palette with a transparent index) composited onto black, everything else `convert("RGB")`."""
    if image.mode in HIGH_BIT_MODES:
        return Image.fromarray(high_bit_to_uint8(image, high_bit_depth)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageFileError(ValueError):
    """An image file that cannot be read; `str()` names the file, `path` and `reason` keep the parts."""

    def __init__(self, path, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"file {self.path!r}: {reason}")


class MissingImageFileError(ImageFileError, FileNotFoundError):
    """The image file does not exist (also a `FileNotFoundError`)."""


def open_image_file(path, max_pixels: int | None = Image.MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image file, EXIF orientation applied, in its stored mode (no colour conversion).

    A JPEG above `max_pixels` is decoded at a reduced DCT scale (`draft`: 1/2, 1/4 or 1/8); any other file above
    it is refused. PIL's decompression-bomb limit applies on top. Every failure is an `ImageFileError` naming the
    file (`MissingImageFileError` when it does not exist).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingImageFileError(path, "does not exist (no such file)")
    if os.path.isdir(path):
        raise ImageFileError(path, "is a directory, expected an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size policy below is clearer
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageFileError(
            path,
            f"image is larger than PIL's decompression-bomb limit ({error}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "if the file is trusted",
        ) from None
    except UnidentifiedImageError:
        raise ImageFileError(
            path, "is not a readable image (the content is not a known image format, whatever the extension says)"
        ) from None
    except OSError as error:
        raise ImageFileError(path, f"cannot be opened as an image: {error}") from None
    with image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:  # animated GIF/PNG/WebP, multi-page TIFF
            logger.warning(f"{path} holds {frames} frames; using the first one")  # stdlib logging: propagates
            image.seek(0)
        if max_pixels is not None and image.width * image.height > max_pixels:
            if image.format == "JPEG":  # `draft` picks the largest DCT scale at least as big as the request
                scale = (max_pixels / (image.width * image.height)) ** 0.5
                image.draft(image.mode, (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
            if image.width * image.height > max_pixels:
                raise ImageFileError(
                    path,
                    f"image is {image.width}x{image.height} = {image.width * image.height} pixels, above "
                    f"max_pixels={max_pixels}; downscale it first or pass a larger max_pixels",
                )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageFileError(
                path, f"image data is corrupt or truncated ({error}); expected a complete image file"
            ) from None
        if image.width < 1 or image.height < 1:
            raise ImageFileError(path, f"image has an empty size {image.size}")
        transposed = ImageOps.exif_transpose(image)
        return transposed.copy() if transposed is image else transposed


def load_rgb_image(path, high_bit_depth: str = "range", max_pixels: int | None = Image.MAX_IMAGE_PIXELS):
    """An image file as 8-bit RGB under the package's one policy (`open_image_file`, then `image_to_rgb`)."""
    image = open_image_file(path, max_pixels)
    try:
        return image_to_rgb(image, high_bit_depth)
    except ValueError as error:  # non-finite float pixels
        raise ImageFileError(path, str(error)) from None


def binarize_mask(mask, size: tuple[int, int] | None = None) -> np.ndarray:
    """The reference's mask rule (SPEC section 7): a pixel is anomalous iff it is non-zero in any colour channel;
    with `size = (height, width)` the binary mask is then resized with PIL nearest neighbour (torch's nearest
    samples other source pixels and would move edges).

    Takes a PIL image of any mode (alpha ignored), a `(H, W)` array or a channels-last `(H, W, 1|3|4)` array;
    returns `(H, W)` bool.
    """
    if isinstance(mask, Image.Image):
        if mask.mode in ALPHA_MODES or mask.mode == "P":
            mask = mask.convert("RGB")
        mask = np.asarray(mask)
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = (array != 0).any(axis=-1)
    if array.ndim != 2:
        raise ValueError(
            f"must be 2-D (height, width) or channels-last (height, width, 1|3|4), got shape {array.shape}"
        )
    binary = array != 0
    if size is not None and tuple(size) != binary.shape:
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
        binary = np.asarray(resized) != 0
    return binary


@strict
class AAClipConfig(PreTrainedConfig):
    r"""
    Configuration of an [`AAClipModel`].

    Args:
        text_config (`dict` or `CLIPTextConfig`): the CLIP text tower (defaults: OpenAI ViT-L/14).
        vision_config (`dict` or `CLIPVisionConfig`): the CLIP vision tower (defaults: ViT-L/14 at 518 px).
        projection_dim (`int`, defaults to 768): joint embedding size `E` of anchors and patch features.
        logit_scale_init_value (`float`, defaults to 2.6592): CLIP's logit scale (kept for CLIP parity, unused by AA-CLIP).
        text_adapter_layers (`int`, defaults to 3): `K_T`, residual adapters after text layers 1..K_T.
        vision_adapter_layers (`int`, defaults to 6): `K_I`, residual adapters after vision layers 1..K_I.
        text_adapter_weight / vision_adapter_weight (`float`, defaults to 0.1): the fusion weight `lambda`.
        adapter_negative_slope (`float`, defaults to 0.01): LeakyReLU slope of adapters and activated heads.
        feature_layers (`tuple[int]`, defaults to `(6, 12, 18, 24)`): 1-based vision layers whose patch tokens
            form the feature levels (HF `hidden_states` indices).
        projector_activation (`bool`, defaults to `False`): LeakyReLU after the patch/image projections
            (the reference's `--relu`).
        text_head (`str`, defaults to `"adapter"`): `"adapter"` = AA-CLIP's trainable `LeakyReLU(W_p e_eos)`;
            `"clip"` = CLIP's own `text_projection` (plain-CLIP anchors, ablations).
        similarity_temperature (`float`, defaults to 100.0): scale of patch-anchor cosine similarities.
        blur_kernel_size / blur_sigma (`dict[str, int|float]`): Gaussian smoothing of the test map on the patch
            grid, per domain (industrial 7 / 1.0, medical 9 / 1.5).
        image_score_mode (`dict[str, str]`): per-image score per domain: `"fused"` (map and image branch),
            `"raw"` (image branch only) or `"map"` (map only). Defaults: industrial fused, medical map.
        image_score_map_weight (`float`, defaults to 0.5): weight of the map score in `"fused"`.
        default_domain (`str`, defaults to `"industrial"`): domain used when `forward` is not told one.
        anchor_class_names (`list[str]`): class names whose text anchors are stored in the weights;
            `"object"` (the generic anchor) is always first.
        decision_threshold (`float`, *optional*): image-score threshold set by `aaclip calibrate`.
        include_text_model (`bool`, defaults to `True`): `False` builds an inference-only model without the
            text tower and heads: it scores images against its stored anchors only.
        anchor_fingerprint (`dict`, *optional*): provenance of the stored anchors, written by
            `AAClipModel.refresh_text_anchors`: `text_branch` (SHA-256 of the text-branch weights and settings),
            `prompts` (SHA-256 of the prompt ensemble and class-name table) and `dtype`. `None` = unknown.
        base_model (`str`, *optional*): Hub id of the CLIP the model was built on (model card metadata).
        untrained_text_adapters (`bool`, defaults to `False`): `True` when the text adapters and text head hold the
            fresh initialisation of `AAClipModel.from_clip_pretrained` (no stage 1 has trained them). Stage-2
            training without stage 1 then uses the plain CLIP text branch (text tower + `text_projection`), as the
            reference does without a text adapter; stage-1 training sets it to `False`.
    """

    model_type = "aaclip"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(CLIPTextConfig, init_kwargs=VIT_L14_TEXT_CONFIG),
        "vision_config": SubConfigSpec(CLIPVisionConfig, init_kwargs=VIT_L14_518_VISION_CONFIG),
    }

    text_config: dict | CLIPTextConfig | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    projection_dim: int = 768
    logit_scale_init_value: float | int = 2.6592
    initializer_factor: float = 1.0
    initializer_range: float = 0.02

    text_adapter_layers: int = 3
    vision_adapter_layers: int = 6
    text_adapter_weight: float = 0.1
    vision_adapter_weight: float = 0.1
    adapter_negative_slope: float = 0.01
    feature_layers: list[int] | tuple[int, ...] = (6, 12, 18, 24)
    projector_activation: bool = False
    text_head: str = "adapter"

    similarity_temperature: float | int = 100.0
    blur_kernel_size: dict | None = None
    blur_sigma: dict | None = None
    image_score_mode: dict | None = None
    image_score_map_weight: float = 0.5
    default_domain: str = "industrial"
    anchor_class_names: list[str] | None = None
    decision_threshold: float | None = None
    include_text_model: bool = True
    anchor_fingerprint: dict | None = None
    base_model: str | None = None
    untrained_text_adapters: bool = False

    def __post_init__(self, **kwargs):
        # Mutable defaults cannot be dataclass defaults; fill them here.
        if self.blur_kernel_size is None:
            self.blur_kernel_size = {"industrial": 7, "medical": 9}
        if self.blur_sigma is None:
            self.blur_sigma = {"industrial": 1.0, "medical": 1.5}
        if self.image_score_mode is None:
            self.image_score_mode = {"industrial": "fused", "medical": "map"}
        if self.anchor_class_names is None:
            self.anchor_class_names = [GENERIC_CLASS]
        self.feature_layers = list(self.feature_layers)
        # A partial tower dict completes from the ViT-L/14 defaults, not from CLIP's ViT-B/32 class defaults.
        if isinstance(self.text_config, dict):
            self.text_config = {**VIT_L14_TEXT_CONFIG, **self.text_config}
            _check_tower("text_config", self.text_config)  # before CLIP's own checks divide by these fields
        if isinstance(self.vision_config, dict):
            self.vision_config = {**VIT_L14_518_VISION_CONFIG, **self.vision_config}
            _check_tower("vision_config", self.vision_config)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checked at construction and on `save_pretrained`: a bad field fails early, with its name."""
        for name, value in _non_finite_fields(self.to_dict()):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        _check_tower("text_config", self.text_config.to_dict())
        _check_tower("vision_config", self.vision_config.to_dict())
        vision_layers = self.vision_config.num_hidden_layers
        text_layers = self.text_config.num_hidden_layers
        levels = list(self.feature_layers)
        if not levels or any(not 1 <= layer <= vision_layers for layer in levels) or levels != sorted(set(levels)):
            raise ValueError(
                f"feature_layers must be strictly increasing 1-based layer indices in [1, {vision_layers}] "
                f"(vision_config.num_hidden_layers), got {levels}"
            )
        for name, value, limit in (
            ("text_adapter_layers", self.text_adapter_layers, text_layers),
            ("vision_adapter_layers", self.vision_adapter_layers, vision_layers),
        ):
            if not 0 <= value <= limit:
                raise ValueError(f"{name} must be in [0, {limit}] (the tower's layer count), got {value}")
        for name in ("text_adapter_weight", "vision_adapter_weight", "image_score_map_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.adapter_negative_slope < 0:
            raise ValueError(f"adapter_negative_slope must be >= 0, got {self.adapter_negative_slope}")
        if self.text_head not in TEXT_HEADS:
            raise ValueError(f"text_head must be one of {TEXT_HEADS}, got {self.text_head!r}")
        if isinstance(self.projection_dim, bool) or self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be a positive integer, got {self.projection_dim!r}")
        if not self.similarity_temperature > 0:
            raise ValueError(f"similarity_temperature must be positive, got {self.similarity_temperature!r}")
        domains = set(self.blur_kernel_size)
        if set(self.blur_sigma) != domains or set(self.image_score_mode) != domains:
            raise ValueError(
                "blur_kernel_size, blur_sigma and image_score_mode must name the same domains, got "
                f"{sorted(self.blur_kernel_size)}, {sorted(self.blur_sigma)}, {sorted(self.image_score_mode)}"
            )
        for domain in domains:
            kernel, sigma = self.blur_kernel_size[domain], self.blur_sigma[domain]
            if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
                raise ValueError(f"blur_kernel_size[{domain!r}] must be a positive odd integer, got {kernel!r}")
            if not sigma > 0:
                raise ValueError(f"blur_sigma[{domain!r}] must be positive, got {sigma!r}")
            if self.image_score_mode[domain] not in IMAGE_SCORE_MODES:
                raise ValueError(
                    f"image_score_mode[{domain!r}] must be one of {IMAGE_SCORE_MODES}, "
                    f"got {self.image_score_mode[domain]!r}"
                )
        if self.default_domain not in domains:
            raise ValueError(f"default_domain {self.default_domain!r} is not one of the domains {sorted(domains)}")
        names = list(self.anchor_class_names)
        if not names or names[0] != GENERIC_CLASS or len(set(names)) != len(names):
            raise ValueError(f"anchor_class_names must be unique and start with {GENERIC_CLASS!r}, got {names[:5]}...")
        if self.decision_threshold is not None and not 0.0 <= self.decision_threshold <= 1.0:
            raise ValueError(f"decision_threshold must be in [0, 1] (image scores are), got {self.decision_threshold}")
        if self.anchor_fingerprint is not None:
            fingerprint = self.anchor_fingerprint
            if not isinstance(fingerprint, Mapping) or not all(
                isinstance(fingerprint.get(key), str) for key in ANCHOR_FINGERPRINT_KEYS
            ):
                raise ValueError(
                    f"anchor_fingerprint must be None or a dict with string entries {ANCHOR_FINGERPRINT_KEYS}, "
                    f"got {fingerprint!r}"
                )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Refuse another architecture's `config.json` (BERT, ViT, plain CLIP): transformers would only warn and
        `AAClipModel.from_pretrained` would then run on random weights."""
        config_dict, unused = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        found = config_dict.get("model_type", cls.model_type)
        if found != cls.model_type:
            hint = (
                " Build AA-CLIP on it with AAClipModel.from_clip_pretrained or `aaclip convert-clip`."
                if found == "clip"
                else ""
            )
            raise ValueError(
                f"{pretrained_model_name_or_path}: config.json has model_type {found!r}, expected {cls.model_type!r} "
                f"(a folder written by AAClipModel.save_pretrained).{hint}"
            )
        return config_dict, unused

    @property
    def num_levels(self) -> int:
        return len(self.feature_layers)

    @property
    def grid_size(self) -> int:
        """Side `G` of the square patch grid."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @classmethod
    def from_clip_config(cls, clip_config, **aaclip_fields) -> AAClipConfig:
        """An AA-CLIP config on the towers of a stock `CLIPConfig` (full sub-configs are copied)."""
        return cls(
            text_config=clip_config.text_config.to_dict(),
            vision_config=clip_config.vision_config.to_dict(),
            projection_dim=clip_config.projection_dim,
            logit_scale_init_value=clip_config.logit_scale_init_value,
            **aaclip_fields,
        )

    @classmethod
    def tiny(cls, **overrides) -> AAClipConfig:
        """A tiny random-weights configuration for tests and the offline demo (real tokenizer vocabulary)."""
        text = dict(
            VIT_L14_TEXT_CONFIG,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=24,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
        vision = dict(
            VIT_L14_518_VISION_CONFIG,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=24,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=40,
            patch_size=8,
        )
        text.update(overrides.pop("text_config", {}))
        vision.update(overrides.pop("vision_config", {}))
        fields = {
            "projection_dim": 24,
            "text_adapter_layers": 1,
            "vision_adapter_layers": 2,
            "feature_layers": (1, 2, 3, 4),
        }
        fields.update(overrides)
        return cls(text_config=text, vision_config=vision, **fields)


# Entries of `AAClipConfig.anchor_fingerprint`.
ANCHOR_FINGERPRINT_KEYS = ("text_branch", "prompts", "dtype")
# Tower fields that must be positive integers (a zero would divide by zero or build an empty model).
POSITIVE_TOWER_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "projection_dim",
)
POSITIVE_VISION_FIELDS = ("image_size", "patch_size", "num_channels")
POSITIVE_TEXT_FIELDS = ("vocab_size", "max_position_embeddings")


def _non_finite_fields(values, prefix: str = ""):
    """`(dotted_name, value)` of every NaN/inf float in a nested config dict."""
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix and isinstance(key, str) else f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            yield name, value
        elif isinstance(value, (Mapping, list, tuple)):
            yield from _non_finite_fields(value, name)


def _check_tower(name: str, tower: Mapping) -> None:
    """Impossible tower values, named `text_config.<field>` / `vision_config.<field>`."""
    fields = POSITIVE_TOWER_FIELDS + (POSITIVE_VISION_FIELDS if name == "vision_config" else POSITIVE_TEXT_FIELDS)
    for field in fields:
        value = tower.get(field, 1)  # an absent field takes CLIP's class default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}.{field} must be a positive integer, got {value!r}")
    if (
        "hidden_size" in tower
        and "num_attention_heads" in tower
        and tower["hidden_size"] % tower["num_attention_heads"]
    ):
        raise ValueError(
            f"{name}.hidden_size ({tower['hidden_size']}) must be a multiple of {name}.num_attention_heads "
            f"({tower['num_attention_heads']})"
        )
    if name == "vision_config" and tower.get("image_size", 1) % tower.get("patch_size", 1):
        raise ValueError(
            f"vision_config.image_size ({tower['image_size']}) must be a multiple of vision_config.patch_size "
            f"({tower['patch_size']}): the patch grid is square and covers the whole image"
        )
    eps, dropout = tower.get("layer_norm_eps"), tower.get("attention_dropout")
    if eps is not None and not (isinstance(eps, (int, float)) and 0 < eps < math.inf):
        raise ValueError(f"{name}.layer_norm_eps must be a positive finite number, got {eps!r}")
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"{name}.attention_dropout must be in [0, 1), got {dropout!r}")


AAClipConfig.register_for_auto_class()

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "GENERIC_CLASS",
    "HIGH_BIT_MODES",
    "AAClipConfig",
    "ImageFileError",
    "MissingImageFileError",
    "StaleAnchorsWarning",
    "UnknownClassNameWarning",
    "binarize_mask",
    "check_class_name",
    "finite_pixels",
    "high_bit_to_uint8",
    "image_to_rgb",
    "load_rgb_image",
    "open_image_file",
]

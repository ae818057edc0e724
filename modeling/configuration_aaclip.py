# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""AA-CLIP model configuration.

Every knob of the method lives here with the paper's (reference implementation's) default, so a saved `config.json`
fully describes what the model computes: the two stock CLIP towers, what AA-CLIP adds to them, the classes whose
text anchors and normal references are stored with the weights, and the per-class decision thresholds. The method
itself is described in `docs/method.md`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


# AA-CLIP's input side (the paper's and the reference's 518 px: 37 x 37 patches of ViT-L/14).
DEFAULT_IMAGE_SIZE = 518
# The generic class: its anchor is always stored first and used when no class name is given.
GENERIC_CLASS = "object"
TASK = "zero-shot-anomaly-detection"


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
    """Stored text anchors made with another prompt ensemble than the processor in use."""


class StaleThresholdWarning(UserWarning):
    """A class's calibrated threshold was made on other scoring (weights, anchors, references or settings changed): the
    fallback threshold is used instead."""


class UnknownClassNameWarning(UserWarning):
    """A class name that is neither stored nor in the class-name table (often a typo): it is used as written."""


def check_class_name(name) -> str:
    """A class name must be a non-empty string: anything else is refused, naming the value."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"class names must be non-empty strings, got {name!r}")
    return name


def class_name_list(class_names) -> list[str]:
    """A list of class names, each a non-empty string (a bare string is one name, not its characters)."""
    if isinstance(class_names, str):
        return [check_class_name(class_names)]
    if not isinstance(class_names, Iterable):
        raise InvalidInputError(f"class names must be a string or a list of strings, got {class_names!r}")
    return [check_class_name(name) for name in class_names]


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
# How the few-shot nearest-neighbour map joins the zero-shot map (docs/method.md, "Few-shot normal references").
FEW_SHOT_FUSIONS = ("references", "harmonic", "mean")
# Entries of `AAClipConfig.anchor_fingerprint` and of each `reference_classes` record.
ANCHOR_FINGERPRINT_KEYS = ("text_branch", "prompts", "dtype", "rows")
REFERENCE_RECORD_KEYS = ("images", "patches", "vision", "rows")
# Ranges that keep every score finite: temperature * cosine stays far from float overflow, and a Gaussian's
# taps exp(-x^2 / (2 sigma^2)) stay well defined (sigma 1e-300 would divide 0 by 0).
SIMILARITY_TEMPERATURE_RANGE = (1e-3, 1e4)
BLUR_SIGMA_RANGE = (1e-2, 1e3)
# Tower fields that must be positive integers (a zero would divide by zero or build an empty model).
POSITIVE_TOWER_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
POSITIVE_VISION_FIELDS = ("image_size", "patch_size", "num_channels")
POSITIVE_TEXT_FIELDS = ("vocab_size", "max_position_embeddings")


@strict
class AAClipConfig(PreTrainedConfig):
    r"""
    Configuration of an [`AAClipModel`].

    Args:
        text_config (`dict` or `CLIPTextConfig`): the CLIP text tower (defaults: OpenAI ViT-L/14).
        vision_config (`dict` or `CLIPVisionConfig`): the CLIP vision tower (defaults: ViT-L/14 at 518 px).
        projection_dim (`int`, defaults to 768): joint embedding size `E` of anchors and patch features.
        logit_scale_init_value (`float`, defaults to 2.6592): CLIP's logit scale (kept for CLIP parity, unused).
        text_adapter_layers (`int`, defaults to 3): `K_T`, residual adapters after text layers 1..K_T.
        vision_adapter_layers (`int`, defaults to 6): `K_I`, residual adapters after vision layers 1..K_I.
        text_adapter_weight / vision_adapter_weight (`float`, defaults to 0.1): the fusion weight `lambda`.
        adapter_negative_slope (`float`, defaults to 0.01): LeakyReLU slope of adapters and activated heads.
        feature_layers (`list[int]`, defaults to `[6, 12, 18, 24]`): 1-based vision layers whose patch tokens form
            the feature levels (HF `hidden_states` indices).
        projector_activation (`bool`, defaults to `False`): LeakyReLU after the patch/image projections (the
            reference's `--relu`).
        text_head (`str`, defaults to `"adapter"`): `"adapter"` = AA-CLIP's trainable `LeakyReLU(W_p e_eos)`;
            `"clip"` = CLIP's own `text_projection` (plain-CLIP anchors, ablations).
        similarity_temperature (`float`, defaults to 100.0): scale of patch-anchor cosine similarities.
        blur_kernel_size / blur_sigma (`dict[str, int|float]`): Gaussian smoothing of the test map on the patch
            grid, per domain (industrial 7 / 1.0, medical 9 / 1.5).
        image_score_mode (`dict[str, str]`): per-image score per domain: `"fused"` (map and image branch), `"raw"`
            (image branch only) or `"map"` (map only). Defaults: industrial fused, medical map.
        image_score_map_weight (`float`, defaults to 0.5): weight of the map score in `"fused"`.
        default_domain (`str`, defaults to `"industrial"`): domain used when `forward` is not told one.
        include_text_model (`bool`, defaults to `True`): `False` builds an inference-only model without the text
            tower and heads: it scores images against its stored anchors only.
        anchor_class_names (`list[str]`): class names whose text anchors are stored in the weights; `"object"` (the
            generic anchor) is always first.
        anchor_fingerprint (`dict`, *optional*): provenance of the stored anchors: `text_branch` (SHA-256 of the
            text-branch weights and settings, or `"external"`), `prompts` (SHA-256 of the prompt ensemble),
            `dtype`, and `rows` (SHA-256 binding each name to its anchor row). `None` = unknown.
        reference_classes (`dict[str, dict]`): classes with stored normal references (few-shot), in storage order:
            `{"images": K, "patches": rows per level, "vision": SHA-256 of the vision branch that made them,
            "rows": SHA-256 of their rows}`. Their patch features are the `reference_bank` buffer.
        few_shot_fusion (`str`, defaults to `"references"`): how the references' nearest-neighbour map joins the
            zero-shot probability map: `"references"` (the nearest-neighbour map alone, as AnomalyDINO), `"harmonic"`
            (harmonic mean, as AdaptCLIP) or `"mean"` (arithmetic mean, as WinCLIP+). The default is the rule that
            measured best on held-out synthetic classes, untrained and trained (docs/evaluation.md, "Few-shot
            evaluation"); with real CLIP weights, whose zero-shot map is far stronger, measure the others too.
        reference_chunk_size (`int`, defaults to 4096): bank rows compared per step of the nearest-neighbour search;
            its extra memory is at most `batch * patches * reference_chunk_size` floats.
        decision_thresholds (`dict[str, float]`): per-class decision thresholds on the image score, set by
            `aaclip calibrate` (`set_decision_threshold`).
        threshold_fingerprints (`dict[str, str]`): per calibrated class, `"<dtype>:<SHA-256>"` of the scoring its
            threshold was calibrated on (`AAClipModel.scoring_fingerprint`: vision branch, the class's anchors, its
            references or none, the scoring settings and the domain). A threshold whose scoring changed since is not
            used (`AAClipModel.decision_threshold`); one without a fingerprint (set by hand) is used as written.
        decision_threshold (`float`, *optional*): the threshold of classes without their own (uncalibrated).
        base_model (`str`, *optional*): Hub id of the CLIP the model was built on (model card metadata).
        untrained_text_adapters (`bool`, defaults to `False`): `True` while the text adapters and text head hold the
            fresh initialisation of `AAClipModel.from_clip_pretrained`; stage-2 training without stage 1 then uses
            the plain CLIP text branch, as the reference does without a text adapter.
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
    include_text_model: bool = True

    anchor_class_names: list[str] | None = None
    anchor_fingerprint: dict | None = None
    reference_classes: dict | None = None
    few_shot_fusion: str = "references"
    reference_chunk_size: int = 4096
    decision_thresholds: dict | None = None
    threshold_fingerprints: dict | None = None
    decision_threshold: float | None = None
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
        if self.reference_classes is None:
            self.reference_classes = {}
        if self.decision_thresholds is None:
            self.decision_thresholds = {}
        if self.threshold_fingerprints is None:
            self.threshold_fingerprints = {}
        if isinstance(self.feature_layers, (list, tuple)):
            self.feature_layers = list(self.feature_layers)
        # A partial tower dict completes from the ViT-L/14 defaults, not from CLIP's ViT-B/32 class defaults.
        if isinstance(self.text_config, dict):
            self.text_config = {**VIT_L14_TEXT_CONFIG, **self.text_config}
            _check_tower("text_config", self.text_config)  # before CLIP's own checks divide by these fields
        if isinstance(self.vision_config, dict):
            self.vision_config = {**VIT_L14_518_VISION_CONFIG, **self.vision_config}
            _check_tower("vision_config", self.vision_config)
        _check_dtype_name(self.dtype if self.dtype is not None else kwargs.get("torch_dtype"))
        super().__post_init__(**kwargs)  # turns a dtype name into `getattr(torch, name)`

    # `pipeline(TASK, model=folder)` follows `custom_pipelines` to the folder's own pipeline code, and then demands
    # `trust_remote_code=True`. A process that registered the task itself (`import aaclip_hf`) already has the
    # pipeline class: there the saved entry is hidden, so transformers takes the registered class and runs no code
    # from the folder. Elsewhere (only transformers installed) the entry is what makes the Hub copy work.
    @property
    def custom_pipelines(self) -> dict:
        saved = self.__dict__.get("custom_pipelines") or {}
        if saved and _task_registered_in_process():
            return {}
        return saved

    @custom_pipelines.setter
    def custom_pipelines(self, value) -> None:
        self.__dict__["custom_pipelines"] = value

    def validate_architecture(self):
        """Checked at construction and on `save_pretrained`: a bad field fails early, naming it."""
        for name, value in _non_finite_fields(self.to_dict()):
            raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
        _check_tower("text_config", self.text_config.to_dict())
        _check_tower("vision_config", self.vision_config.to_dict())
        self._check_types()
        vision_layers, text_layers = self.vision_config.num_hidden_layers, self.text_config.num_hidden_layers
        levels = self.feature_layers
        if not levels or any(not 1 <= layer <= vision_layers for layer in levels) or levels != sorted(set(levels)):
            raise InvalidInputError(
                f"feature_layers must be strictly increasing 1-based layer indices in [1, {vision_layers}] "
                f"(vision_config.num_hidden_layers), got {levels}"
            )
        for name, limit in (("text_adapter_layers", text_layers), ("vision_adapter_layers", vision_layers)):
            _check_range(name, getattr(self, name), 0, limit)
        for name in ("text_adapter_weight", "vision_adapter_weight", "image_score_map_weight"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("adapter_negative_slope", self.adapter_negative_slope, 0.0, 1.0)
        _check_range("similarity_temperature", self.similarity_temperature, *SIMILARITY_TEMPERATURE_RANGE)
        _check_range("reference_chunk_size", self.reference_chunk_size, 1, 2**31)
        _check_choice("text_head", self.text_head, TEXT_HEADS)
        _check_choice("few_shot_fusion", self.few_shot_fusion, FEW_SHOT_FUSIONS)
        self._check_domains()
        self._check_stored_classes()

    def _check_types(self) -> None:
        """JSON gives any type; a `true` threshold or a `"1234"` layer list must not pass as something else."""
        for name in ("projection_dim", "text_adapter_layers", "vision_adapter_layers", "reference_chunk_size"):
            _check_type(name, getattr(self, name), int)
        for name in ("projector_activation", "include_text_model", "untrained_text_adapters"):
            _check_type(name, getattr(self, name), bool)
        for name in (
            "text_adapter_weight",
            "vision_adapter_weight",
            "adapter_negative_slope",
            "similarity_temperature",
            "image_score_map_weight",
        ):
            _check_type(name, getattr(self, name), (int, float))
        if self.decision_threshold is not None:
            _check_type("decision_threshold", self.decision_threshold, (int, float))
        _check_type("feature_layers", self.feature_layers, list)
        for layer in self.feature_layers:
            _check_type("feature_layers[]", layer, int)
        for name in ("text_head", "few_shot_fusion", "default_domain"):
            _check_type(name, getattr(self, name), str)
        for name in (
            "blur_kernel_size",
            "blur_sigma",
            "image_score_mode",
            "reference_classes",
            "decision_thresholds",
            "threshold_fingerprints",
        ):
            _check_type(name, getattr(self, name), dict)
        _check_type("anchor_class_names", self.anchor_class_names, list)
        if self.projection_dim <= 0:
            raise InvalidInputError(f"projection_dim must be a positive integer, got {self.projection_dim!r}")

    def _check_domains(self) -> None:
        domains = set(self.blur_kernel_size)
        if set(self.blur_sigma) != domains or set(self.image_score_mode) != domains:
            raise InvalidInputError(
                "blur_kernel_size, blur_sigma and image_score_mode must name the same domains, got "
                f"{sorted(self.blur_kernel_size)}, {sorted(self.blur_sigma)}, {sorted(self.image_score_mode)}"
            )
        for domain in domains:
            kernel = self.blur_kernel_size[domain]
            _check_type(f"blur_kernel_size[{domain!r}]", kernel, int)
            if kernel < 1 or kernel % 2 == 0:
                raise InvalidInputError(f"blur_kernel_size[{domain!r}] must be a positive odd integer, got {kernel}")
            _check_type(f"blur_sigma[{domain!r}]", self.blur_sigma[domain], (int, float))
            _check_range(f"blur_sigma[{domain!r}]", self.blur_sigma[domain], *BLUR_SIGMA_RANGE)
            _check_choice(f"image_score_mode[{domain!r}]", self.image_score_mode[domain], IMAGE_SCORE_MODES)
        _check_choice("default_domain", self.default_domain, sorted(domains))

    def _check_stored_classes(self) -> None:
        names = self.anchor_class_names
        if not names or names[0] != GENERIC_CLASS or len(set(names)) != len(names):
            raise InvalidInputError(
                f"anchor_class_names must be unique and start with {GENERIC_CLASS!r}, got {names[:5]}..."
            )
        for name in names:
            check_class_name(name)
        _check_record("anchor_fingerprint", self.anchor_fingerprint, ANCHOR_FINGERPRINT_KEYS, optional=True)
        for name, record in self.reference_classes.items():
            check_class_name(name)
            _check_record(f"reference_classes[{name!r}]", record, REFERENCE_RECORD_KEYS)
            for key in ("images", "patches"):
                _check_type(f"reference_classes[{name!r}].{key}", record[key], int)
                _check_range(f"reference_classes[{name!r}].{key}", record[key], 1, 2**31)
        for name, value in self.decision_thresholds.items():
            check_class_name(name)
            _check_type(f"decision_thresholds[{name!r}]", value, (int, float))
            _check_range(f"decision_thresholds[{name!r}]", value, 0.0, 1.0)
        for name, value in self.threshold_fingerprints.items():
            check_class_name(name)
            _check_type(f"threshold_fingerprints[{name!r}]", value, str)
        if self.decision_threshold is not None:
            _check_range("decision_threshold", self.decision_threshold, 0.0, 1.0)

    @property
    def num_levels(self) -> int:
        return len(self.feature_layers)

    @property
    def grid_size(self) -> int:
        """Side `G` of the square patch grid."""
        return self.vision_config.image_size // self.vision_config.patch_size

    def threshold_for(self, class_name: str) -> tuple[float | None, bool]:
        """`(threshold, calibrated)` as stored: the class's own decision threshold, else the fallback
        (`calibrated=False`). Scoring checks it against its fingerprint first (`AAClipModel.decision_threshold`)."""
        if class_name in self.decision_thresholds:
            return float(self.decision_thresholds[class_name]), True
        return self.decision_threshold, False

    def set_decision_threshold(self, class_name: str, threshold: float | None, fingerprint: str | None = None):
        """Store (`threshold=None`: drop) `class_name`'s threshold and the fingerprint of the scoring it was calibrated
        on; returns the threshold it replaced (`None` when there was none)."""
        check_class_name(class_name)
        previous = self.decision_thresholds.get(class_name)
        thresholds = {k: v for k, v in self.decision_thresholds.items() if k != class_name}
        fingerprints = {k: v for k, v in self.threshold_fingerprints.items() if k != class_name}
        if threshold is not None:
            _check_type(f"decision_thresholds[{class_name!r}]", threshold, (int, float))
            _check_range(f"decision_thresholds[{class_name!r}]", threshold, 0.0, 1.0)
            thresholds[class_name] = float(threshold)
            if fingerprint is not None:
                fingerprints[class_name] = fingerprint
        self.decision_thresholds, self.threshold_fingerprints = thresholds, fingerprints
        return previous

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


def _task_registered_in_process() -> bool:
    """Whether this process registered the task (`import aaclip_hf` does); never imports the pipelines module."""
    pipelines = sys.modules.get("transformers.pipelines")
    return pipelines is not None and TASK in pipelines.PIPELINE_REGISTRY.get_supported_tasks()


def _check_dtype_name(value) -> None:
    if value is None or not isinstance(value, str):
        return
    import torch

    if not isinstance(getattr(torch, value, None), torch.dtype):
        raise InvalidInputError(f"dtype must name a torch dtype such as 'float32' or 'bfloat16', got {value!r}")


def _check_type(name: str, value, types) -> None:
    """`bool` is not a number here, and an `int` is a valid float."""
    expected = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise InvalidInputError(f"{name} must be {names}, got {value!r} ({type(value).__name__})")


def _check_range(name: str, value, low, high) -> None:
    if not low <= value <= high:
        raise InvalidInputError(f"{name} must be in [{low}, {high}], got {value!r}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_record(name: str, record, keys, optional: bool = False) -> None:
    if record is None and optional:
        return
    if not isinstance(record, Mapping) or any(key not in record for key in keys):
        raise InvalidInputError(f"{name} must be a dict with entries {keys}, got {record!r}")
    for key in keys:
        if key not in ("images", "patches"):
            _check_type(f"{name}.{key}", record[key], str)


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
            raise InvalidInputError(f"{name}.{field} must be a positive integer, got {value!r}")
    if tower.get("hidden_size", 1) % tower.get("num_attention_heads", 1):
        raise InvalidInputError(
            f"{name}.hidden_size ({tower['hidden_size']}) must be a multiple of {name}.num_attention_heads "
            f"({tower['num_attention_heads']})"
        )
    if name == "vision_config" and tower.get("image_size", 1) % tower.get("patch_size", 1):
        raise InvalidInputError(
            f"vision_config.image_size ({tower['image_size']}) must be a multiple of vision_config.patch_size "
            f"({tower['patch_size']}): the patch grid is square and covers the whole image"
        )
    eps, dropout = tower.get("layer_norm_eps"), tower.get("attention_dropout")
    if eps is not None and not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < math.inf):
        raise InvalidInputError(f"{name}.layer_norm_eps must be a positive finite number, got {eps!r}")
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise InvalidInputError(f"{name}.attention_dropout must be in [0, 1), got {dropout!r}")


AAClipConfig.register_for_auto_class()

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "GENERIC_CLASS",
    "TASK",
    "AAClipConfig",
    "AAClipError",
    "InvalidInputError",
    "StaleAnchorsWarning",
    "StaleStateError",
    "StaleThresholdWarning",
    "UnknownClassError",
    "UnknownClassNameWarning",
    "check_class_name",
    "class_name_list",
]

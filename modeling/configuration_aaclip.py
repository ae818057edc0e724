# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""AA-CLIP model configuration.

Every knob of the method lives here with the paper's (reference implementation's) default,
so a saved `config.json` fully describes what the model computes. The backbone is described by
two stock HF CLIP sub-configs; everything AA-CLIP adds is a flat, validated field.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


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
    "image_size": 518,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
}

DOMAINS = ("industrial", "medical")
IMAGE_SCORE_MODES = ("fused", "raw", "map")
TEXT_HEADS = ("adapter", "clip")
GENERIC_CLASS = "object"


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
        if isinstance(self.vision_config, dict):
            self.vision_config = {**VIT_L14_518_VISION_CONFIG, **self.vision_config}
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checked at construction and on `save_pretrained`: a bad field fails early, with its name."""
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
        if self.projection_dim <= 0 or self.similarity_temperature <= 0:
            raise ValueError("projection_dim and similarity_temperature must be positive")
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


AAClipConfig.register_for_auto_class()

__all__ = ["AAClipConfig"]

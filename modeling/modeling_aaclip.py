# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch AA-CLIP model: anomaly-aware CLIP for zero-shot anomaly detection and segmentation.

Read top to bottom, this file is the method (SPEC sections 2-5):

1. `AAClipAdapter` fuses a residual adapter into every token after an encoder layer.
2. `AAClipEncoderLayer` is a stock `CLIPEncoderLayer` followed by that adapter; it replaces the first
   K layers of the native HF CLIP towers, so `output_hidden_states` records post-adapter states.
3. `AAClipModel` turns prompt ensembles into per-class anchors `(E, 2)` (normal, anomaly), projects
   multi-level patch tokens into the same space, and scores patches and images against the anchors.

This file is copied to the Hub by `save_pretrained`: it imports only torch, transformers and its
flat siblings. It never builds a processor: anchor methods take tokenized prompts (or any object with
`tokenize_prompts`, such as `AAClipProcessor`).

Trust: a loaded model has every weight it needs, all finite, from a readable file, and its stored anchors
are checked against the text branch that made them (`anchor_fingerprint`). `save_pretrained` writes a
pipeline-ready, Hub-safe folder with a SHA-256 manifest of its weight files (`verify_manifest`).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import inspect
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging

from .configuration_aaclip import GENERIC_CLASS, AAClipConfig, StaleAnchorsWarning, check_class_name
from .pipeline_aaclip import TASK
from .serialization_aaclip import (
    CUSTOM_PIPELINE_ENTRY,
    MODEL_CARD_NAME,
    PIPELINE_FILE,
    CorruptWeightsError,
    IncompleteWeightsError,
    NonFiniteWeightsError,
    check_safetensors_file,
    file_stamps,
    listed_names,
    looks_like_hub_id,
    model_card_text,
    non_finite_tensors,
    upload_files,
    weight_files,
    write_weights_manifest,
)


logger = logging.get_logger(__name__)

# Config fields that change what the text branch computes (besides its weights).
TEXT_BRANCH_SETTINGS = ("text_head", "text_adapter_layers", "text_adapter_weight", "adapter_negative_slope")
TEXT_TOWER_SETTINGS = ("hidden_act", "layer_norm_eps", "num_attention_heads")


# ----------------------------------------------------------------------------------------------
# Small functional pieces
# ----------------------------------------------------------------------------------------------


def resize_position_embedding(table: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize a ViT position table `(1 + g*g, D)` to `(1 + grid_size**2, D)`.

    Bicubic with antialias, CLS row kept, computed in fp32: what OpenCLIP and the reference do once
    at load time. (`interpolate_pos_encoding=True` uses no antialias and gives different values.)
    """
    old_grid = math.isqrt(table.shape[0] - 1)
    if old_grid * old_grid != table.shape[0] - 1:
        raise ValueError(f"position table with {table.shape[0]} rows is not 1 + a square grid")
    if old_grid == grid_size:
        return table.clone()
    cls_row, patches = table[:1], table[1:]
    patches = patches.float().reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid_size, grid_size), mode="bicubic", antialias=True, align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid_size * grid_size, -1).to(table.dtype)
    return torch.cat([cls_row, patches], dim=0)


def gaussian_kernel1d(kernel_size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps centred on the middle tap (kornia's `get_gaussian_kernel1d`)."""
    x = torch.arange(kernel_size, dtype=dtype, device=device) - kernel_size // 2
    taps = torch.exp(-(x**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def gaussian_blur2d(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `(B, C, H, W)` maps with reflect borders."""
    pad = kernel_size // 2
    if pad >= min(maps.shape[-2:]):
        raise ValueError(
            f"blur kernel {kernel_size} needs a patch grid larger than {pad} per side (reflect border), got "
            f"{tuple(maps.shape[-2:])}; use a smaller blur_kernel_size for this image_size/patch_size"
        )
    taps = gaussian_kernel1d(kernel_size, sigma, maps.dtype, maps.device)
    channels = maps.shape[1]
    maps = F.pad(maps, (pad, pad, pad, pad), mode="reflect")
    maps = F.conv2d(maps, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(maps, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def upsample_grid(grid: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of `(B, G, G)` maps to `(B, *size)`."""
    return F.interpolate(grid[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


def check_output_size(output_size) -> int | tuple[int, int]:
    """A positive int or a `(height, width)` pair of positive ints, else a `ValueError` naming `output_size`."""
    pair = isinstance(output_size, Sequence)
    values = tuple(output_size) if pair else (output_size,)
    positive = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if not positive or (pair and len(values) != 2):
        raise ValueError(f"output_size must be a positive int or (height, width), got {output_size!r}")
    return values if pair else output_size


# Keyword arguments transformers' generic code may pass to a model method (`TransformersKwargs`).
TRANSFORMERS_KWARGS = frozenset(TransformersKwargs.__required_keys__ | TransformersKwargs.__optional_keys__)


def _reject_unknown_kwargs(method: str, kwargs: dict, accepted: frozenset[str] = frozenset()) -> None:
    """One `TypeError` naming every unexpected keyword argument (with near spellings) instead of ignoring them."""
    unknown = sorted(set(kwargs) - accepted)
    if not unknown:
        return
    signature = inspect.signature(getattr(AAClipModel, method))
    known = [name for name in signature.parameters if name not in ("self", "kwargs")] + sorted(accepted)
    hints = [f"{name!r} -> {close[0]!r}" for name in unknown if (close := difflib.get_close_matches(name, known, n=1))]
    if method == "forward" and {"input_ids", "attention_mask"} & set(unknown):
        hints.append("text is not a forward input: pass class_names (stored anchors) or text_anchors")
    raise TypeError(
        f"AAClipModel.{method}() got unexpected keyword argument(s) {unknown}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f"; it takes {', '.join(known)}"
    )


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class AAClipOutput(ModelOutput):
    r"""
    Like transformers' segmentation models, `forward` returns maps on the patch grid; resize them to the sizes you need
    with `AAClipProcessor.post_process_anomaly_detection(outputs, target_sizes=...)`.

    anomaly_map_grid (`torch.FloatTensor` of shape `(batch_size, G, G)`):
        SPEC section 5 test map on the `G x G` patch grid: per level `s_l = (p_A + 1 - p_N) / 2`, Gaussian-blurred,
        summed over levels. Larger means more anomalous; not bounded. Blur and bilinear resizing are linear, so
        resizing this sum equals summing the resized levels.
    anomaly_map_grid_levels (`tuple(torch.FloatTensor)`):
        The per-level terms of `anomaly_map_grid`, each `(batch_size, G, G)`.
    image_score (`torch.FloatTensor` of shape `(batch_size,)`):
        Per-image anomaly score in [0, 1] that depends on that image alone. With `map_score` the maximum over
        the grid of `sigmoid(2 * anomaly_map_grid / L - 1)` (the anomaly probability of the level-averaged,
        smoothed patch logits) and `raw_anomaly_score` as below: `"fused"` = `w * map_score + (1 - w) * raw`,
        `"map"` = `map_score`, `"raw"` = `raw_anomaly_score`; chosen per domain by `config.image_score_mode`.
    raw_anomaly_score (`torch.FloatTensor` of shape `(batch_size,)`):
        SPEC `r = (image_embeds . T_A + 1) / 2`, in [0, 1].
    anomaly_map (`torch.FloatTensor` of shape `(batch_size, height, width)`, *optional*):
        Only when `forward` is given an `output_size`: each level bilinearly upsampled (`align_corners=True`) to
        that size, then summed (the reference's order of operations).
    patch_embeds (`tuple(torch.FloatTensor)`):
        One `(batch_size, num_patches, E)` tensor of L2-normalised patch features per feature level.
    image_embeds (`torch.FloatTensor` of shape `(batch_size, E)`):
        Mean of the normalised `det_projection` patch features of the last layer (not re-normalised).
    text_anchors (`torch.FloatTensor` of shape `(batch_size, E, 2)`):
        The anchors used for each image: column 0 normal, column 1 anomaly.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        With `output_hidden_states=True`: the vision tower's hidden states (embeddings, then every layer,
        post-adapter), each `(batch_size, 1 + num_patches, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        With `output_attentions=True` (eager attention): the vision tower's attention weights per layer.
    vision_model_output (`BaseModelOutputWithPooling`):
        The output of the vision tower, as in `CLIPOutput`.
    """

    anomaly_map_grid: torch.FloatTensor | None = None
    anomaly_map_grid_levels: tuple[torch.FloatTensor, ...] | None = None
    image_score: torch.FloatTensor | None = None
    raw_anomaly_score: torch.FloatTensor | None = None
    anomaly_map: torch.FloatTensor | None = None
    patch_embeds: tuple[torch.FloatTensor, ...] | None = None
    image_embeds: torch.FloatTensor | None = None
    text_anchors: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        """Nested tower outputs become tuples too (as `CLIPOutput.to_tuple` does)."""
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in self.values())


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class AAClipAdapter(nn.Module):
    """Residual adapter (SPEC section 2), applied to every token of a layer's output `x`.

    `a = LeakyReLU(W x)`, rescaled per token to the norm of `x`, then `x <- lam * a + (1 - lam) * x`.
    The rescale makes the adapter's weight scale irrelevant; an all-zero token stays zero-safe.
    """

    def __init__(self, dim: int, fusion_weight: float, negative_slope: float):
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)
        self.act = nn.LeakyReLU(negative_slope)
        self.fusion_weight = fusion_weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        adapted = self.act(self.fc(hidden_states))
        adapted_norm = adapted.norm(dim=-1, keepdim=True)
        # adapted_norm == 0 only where `adapted` is all zero, so any finite divisor gives the same (zero) result.
        safe_norm = torch.where(adapted_norm == 0, torch.ones_like(adapted_norm), adapted_norm)
        adapted = adapted * (hidden_states.norm(dim=-1, keepdim=True) / safe_norm)
        return self.fusion_weight * adapted + (1.0 - self.fusion_weight) * hidden_states


class AAClipEncoderLayer(CLIPEncoderLayer):
    """A stock CLIP encoder layer followed by an `AAClipAdapter`.

    Subclassing (rather than wrapping) keeps CLIP's parameter names, attention backends, gradient
    checkpointing and `output_hidden_states` capture, which then records the post-adapter state.
    """

    def __init__(self, config, fusion_weight: float, negative_slope: float):
        super().__init__(config)
        self.adapter = AAClipAdapter(config.hidden_size, fusion_weight, negative_slope)
        self.adapter_enabled = True

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        hidden_states = super().forward(hidden_states, attention_mask, **kwargs)
        return self.adapter(hidden_states) if self.adapter_enabled else hidden_states


class AAClipProjection(nn.Module):
    """A bias-free linear head, optionally followed by LeakyReLU (the reference's `SimpleProj`)."""

    def __init__(self, in_dim: int, out_dim: int, activation: bool, negative_slope: float):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias=False)
        self.act = nn.LeakyReLU(negative_slope) if activation else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(features))


def _inject_adapters(tower: CLIPTextModel | CLIPVisionModel, num_layers: int, fusion_weight: float, slope: float):
    """Swap the first `num_layers` encoder layers for adapted ones (weights are initialised by `post_init`)."""
    for index in range(num_layers):
        tower.encoder.layers[index] = AAClipEncoderLayer(tower.config, fusion_weight, slope)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class AAClipPreTrainedModel(PreTrainedModel):
    config_class = AAClipConfig
    config: AAClipConfig
    base_model_prefix = "aaclip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings", "AAClipEncoderLayer"]
    # `forward` takes no loss kwargs (its `**kwargs` only exists to name unknown arguments in one error).
    accepts_loss_kwargs = False

    @classmethod
    def is_custom_code(cls) -> bool:
        """`False`: initialise like a native model, so missing tower weights get CLIP's own init.

        For custom code, transformers skips every module whose own parameters are all flagged as initialised, which
        is vacuously true for CLIP's attention and MLP blocks (they hold only child layers): their projections would
        keep the generic `std=initializer_range` init. That guard protects `_init_weights` that write tensors in
        place; every init here (ours and the towers' `CLIPPreTrainedModel._init_weights`) goes through
        `transformers.initialization`, which never touches a loaded tensor.
        """
        return False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AAClipModel):
            if module.config.include_text_model:
                init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.zeros_(module.text_anchors)


class AAClipModel(AAClipPreTrainedModel):
    r"""
    AA-CLIP on native HF CLIP towers. Attribute names mirror `CLIPModel`, so any HF CLIP checkpoint loads into
    the backbone with only the adapter, head and anchor keys missing.

    Example:

    ```python
    >>> from aaclip_hf import AAClipModel, AAClipProcessor
    >>> model = AAClipModel.from_pretrained("path/to/aaclip-model")
    >>> processor = AAClipProcessor.from_pretrained("path/to/aaclip-model")
    >>> inputs = processor(images=image, return_tensors="pt")
    >>> outputs = model(**inputs, class_names=["bottle"])
    >>> outputs.anomaly_map.shape, outputs.image_score
    ```
    """

    def __init__(self, config: AAClipConfig):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        slope = config.adapter_negative_slope

        self.vision_model = CLIPVisionModel._from_config(vision_config)
        _inject_adapters(self.vision_model, config.vision_adapter_layers, config.vision_adapter_weight, slope)
        # CLIP's own image head, kept so the backbone stays a complete CLIP (stage-1 features, CLIP parity).
        self.visual_projection = nn.Linear(vision_config.hidden_size, config.projection_dim, bias=False)

        if config.include_text_model:
            self.text_model = CLIPTextModel._from_config(text_config)
            _inject_adapters(self.text_model, config.text_adapter_layers, config.text_adapter_weight, slope)
            self.text_projection = nn.Linear(text_config.hidden_size, config.projection_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
            # The AA-CLIP text head always has LeakyReLU (the patch/image heads only with projector_activation).
            if config.text_head == "adapter":
                self.text_projector = AAClipProjection(text_config.hidden_size, config.projection_dim, True, slope)
        self.seg_projections = nn.ModuleList(
            AAClipProjection(vision_config.hidden_size, config.projection_dim, config.projector_activation, slope)
            for _ in config.feature_layers
        )
        self.det_projection = AAClipProjection(
            vision_config.hidden_size, config.projection_dim, config.projector_activation, slope
        )

        # Stored anchors, one (E, 2) matrix per name in config.anchor_class_names (index 0 = "object").
        self.register_buffer("text_anchors", torch.zeros(len(config.anchor_class_names), config.projection_dim, 2))

        self.post_init()

    # ------------------------------------------------------------------ construction

    def adapter_modules(self) -> list[nn.Module]:
        """Every module AA-CLIP adds to CLIP (text/vision adapters and heads), in a fixed order."""
        modules = []
        if self.config.include_text_model:
            modules += [layer.adapter for layer in self._adapted_layers(self.text_model)]
            if self.config.text_head == "adapter":
                modules.append(self.text_projector)
        modules += [layer.adapter for layer in self._adapted_layers(self.vision_model)]
        return modules + list(self.seg_projections) + [self.det_projection]

    @staticmethod
    def _adapted_layers(tower) -> list[AAClipEncoderLayer]:
        return [layer for layer in tower.encoder.layers if isinstance(layer, AAClipEncoderLayer)]

    @torch.no_grad()
    def init_adapter_weights(self, seed: int | None = None) -> None:
        """Xavier-uniform init of all adapter and head matrices, as the reference does.

        Called by `from_clip_pretrained` and by training when starting fresh; `seed` makes it reproducible
        without touching the global RNG.
        """
        generator = None
        if seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        for module in self.adapter_modules():
            weight = module.fc.weight
            fan_out, fan_in = weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            values = torch.rand(weight.shape, generator=generator, dtype=torch.float32) * (2 * bound) - bound
            weight.copy_(values.to(weight.dtype))

    @classmethod
    def from_clip_pretrained(
        cls,
        clip: str | CLIPModel,
        processor=None,
        seed: int | None = None,
        anchor_classes: Sequence[str] = (),
        **overrides,
    ) -> AAClipModel:
        """Build AA-CLIP on a pretrained HF CLIP (a folder, a Hub id, or a `CLIPModel`).

        `overrides` may set `image_size` (the position table is resized once, with antialias, SPEC section 1),
        `hidden_act` (both towers; `"gelu"` = the reference setting) and any `AAClipConfig` field. Adapters and
        heads get a fresh xavier init (`seed`). With a `processor` (e.g. `AAClipProcessor()`: only its prompt
        ensemble is used), the anchors of `"object"` and of `anchor_classes` are computed and stored; without one
        they are left for `refresh_text_anchors`. A Hub id source is recorded as `config.base_model`.
        """
        clip_model = clip if isinstance(clip, CLIPModel) else CLIPModel.from_pretrained(clip)
        clip_config = clip_model.config
        if clip_config.model_type != "clip":  # transformers only warns and returns a random CLIP
            raise ValueError(
                f"{clip}: config.json has model_type {clip_config.model_type!r}; expected a CLIP model ('clip')"
            )
        image_size = overrides.pop("image_size", clip_config.vision_config.image_size)
        hidden_act = overrides.pop("hidden_act", None)
        config = AAClipConfig.from_clip_config(clip_config, **overrides)
        source = clip if isinstance(clip, str) else getattr(clip_model, "name_or_path", "")
        if config.base_model is None and source and looks_like_hub_id(str(source)):
            config.base_model = str(source)
        config.vision_config.image_size = image_size
        if hidden_act is not None:
            config.text_config.hidden_act = hidden_act
            config.vision_config.hidden_act = hidden_act
        config.validate()

        state = clip_model.state_dict()
        position_key = "vision_model.embeddings.position_embedding.weight"
        state[position_key] = resize_position_embedding(state[position_key], config.grid_size)

        model = cls(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        added = {id(parameter) for module in model.adapter_modules() for parameter in module.parameters()}
        new_keys = {name for name, parameter in model.named_parameters() if id(parameter) in added} | {"text_anchors"}
        not_loaded = set(missing) - new_keys
        if not_loaded or unexpected:
            raise ValueError(
                f"CLIP weights do not fit the AA-CLIP backbone: missing {sorted(not_loaded)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        model.init_adapter_weights(seed)
        # Fresh text adapters/head: stage 2 without stage 1 must not take anchors from them (config docstring).
        model.config.untrained_text_adapters = config.include_text_model and (
            config.text_adapter_layers > 0 or config.text_head == "adapter"
        )
        if processor is not None:
            model.refresh_text_anchors(processor, anchor_classes)
        elif anchor_classes:
            raise ValueError("anchor_classes need a processor: its prompt ensemble makes the anchors")
        else:
            logger.info("no processor given: text anchors not computed; call model.refresh_text_anchors(processor)")
        model.eval()
        return model

    def to_inference_only(self) -> AAClipModel:
        """A copy without the text tower and heads, keeping the stored anchors (smaller, faster to load).

        Its `save_pretrained` folder loads with `from_pretrained` and runs through the pipeline for the
        stored classes.
        """
        config = self.config.__class__.from_dict(self.config.to_dict())
        config.include_text_model = False
        model = self.__class__(config).to(device=self.device, dtype=self.dtype)
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        if missing:
            raise RuntimeError(f"inference-only copy is missing weights: {missing[:5]}")
        return model.eval()

    # ------------------------------------------------------------------ loading and saving (trust)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` that refuses weights it cannot trust, naming the file or tensors.

        - Missing, unexpected or mis-shaped keys are an `IncompleteWeightsError` (transformers would re-initialise
          them at random). Pass `output_loading_info=True` (or `ignore_mismatched_sizes=True`) to inspect a
          partial load instead: you then get transformers' lists. Inference-only folders load, as their config
          says they hold no text tower.
        - A truncated or corrupt `model.safetensors` is a one-line `CorruptWeightsError`.
        - Non-finite tensors are a `NonFiniteWeightsError`.
        - Stored anchors that disagree with the loaded text branch warn (`StaleAnchorsWarning`) with the fix.
        """
        wants_info = kwargs.pop("output_loading_info", False)
        strict = (
            not wants_info and not kwargs.get("ignore_mismatched_sizes") and pretrained_model_name_or_path is not None
        )
        where = str(pretrained_model_name_or_path)
        local = pretrained_model_name_or_path is not None and os.path.isdir(pretrained_model_name_or_path)
        if local and kwargs.get("state_dict") is None:
            folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            for name in weight_files(folder, kwargs.get("variant")):
                check_safetensors_file(folder / name)
        if strict:
            kwargs["ignore_mismatched_sizes"] = True  # collected and named below, instead of transformers' error
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            if type(error).__name__ == "SafetensorError":  # safetensors' own class (this file imports no safetensors)
                raise CorruptWeightsError(
                    f"{where}: a weight file is truncated or corrupt ({error}); re-download or re-save it"
                ) from None
            raise
        if strict:
            problems = []
            if info["missing_keys"]:
                problems.append(f"missing {listed_names(info['missing_keys'])}")
            if info["unexpected_keys"]:
                problems.append(f"unexpected {listed_names(info['unexpected_keys'])}")
            if info["mismatched_keys"]:
                shapes = (
                    f"{key} (file {tuple(old)}, model {tuple(new)})" for key, old, new in info["mismatched_keys"]
                )
                problems.append(f"mis-shaped {listed_names(shapes)}")
            if problems:
                raise IncompleteWeightsError(
                    f"{where}: the weights do not match its config.json: {'; '.join(problems)}. A folder written by "
                    "AAClipModel.save_pretrained holds exactly the keys its config describes; re-save or re-convert "
                    "it (output_loading_info=True inspects a partial load)"
                )
        bad = non_finite_tensors(model.state_dict())
        if bad:
            raise NonFiniteWeightsError(
                f"{where}: non-finite (NaN/inf) values in {len(bad)} tensor(s): {listed_names(bad)}; refusing to load them"
            )
        status = model.anchor_status()
        if status["state"] == "stale":
            warnings.warn(f"{where}: {status['reason']}", StaleAnchorsWarning, stacklevel=2)
        elif status["state"] != "fresh":
            logger.info(f"{where}: stored anchors not checked: {status['reason']}")
        return (model, info) if wants_info else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """`PreTrainedModel.save_pretrained`, refusing non-finite weights and writing a pipeline-ready Hub folder.

        Besides the weights, `config.json` and the remote code, it writes `pipeline_aaclip.py` with
        `custom_pipelines` in `config.json` (so `pipeline(..., trust_remote_code=True)` works where `aaclip_hf` is
        not installed), a `README.md` model card when the folder has none, and `weights_manifest.json` (SHA-256 of
        the weight files, see `verify_manifest`). Nothing else is ever copied, and `push_to_hub=True` uploads
        exactly the files this call wrote.
        """
        bad = non_finite_tensors(state_dict if state_dict is not None else self.state_dict())
        if bad:
            raise NonFiniteWeightsError(
                f"{save_directory}: refusing to save non-finite (NaN/inf) weights in {len(bad)} tensor(s): "
                f"{listed_names(bad)}; nothing was written"
            )
        hub_options = {
            key: kwargs.pop(key)
            for key in ("repo_id", "commit_message", "commit_description", "create_pr", "private", "revision", "token")
            if key in kwargs
        }
        folder = Path(save_directory)
        before = file_stamps(folder)
        super().save_pretrained(
            save_directory, is_main_process=is_main_process, state_dict=state_dict, push_to_hub=False, **kwargs
        )
        if (
            not self.should_save_on_this_rank(is_main_process)
            or not folder.is_dir()
            or kwargs.get("distributed_checkpoint")
        ):
            return None
        self._write_hub_files(folder, kwargs.get("variant"))
        if not push_to_hub:
            return None
        written = [name for name, stamp in file_stamps(folder).items() if before.get(name) != stamp]
        return upload_files(folder, written, hub_options.pop("repo_id", folder.name), **hub_options)

    def _write_hub_files(self, folder: Path, variant: str | None = None) -> None:
        pipeline_file = Path(__file__).with_name(PIPELINE_FILE)  # a sibling in the package and in the Hub copy
        if not (folder / PIPELINE_FILE).is_file():
            (folder / PIPELINE_FILE).write_bytes(pipeline_file.read_bytes())
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["custom_pipelines"] = {TASK: dict(CUSTOM_PIPELINE_ENTRY)}
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if not (folder / MODEL_CARD_NAME).exists():
            (folder / MODEL_CARD_NAME).write_text(model_card_text(self.config), encoding="utf-8")
        write_weights_manifest(folder, variant)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "50GB",
        tags: Sequence[str] | None = None,
    ):
        """Upload what `save_pretrained` writes (weights, config, remote and pipeline code, manifest, card) in one
        commit. A `README.md` already in the repo is kept; `tags` go into a new card."""
        with tempfile.TemporaryDirectory(prefix="aaclip-push-") as tmp:
            folder = Path(tmp)
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            if tags:
                (folder / MODEL_CARD_NAME).write_text(model_card_text(self.config, tags), encoding="utf-8")
            return upload_files(
                folder,
                os.listdir(folder),
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message,
                commit_description=commit_description,
                create_pr=create_pr,
                revision=revision,
            )

    # ------------------------------------------------------------------ adapters on/off

    @contextlib.contextmanager
    def adapters_disabled(self):
        """Run the towers as plain CLIP (no adapter fusion) inside the block."""
        towers = [self.vision_model] + ([self.text_model] if self.config.include_text_model else [])
        layers = [layer for tower in towers for layer in self._adapted_layers(tower)]
        previous = [layer.adapter_enabled for layer in layers]
        for layer in layers:
            layer.adapter_enabled = False
        try:
            yield self
        finally:
            for layer, state in zip(layers, previous):
                layer.adapter_enabled = state

    # ------------------------------------------------------------------ text branch (SPEC section 3)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """The adapted text tower's output with `pooler_output` set to the text head's features `(num_texts, E)`
        (EOS pooling, then the head; not normalised), as `CLIPModel.get_text_features` does with its projection.

        `kwargs` (`output_hidden_states`, `output_attentions`, ...) go to the text tower.
        """
        if not self.config.include_text_model:
            raise ValueError(
                "this is an inference-only AA-CLIP (include_text_model=False): it has no text tower and scores "
                f"against its stored anchors only ({self.stored_class_names}); load the full model to add classes"
            )
        _reject_unknown_kwargs("get_text_features", kwargs, TRANSFORMERS_KWARGS)
        outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        head = self.text_projector if self.config.text_head == "adapter" else self.text_projection
        outputs.pooler_output = head(outputs.pooler_output)
        return outputs

    def encode_anchors(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, num_classes: int, num_normal: int
    ) -> torch.Tensor:
        """Anchors `(num_classes, E, 2)` from prompts laid out per class as `[normal..., anomaly...]`.

        Each sentence embedding is L2-normalised, each group averaged and normalised again.
        """
        features = self.get_text_features(input_ids, attention_mask, return_dict=True).pooler_output
        features = F.normalize(features, dim=-1)
        features = features.reshape(num_classes, -1, features.shape[-1])
        normal = F.normalize(features[:, :num_normal].mean(dim=1), dim=-1)
        anomaly = F.normalize(features[:, num_normal:].mean(dim=1), dim=-1)
        return torch.stack([normal, anomaly], dim=-1)

    def compute_text_anchors(self, class_names: Sequence[str], prompts) -> torch.Tensor:
        """Anchors `(C, E, 2)` of `class_names` (grad flows unless under no_grad); nothing is stored.

        `prompts` is `processor.tokenize_prompts(class_names)` (`input_ids`, `attention_mask`, `num_normal`), or
        an object with `tokenize_prompts` (an `AAClipProcessor`), which is asked for them.
        """
        names = _class_name_list(class_names)
        if hasattr(prompts, "tokenize_prompts"):
            prompts = prompts.tokenize_prompts(names)
        if prompts["input_ids"].shape[0] % max(len(names), 1):
            raise ValueError(
                f"{prompts['input_ids'].shape[0]} tokenized prompts do not split evenly over {len(names)} class names; "
                "pass processor.tokenize_prompts(class_names) for the same names"
            )
        device = self.text_anchors.device
        return self.encode_anchors(
            prompts["input_ids"].to(device),
            prompts["attention_mask"].to(device),
            num_classes=len(names),
            num_normal=prompts["num_normal"],
        )

    def _encode_distinct(self, class_names: list[str], prompts: Mapping) -> torch.Tensor:
        """`compute_text_anchors`, running the text tower once per distinct prompt block (names that share a
        descriptive name, e.g. `mvtec/bottle` and `bottle`, share their anchors exactly)."""
        ids, mask = prompts["input_ids"], prompts["attention_mask"]
        ids, mask = (
            ids.reshape(len(class_names), -1, ids.shape[-1]),
            mask.reshape(len(class_names), -1, mask.shape[-1]),
        )
        first: dict[bytes, int] = {}
        owner = [first.setdefault(ids[i].numpy().tobytes() + mask[i].numpy().tobytes(), i) for i in range(len(ids))]
        distinct = sorted(set(owner))
        device = self.text_anchors.device
        anchors = self.encode_anchors(
            ids[distinct].flatten(0, 1).to(device),
            mask[distinct].flatten(0, 1).to(device),
            num_classes=len(distinct),
            num_normal=prompts["num_normal"],
        )
        return anchors[torch.tensor([distinct.index(i) for i in owner], device=anchors.device)]

    @property
    def stored_class_names(self) -> list[str]:
        return list(self.config.anchor_class_names)

    # ------------------------------------------------------------------ stored anchors: derived state

    def _require_text_tower(self) -> None:
        if not self.config.include_text_model:
            raise ValueError(
                "this is an inference-only AA-CLIP (include_text_model=False): it has no text tower and scores "
                f"against its stored anchors only ({self.stored_class_names}); load the full model to add classes"
            )

    def text_branch_fingerprint(self) -> dict[str, str]:
        """`{"text_branch": sha256, "dtype": ...}` of everything `encode_anchors` uses: the text tower with its
        adapters, the text head in use and the config fields that change what they compute."""
        self._require_text_tower()
        head = "text_projector." if self.config.text_head == "adapter" else "text_projection."
        settings = {name: getattr(self.config, name) for name in TEXT_BRANCH_SETTINGS}
        settings.update(
            {f"text_config.{name}": getattr(self.config.text_config, name) for name in TEXT_TOWER_SETTINGS}
        )
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
        for name, tensor in sorted(self.state_dict().items()):
            if name.startswith(("text_model.", head)):
                tensor = tensor.detach().to("cpu").contiguous()
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        dtype = str(self.text_model.embeddings.token_embedding.weight.dtype).removeprefix("torch.")
        return {"text_branch": digest.hexdigest(), "dtype": dtype}

    def anchor_status(self) -> dict:
        """Whether the stored anchors are what the current text branch gives.

        `state`: `"fresh"` (fingerprints match), `"stale"` (the text branch changed since: scores use old
        anchors), `"unknown"` (no fingerprint recorded) or `"unchecked"` (inference-only model, or weights in
        another dtype than the fingerprint's); `reason` says why and how to fix it; `fingerprint` is the record.
        """
        recorded = self.config.anchor_fingerprint
        fix = "fix: model.update_text_anchors(processor) recomputes every stored class, then save the model"
        status = {"fingerprint": recorded}
        if not self.config.include_text_model:
            return status | {
                "state": "unchecked",
                "reason": "inference-only model: there is no text tower to check the stored anchors against",
            }
        if recorded is None:
            return status | {
                "state": "unknown",
                "reason": f"no anchor fingerprint recorded (anchors stored without one, or by an older version); {fix}",
            }
        current = self.text_branch_fingerprint()
        if current["dtype"] != recorded["dtype"]:
            return status | {
                "state": "unchecked",
                "reason": f"the text branch is {current['dtype']}, the fingerprint is of {recorded['dtype']} weights",
            }
        if current["text_branch"] != recorded["text_branch"]:
            return status | {
                "state": "stale",
                "reason": (
                    f"the stored anchors of {len(self.stored_class_names)} class(es) were computed with other "
                    f"text-branch weights (fingerprint {recorded['text_branch'][:12]}, these weights give "
                    f"{current['text_branch'][:12]}), so scores use stale anchors; {fix}"
                ),
            }
        return status | {"state": "fresh", "reason": "the stored anchors match the text branch"}

    @torch.no_grad()
    def refresh_text_anchors(self, processor, class_names: Sequence[str] = ()) -> None:
        """Recompute EVERY stored class (plus `class_names`) from the current text branch and record the fingerprint.

        Call it after any change to the text branch (training, conversion): anchors are derived state. `processor`
        is anything with `tokenize_prompts` (its prompt ensemble and class-name table make the anchors).
        """
        names = list(dict.fromkeys([GENERIC_CLASS, *self.stored_class_names, *_class_name_list(class_names)]))
        prompts = processor.tokenize_prompts(names)
        was_training = self.training
        self.eval()
        try:
            anchors = self._encode_distinct(names, prompts)
        finally:
            self.train(was_training)
        self.text_anchors = anchors.detach().to(self.text_anchors)
        self.config.anchor_class_names = names
        self.config.anchor_fingerprint = {
            **self.text_branch_fingerprint(),
            "prompts": str(prompts.get("prompt_fingerprint", "unknown")),
        }

    @torch.no_grad()
    def store_text_anchors(self, class_names: Sequence[str], anchors: torch.Tensor) -> None:
        """Add or replace stored anchors computed elsewhere; they are saved with the weights.

        Their provenance is unknown, so `config.anchor_fingerprint` is cleared; prefer `update_text_anchors`.
        """
        self._store_rows(_class_name_list(class_names), anchors)
        self.config.anchor_fingerprint = None

    def _store_rows(self, class_names: list[str], anchors: torch.Tensor) -> None:
        anchors = anchors.detach()
        if anchors.shape != (len(class_names), self.config.projection_dim, 2):
            raise ValueError(
                f"anchors must have shape ({len(class_names)}, {self.config.projection_dim}, 2), got {tuple(anchors.shape)}"
            )
        names = self.stored_class_names
        table = self.text_anchors
        for name, anchor in zip(class_names, anchors):
            if name in names:
                table = table.index_copy(
                    0, torch.tensor([names.index(name)], device=table.device), anchor[None].to(table)
                )
            else:
                names.append(name)
                table = torch.cat([table, anchor[None].to(table)], dim=0)
        self.text_anchors = table
        self.config.anchor_class_names = names

    @torch.no_grad()
    def update_text_anchors(self, processor, class_names: Sequence[str] | None = None) -> None:
        """Compute and store the anchors of `class_names` (default: every stored class).

        When the text branch or the prompt ensemble changed since the stored table was made (or its provenance is
        unknown), every stored class is recomputed with them (`refresh_text_anchors`): the table never mixes old
        and new anchors.
        """
        if class_names is None:
            return self.refresh_text_anchors(processor)
        names = list(dict.fromkeys(_class_name_list(class_names)))
        prompts = processor.tokenize_prompts(names)
        recorded = self.config.anchor_fingerprint
        current = {**self.text_branch_fingerprint(), "prompts": str(prompts.get("prompt_fingerprint", "unknown"))}
        if recorded != current:
            return self.refresh_text_anchors(processor, names)
        was_training = self.training
        self.eval()
        try:
            self._store_rows(names, self._encode_distinct(names, prompts))
        finally:
            self.train(was_training)
        return None

    def anchors_for(self, class_names: Sequence[str]) -> torch.Tensor:
        """Stored anchors gathered per sample: `(B, E, 2)`."""
        class_names = _class_name_list(class_names)
        names = self.stored_class_names
        unknown = sorted({name for name in class_names if name not in names})
        if unknown:
            raise KeyError(
                f"no stored text anchors for class(es) {unknown}; stored: {names[:10]}{'...' if len(names) > 10 else ''}. "
                "Compute them with model.update_text_anchors(processor, [...]) (needs the tokenizer), pass "
                "text_anchors=..., or use the generic class 'object'."
            )
        if GENERIC_CLASS in class_names and not bool(self.text_anchors[0].any()):
            raise ValueError(
                "the generic 'object' anchor was never computed for this model; call "
                "model.update_text_anchors(processor) once (from_clip_pretrained does it)"
            )
        index = torch.tensor([names.index(name) for name in class_names], device=self.text_anchors.device)
        return self.text_anchors.index_select(0, index)

    # ------------------------------------------------------------------ vision branch (SPEC section 4)

    def get_vision_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Multi-level patch features `L x (B, N, E)` (L2-normalised) and the image feature `(B, E)`."""
        patch_embeds, image_embeds, _ = self._vision_branch(pixel_values, interpolate_pos_encoding)
        return patch_embeds, image_embeds

    def _vision_branch(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | int | Sequence[int] = False,
        output_attentions: bool = False,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, BaseModelOutputWithPooling]:
        """`get_vision_features` and the tower's output, whose `hidden_states` hold what `output_hidden_states` asks
        for: all (`True`), none (`False`) or the hidden states at the given indices (others `None`, negative
        indices from the end, as transformers selects them). The tower records only those and the feature layers."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.vision_config.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.config.vision_config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        wanted = None  # indices of the hidden states to return; None = all of them
        if output_hidden_states is False or output_hidden_states is None:
            wanted = set()
        elif output_hidden_states is not True:
            count = self.config.vision_config.num_hidden_layers + 1
            indices = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
            wanted = {index % count for index in indices if -count <= index < count}
        record = True if wanted is None else sorted(wanted | set(self.config.feature_layers))
        outputs = self.vision_model(
            pixel_values=pixel_values,
            output_hidden_states=record,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        post_layernorm = self.vision_model.post_layernorm
        patch_embeds = tuple(
            F.normalize(projection(post_layernorm(outputs.hidden_states[layer][:, 1:])), dim=-1)
            for projection, layer in zip(self.seg_projections, self.config.feature_layers)
        )
        last_patches = post_layernorm(outputs.last_hidden_state[:, 1:])
        image_embeds = F.normalize(self.det_projection(last_patches), dim=-1).mean(dim=1)
        hidden_states = outputs.hidden_states
        if wanted is not None:
            hidden_states = tuple(state if i in wanted else None for i, state in enumerate(hidden_states))
        tower_output = BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output,
            hidden_states=hidden_states if wanted is None or wanted else None,
            attentions=outputs.attentions if output_attentions else None,
        )
        return patch_embeds, image_embeds, tower_output

    # ------------------------------------------------------------------ scores (SPEC section 5)

    def patch_logits(self, patch_embeds: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """`p = temperature * f @ T`: `(B, N, 2)` from `(B, N, E)` features and `(B|1, E, 2)` anchors."""
        return self.config.similarity_temperature * torch.matmul(patch_embeds, anchors)

    def similarity_logits(self, image_embeds: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Image-level logits `(B, 2)`: raw dot products `det @ T`, no temperature (the stage-2 CE input)."""
        return torch.matmul(image_embeds.unsqueeze(1), anchors).squeeze(1)

    @staticmethod
    def _to_grid(values: torch.Tensor) -> torch.Tensor:
        """`(B, N, C)` patch values -> `(B, C, G, G)`."""
        grid = math.isqrt(values.shape[1])
        return values.transpose(1, 2).reshape(values.shape[0], values.shape[2], grid, grid)

    def training_maps(
        self, patch_embeds: Sequence[torch.Tensor], anchors: torch.Tensor, size: int | tuple[int, int]
    ) -> tuple[torch.Tensor, ...]:
        """Per level `(B, 2, H, W)` softmax maps: logits on the grid, bilinear upsample, softmax over (N, A)."""
        maps = []
        for features in patch_embeds:
            logits = self._to_grid(self.patch_logits(features, anchors))
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
            maps.append(logits.softmax(dim=1))
        return tuple(maps)

    def _domain(self, domain: str | None) -> str:
        domain = domain or self.config.default_domain
        if domain not in self.config.blur_kernel_size:
            raise ValueError(f"unknown domain {domain!r}; this model knows {sorted(self.config.blur_kernel_size)}")
        return domain

    def anomaly_grids(self, patch_embeds: Sequence[torch.Tensor], anchors: torch.Tensor, domain: str | None = None):
        """Per level `(B, G, G)` test maps `s_l = (p_A + 1 - p_N) / 2`, Gaussian-blurred on the grid."""
        domain = self._domain(domain)
        kernel, sigma = self.config.blur_kernel_size[domain], self.config.blur_sigma[domain]
        grids = []
        for features in patch_embeds:
            logits = self.patch_logits(features, anchors)
            score = (logits[..., 1] + 1.0 - logits[..., 0]) / 2.0
            grids.append(gaussian_blur2d(self._to_grid(score.unsqueeze(-1)), kernel, sigma)[:, 0])
        return tuple(grids)

    def image_scores(
        self, grid_sum: torch.Tensor, image_embeds: torch.Tensor, anchors: torch.Tensor, domain: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image `(image_score, raw_anomaly_score)`, both in [0, 1] (see `AAClipOutput`)."""
        domain = self._domain(domain)
        raw = (self.similarity_logits(image_embeds, anchors)[:, 1] + 1.0) / 2.0
        mean_logit = 2.0 * grid_sum / self.config.num_levels - 1.0
        map_score = torch.sigmoid(mean_logit).flatten(1).amax(dim=1)
        mode = self.config.image_score_mode[domain]
        if mode == "raw":
            return raw, raw
        if mode == "map":
            return map_score, raw
        weight = self.config.image_score_map_weight
        return weight * map_score + (1.0 - weight) * raw, raw

    def forward(
        self,
        pixel_values: torch.Tensor,
        class_names: str | Sequence[str] | None = None,
        text_anchors: torch.Tensor | None = None,
        domain: str | None = None,
        output_size: int | tuple[int, int] | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AAClipOutput | tuple:
        r"""
        Scores and patch-grid maps (see `AAClipOutput`); `AAClipProcessor.post_process_anomaly_detection` resizes the
        maps to each image's size.

        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): from `AAClipProcessor`.
        class_names (`str` or `list[str]`, *optional*): one name for the batch or one per image (mixed classes
            work); their anchors must be stored (see `update_text_anchors`). Defaults to `"object"`.
        text_anchors (`torch.FloatTensor` of shape `(batch_size | 1, E, 2)`, *optional*): explicit anchors instead.
        domain (`str`, *optional*): `"industrial"` or `"medical"` smoothing and image score; config default.
        output_size (`int` or `(height, width)`, *optional*): also compute `anomaly_map` at this size. Without it
            no map beyond the patch grid is computed.
        interpolate_pos_encoding (`bool`, defaults to `False`): CLIP's position-table interpolation for other input
            sizes (no antialias; not the reference's load-time resize).
        output_attentions (`bool`, *optional*): also return the vision tower's attention weights (eager attention;
            default: the config's).
        output_hidden_states (`bool`, `int` or `list[int]`, *optional*): also return the vision tower's hidden
            states: all of them, or those at the given indices (the others `None`), as transformers' models select
            them (default: the config's).
        return_dict (`bool`, *optional*): `False` returns a tuple (default: the config's).

        Any other keyword argument is a `TypeError`: nothing passed is silently ignored.
        """
        _reject_unknown_kwargs("forward", kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_size is not None:
            output_size = check_output_size(output_size)
        if class_names is not None and text_anchors is not None:
            raise ValueError("pass either class_names or text_anchors, not both")
        batch_size = pixel_values.shape[0]
        if text_anchors is None:
            names = [class_names] if isinstance(class_names, str) else list(class_names or [GENERIC_CLASS])
            if len(names) == 1:
                names = names * batch_size
            if len(names) != batch_size:
                raise ValueError(f"got {len(names)} class names for a batch of {batch_size} images")
            text_anchors = self.anchors_for(names)
        else:
            if text_anchors.dim() != 3 or text_anchors.shape[1:] != (self.config.projection_dim, 2):
                raise ValueError(
                    f"text_anchors must be (batch, {self.config.projection_dim}, 2), got {tuple(text_anchors.shape)}"
                )
            text_anchors = text_anchors.to(pixel_values.device).expand(batch_size, -1, -1)
        text_anchors = text_anchors.to(self.dtype)

        patch_embeds, image_embeds, vision_outputs = self._vision_branch(
            pixel_values, interpolate_pos_encoding, output_hidden_states, bool(output_attentions)
        )
        grids = self.anomaly_grids(patch_embeds, text_anchors, domain)
        grid_sum = torch.stack(grids).sum(dim=0)
        image_score, raw_score = self.image_scores(grid_sum, image_embeds, text_anchors, domain)
        anomaly_map = None
        if output_size is not None:
            anomaly_map = torch.stack([upsample_grid(grid, output_size) for grid in grids]).sum(dim=0)

        output = AAClipOutput(
            anomaly_map_grid=grid_sum,
            anomaly_map_grid_levels=grids,
            image_score=image_score,
            raw_anomaly_score=raw_score,
            anomaly_map=anomaly_map,
            patch_embeds=patch_embeds,
            image_embeds=image_embeds,
            text_anchors=text_anchors,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            vision_model_output=vision_outputs,
        )
        return output if return_dict else output.to_tuple()


def _class_name_list(class_names) -> list[str]:
    """A list of class names, each a non-empty string (a bare string is one name, not its characters)."""
    if isinstance(class_names, str):
        return [check_class_name(class_names)]
    if not isinstance(class_names, Iterable):
        raise TypeError(f"class names must be a string or a list of strings, got {class_names!r}")
    return [check_class_name(name) for name in class_names]


AAClipModel.register_for_auto_class("AutoModel")

__all__ = [
    "AAClipAdapter",
    "AAClipEncoderLayer",
    "AAClipModel",
    "AAClipOutput",
    "AAClipPreTrainedModel",
    "AAClipProjection",
    "gaussian_blur2d",
    "resize_position_embedding",
    "upsample_grid",
]

# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch AA-CLIP model: anomaly-aware CLIP for zero-shot anomaly detection and segmentation.

Read top to bottom, this file is the method (SPEC sections 2-5):

1. `AAClipAdapter` fuses a residual adapter into every token after an encoder layer.
2. `AAClipEncoderLayer` is a stock `CLIPEncoderLayer` followed by that adapter; it replaces the first
   K layers of the native HF CLIP towers, so `output_hidden_states` records post-adapter states.
3. `AAClipModel` turns prompt ensembles into per-class anchors `(E, 2)` (normal, anomaly), projects
   multi-level patch tokens into the same space, and scores patches and images against the anchors.

This file is copied to the Hub by `save_pretrained`: it imports only torch, transformers and its
flat siblings.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.utils import ModelOutput, logging

from .configuration_aaclip import GENERIC_CLASS, AAClipConfig


logger = logging.get_logger(__name__)


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


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class AAClipOutput(ModelOutput):
    r"""
    anomaly_map (`torch.FloatTensor` of shape `(batch_size, height, width)`):
        SPEC section 5 test map: per level `s_l = (p_A + 1 - p_N) / 2` on the patch grid, Gaussian-blurred,
        bilinearly upsampled, summed over levels. Larger means more anomalous; not bounded.
    anomaly_map_levels (`tuple(torch.FloatTensor)`):
        The per-level terms of `anomaly_map`, each `(batch_size, height, width)`.
    anomaly_map_grid (`torch.FloatTensor` of shape `(batch_size, G, G)`):
        `anomaly_map` before upsampling; resize it to any size (see `post_process_anomaly_detection`).
    image_score (`torch.FloatTensor` of shape `(batch_size,)`):
        Per-image anomaly score in [0, 1] that depends on that image alone. With `map_score` the maximum over
        the grid of `sigmoid(2 * anomaly_map_grid / L - 1)` (the anomaly probability of the level-averaged,
        smoothed patch logits) and `raw_anomaly_score` as below: `"fused"` = `w * map_score + (1 - w) * raw`,
        `"map"` = `map_score`, `"raw"` = `raw_anomaly_score`; chosen per domain by `config.image_score_mode`.
    raw_anomaly_score (`torch.FloatTensor` of shape `(batch_size,)`):
        SPEC `r = (image_embeds . T_A + 1) / 2`, in [0, 1].
    patch_embeds (`tuple(torch.FloatTensor)`):
        One `(batch_size, num_patches, E)` tensor of L2-normalised patch features per feature level.
    image_embeds (`torch.FloatTensor` of shape `(batch_size, E)`):
        Mean of the normalised `det_projection` patch features of the last layer (not re-normalised).
    text_anchors (`torch.FloatTensor` of shape `(batch_size, E, 2)`):
        The anchors used for each image: column 0 normal, column 1 anomaly.
    """

    anomaly_map: torch.FloatTensor | None = None
    anomaly_map_levels: tuple[torch.FloatTensor, ...] | None = None
    anomaly_map_grid: torch.FloatTensor | None = None
    image_score: torch.FloatTensor | None = None
    raw_anomaly_score: torch.FloatTensor | None = None
    patch_embeds: tuple[torch.FloatTensor, ...] | None = None
    image_embeds: torch.FloatTensor | None = None
    text_anchors: torch.FloatTensor | None = None


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
        heads get a fresh xavier init (`seed`). With a `processor` (default: the bundled one, when available),
        the anchors of `"object"` and of `anchor_classes` are computed and stored.
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
        if processor is None:
            processor = _default_processor()
        if processor is not None:
            model.update_text_anchors(processor, [GENERIC_CLASS, *anchor_classes])
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

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Adapted text tower, EOS pooling, then the text head: `(num_texts, E)`, not normalised."""
        if not self.config.include_text_model:
            raise ValueError(
                "this is an inference-only AA-CLIP (include_text_model=False): it has no text tower and scores "
                f"against its stored anchors only ({self.stored_class_names}); load the full model to add classes"
            )
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        if self.config.text_head == "adapter":
            return self.text_projector(pooled)
        return self.text_projection(pooled)

    def encode_anchors(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, num_classes: int, num_normal: int
    ) -> torch.Tensor:
        """Anchors `(num_classes, E, 2)` from prompts laid out per class as `[normal..., anomaly...]`.

        Each sentence embedding is L2-normalised, each group averaged and normalised again.
        """
        features = F.normalize(self.get_text_features(input_ids, attention_mask), dim=-1)
        features = features.reshape(num_classes, -1, features.shape[-1])
        normal = F.normalize(features[:, :num_normal].mean(dim=1), dim=-1)
        anomaly = F.normalize(features[:, num_normal:].mean(dim=1), dim=-1)
        return torch.stack([normal, anomaly], dim=-1)

    def compute_text_anchors(self, class_names: Sequence[str], processor) -> torch.Tensor:
        """Anchors `(C, E, 2)` for class names through the processor's prompt ensemble (grad flows unless no_grad)."""
        prompts = processor.tokenize_prompts(list(class_names))
        device = self.text_anchors.device
        return self.encode_anchors(
            prompts["input_ids"].to(device),
            prompts["attention_mask"].to(device),
            num_classes=len(class_names),
            num_normal=prompts["num_normal"],
        )

    @property
    def stored_class_names(self) -> list[str]:
        return list(self.config.anchor_class_names)

    @torch.no_grad()
    def store_text_anchors(self, class_names: Sequence[str], anchors: torch.Tensor) -> None:
        """Add or replace stored anchors; they are saved with the weights and recorded in the config."""
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
        """Recompute and store anchors (default: every stored class), e.g. after training the text branch."""
        names = list(class_names) if class_names is not None else self.stored_class_names
        was_training = self.training
        self.eval()
        self.store_text_anchors(names, self.compute_text_anchors(names, processor))
        self.train(was_training)

    def anchors_for(self, class_names: Sequence[str]) -> torch.Tensor:
        """Stored anchors gathered per sample: `(B, E, 2)`."""
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
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.vision_config.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.config.vision_config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        outputs = self.vision_model(
            pixel_values=pixel_values,
            output_hidden_states=list(self.config.feature_layers),
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        post_layernorm = self.vision_model.post_layernorm
        patch_embeds = tuple(
            F.normalize(projection(post_layernorm(outputs.hidden_states[layer][:, 1:])), dim=-1)
            for projection, layer in zip(self.seg_projections, self.config.feature_layers)
        )
        last_patches = post_layernorm(outputs.last_hidden_state[:, 1:])
        image_embeds = F.normalize(self.det_projection(last_patches), dim=-1).mean(dim=1)
        return patch_embeds, image_embeds

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
        return_dict: bool | None = None,
        **kwargs,
    ) -> AAClipOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): from `AAClipProcessor`.
        class_names (`str` or `list[str]`, *optional*): one name for the batch or one per image (mixed classes
            work); their anchors must be stored (see `update_text_anchors`). Defaults to `"object"`.
        text_anchors (`torch.FloatTensor` of shape `(batch_size | 1, E, 2)`, *optional*): explicit anchors instead.
        domain (`str`, *optional*): `"industrial"` or `"medical"` smoothing and image score; config default.
        output_size (`int` or `(h, w)`, *optional*): size of `anomaly_map`; defaults to the input size.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
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

        patch_embeds, image_embeds = self.get_vision_features(pixel_values, interpolate_pos_encoding)
        grids = self.anomaly_grids(patch_embeds, text_anchors, domain)
        grid_sum = torch.stack(grids).sum(dim=0)
        image_score, raw_score = self.image_scores(grid_sum, image_embeds, text_anchors, domain)

        size = output_size or tuple(pixel_values.shape[-2:])
        levels = tuple(upsample_grid(grid, size) for grid in grids)
        output = AAClipOutput(
            anomaly_map=torch.stack(levels).sum(dim=0),
            anomaly_map_levels=levels,
            anomaly_map_grid=grid_sum,
            image_score=image_score,
            raw_anomaly_score=raw_score,
            patch_embeds=patch_embeds,
            image_embeds=image_embeds,
            text_anchors=text_anchors,
        )
        return output if return_dict else output.to_tuple()


def _default_processor():
    """The bundled offline processor, when this file runs inside the installed package."""
    try:
        from .processing_aaclip import AAClipProcessor

        return AAClipProcessor()
    except (ImportError, OSError) as error:  # remote copy without bundled tokenizer files
        logger.warning(f"no default processor available ({error}); anchors not computed")
        return None


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

# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch AA-CLIP: an anomaly-aware CLIP for zero- and few-shot anomaly detection and segmentation.

Paper: Ma et al., "AA-CLIP: Enhancing Zero-Shot Anomaly Detection via Anomaly-Aware CLIP", CVPR 2025
(https://arxiv.org/abs/2503.06661); reference implementation https://github.com/Mwxinnn/AA-CLIP.
`docs/method.md` gives the equations. Read top to bottom, this file is the method:

1. `AAClipAdapter` fuses a residual adapter into every token after an encoder layer, and `AAClipEncoderLayer` (a stock
   `CLIPEncoderLayer` followed by it) replaces the first K layers of the native HF CLIP towers.
2. The text branch turns prompt ensembles into per-class anchors `(E, 2)` (normal, anomaly), stored with the weights.
3. The vision branch projects multi-level patch tokens into the anchors' space.
4. Scores: per-level patch logits against the anchors become a smoothed map and a per-image score. Normal reference
   images of a class (few-shot), when given, add a nearest-neighbour map.

`forward` works on tensors (pixel values plus class indices or anchors, and optionally a reference bank). What the
model stores per class (anchors, reference banks) and the thin layer that resolves class names to it, refusing state
that no longer matches the weights (`class_ids`, `references_for`), is `classes_aaclip.StoredClassesMixin`. This file
does no file I/O; it imports only torch, transformers and its flat siblings, so its Hub copy runs the same.
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
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging

from .classes_aaclip import StoredClassesMixin
from .configuration_aaclip import AAClipConfig, InvalidInputError, StaleStateError, class_name_list


logger = logging.get_logger(__name__)

# Augmentations of reference images before their patches enter a bank (rotations and flips, as AnomalyDINO).
REFERENCE_AUGMENTATIONS = {
    "rot90": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, dims=(-2, -1)),
    "hflip": lambda x: torch.flip(x, dims=(-1,)),
    "vflip": lambda x: torch.flip(x, dims=(-2,)),
}


# ----------------------------------------------------------------------------------------------
# Small functional pieces
# ----------------------------------------------------------------------------------------------


def resize_position_embedding(table: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize a ViT position table `(1 + g*g, D)` to `(1 + grid_size**2, D)`.

    Bicubic with antialias, CLS row kept, computed in fp32: what OpenCLIP and the reference do once at load time.
    (`interpolate_pos_encoding=True` uses no antialias and gives different values.)
    """
    old_grid = math.isqrt(table.shape[0] - 1)
    if old_grid * old_grid != table.shape[0] - 1:
        raise InvalidInputError(f"position table with {table.shape[0]} rows is not 1 + a square grid")
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
    """Separable Gaussian blur of `(B, C, H, W)` maps with reflect borders.

    The reflect border is written as index gathers (the same values as `F.pad(mode="reflect")`), which export to
    ONNX with a dynamic batch.
    """
    pad = kernel_size // 2
    height, width = maps.shape[-2:]
    if pad >= min(height, width):
        raise InvalidInputError(
            f"blur kernel {kernel_size} needs a patch grid larger than {pad} per side (reflect border), got "
            f"{(height, width)}; use a smaller blur_kernel_size for this image_size/patch_size"
        )

    def reflect(size: int) -> torch.Tensor:
        index = torch.arange(-pad, size + pad, device=maps.device).abs()
        return torch.where(index > size - 1, 2 * (size - 1) - index, index)

    taps = gaussian_kernel1d(kernel_size, sigma, maps.dtype, maps.device)
    shape = maps.shape
    maps = maps.reshape(-1, 1, height, width)  # each map alone: a fixed one-channel kernel, which exports to ONNX
    maps = maps.index_select(3, reflect(width)).index_select(2, reflect(height))
    maps = F.conv2d(maps, taps.view(1, 1, 1, -1))
    return F.conv2d(maps, taps.view(1, 1, -1, 1)).reshape(shape)


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in fp32, or as it is when already fp32 or wider."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def upsample_grid(grid: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of `(B, G, G)` maps to `(B, *size)`."""
    return F.interpolate(grid[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


def nearest_neighbour_distance(queries: torch.Tensor, bank: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """`1 - max_m cos(q, bank_m)` for L2-normalised `(B, N, E)` queries and an `(M, E)` bank: `(B, N)`.

    The bank is searched `chunk_size` rows at a time with a running maximum, so the extra memory is at most
    `B * N * chunk_size` similarities whatever the bank's size.
    """
    flat = queries.reshape(-1, queries.shape[-1])
    best = torch.full((flat.shape[0],), -math.inf, dtype=flat.dtype, device=flat.device)
    for start in range(0, bank.shape[0], chunk_size):
        similarity = flat @ bank[start : start + chunk_size].to(flat).T
        best = torch.maximum(best, similarity.amax(dim=1))
    return (1.0 - best).reshape(queries.shape[:-1])


def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of `size` rows chosen by greedy k-center selection (PatchCore, Roth et al., CVPR 2022).

    Starting from a seeded random row, each step adds the row farthest from everything chosen so far, so the subset
    covers the bank: every dropped row lies within the final covering radius of a kept one.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(features.shape[0], (1,), generator=generator))]
    distance = torch.cdist(features, features[chosen[-1]][None]).squeeze(1)
    for _ in range(size - 1):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, torch.cdist(features, features[chosen[-1]][None]).squeeze(1))
    return torch.tensor(chosen)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class AAClipOutput(ModelOutput):
    r"""
    Like transformers' segmentation models, `forward` returns maps on the patch grid; resize them to the sizes you need
    with `AAClipProcessor.post_process_anomaly_detection(outputs, target_sizes=...)`.

    anomaly_map_grid (`torch.FloatTensor` of shape `(batch_size, G, G)`):
        The zero-shot test map on the `G x G` patch grid: per level `s_l = (p_A + 1 - p_N) / 2` on the patch logits,
        Gaussian-blurred, summed over levels (the reference's map; larger is more anomalous, not bounded).
    anomaly_map_grid_levels (`tuple(torch.FloatTensor)`):
        The per-level terms of `anomaly_map_grid`, each `(batch_size, G, G)`.
    anomaly_probability_grid (`torch.FloatTensor` of shape `(batch_size, G, G)`):
        Per-patch anomaly probability in [0, 1]: `sigmoid(2 * anomaly_map_grid / L - 1)` (the softmax anomaly
        probability of the level-averaged logits), fused with `reference_distance_grid` when references are given.
    reference_distance_grid (`torch.FloatTensor` of shape `(batch_size, G, G)`, *optional*):
        With references: the nearest-neighbour cosine distance to the reference bank, blurred, averaged over levels.
    image_score (`torch.FloatTensor` of shape `(batch_size,)`):
        Per-image anomaly score in [0, 1] that depends on that image alone:
        `map_weight * map_score + (1 - map_weight) * raw_anomaly_score`.
    map_score (`torch.FloatTensor` of shape `(batch_size,)`): the maximum of `anomaly_probability_grid`.
    raw_anomaly_score (`torch.FloatTensor` of shape `(batch_size,)`): `r = (image_embeds . T_A + 1) / 2`, in [0, 1].
    map_weight (`torch.FloatTensor` of shape `(batch_size,)`):
        The weight of `map_score` in `image_score`, from the domain's `image_score_mode`: 1 (`"map"`), 0 (`"raw"`) or
        `image_score_map_weight` (`"fused"`).
    anomaly_map (`torch.FloatTensor` of shape `(batch_size, height, width)`, *optional*):
        Only with `output_size`: each level bilinearly upsampled (`align_corners=True`), then summed (the reference's
        order of operations).
    patch_embeds (`tuple(torch.FloatTensor)`):
        One `(batch_size, num_patches, E)` tensor of L2-normalised patch features per feature level.
    image_embeds (`torch.FloatTensor` of shape `(batch_size, E)`):
        Mean of the normalised `det_projection` patch features of the last layer (not re-normalised).
    text_anchors (`torch.FloatTensor` of shape `(batch_size, E, 2)`): the anchors used, column 0 normal, 1 anomaly.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*): with `output_hidden_states`, the vision tower's states
        (embeddings, then every layer, post-adapter), each `(batch_size, 1 + num_patches, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*): with `output_attentions` (eager attention), per layer.
    vision_model_output (`BaseModelOutputWithPooling`): the vision tower's output, as in `CLIPOutput`.
    """

    anomaly_map_grid: torch.FloatTensor | None = None
    anomaly_map_grid_levels: tuple[torch.FloatTensor, ...] | None = None
    anomaly_probability_grid: torch.FloatTensor | None = None
    reference_distance_grid: torch.FloatTensor | None = None
    image_score: torch.FloatTensor | None = None
    map_score: torch.FloatTensor | None = None
    raw_anomaly_score: torch.FloatTensor | None = None
    map_weight: torch.FloatTensor | None = None
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
    """Residual adapter, applied to every token of a layer's output `x`.

    `a = LeakyReLU(W x)`, rescaled per token to the norm of `x`, then `x <- lam * a + (1 - lam) * x`. The rescale
    makes the adapter's weight scale irrelevant; an all-zero token stays zero-safe.
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

    Subclassing (rather than wrapping) keeps CLIP's parameter names, attention backends, gradient checkpointing and
    `output_hidden_states` capture, which then records the post-adapter state.
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
    accepts_loss_kwargs = False

    @classmethod
    def is_custom_code(cls) -> bool:
        """`False`: initialise like a native model, so missing tower weights get CLIP's own init.

        For custom code, transformers skips every module whose own parameters are all flagged as initialised, which
        is vacuously true for CLIP's attention and MLP blocks (they hold only child layers): their projections would
        keep the generic `std=initializer_range` init. Every init here goes through `transformers.initialization`,
        which never touches a loaded tensor, so the guard is not needed.
        """
        return False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AAClipModel):
            if module.config.include_text_model:
                init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.zeros_(module.text_anchors)
            if "reference_bank" in module._buffers:
                init.zeros_(module.reference_bank)


class AAClipModel(StoredClassesMixin, AAClipPreTrainedModel):
    r"""
    AA-CLIP on native HF CLIP towers. Attribute names mirror `CLIPModel`, so any HF CLIP checkpoint loads into the
    backbone with only the adapter, head and anchor keys missing.

    Example:

    ```python
    >>> from aaclip_hf import AAClipModel, AAClipProcessor
    >>> model = AAClipModel.from_pretrained("path/to/aaclip-model")
    >>> processor = AAClipProcessor.from_pretrained("path/to/aaclip-model")
    >>> inputs = processor(images=image, return_tensors="pt")
    >>> outputs = model(**inputs, class_ids=model.class_ids(["bottle"]))
    >>> outputs.anomaly_map_grid.shape, outputs.image_score
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

        # Stored anchors, one (E, 2) matrix per name in config.anchor_class_names (row 0 = "object").
        self.register_buffer("text_anchors", torch.zeros(len(config.anchor_class_names), config.projection_dim, 2))
        # Stored normal references: (L, rows, E), the classes of config.reference_classes one after the other.
        rows = sum(record["patches"] for record in config.reference_classes.values())
        if rows:
            self.register_buffer("reference_bank", torch.zeros(config.num_levels, rows, config.projection_dim))
        # Fingerprints of weights already hashed, keyed by the tensors' identity and in-place version counters.
        self._digests: dict = {}

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
        """Xavier-uniform init of all adapter and head matrices, as the reference does (`seed`: reproducible without
        touching the global RNG)."""
        generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
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

        `overrides` may set `image_size` (the position table is resized once, with antialias), `hidden_act` (both
        towers; `"gelu"` = the reference setting) and any `AAClipConfig` field. Adapters and heads get a fresh xavier
        init (`seed`). With a `processor` (e.g. `AAClipProcessor()`: only its prompt ensemble is used), the anchors
        of `"object"` and of `anchor_classes` are computed and stored.
        """
        clip_model = clip if isinstance(clip, CLIPModel) else CLIPModel.from_pretrained(clip)
        if clip_model.config.model_type != "clip":  # transformers only warns and returns a random CLIP
            raise InvalidInputError(f"{clip}: model_type {clip_model.config.model_type!r}, expected a CLIP ('clip')")
        image_size = overrides.pop("image_size", clip_model.config.vision_config.image_size)
        hidden_act = overrides.pop("hidden_act", None)
        config = AAClipConfig.from_clip_config(clip_model.config, **overrides)
        config.vision_config.image_size = image_size
        if hidden_act is not None:
            config.text_config.hidden_act = config.vision_config.hidden_act = hidden_act
        config.validate()

        state = clip_model.state_dict()
        position_key = "vision_model.embeddings.position_embedding.weight"
        state[position_key] = resize_position_embedding(state[position_key], config.grid_size)
        model = cls(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        added = {id(parameter) for module in model.adapter_modules() for parameter in module.parameters()}
        new_keys = {name for name, parameter in model.named_parameters() if id(parameter) in added} | {"text_anchors"}
        if set(missing) - new_keys or unexpected:
            raise InvalidInputError(
                f"CLIP weights do not fit the AA-CLIP backbone: missing {sorted(set(missing) - new_keys)[:5]}, "
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
            raise InvalidInputError("anchor_classes need a processor: its prompt ensemble makes the anchors")
        return model.eval()

    def to_inference_only(self) -> AAClipModel:
        """A copy without the text tower and heads, keeping the stored anchors and references (smaller, faster to
        load); it scores the stored classes only."""
        config = self.config.__class__.from_dict(self.config.to_dict())
        config.include_text_model = False
        model = self.__class__(config).to(device=self.device, dtype=self.dtype)
        missing, _ = model.load_state_dict(self.state_dict(), strict=False)
        if missing:
            raise RuntimeError(f"inference-only copy is missing weights: {missing[:5]}")
        return model.eval()

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

    # ------------------------------------------------------------------ text branch: anchors

    def _require_text_tower(self) -> None:
        if not self.config.include_text_model:
            raise InvalidInputError(
                "this is an inference-only AA-CLIP (include_text_model=False): it has no text tower and scores "
                f"against its stored anchors only ({self.stored_class_names}); load the full model to add classes"
            )

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """The adapted text tower's output with `pooler_output` set to the text head's features `(num_texts, E)` (EOS
        pooling, then the head; not normalised), as `CLIPModel.get_text_features` does with its projection."""
        self._require_text_tower()
        if set(kwargs) - TRANSFORMERS_KWARGS:
            raise TypeError(
                f"get_text_features() got unexpected keyword argument(s) {sorted(set(kwargs) - TRANSFORMERS_KWARGS)}"
            )
        outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        head = self.text_projector if self.config.text_head == "adapter" else self.text_projection
        outputs.pooler_output = head(outputs.pooler_output)
        return outputs

    def encode_anchors(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, num_classes: int, num_normal: int
    ) -> torch.Tensor:
        """Anchors `(num_classes, E, 2)` from prompts laid out per class as `[normal..., anomaly...]`: each sentence
        embedding L2-normalised, each group averaged and normalised again."""
        features = self.get_text_features(input_ids, attention_mask, return_dict=True).pooler_output
        features = F.normalize(features, dim=-1).reshape(num_classes, -1, features.shape[-1])
        normal = F.normalize(features[:, :num_normal].mean(dim=1), dim=-1)
        anomaly = F.normalize(features[:, num_normal:].mean(dim=1), dim=-1)
        return torch.stack([normal, anomaly], dim=-1)

    def compute_text_anchors(self, class_names: Sequence[str], prompts) -> torch.Tensor:
        """Anchors `(C, E, 2)` of `class_names`, nothing stored (grad flows unless under no_grad).

        `prompts` is `processor.tokenize_prompts(class_names)`, or anything with `tokenize_prompts` (a processor).
        Classes whose prompts are identical (`mvtec/bottle` and `bottle`) run the text tower once and share anchors.
        """
        names = class_name_list(class_names)
        if hasattr(prompts, "tokenize_prompts"):
            prompts = prompts.tokenize_prompts(names)
        ids, mask = prompts["input_ids"], prompts["attention_mask"]
        if not names or ids.shape[0] % len(names):
            raise InvalidInputError(
                f"{ids.shape[0]} tokenized prompts do not split evenly over {len(names)} class names; pass "
                "processor.tokenize_prompts(class_names) for the same names"
            )
        ids, mask = ids.reshape(len(names), -1, ids.shape[-1]), mask.reshape(len(names), -1, mask.shape[-1])
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

    # ------------------------------------------------------------------ vision branch

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
        for: all (`True`), none (`False`) or those at the given indices (others `None`, negative from the end, as
        transformers selects them). The tower records only those and the feature layers."""
        channels = self.config.vision_config.num_channels
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            raise InvalidInputError(
                f"pixel_values must be (batch, {channels}, height, width), got {tuple(pixel_values.shape)}"
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
        # Features leave in fp32 or wider whatever the tower's dtype: the scores compare cosines near 1, which
        # bf16's 8-bit mantissa would round to steps of 2^-8 (a no-op for an fp32 model).
        patch_embeds = tuple(
            F.normalize(_at_least_fp32(projection(post_layernorm(outputs.hidden_states[layer][:, 1:]))), dim=-1)
            for projection, layer in zip(self.seg_projections, self.config.feature_layers)
        )
        last_patches = post_layernorm(outputs.last_hidden_state[:, 1:])
        image_embeds = F.normalize(_at_least_fp32(self.det_projection(last_patches)), dim=-1).mean(dim=1)
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

    # ------------------------------------------------------------------ few-shot: normal references

    @torch.no_grad()
    def reference_features(
        self,
        pixel_values: torch.Tensor,
        augmentations: Sequence[str] = (),
        coreset_ratio: float = 1.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """A reference bank `(L, rows, E)`: the patch features of K normal images of one class, per feature level.

        `augmentations` (names of `REFERENCE_AUGMENTATIONS`) add rotated or flipped copies of every image;
        `coreset_ratio` < 1 keeps that share of each level's rows by greedy k-center selection (`greedy_coreset`).
        """
        unknown = sorted(set(augmentations) - set(REFERENCE_AUGMENTATIONS))
        if unknown:
            raise InvalidInputError(
                f"unknown augmentation(s) {unknown}; choose from {sorted(REFERENCE_AUGMENTATIONS)}"
            )
        if not 0.0 < coreset_ratio <= 1.0:
            raise InvalidInputError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        size = self.config.vision_config.image_size
        if pixel_values.dim() != 4 or pixel_values.shape[0] == 0 or tuple(pixel_values.shape[-2:]) != (size, size):
            raise InvalidInputError(
                f"reference images must be a non-empty batch preprocessed at the model's {size}x{size} input, got "
                f"pixel values of shape {tuple(pixel_values.shape)}"
            )
        views = [pixel_values] + [REFERENCE_AUGMENTATIONS[name](pixel_values) for name in augmentations]
        levels = [torch.cat(level) for level in zip(*(self.get_vision_features(view)[0] for view in views))]
        bank = torch.stack([level.reshape(-1, level.shape[-1]) for level in levels])
        if coreset_ratio < 1.0:
            size = max(1, math.ceil(coreset_ratio * bank.shape[1]))
            bank = torch.stack([level[greedy_coreset(level.float(), size, seed).to(level.device)] for level in bank])
        return bank

    # ------------------------------------------------------------------ scores

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
            logits = F.interpolate(
                self._to_grid(self.patch_logits(features, anchors)), size=size, mode="bilinear", align_corners=True
            )
            maps.append(logits.softmax(dim=1))
        return tuple(maps)

    def _domain(self, domain: str | None) -> str:
        domain = domain or self.config.default_domain
        if domain not in self.config.blur_kernel_size:
            raise InvalidInputError(
                f"unknown domain {domain!r}; this model knows {sorted(self.config.blur_kernel_size)}"
            )
        return domain

    def _blur(self, grids: torch.Tensor, domain: str) -> torch.Tensor:
        """`(B, C, G, G)` maps smoothed with the domain's Gaussian."""
        return gaussian_blur2d(grids, self.config.blur_kernel_size[domain], self.config.blur_sigma[domain])

    def anomaly_grids(self, patch_embeds: Sequence[torch.Tensor], anchors: torch.Tensor, domain: str | None = None):
        """Per level `(B, G, G)` test maps `s_l = (p_A + 1 - p_N) / 2`, Gaussian-blurred on the grid."""
        domain = self._domain(domain)
        grids = []
        for features in patch_embeds:
            logits = self.patch_logits(features, anchors)
            score = (logits[..., 1] + 1.0 - logits[..., 0]) / 2.0
            grids.append(self._blur(self._to_grid(score.unsqueeze(-1)), domain)[:, 0])
        return tuple(grids)

    def reference_distance_grid(
        self, patch_embeds: Sequence[torch.Tensor], bank: torch.Tensor, domain: str | None = None
    ) -> torch.Tensor:
        """Few-shot map `(B, G, G)`: per level, each patch's nearest-neighbour cosine distance `1 - max cos` to that
        level's bank rows, blurred like the zero-shot terms, then averaged over levels (APRIL-GAN, AnomalyDINO)."""
        domain = self._domain(domain)
        expected = (self.config.num_levels, self.config.projection_dim)
        if bank.dim() != 3 or (bank.shape[0], bank.shape[2]) != expected or bank.shape[1] == 0:
            raise InvalidInputError(
                f"references must be a bank (levels={expected[0]}, rows>0, {expected[1]}) from reference_features, "
                f"got {tuple(bank.shape)}"
            )
        chunk, bank = self.config.reference_chunk_size, bank.to(patch_embeds[0].dtype)
        levels = [nearest_neighbour_distance(f, level, chunk).unsqueeze(-1) for f, level in zip(patch_embeds, bank)]
        return self._blur(self._to_grid(torch.cat(levels, dim=-1)), domain).mean(dim=1)

    def anomaly_probability(self, grid_sum: torch.Tensor, distance: torch.Tensor | None = None) -> torch.Tensor:
        """Per-patch anomaly probability in [0, 1]: the zero-shot `sigmoid(2 * grid_sum / L - 1)`, joined with the
        references' distance `d` (as `d / 2`, WinCLIP+'s scale) by `config.few_shot_fusion` when there is one."""
        zero_shot = torch.sigmoid(2.0 * grid_sum / self.config.num_levels - 1.0)
        if distance is None:
            return zero_shot
        few_shot = (distance / 2.0).clamp(0.0, 1.0)
        fusion = self.config.few_shot_fusion
        if fusion == "references":
            return few_shot
        if fusion == "harmonic":
            total = zero_shot + few_shot
            return torch.where(total > 0, 2.0 * zero_shot * few_shot / total.clamp_min(1e-12), total)
        return (zero_shot + few_shot) / 2.0

    def image_scores(
        self, probability: torch.Tensor, image_embeds: torch.Tensor, anchors: torch.Tensor, domain: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image `(image_score, map_score, raw_anomaly_score, map_weight)`, all in [0, 1] (see `AAClipOutput`)."""
        mode = self.config.image_score_mode[self._domain(domain)]
        raw = (self.similarity_logits(image_embeds, anchors)[:, 1] + 1.0) / 2.0
        map_score = probability.flatten(1).amax(dim=1)
        weight = {"map": 1.0, "raw": 0.0, "fused": float(self.config.image_score_map_weight)}[mode]
        map_weight = torch.full_like(raw, weight)
        return weight * map_score + (1.0 - weight) * raw, map_score, raw, map_weight

    def forward(
        self,
        pixel_values: torch.Tensor,
        class_ids: torch.Tensor | None = None,
        text_anchors: torch.Tensor | None = None,
        references: torch.Tensor | None = None,
        domain: str | None = None,
        output_size: int | tuple[int, int] | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
    ) -> AAClipOutput | tuple:
        r"""
        Scores and patch-grid maps (see `AAClipOutput`); `AAClipProcessor.post_process_anomaly_detection` resizes the
        maps to each image's size.

        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): from `AAClipProcessor`.
        class_ids (`torch.LongTensor` of shape `(batch_size,)` or `(1,)`, *optional*): rows of the stored anchor table
            (`model.class_ids(names)`); mixed classes work. Default: the generic class `"object"` (row 0).
        text_anchors (`torch.FloatTensor` of shape `(batch_size | 1, E, 2)`, *optional*): explicit anchors instead.
        references (`torch.FloatTensor` of shape `(L, rows, E)`, *optional*): a bank of normal reference patches of
            the images' class (`model.references_for(name)` or `model.reference_features(...)`): adds the few-shot map.
        domain (`str`, *optional*): `"industrial"` or `"medical"` smoothing and image score; config default.
        output_size (`int` or `(height, width)`, *optional*): also compute `anomaly_map` at this size.
        interpolate_pos_encoding (`bool`, defaults to `False`): CLIP's position-table interpolation for other input
            sizes (no antialias; not the reference's load-time resize).
        output_attentions, output_hidden_states, return_dict: as in transformers' models (the vision tower's; hidden
            states also by index).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        batch_size = pixel_values.shape[0]

        # 1. anchors per image: stored rows by class id, or given
        if class_ids is not None and text_anchors is not None:
            raise InvalidInputError("pass either class_ids or text_anchors, not both")
        if text_anchors is None:
            ids = torch.zeros(1, dtype=torch.long) if class_ids is None else torch.as_tensor(class_ids).reshape(-1)
            if ids.shape[0] not in (1, batch_size) or not bool(((ids >= 0) & (ids < len(self.text_anchors))).all()):
                raise InvalidInputError(
                    f"class_ids must hold 1 or {batch_size} rows of the {len(self.text_anchors)} stored anchors, got "
                    f"{ids.tolist()}"
                )
            text_anchors = self.text_anchors.index_select(0, ids.to(self.text_anchors.device))
            if not torch.jit.is_tracing() and not bool(text_anchors.flatten(1).any(dim=1).all()):
                raise StaleStateError(
                    "a stored anchor row used here was never computed (all zero); call "
                    "model.refresh_text_anchors(processor) once (from_clip_pretrained does it)"
                )
        elif text_anchors.dim() != 3 or text_anchors.shape[1:] != (self.config.projection_dim, 2):
            raise InvalidInputError(
                f"text_anchors must be (batch, {self.config.projection_dim}, 2), got {tuple(text_anchors.shape)}"
            )
        text_anchors = text_anchors.to(pixel_values.device).expand(batch_size, -1, -1)

        # 2. multi-level patch features and the image feature (fp32 or wider); the anchors are scored with them
        patch_embeds, image_embeds, vision_outputs = self._vision_branch(
            pixel_values, interpolate_pos_encoding, output_hidden_states, bool(output_attentions)
        )
        text_anchors = text_anchors.to(patch_embeds[0].dtype)
        # 3. zero-shot maps, the few-shot map, and the per-image scores
        grids = self.anomaly_grids(patch_embeds, text_anchors, domain)
        grid_sum = torch.stack(grids).sum(dim=0)
        distance = None if references is None else self.reference_distance_grid(patch_embeds, references, domain)
        probability = self.anomaly_probability(grid_sum, distance)
        image_score, map_score, raw_score, map_weight = self.image_scores(
            probability, image_embeds, text_anchors, domain
        )
        anomaly_map = None
        if output_size is not None:
            output_size = _check_output_size(output_size)
            anomaly_map = torch.stack([upsample_grid(grid, output_size) for grid in grids]).sum(dim=0)

        output = AAClipOutput(
            anomaly_map_grid=grid_sum,
            anomaly_map_grid_levels=grids,
            anomaly_probability_grid=probability,
            reference_distance_grid=distance,
            image_score=image_score,
            map_score=map_score,
            raw_anomaly_score=raw_score,
            map_weight=map_weight,
            anomaly_map=anomaly_map,
            patch_embeds=patch_embeds,
            image_embeds=image_embeds,
            text_anchors=text_anchors,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            vision_model_output=vision_outputs,
        )
        return output if return_dict else output.to_tuple()


def _check_output_size(output_size) -> int | tuple[int, int]:
    """A positive int or a `(height, width)` pair of positive ints."""
    pair = isinstance(output_size, Sequence)
    values = tuple(output_size) if pair else (output_size,)
    positive = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if not positive or (pair and len(values) != 2):
        raise InvalidInputError(f"output_size must be a positive int or (height, width), got {output_size!r}")
    return values if pair else output_size


# Keyword arguments transformers' generic code may pass to `get_text_features` (`TransformersKwargs`).
TRANSFORMERS_KWARGS = frozenset(TransformersKwargs.__required_keys__ | TransformersKwargs.__optional_keys__)


AAClipModel.register_for_auto_class("AutoModel")

__all__ = [
    "AAClipAdapter",
    "AAClipEncoderLayer",
    "AAClipModel",
    "AAClipOutput",
    "AAClipPreTrainedModel",
    "AAClipProjection",
    "gaussian_blur2d",
    "greedy_coreset",
    "nearest_neighbour_distance",
    "resize_position_embedding",
    "upsample_grid",
]

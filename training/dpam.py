"""Stage-1 frozen visual features: DPAM V-V attention on the model's own (frozen) vision tower.

The reference builds a *second* CLIP whose layers 6..24 use
``softmax(v v^T / sqrt(d_head))`` attention (same weights, ``out_proj`` and MLP kept, one path),
and adds the plain CLIP image embedding to every projected patch token:

    P_l = normalize(post_layernorm(S_l[:, 1:]) @ visual_projection) + normalize(CLS_plain)

Here the same computation runs on the model's vision tower, with adapters disabled, so no copy
of the weights is needed. The tower is run once up to ``start_layer - 1``; from there a plain
branch finishes the ordinary forward (for ``CLS_plain``) and a V-V branch collects the levels.

``mode``:
  * ``"per_image"`` (default): attention over the tokens of each image, the intended method;
    an image's features do not depend on the rest of the batch.
  * ``"batch_axis"``: the reference's behaviour: its attention reads the ``(tokens, batch, dim)``
    tensor as ``(batch, tokens, dim)``, so each token position attends to the same position in
    the *other images of the batch*. With batch 1 the block reduces to ``out_proj(v)``.

Caching. The vision side is frozen in stage 1, so :class:`Stage1FeatureCache` can keep the
features of every training image after the first epoch. That is exact for ``"per_image"``
without augmentation (the same image always gives the same features). It is refused with
augmentation (features of one random draw would be reused with masks of another) and with
``"batch_axis"`` (features depend on which images share the batch). Memory: ``(L * N * E + E)``
floats per image (ViT-L at 518 px: 4 * 1369 * 768 * 4 B = 16.8 MB, 36 GB for the 2162 VisA
images; the cache is kept in CPU memory in ``cache_dtype``, bf16 halves it at a small precision cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


__all__ = ["DPAM_MODES", "Stage1Features", "vv_attention", "dpam_layer", "dpam_features", "Stage1FeatureCache"]

DPAM_MODES = ("per_image", "batch_axis")


@dataclass
class Stage1Features:
    """``patch_embeds``: one (B, N, E) tensor per feature level (``P_l``, not re-normalised);
    ``image_embeds``: the L2-normalised plain CLIP image embedding (B, E)."""

    patch_embeds: tuple[torch.Tensor, ...]
    image_embeds: torch.Tensor


def vv_attention(attention, hidden_states: torch.Tensor) -> torch.Tensor:
    """V-V self-attention of a ``CLIPAttention`` over the middle axis of (B, N, D): the q-k
    scores are replaced by ``v v^T * head_dim**-0.5``; ``out_proj`` is kept."""
    b, n, _ = hidden_states.shape
    values = attention.v_proj(hidden_states).view(b, n, attention.num_heads, attention.head_dim).transpose(1, 2)
    weights = torch.matmul(values, values.transpose(-1, -2)) * (attention.head_dim**-0.5)
    out = torch.matmul(weights.softmax(dim=-1), values)
    return attention.out_proj(out.transpose(1, 2).reshape(b, n, -1))


def dpam_layer(layer, hidden_states: torch.Tensor, mode: str = "per_image") -> torch.Tensor:
    """One CLIP encoder layer with V-V attention: ``x + VV(ln1 x)``, then ``+ MLP(ln2 x)`` (no adapter)."""
    if mode not in DPAM_MODES:
        raise ValueError(f"dpam mode must be one of {DPAM_MODES}, got {mode!r}")
    normed = layer.layer_norm1(hidden_states)
    if mode == "per_image":
        attended = vv_attention(layer.self_attn, normed)
    else:  # attention across the batch at each token position
        attended = vv_attention(layer.self_attn, normed.transpose(0, 1)).transpose(0, 1)
    hidden_states = hidden_states + attended
    return hidden_states + layer.mlp(layer.layer_norm2(hidden_states))


def _plain_layer(layer, hidden_states: torch.Tensor) -> torch.Tensor:
    out = layer(hidden_states, None)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def dpam_features(
    model,
    pixel_values: torch.Tensor,
    start_layer: int | None = None,
    mode: str = "per_image",
    feature_layers: Sequence[int] | None = None,
) -> Stage1Features:
    """Frozen stage-1 features of ``pixel_values`` (see the module docstring).

    ``start_layer`` (1-based) is the first V-V layer; ``None`` means the first feature level
    (6 for ViT-L with levels 6/12/18/24, i.e. the reference's layers 6..24). Layers before it run
    as plain CLIP. ``feature_layers`` defaults to ``model.config.feature_layers``.
    """
    if mode not in DPAM_MODES:
        raise ValueError(f"dpam mode must be one of {DPAM_MODES}, got {mode!r}")
    tower = model.vision_model
    layers = tower.encoder.layers
    levels = list(feature_layers if feature_layers is not None else model.config.feature_layers)
    start = min(levels) if start_layer is None else int(start_layer)
    if not 1 <= start <= len(layers):
        raise ValueError(f"dpam start_layer must be in 1..{len(layers)}, got {start}")
    dtype = tower.embeddings.patch_embedding.weight.dtype
    with model.adapters_disabled():
        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values.to(dtype)))
        collected: dict[int, torch.Tensor] = {}
        for index in range(start - 1):
            hidden = _plain_layer(layers[index], hidden)
            if index + 1 in levels:
                collected[index + 1] = hidden
        plain, vv = hidden, hidden
        for index in range(start - 1, len(layers)):
            plain = _plain_layer(layers[index], plain)
            vv = dpam_layer(layers[index], vv, mode)
            if index + 1 in levels:
                collected[index + 1] = vv
    cls_plain = F.normalize(model.visual_projection(tower.post_layernorm(plain[:, 0])), dim=-1)
    patch_embeds = tuple(
        F.normalize(model.visual_projection(tower.post_layernorm(collected[level][:, 1:])), dim=-1)
        + cls_plain[:, None]
        for level in levels
    )
    return Stage1Features(patch_embeds=patch_embeds, image_embeds=cls_plain)


class Stage1FeatureCache:
    """CPU cache of :class:`Stage1Features` per dataset index (exact only when it is valid; see module doc)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._store: dict[int, tuple[tuple[torch.Tensor, ...], torch.Tensor]] = {}

    @staticmethod
    def check_valid(mode: str, augment: bool) -> None:
        if mode != "per_image":
            raise ValueError(
                "stage-1 feature caching needs dpam_mode='per_image' (batch_axis features depend on the batch)"
            )
        if augment:
            raise ValueError(
                "stage-1 feature caching needs augmentation off (--no-augment): cached features "
                "would belong to another random draw than the mask"
            )

    def __len__(self) -> int:
        return len(self._store)

    def has_all(self, indices: Sequence[int]) -> bool:
        return all(int(i) in self._store for i in indices)

    def put(self, indices: Sequence[int], features: Stage1Features) -> None:
        for row, index in enumerate(indices):
            self._store[int(index)] = (
                tuple(level[row].detach().to("cpu", self.dtype) for level in features.patch_embeds),
                features.image_embeds[row].detach().to("cpu", self.dtype),
            )

    def get(self, indices: Sequence[int], device, dtype: torch.dtype) -> Stage1Features:
        rows = [self._store[int(i)] for i in indices]
        levels = tuple(torch.stack([r[0][j] for r in rows]).to(device, dtype) for j in range(len(rows[0][0])))
        return Stage1Features(patch_embeds=levels, image_embeds=torch.stack([r[1] for r in rows]).to(device, dtype))

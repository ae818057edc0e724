"""OpenAI / OpenCLIP ``CLIP`` (ViT) weights -> Hugging Face ``CLIPModel``: pure mapping functions.

Everything here is a plain function on dicts of tensors, so tests can check every rename,
split and transpose against an independent implementation (``open_clip``) without files.

Layouts accepted (after an optional ``module.`` prefix and ``{"state_dict": ...}`` wrapper):

- OpenAI / OpenCLIP ``CLIP``: ``visual.*``, ``transformer.*``, ``token_embedding.weight``,
  ``positional_embedding``, ``ln_final.*``, ``text_projection`` (a ``(width, embed)`` matrix used
  as ``x @ P``), ``logit_scale``.
- OpenCLIP ``CustomTextCLIP``: the text keys under ``text.``; its projection is either the same
  matrix (``text.text_projection``) or an ``nn.Linear`` (``text.text_projection.weight``, already
  in ``(out, in)`` layout, so *not* transposed; a bias is only accepted when it is all zeros,
  because HF CLIP's projection has none).

The weights cannot say which activation the towers were trained with: that is an argument.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from transformers import CLIPConfig

# One formula for the position-table resize, shared with the Hub-portable model code
# (`AAClipModel.from_clip_pretrained` resizes with the same function).
from ..errors import ConversionError
from ..modeling.modeling_aaclip import resize_position_embedding


# Heads are not stored in the weights; OpenAI and OpenCLIP use 64-wide heads.
DEFAULT_HEAD_WIDTH = 64
# OpenAI/OpenCLIP LayerNorm epsilon (torch default).
LAYER_NORM_EPS = 1e-5

# Source keys that carry no weight an HF CLIPModel can hold, with the reason printed to the user.
DROPPED_KEYS: dict[str, str] = {
    "attn_mask": "causal mask buffer (HF CLIP builds its own)",
    "input_resolution": "integer metadata of OpenAI TorchScript archives",
    "context_length": "integer metadata of OpenAI TorchScript archives",
    "vocab_size": "integer metadata of OpenAI TorchScript archives",
    "logit_bias": "SigLIP-style logit bias; HF CLIPModel has no slot for it (embeddings are unaffected)",
}

# Per-block sub-keys: source suffix -> HF suffix (q/k/v handled separately).
_BLOCK_RENAMES: dict[str, str] = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_FUSED_QKV = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}

# Whole-key renames (canonical source key -> HF key) that are plain copies.
_COPIES: dict[str, str] = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    # OpenCLIP CustomTextCLIP with an nn.Linear projection: already (out, in).
    "text_projection.weight": "text_projection.weight",
}
# Matrices used as ``x @ P`` in the source: HF Linear wants ``P.T``.
_TRANSPOSES: dict[str, str] = {
    "visual.proj": "visual_projection.weight",
    "text_projection": "text_projection.weight",
}
_BLOCK_RE = re.compile(r"^(visual\.transformer|transformer)\.resblocks\.(\d+)\.(.+)$")


@dataclass
class MappingReport:
    """What a conversion did, key by key, so the CLI can print it and tests can inspect it."""

    mapped: list[tuple[str, str, str]] = field(default_factory=list)  # (source key, HF key, operation)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (source key, reason)
    notes: list[str] = field(default_factory=list)

    def summary(self, max_rows: int | None = None) -> str:
        """A readable table; repeated per-layer rows are folded so ViT-L output stays short."""
        folded: dict[tuple[str, str, str], int] = {}
        for src, dst, op in self.mapped:
            key = (re.sub(r"\.\d+\.", ".{i}.", src), re.sub(r"\.\d+\.", ".{i}.", dst), op)
            folded[key] = folded.get(key, 0) + 1
        rows = list(folded.items())
        if max_rows is not None:
            rows = rows[:max_rows]
        width = max((len(s) for (s, _, _), _ in rows), default=10)
        lines = [f"Mapped {len(self.mapped)} tensors:"]
        for (src, dst, op), count in rows:
            times = f" (x{count})" if count > 1 else ""
            lines.append(f"  {src:<{width}} -> {dst}  [{op}]{times}")
        if self.dropped:
            lines.append(f"Dropped {len(self.dropped)} entries:")
            lines.extend(f"  {src}: {why}" for src, why in self.dropped)
        else:
            lines.append("Dropped nothing.")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the flat ``{key: tensor}`` dict inside a loaded checkpoint.

    Accepts a bare state dict or an OpenCLIP training checkpoint ``{"state_dict": ..., "epoch": ...}``.
    """
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(
            f"{source}: entries {bad[:5]} are not tensors; expected a CLIP state dict of tensors "
            "(or an OpenCLIP checkpoint with a 'state_dict' entry)"
        )
    return dict(obj)


def canonicalize_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """Strip ``module.`` and the CustomTextCLIP ``text.`` prefix: ``canonical key -> (original key, tensor)``."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        canon = key[len("module.") :] if key.startswith("module.") else key
        if canon.startswith("text."):
            canon = canon[len("text.") :]
        if canon in out:
            raise ConversionError(
                f"keys {out[canon][0]!r} and {key!r} both map to {canon!r}; the checkpoint mixes layouts"
            )
        out[canon] = (key, value)
    return out


def _split_qkv(tensor: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if tensor.shape[0] % 3:
        raise ConversionError(f"{key}: fused in_proj has {tensor.shape[0]} rows, expected a multiple of 3 (q, k, v)")
    q, k, v = tensor.chunk(3, dim=0)
    return q, k, v


def convert_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], MappingReport]:
    """Map an OpenAI/OpenCLIP ``CLIP`` state dict to HF ``CLIPModel`` names.

    Returns fp32 tensors (OpenAI archives are fp16) and a report of every mapping and dropped key.
    The position table is copied at its stored size; resizing is a separate step
    (:func:`resize_position_embedding`) so this function stays a pure rename.
    """
    report = MappingReport()
    canon = canonicalize_keys(state_dict)
    if any(key.startswith(("vision_model.", "text_model.")) for key in canon):
        raise ConversionError(
            f"{source}: this is already an HF CLIPModel state dict; pass the folder holding it and its "
            "config.json (or the Hub repo id) instead of the weights file"
        )
    if "visual.proj" not in canon:
        raise ConversionError(
            f"{source}: no 'visual.proj' key; only ViT CLIP checkpoints are supported "
            "(ResNet or timm/HF-tower OpenCLIP models have no HF CLIPModel equivalent)"
        )
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, (orig, value) in canon.items():
        value = value.detach()
        if key in DROPPED_KEYS:
            report.dropped.append((orig, DROPPED_KEYS[key]))
        elif key == "text_projection.bias":
            if torch.count_nonzero(value):
                raise ConversionError(
                    f"{source}: {orig} is non-zero, but HF CLIPModel's text_projection has no bias; "
                    "this OpenCLIP model (proj_bias=True) cannot be represented exactly"
                )
            report.dropped.append((orig, "all-zero bias of an nn.Linear text projection (HF has no bias)"))
        elif key in _COPIES:
            out[_COPIES[key]] = value.float().clone()
            report.mapped.append((orig, _COPIES[key], "copy"))
        elif key in _TRANSPOSES:
            if value.dim() != 2:
                raise ConversionError(
                    f"{source}: {orig} has shape {tuple(value.shape)}, expected a 2-D (width, embed) matrix"
                )
            out[_TRANSPOSES[key]] = value.float().t().contiguous()
            report.mapped.append((orig, _TRANSPOSES[key], "transpose"))
        elif key == "logit_scale":
            out["logit_scale"] = value.float().reshape(())
            report.mapped.append((orig, "logit_scale", "reshape to 0-d"))
        elif match := _BLOCK_RE.match(key):
            tower = "vision_model" if match.group(1).startswith("visual") else "text_model"
            prefix = f"{tower}.encoder.layers.{match.group(2)}."
            sub = match.group(3)
            if sub in _BLOCK_RENAMES:
                out[prefix + _BLOCK_RENAMES[sub]] = value.float().clone()
                report.mapped.append((orig, prefix + _BLOCK_RENAMES[sub], "copy"))
            elif sub in _FUSED_QKV:
                kind = _FUSED_QKV[sub]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(value.float(), orig)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.clone()
                report.mapped.append((orig, f"{prefix}self_attn.{{q,k,v}}_proj.{kind}", "split in 3 (q, k, v)"))
            else:
                unknown.append(orig)
        else:
            unknown.append(orig)
    if unknown:
        raise ConversionError(
            f"{source}: {len(unknown)} keys have no HF CLIPModel equivalent: {sorted(unknown)[:8]}"
            f"{' ...' if len(unknown) > 8 else ''}. Supported: standard OpenAI/OpenCLIP ViT CLIP "
            "(no layer scale, attention pooling, qk-norm or HF text towers)"
        )
    return out, report


def _count_layers(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if indices and indices != set(range(len(indices))):
        raise ConversionError(f"{prefix}.resblocks indices {sorted(indices)} are not contiguous from 0")
    return len(indices)


def _heads(width: int, heads: int | None, tower: str) -> int:
    heads = heads if heads is not None else width // DEFAULT_HEAD_WIDTH
    if heads < 1 or width % heads:
        raise ConversionError(
            f"{tower} width {width} is not divisible into {heads} heads; pass the head count explicitly"
        )
    return heads


def infer_clip_config(
    state_dict: Mapping[str, torch.Tensor],
    hidden_act: str = "quick_gelu",
    text_heads: int | None = None,
    vision_heads: int | None = None,
    source: str = "checkpoint",
) -> CLIPConfig:
    """Read every HF ``CLIPConfig`` size from the tensor shapes (open_clip does the same for OpenAI files).

    ``hidden_act`` applies to both towers: ``"quick_gelu"`` for OpenAI weights, ``"gelu"`` for most
    LAION/DataComp OpenCLIP weights and for the AA-CLIP reference setting. Heads default to
    ``width // 64``. BOS/EOS are the last two vocabulary ids (49406/49407 for the OpenAI BPE).
    """
    canon = {k: v for k, (_, v) in canonicalize_keys(state_dict).items()}
    required = [
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
    ]
    missing = [k for k in required if k not in canon]
    if missing:
        raise ConversionError(f"{source}: missing {missing}; expected an OpenAI/OpenCLIP ViT CLIP state dict")
    conv = canon["visual.conv1.weight"]
    vision_width, patch = conv.shape[0], conv.shape[-1]
    positions = canon["visual.positional_embedding"].shape[0]
    grid = round(math.sqrt(positions - 1))
    if grid * grid + 1 != positions:
        raise ConversionError(
            f"{source}: visual.positional_embedding has {positions} rows, expected 1 + a square grid (CLS + patches)"
        )
    embed_dim = canon["visual.proj"].shape[1]
    if "text_projection" in canon:
        text_embed = canon["text_projection"].shape[1]
    elif "text_projection.weight" in canon:
        text_embed = canon["text_projection.weight"].shape[0]
    else:
        raise ConversionError(f"{source}: no text projection ('text_projection' or 'text.text_projection.weight')")
    if text_embed != embed_dim:
        raise ConversionError(f"{source}: text projection gives {text_embed} dims but visual.proj gives {embed_dim}")
    text_width = canon["ln_final.weight"].shape[0]
    vision_layers = _count_layers(canon, "visual.transformer")
    text_layers = _count_layers(canon, "transformer")
    vocab = canon["token_embedding.weight"].shape[0]
    vision_mlp = canon["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    text_mlp = canon["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    # CLIP's initial value when absent (or shape-only, on the meta device); the loaded weight wins anyway.
    logit_scale = math.log(1 / 0.07)
    if "logit_scale" in canon and not canon["logit_scale"].is_meta:
        logit_scale = float(canon["logit_scale"].float().reshape(()))
    text_config = {
        "hidden_size": text_width,
        "intermediate_size": text_mlp,
        "num_hidden_layers": text_layers,
        "num_attention_heads": _heads(text_width, text_heads, "text"),
        "max_position_embeddings": canon["positional_embedding"].shape[0],
        "vocab_size": vocab,
        "hidden_act": hidden_act,
        "layer_norm_eps": LAYER_NORM_EPS,
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "projection_dim": embed_dim,
    }
    vision_config = {
        "hidden_size": vision_width,
        "intermediate_size": vision_mlp,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": _heads(vision_width, vision_heads, "vision"),
        "patch_size": patch,
        "image_size": patch * grid,
        "num_channels": conv.shape[1],
        "hidden_act": hidden_act,
        "layer_norm_eps": LAYER_NORM_EPS,
        "projection_dim": embed_dim,
    }
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=embed_dim,
        logit_scale_init_value=logit_scale,
    )


def resize_clip_state_dict(
    hf_state_dict: dict[str, torch.Tensor], config: CLIPConfig, image_size: int
) -> tuple[dict[str, torch.Tensor], CLIPConfig]:
    """Bake a new input size into converted HF weights: resized position table + ``vision_config.image_size``.

    The table is resized once, bicubic with antialias, CLS row kept, in fp32
    (:func:`resize_position_embedding`, what open_clip's ``resize_pos_embed`` and the AA-CLIP reference
    do at load time; HF's run-time ``interpolate_pos_encoding`` has no antialias and differs).
    """
    patch = config.vision_config.patch_size
    if image_size % patch:
        raise ConversionError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    key = "vision_model.embeddings.position_embedding.weight"
    if image_size != config.vision_config.image_size:
        hf_state_dict = dict(hf_state_dict)
        hf_state_dict[key] = resize_position_embedding(hf_state_dict[key].float(), image_size // patch)
        config = CLIPConfig.from_dict(config.to_dict())
        config.vision_config.image_size = image_size
    return hf_state_dict, config


__all__ = [
    "DROPPED_KEYS",
    "ConversionError",
    "MappingReport",
    "canonicalize_keys",
    "convert_clip_state_dict",
    "infer_clip_config",
    "resize_clip_state_dict",
    "resize_position_embedding",
    "unwrap_state_dict",
]

"""Memory the work will need, estimated from the config alone, and memory the machine has.

A config is a promise about the weights: `state_elements` counts the values a config describes without building
anything, so a hostile or mistaken `config.json` (a 2^20-wide tower, 100000 layers, an 80000-px image size, a vocabulary
of 10^9) is refused in one line before a single tensor is allocated, instead of taking the machine's memory first.
"""

from __future__ import annotations

import os

import torch

from ..errors import ResourceLimitError


__all__ = [
    "MEMORY_HEADROOM",
    "check_fits_in_memory",
    "free_memory_bytes",
    "inference_activation_bytes",
    "state_elements",
]

# Share of the free memory one job may plan to fill (the rest: allocator slack, the OS, other processes).
MEMORY_HEADROOM = 0.9


def _encoder_parameters(width: int, mlp: int, layers: int, adapters: int) -> int:
    """A CLIP encoder: per layer two layer norms, q/k/v/out projections with bias, a two-layer MLP; adapters."""
    per_layer = 2 * 2 * width + 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    return layers * per_layer + adapters * width * width


def state_elements(config) -> int:
    """The number of values in an `AAClipModel`'s state dict for `config`, counted analytically (exact: the tests
    compare it with a model built on the meta device)."""
    vision, text, embed = config.vision_config, config.text_config, config.projection_dim
    width, patch = vision.hidden_size, vision.patch_size
    grid = vision.image_size // patch
    total = width + vision.num_channels * width * patch * patch + (grid * grid + 1) * width  # CLS, patches, positions
    total += 2 * width + 2 * width  # pre- and post-layernorm
    total += _encoder_parameters(
        width, vision.intermediate_size, vision.num_hidden_layers, config.vision_adapter_layers
    )
    total += width * embed * (1 + len(config.feature_layers) + 1)  # visual_projection, seg_projections, det_projection
    total += len(config.anchor_class_names) * embed * 2  # stored anchors
    total += len(config.feature_layers) * embed * sum(r["patches"] for r in config.reference_classes.values())
    if config.include_text_model:
        text_width = text.hidden_size
        total += (text.vocab_size + text.max_position_embeddings) * text_width + 2 * text_width  # embeddings, final LN
        total += _encoder_parameters(
            text_width, text.intermediate_size, text.num_hidden_layers, config.text_adapter_layers
        )
        total += text_width * embed + 1  # text_projection, logit_scale
        if config.text_head == "adapter":
            total += text_width * embed
    return total


def inference_activation_bytes(config, batch_size: int = 1, dtype_bytes: int = 4, fused_attention: bool = True) -> int:
    """Peak live activation bytes of an inference forward (vision side, stored anchors), by a simple model.

    Layers run one after the other and free their temporaries, so the peak is the hidden states the model keeps (one
    `T x D` per feature layer, plus the residual stream) plus one layer's working set: layer-norm output, q, k, v,
    attention output and out-projection (6 x `T x D`), and the MLP's fc1 and GELU outputs (2 x `T x F`). Eager
    attention also holds the scores and probabilities (2 x heads x `T^2`); a fused kernel does not. The seg/det heads'
    `N x E` outputs are counted. The weights are not included.
    """
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens, width = patches + 1, vision.hidden_size
    kept = (len(config.feature_layers) + 1) * tokens * width
    layer = 6 * tokens * width + 2 * tokens * vision.intermediate_size
    if not fused_attention:
        layer += 2 * vision.num_attention_heads * tokens * tokens
    heads = (len(config.feature_layers) + 1) * patches * config.projection_dim
    return (kept + layer + heads) * dtype_bytes * batch_size


def free_memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """Free memory on `device`: CUDA's `mem_get_info`; on CPU (and MPS, whose memory is shared) the smaller of
    `MemAvailable` and the cgroup's remaining limit. `None` when it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else None
    values = []
    try:
        with open("/proc/meminfo") as handle:
            values += [int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        with open("/sys/fs/cgroup/memory.current") as handle:
            used = int(handle.read().strip())
        if limit.isdigit():
            values.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    if not values and hasattr(os, "sysconf"):
        try:
            values.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(values) if values else None


def check_fits_in_memory(needed: int, what: str, device: str | torch.device = "cpu", free: int | None = None) -> None:
    """Refuse, in one line, work that needs more than `MEMORY_HEADROOM` of the free memory (when it can be read)."""
    free = free_memory_bytes(device) if free is None else free
    if free is not None and needed > MEMORY_HEADROOM * free:
        raise ResourceLimitError(
            f"{what} needs about {needed / 2**30:.1f} GiB but {torch.device(device).type} has "
            f"{free / 2**30:.1f} GiB free; refusing before allocating it"
        )

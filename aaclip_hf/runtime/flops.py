"""Analytic FLOP and byte counts of AA-CLIP, from the config alone (no weights are allocated).

Why analytic: a measured throughput is only meaningful against the exact work done. The counts
here cover every matrix product and convolution of the forward pass, the same operator set that
`torch.utils.flop_counter.FlopCounterMode` counts (one multiply-add = 2 FLOPs; bias adds,
norms, softmax, activations and resizes are not counted and are listed separately as
`elementwise_estimate`). `tests/runtime/test_flops.py` checks the totals against `FlopCounterMode`
on tiny configs, so a wrong term fails.

Note: `FlopCounterMode` does not count the CPU kernel of `scaled_dot_product_attention`
(`aten._scaled_dot_product_flash_attention_for_cpu` is not in its registry), so on CPU it
under-counts sdpa models; the analytic count is the reference, and eager attention is used to
verify it.

Memory estimates (parameters, activations) live in `runtime/resources.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..modeling.modeling_aaclip import AAClipModel


__all__ = [
    "FlopReport",
    "vision_forward_flops",
    "text_anchor_flops",
    "model_forward_flops",
    "parameter_bytes",
    "memory_traffic_floor",
    "vision_side_parameters",
]


@dataclass
class FlopReport:
    """FLOPs per named term, for one image (vision) or one class (text anchors)."""

    terms: dict[str, int] = field(default_factory=dict)
    elementwise_estimate: int = 0

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def add(self, name: str, flops: int) -> None:
        self.terms[name] = self.terms.get(name, 0) + int(flops)

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _encoder_terms(
    report: FlopReport, prefix: str, tokens: int, width: int, mlp: int, layers: int, adapters: int, heads: int
):
    """A pre-LN transformer encoder: q/k/v/out projections, attention matmuls, MLP, residual adapters."""
    report.add(f"{prefix}.qkv_out_projections", layers * 4 * 2 * tokens * width * width)
    # Summed over heads: h * 2 * T * T * d_head = 2 * T^2 * D, once for Q K^T and once for A V.
    report.add(f"{prefix}.attention_qk", layers * 2 * tokens * tokens * width)
    report.add(f"{prefix}.attention_av", layers * 2 * tokens * tokens * width)
    report.add(f"{prefix}.mlp", layers * 2 * 2 * tokens * width * mlp)
    report.add(f"{prefix}.adapters", adapters * 2 * tokens * width * width)
    # layer norms (2 per layer, ~8 ops/element), softmax (~5/score), gelu (~8/element), residuals, adapter rescale.
    scores = heads * tokens * tokens
    report.elementwise_estimate += layers * (
        2 * 8 * tokens * width + 5 * scores + 8 * tokens * mlp + 2 * tokens * width
    )


def vision_forward_flops(config, with_scores: bool = True, domain: str | None = None) -> FlopReport:
    """FLOPs of `AAClipModel.get_vision_features` (+ the score head of `forward`) for **one image**.

    Terms: patch convolution, the encoder, the seg/det projections and, with `with_scores`,
    the patch-anchor products, the image-anchor product and the Gaussian blur on the grid.
    """
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    patches = grid * grid
    tokens = patches + 1
    width, embed = vision.hidden_size, config.projection_dim
    report = FlopReport()
    report.add("patch_embedding_conv", 2 * patches * vision.num_channels * vision.patch_size**2 * width)
    _encoder_terms(
        report,
        "vision",
        tokens,
        width,
        vision.intermediate_size,
        vision.num_hidden_layers,
        config.vision_adapter_layers,
        vision.num_attention_heads,
    )
    report.add("seg_projections", len(config.feature_layers) * 2 * patches * width * embed)
    report.add("det_projection", 2 * patches * width * embed)
    if with_scores:
        levels = len(config.feature_layers)
        report.add("patch_anchor_logits", levels * 2 * patches * embed * 2)
        report.add("image_anchor_logits", 2 * embed * 2)
        kernel = config.blur_kernel_size[domain or config.default_domain]
        # Separable blur on the reflect-padded grid: the row pass sees (G + 2*pad) x G outputs, the column pass G x G.
        pad = kernel // 2
        report.add("gaussian_blur", levels * 2 * kernel * ((grid + 2 * pad) * grid + grid * grid))
    return report


def text_anchor_flops(config, sentences_per_class: int = 16, context_length: int = 77) -> FlopReport:
    """FLOPs of recomputing one class's anchors: `sentences_per_class` prompts of `context_length` tokens
    through the adapted text tower plus the text head (reference ensemble: 6 normal + 10 anomaly).

    The reference pads every prompt to 77 tokens; our processor pads to the longest prompt of the
    call, so pass `input_ids.shape[1]` for our cost and 77 for the reference's.
    """
    text = config.text_config
    report = FlopReport()
    _encoder_terms(
        report,
        "text",
        context_length,
        text.hidden_size,
        text.intermediate_size,
        text.num_hidden_layers,
        config.text_adapter_layers,
        text.num_attention_heads,
    )
    report.add("text_head", 2 * text.hidden_size * config.projection_dim)
    for name in list(report.terms):
        report.terms[name] *= sentences_per_class
    report.elementwise_estimate *= sentences_per_class
    return report


def model_forward_flops(config, batch_size: int, recompute_anchors_classes: int = 0) -> int:
    """Total FLOPs of a batch through `forward` with stored anchors (or recomputed for N classes)."""
    total = batch_size * vision_forward_flops(config).total
    if recompute_anchors_classes:
        total += recompute_anchors_classes * text_anchor_flops(config).total
    return total


def parameter_bytes(config, dtype_bytes: int = 4) -> dict[str, int]:
    """Parameter counts of the full and the inference-only model, built on the meta device (no memory)."""

    counts = {}
    for name, include_text in (("full", True), ("inference_only", False)):
        cfg = config.__class__.from_dict({**config.to_dict(), "include_text_model": include_text})
        with torch.device("meta"):
            model = AAClipModel(cfg)
        counts[f"{name}_parameters"] = sum(p.numel() for p in model.parameters())
        counts[f"{name}_bytes"] = counts[f"{name}_parameters"] * dtype_bytes
    return counts


def memory_traffic_floor(
    config, batch_size: int = 1, dtype_bytes: int = 4, fused_attention: bool = True
) -> dict[str, int]:
    """Lower bound on DRAM bytes of one inference forward of a batch (vision side), by a simple model.

    Weights of the vision side are read once per batch. Per image and layer, each activation tensor is written
    once and read once (2 x its size): LN1 out, q, k, v, attention out, out-proj out, residual, LN2 out,
    fc2 out, residual (10 x T x D), fc1 out and GELU out (2 x T x F), adapter out and rescale (2 x T x D in
    adapted layers). Eager attention also writes and reads the scores and the softmax probabilities
    (4 x heads x T^2 per layer); a fused (flash) kernel keeps them on chip. Caches and fusion beyond this are
    ignored, so real traffic is higher; the point is the order of magnitude against the FLOPs.
    """
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    width, mlp, heads = vision.hidden_size, vision.intermediate_size, vision.num_attention_heads
    layers, adapted = vision.num_hidden_layers, config.vision_adapter_layers
    per_image = layers * (10 * tokens * width + 2 * tokens * mlp) + adapted * 2 * tokens * width
    if not fused_attention:
        per_image += layers * 2 * heads * tokens * tokens
    activations = 2 * per_image * dtype_bytes * batch_size
    weights = vision_side_parameters(config) * dtype_bytes
    return {"weights": weights, "activations": activations, "total": weights + activations}


def vision_side_parameters(config) -> int:
    """Parameters an inference forward reads: vision tower, adapters, seg/det heads (no text tower, no visual_projection)."""

    cfg = config.__class__.from_dict({**config.to_dict(), "include_text_model": False})
    with torch.device("meta"):
        model = AAClipModel(cfg)
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("visual_projection"))

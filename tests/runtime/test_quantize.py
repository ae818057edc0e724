"""int8 path: each quantised layer against a sound rounding-error bound, and the whole model against fp32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aaclip_hf.runtime.quantize import is_quantized, quantize_dynamic_int8


def _inputs(model, batch=3, seed=0):
    size = model.config.vision_config.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_every_vision_linear_is_quantised_and_nothing_else(tiny_model):
    fp32 = copy.deepcopy(tiny_model)
    linear_names = {name for name, m in fp32.vision_model.named_modules() if type(m) is nn.Linear}
    assert linear_names
    model = quantize_dynamic_int8(tiny_model)
    assert model is tiny_model and is_quantized(model) and not is_quantized(fp32)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    quantised = {name for name, m in model.vision_model.named_modules() if isinstance(m, dynamic)}
    assert quantised == linear_names
    # Heads, text tower and anchors stay fp32 and unchanged.
    for name in ("seg_projections", "det_projection", "text_model"):
        for (key, a), (_, b) in zip(
            getattr(model, name).state_dict().items(), getattr(fp32, name).state_dict().items()
        ):
            assert torch.equal(a, b), key
    assert torch.equal(model.text_anchors, fp32.text_anchors)
    assert quantize_dynamic_int8(model) is model  # idempotent


def test_quantised_linear_within_the_rounding_bound(tiny_model):
    """|y_q - y| <= |x| . dW + dx . |W| + dx . dW per output, with dW = s_w / 2 (the stored int8 weight's scale) and
    dx = the activation step / 2, the step at most (max(x, 0) - min(x, 0)) / 127 (7-bit activations, reduce_range)."""
    fp32 = copy.deepcopy(tiny_model)
    quantize_dynamic_int8(tiny_model)
    layer = tiny_model.vision_model.encoder.layers[0].mlp.fc1
    reference = fp32.vision_model.encoder.layers[0].mlp.fc1
    weight = layer.weight()
    assert weight.qscheme() == torch.per_tensor_affine
    scale_w = weight.q_scale()
    assert scale_w == pytest.approx(reference.weight.abs().max().item() / 127, rel=0.02)
    assert (weight.dequantize() - reference.weight).abs().max() <= scale_w / 2 + 1e-7
    x = torch.randn(7, reference.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact, quantised = reference(x), layer(x)
    step_x = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 127
    bound = x.abs() @ torch.full_like(reference.weight.T, scale_w / 2)
    bound += (step_x / 2) * reference.weight.abs().sum(1) + (step_x / 2) * (scale_w / 2) * reference.in_features
    assert ((quantised - exact).abs() <= bound + 1e-5).all()
    assert (quantised - exact).abs().max() > 0  # really quantised


def test_quantised_model_maps_track_fp32(tiny_model):
    fp32 = copy.deepcopy(tiny_model)
    model = quantize_dynamic_int8(tiny_model)
    pixels = _inputs(model, batch=4)
    with torch.no_grad():
        a, b = fp32(pixels, class_ids=fp32.class_ids("bottle")), model(pixels, class_ids=model.class_ids("bottle"))
    maps_a, maps_b = a.anomaly_map_grid.flatten(), b.anomaly_map_grid.flatten()
    correlation = torch.corrcoef(torch.stack([maps_a, maps_b]))[0, 1]
    assert correlation >= 0.99
    assert (maps_a - maps_b).abs().max() <= 0.05 * (maps_a.max() - maps_a.min())
    assert (a.image_score - b.image_score).abs().max() <= 0.02
    assert not torch.equal(maps_a, maps_b)


def test_refuses_non_fp32_or_non_cpu(tiny_model):
    with pytest.raises(ValueError, match="fp32 model on the CPU"):
        quantize_dynamic_int8(tiny_model.to(torch.bfloat16))

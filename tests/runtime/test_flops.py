"""The analytic FLOP counts used by the benchmark report equal torch's FlopCounterMode exactly."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aaclip_hf import AAClipConfig
from aaclip_hf.runtime.flops import text_anchor_flops, vision_forward_flops

from ..conftest import make_tiny_model


def _counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("overrides", [{}, {"vision_adapter_layers": 4, "feature_layers": (2, 4)}])
def test_vision_flops_match_flop_counter(tiny_model, processor, overrides):
    model = make_tiny_model(**overrides) if overrides else tiny_model
    if overrides:
        model.update_text_anchors(processor)
    # FlopCounterMode does not count the CPU sdpa kernel; eager attention shows every matmul.
    model.set_attn_implementation("eager")
    config = model.config
    pixels = torch.randn(3, 3, 40, 40)
    features_only = vision_forward_flops(config, with_scores=False).total
    assert _counted(lambda: model.get_vision_features(pixels)) == 3 * features_only
    assert _counted(lambda: model(pixels)) == 3 * vision_forward_flops(config).total
    assert (
        _counted(lambda: model(pixels, domain="medical")) == 3 * vision_forward_flops(config, domain="medical").total
    )


def test_text_anchor_flops_match_flop_counter(tiny_model, processor):
    tiny_model.set_attn_implementation("eager")
    names = ["bottle", "pcb1"]
    tokens = processor.tokenize_prompts(names)["input_ids"].shape[1]
    counted = _counted(lambda: tiny_model.compute_text_anchors(names, processor))
    assert counted == len(names) * text_anchor_flops(tiny_model.config, context_length=tokens).total


def test_vit_l_518_flops_hand_computed():
    # ViT-L/14 at 518: T = 1370 tokens, D = 1024, F = 4096, 24 layers, 6 adapters, 4 seg + 1 det heads to 768.
    t, n, d, f = 1370, 1369, 1024, 4096
    expected = (
        2 * n * 3 * 14 * 14 * d
        + 24 * (8 * t * d * d + 4 * t * t * d + 4 * t * d * f)
        + 6 * 2 * t * d * d
        + 5 * 2 * n * d * 768
    )
    report = vision_forward_flops(AAClipConfig(), with_scores=False)
    assert report.total == expected
    assert 1.0e12 < report.total < 1.1e12  # ~1.05 TFLOP per image


def test_memory_traffic_floor_vit_l_518_hand_computed():
    from aaclip_hf.runtime.flops import memory_traffic_floor, vision_side_parameters

    config = AAClipConfig()
    t, d, f = 1370, 1024, 4096
    per_image = 24 * (10 * t * d + 2 * t * f) + 6 * 2 * t * d
    fused = memory_traffic_floor(config, batch_size=4)
    assert fused["activations"] == 4 * 2 * 4 * per_image
    eager = memory_traffic_floor(config, batch_size=1, fused_attention=False)
    assert eager["activations"] == 2 * 4 * (per_image + 24 * 2 * 16 * t * t)
    # vision side: ViT-L/14 vision tower at 518 px + 6 adapters + 5 heads (visual_projection unused)
    params = vision_side_parameters(config)
    tower = 3 * 14 * 14 * d + d + 1370 * d + 2 * 2 * d + 24 * (4 * (d * d + d) + 2 * d * f + f + d + 4 * d)
    assert params == tower + 6 * d * d + 5 * d * 768
    assert fused["weights"] == 4 * params

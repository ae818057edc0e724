"""DPAM stage-1 features against an independent step-by-step oracle (explicit per-head loops)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel

from aaclip_hf import AAClipConfig, AAClipModel
from aaclip_hf.training.dpam import Stage1FeatureCache, dpam_features


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = AAClipModel(AAClipConfig.tiny(vision_config={"image_size": 24}))  # 3x3 grid keeps the loops short
    m.init_adapter_weights(seed=1)  # non-trivial adapters, which stage 1 must not use
    return m.double().eval()


def _plain_tower(model) -> CLIPVisionModel:
    """A stock HF vision tower with the same backbone weights and no adapters."""
    tower = CLIPVisionModel(model.config.vision_config).double().eval()
    state = {k: v for k, v in model.vision_model.state_dict().items() if ".adapter." not in k}
    missing, unexpected = tower.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return tower


def _oracle_vv_layer(layer, x, mode):
    d = x.shape[-1]
    heads = layer.self_attn.num_heads
    dh = d // heads
    h = F.layer_norm(x, (d,), layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
    v = h @ layer.self_attn.v_proj.weight.T + layer.self_attn.v_proj.bias
    out = torch.zeros_like(v)
    b_size, n_tok = x.shape[:2]
    for head in range(heads):
        sl = slice(head * dh, (head + 1) * dh)
        if mode == "per_image":
            for b in range(b_size):
                vh = v[b, :, sl]
                a = torch.softmax(vh @ vh.T / math.sqrt(dh), dim=-1)
                out[b, :, sl] = a @ vh
        else:
            for n in range(n_tok):
                vh = v[:, n, sl]  # same token position across the batch
                a = torch.softmax(vh @ vh.T / math.sqrt(dh), dim=-1)
                out[:, n, sl] = a @ vh
    x = x + out @ layer.self_attn.out_proj.weight.T + layer.self_attn.out_proj.bias
    h2 = F.layer_norm(x, (d,), layer.layer_norm2.weight, layer.layer_norm2.bias, layer.layer_norm2.eps)
    mlp = layer.mlp
    return x + mlp.fc2(mlp.activation_fn(mlp.fc1(h2)))


def _oracle(model, pixels, start, mode):
    tower = _plain_tower(model)
    out = tower(pixel_values=pixels, output_hidden_states=True)
    cls_plain = F.normalize(model.visual_projection(out.pooler_output), dim=-1)
    x = out.hidden_states[start - 1]
    states = {i: out.hidden_states[i] for i in range(1, start)}
    for index in range(start - 1, len(tower.encoder.layers)):
        x = _oracle_vv_layer(tower.encoder.layers[index], x, mode)
        states[index + 1] = x
    levels = []
    for level in model.config.feature_layers:
        tokens = tower.post_layernorm(states[level][:, 1:])
        levels.append(F.normalize(tokens @ model.visual_projection.weight.T, dim=-1) + cls_plain[:, None])
    return levels, cls_plain


@pytest.mark.parametrize("mode", ["per_image", "batch_axis"])
@pytest.mark.parametrize("start", [None, 3])
def test_dpam_matches_step_by_step_oracle(model, mode, start):
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(3, 3, 24, 24, generator=g, dtype=torch.float64)
    feats = dpam_features(model, pixels, start_layer=start, mode=mode)
    levels, cls_plain = _oracle(model, pixels, start or min(model.config.feature_layers), mode)
    assert torch.allclose(feats.image_embeds, cls_plain, atol=1e-10)
    assert len(feats.patch_embeds) == len(levels) == 4
    for got, want in zip(feats.patch_embeds, levels):
        assert got.shape == (3, 9, model.config.projection_dim)
        assert torch.allclose(got, want, atol=1e-10)


def test_per_image_is_batch_independent_and_batch_axis_is_not(model):
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, 24, 24, generator=g, dtype=torch.float64)
    alone = dpam_features(model, pixels[:1], mode="per_image").patch_embeds[-1]
    together = dpam_features(model, pixels, mode="per_image").patch_embeds[-1][:1]
    assert torch.allclose(alone, together, atol=1e-10)
    alone = dpam_features(model, pixels[:1], mode="batch_axis").patch_embeds[-1]
    together = dpam_features(model, pixels, mode="batch_axis").patch_embeds[-1][:1]
    assert (alone - together).abs().max() > 1e-3


def test_batch_axis_with_one_image_is_out_proj_of_v(model):
    """The reference quirk: a softmax over a batch of one is 1, so V-V attention is out_proj(v)."""
    from aaclip_hf.training.dpam import dpam_layer

    layer = model.vision_model.encoder.layers[-1]
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    h = layer.layer_norm1(x)
    expected = x + layer.self_attn.out_proj(layer.self_attn.v_proj(h))
    expected = expected + layer.mlp(layer.layer_norm2(expected))
    assert torch.allclose(dpam_layer(layer, x, "batch_axis"), expected, atol=1e-12)


def test_cache_round_trip_and_validity(model):
    pixels = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    feats = dpam_features(model, pixels)
    cache = Stage1FeatureCache(dtype=torch.float64)
    cache.put([5, 9], feats)
    assert cache.has_all([9, 5]) and not cache.has_all([5, 6])
    back = cache.get([9, 5], "cpu", torch.float64)
    assert torch.equal(back.patch_embeds[2][0], feats.patch_embeds[2][1])
    assert torch.equal(back.image_embeds[1], feats.image_embeds[0])
    with pytest.raises(ValueError, match="per_image"):
        Stage1FeatureCache.check_valid("batch_axis", augment=False)
    with pytest.raises(ValueError, match="augmentation"):
        Stage1FeatureCache.check_valid("per_image", augment=True)

"""AAClipModel against the method of docs/method.md (adapter, features, scores, anchors), computed independently
step by step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from aaclip_hf import AAClipConfig, AAClipModel
from aaclip_hf.modeling.modeling_aaclip import (
    AAClipAdapter,
    AAClipEncoderLayer,
    gaussian_blur2d,
    resize_position_embedding,
    upsample_grid,
)

from ..conftest import TINY_IMAGE_SIZE, make_tiny_model


# ---------------------------------------------------------------------------------- adapter


def test_adapter_fusion_matches_hand_computation():
    adapter = AAClipAdapter(dim=2, fusion_weight=0.1, negative_slope=0.01)
    with torch.no_grad():
        adapter.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-3.0, 0.5]]))
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    # Token 1: W x = (11, -7); LeakyReLU -> (11, -0.07); |x| = 5, |a| = sqrt(121 + 0.0049).
    a1 = np.array([11.0, -0.07]) * 5.0 / math.sqrt(121.0049)
    expected1 = 0.1 * a1 + 0.9 * np.array([3.0, 4.0])
    # Token 2 is all zero: 0/0 is guarded and the output stays exactly zero.
    # Token 3: W x = (-1, -3.5) -> (-0.01, -0.035); |x| = sqrt 2.
    a3 = np.array([-0.01, -0.035]) * math.sqrt(2.0) / math.sqrt(0.0001 + 0.001225)
    expected3 = 0.1 * a3 + 0.9 * np.array([1.0, -1.0])
    out = adapter(x).detach().numpy()
    np.testing.assert_allclose(out[0], expected1, rtol=1e-6)
    assert np.all(out[1] == 0.0)
    np.testing.assert_allclose(out[2], expected3, rtol=1e-6)
    # The zero-token guard keeps gradients finite.
    x.requires_grad_(True)
    adapter(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(adapter.fc.weight.grad).all()


def test_adapters_sit_in_the_first_layers_of_both_towers():
    model = make_tiny_model(text_adapter_layers=1, vision_adapter_layers=3)
    vision_layers = model.vision_model.encoder.layers
    text_layers = model.text_model.encoder.layers
    assert [isinstance(layer, AAClipEncoderLayer) for layer in vision_layers] == [True, True, True, False]
    assert [isinstance(layer, AAClipEncoderLayer) for layer in text_layers] == [True, False]
    assert all(isinstance(layer, CLIPEncoderLayer) for layer in vision_layers)
    # Stock CLIP parameter names plus the adapter.
    assert "vision_model.encoder.layers.0.self_attn.q_proj.weight" in model.state_dict()
    assert "vision_model.encoder.layers.0.adapter.fc.weight" in model.state_dict()
    assert "vision_model.encoder.layers.3.adapter.fc.weight" not in model.state_dict()


def _manual_vision_states(model: AAClipModel, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Hidden states after each layer, with the adapter applied by hand after the stock layer."""
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    states = [hidden]
    for layer in vision.encoder.layers:
        hidden = CLIPEncoderLayer.forward(layer, hidden, None)
        if isinstance(layer, AAClipEncoderLayer):
            adapter = layer.adapter
            a = F.leaky_relu(hidden @ adapter.fc.weight.T, 0.01)
            a = a * hidden.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
            hidden = 0.1 * a + 0.9 * hidden
        states.append(hidden)
    return states


@torch.no_grad()
def test_output_hidden_states_records_post_adapter_states(pixel_values):
    model = make_tiny_model()
    recorded = model.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    manual = _manual_vision_states(model, pixel_values)
    assert len(recorded) == len(manual) == model.config.vision_config.num_hidden_layers + 1
    for index, (got, want) in enumerate(zip(recorded, manual)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"hidden state {index}")


@torch.no_grad()
def test_adapters_disabled_gives_plain_clip(pixel_values):
    model = make_tiny_model()
    clip = CLIPModel(
        CLIPConfig(
            text_config=model.config.text_config.to_dict(),
            vision_config=model.config.vision_config.to_dict(),
            projection_dim=24,
        )
    )
    missing, unexpected = clip.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    with model.adapters_disabled():
        ours = model.vision_model(pixel_values=pixel_values).last_hidden_state
    torch.testing.assert_close(ours, clip.vision_model(pixel_values=pixel_values).last_hidden_state)
    adapted = model.vision_model(pixel_values=pixel_values).last_hidden_state
    assert not torch.allclose(adapted, ours)


# ---------------------------------------------------------------------------------- features and scores


def _bilinear_align_corners(grid: np.ndarray, size: int) -> np.ndarray:
    """Independent bilinear upsampling with align_corners=True (corner samples map to corner pixels)."""
    g = grid.shape[0]
    coords = np.linspace(0.0, g - 1.0, size)
    low = np.clip(np.floor(coords).astype(int), 0, g - 2)
    frac = coords - low
    rows = grid[low] * (1 - frac)[:, None] + grid[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, low + 1] * frac[None, :]


@torch.no_grad()
def test_anomaly_map_and_scores_follow_the_spec_step_by_step(tiny_model, pixel_values):
    model, config = tiny_model, tiny_model.config
    classes = ["bottle", "pcb1", "bottle"]
    out = model(pixel_values, class_ids=model.class_ids(classes), domain="industrial", output_size=TINY_IMAGE_SIZE)

    states = model.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    ln = model.vision_model.post_layernorm
    anchors = model.text_anchors[[config.anchor_class_names.index(c) for c in classes]].numpy()
    grid = config.grid_size
    kernel, sigma = config.blur_kernel_size["industrial"], config.blur_sigma["industrial"]
    expected_levels = []
    for level, layer in enumerate(config.feature_layers):
        feats = ln(states[layer][:, 1:]) @ model.seg_projections[level].fc.weight.T
        feats = (feats / feats.norm(dim=-1, keepdim=True)).numpy()
        np.testing.assert_allclose(out.patch_embeds[level].numpy(), feats, atol=1e-6)
        per_image = []
        for b in range(len(classes)):
            p = 100.0 * feats[b] @ anchors[b]  # (N, 2)
            s = ((p[:, 1] + 1.0 - p[:, 0]) / 2.0).reshape(grid, grid)
            s = gaussian_filter(s.astype(np.float64), sigma, mode="mirror", truncate=(kernel // 2) / sigma)
            per_image.append(s)
        expected_levels.append(np.stack(per_image))
    expected_grid = sum(expected_levels)
    np.testing.assert_allclose(out.anomaly_map_grid.numpy(), expected_grid, rtol=1e-4, atol=1e-3)
    for level, expected in enumerate(expected_levels):
        upsampled = np.stack([_bilinear_align_corners(e, TINY_IMAGE_SIZE) for e in expected])
        level_map = upsample_grid(out.anomaly_map_grid_levels[level], TINY_IMAGE_SIZE)
        np.testing.assert_allclose(level_map.numpy(), upsampled, rtol=1e-4, atol=1e-3)
    full = np.stack([_bilinear_align_corners(e, TINY_IMAGE_SIZE) for e in expected_grid])
    np.testing.assert_allclose(out.anomaly_map.numpy(), full, rtol=1e-4, atol=1e-3)

    # Image feature: normalised det projections of the last layer's patches, averaged, not re-normalised.
    det = ln(states[-1][:, 1:]) @ model.det_projection.fc.weight.T
    det = (det / det.norm(dim=-1, keepdim=True)).mean(dim=1).numpy()
    np.testing.assert_allclose(out.image_embeds.numpy(), det, atol=1e-6)
    raw = (np.einsum("be,be->b", det, anchors[:, :, 1]) + 1.0) / 2.0
    np.testing.assert_allclose(out.raw_anomaly_score.numpy(), raw, atol=1e-6)
    mean_logit = 2.0 * expected_grid / config.num_levels - 1.0
    map_score = (1.0 / (1.0 + np.exp(-mean_logit))).reshape(len(classes), -1).max(axis=1)
    np.testing.assert_allclose(out.image_score.numpy(), 0.5 * map_score + 0.5 * raw, atol=1e-5)
    assert ((out.image_score >= 0) & (out.image_score <= 1)).all()


@torch.no_grad()
def test_domains_change_blur_and_image_score(tiny_model, pixel_values):
    industrial = tiny_model(pixel_values, domain="industrial")
    medical = tiny_model(pixel_values, domain="medical")
    assert not torch.allclose(industrial.anomaly_map_grid, medical.anomaly_map_grid)
    map_score = torch.sigmoid(2 * medical.anomaly_map_grid / 4 - 1).flatten(1).amax(1)
    torch.testing.assert_close(medical.image_score, map_score)
    with pytest.raises(ValueError, match="unknown domain 'xray'"):
        tiny_model(pixel_values, domain="xray")


@torch.no_grad()
def test_feature_levels_differ(tiny_model, pixel_values):
    levels = tiny_model(pixel_values).patch_embeds
    assert len(levels) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(levels[i], levels[j], atol=1e-3)


@torch.no_grad()
def test_mixed_class_batch_equals_per_image_runs(tiny_model, pixel_values):
    classes = ["bottle", "object", "pcb1"]
    batch = tiny_model(pixel_values, class_ids=tiny_model.class_ids(classes), output_size=TINY_IMAGE_SIZE)
    for index, name in enumerate(classes):
        single = tiny_model(
            pixel_values[index : index + 1], class_ids=tiny_model.class_ids(name), output_size=TINY_IMAGE_SIZE
        )
        torch.testing.assert_close(batch.anomaly_map[index], single.anomaly_map[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.image_score[index], single.image_score[0], atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_image_score_does_not_depend_on_the_rest_of_the_batch(tiny_model, pixel_values):
    first = tiny_model(pixel_values[:1]).image_score
    with_others = tiny_model(torch.cat([pixel_values[:1], 10 * pixel_values[1:]])).image_score[:1]
    torch.testing.assert_close(first, with_others, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_explicit_anchors_equal_stored_ones(tiny_model, pixel_values):
    stored = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_size=TINY_IMAGE_SIZE)
    anchors = tiny_model.text_anchors_for(["bottle"])
    explicit = tiny_model(pixel_values, text_anchors=anchors, output_size=TINY_IMAGE_SIZE)
    torch.testing.assert_close(stored.anomaly_map, explicit.anomaly_map)
    # anchors of another dtype (float64 from numpy) are scored in the features' dtype
    wide = tiny_model(pixel_values, text_anchors=anchors.double(), output_size=TINY_IMAGE_SIZE)
    assert wide.anomaly_map.dtype == torch.float32
    torch.testing.assert_close(stored.anomaly_map, wide.anomaly_map)


@torch.no_grad()
def test_training_maps_are_softmax_of_upsampled_logits(tiny_model, pixel_values):
    anchors = tiny_model.text_anchors_for(["bottle"] * 3)
    patch_embeds, _ = tiny_model.get_vision_features(pixel_values)
    maps = tiny_model.training_maps(patch_embeds, anchors, size=16)
    assert len(maps) == 4 and maps[0].shape == (3, 2, 16, 16)
    logits = 100 * patch_embeds[2] @ anchors
    grid = logits.transpose(1, 2).reshape(3, 2, 5, 5)
    expected = F.interpolate(grid, size=16, mode="bilinear", align_corners=True).softmax(dim=1)
    torch.testing.assert_close(maps[2], expected)
    torch.testing.assert_close(maps[0].sum(dim=1), torch.ones(3, 16, 16))


@torch.no_grad()
def test_sdpa_equals_eager(tiny_model, pixel_values):
    sdpa = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_size=TINY_IMAGE_SIZE)
    tiny_model.set_attn_implementation("eager")
    eager = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_size=TINY_IMAGE_SIZE)
    torch.testing.assert_close(sdpa.anomaly_map, eager.anomaly_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa.image_score, eager.image_score, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_reaches_the_adapters(tiny_model, pixel_values):
    tiny_model.train()
    tiny_model.requires_grad_(False)
    for module in tiny_model.adapter_modules():
        module.requires_grad_(True)
    tiny_model.vision_model.activation_checkpointing_enable()
    patch_embeds, image_embeds = tiny_model.get_vision_features(pixel_values)
    (sum(p.sum() for p in patch_embeds) + image_embeds.sum()).backward()
    adapter = tiny_model.vision_model.encoder.layers[0].adapter.fc.weight
    assert adapter.grad is not None and adapter.grad.abs().sum() > 0
    assert tiny_model.vision_model.encoder.layers[0].self_attn.q_proj.weight.grad is None


# ---------------------------------------------------------------------------------- text anchors


@torch.no_grad()
def test_anchors_are_normalised_means_of_normalised_sentence_embeddings(tiny_model, processor):
    normal, anomaly = processor.build_prompts("bottle")
    assert len(normal) == 6 and len(anomaly) == 10
    assert normal[:2] == ["dark bottle.", "a photo of dark bottle."]
    assert anomaly[-1] == "a photo of a dark bottle with damage."
    feats = []
    for sentence in normal + anomaly:
        ids = processor.tokenize([sentence])
        feats.append(F.normalize(tiny_model.get_text_features(**ids).pooler_output, dim=-1)[0])
    feats = torch.stack(feats)
    expected = torch.stack([F.normalize(feats[:6].mean(0), dim=0), F.normalize(feats[6:].mean(0), dim=0)], dim=-1)
    torch.testing.assert_close(tiny_model.text_anchors_for(["bottle"])[0], expected, atol=1e-5, rtol=1e-5)


def test_text_head_switch(processor):
    adapter_head = make_tiny_model()
    clip_head = make_tiny_model(text_head="clip")
    assert hasattr(adapter_head, "text_projector") and not hasattr(clip_head, "text_projector")
    ids = processor.tokenize(["a photo of object."])
    with torch.no_grad():
        pooled = clip_head.text_model(**ids).pooler_output
        torch.testing.assert_close(clip_head.get_text_features(**ids).pooler_output, clip_head.text_projection(pooled))
        expected = F.leaky_relu(
            adapter_head.text_model(**ids).pooler_output @ adapter_head.text_projector.fc.weight.T, 0.01
        )
        torch.testing.assert_close(adapter_head.get_text_features(**ids).pooler_output, expected)


def test_stored_anchors_update_and_clear_errors(tiny_model, processor, pixel_values):
    assert tiny_model.stored_class_names == ["object", "bottle", "pcb1"]
    new = torch.nn.functional.normalize(torch.randn(1, 24, 2), dim=1)
    tiny_model.store_text_anchors(["bottle"], new)
    torch.testing.assert_close(tiny_model.text_anchors_for(["bottle"]), new)
    assert tiny_model.stored_class_names == ["object", "bottle", "pcb1"]
    with pytest.raises(KeyError, match="no stored text anchors for class.*'screw'"):
        tiny_model(pixel_values, class_ids=tiny_model.class_ids("screw"))
    with pytest.raises(ValueError, match="class_ids must hold 1 or 3 rows"):
        tiny_model(pixel_values, class_ids=tiny_model.class_ids(["bottle", "pcb1"]))
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 3, height, width\)"):
        tiny_model(pixel_values[0])
    with pytest.raises(ValueError, match="either class_ids or text_anchors"):
        tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), text_anchors=new)
    fresh = make_tiny_model()
    with pytest.raises(ValueError, match="never computed"):
        fresh(pixel_values)


def test_unknown_class_without_tokenizer_is_a_clear_error(tiny_model, pixel_values):
    inference_only = tiny_model.to_inference_only()
    assert not hasattr(inference_only, "text_model")
    with pytest.raises(KeyError, match="'screw'"):
        inference_only(pixel_values, class_ids=inference_only.class_ids("screw"))
    with pytest.raises(ValueError, match="inference-only AA-CLIP"):
        inference_only.get_text_features(torch.ones(1, 3, dtype=torch.long))
    torch.testing.assert_close(
        inference_only(
            pixel_values, class_ids=inference_only.class_ids("pcb1"), output_size=TINY_IMAGE_SIZE
        ).anomaly_map,
        tiny_model(pixel_values, class_ids=tiny_model.class_ids("pcb1"), output_size=TINY_IMAGE_SIZE).anomaly_map,
    )


# ---------------------------------------------------------------------------------- smoothing and tables


def test_gaussian_blur_matches_scipy():
    maps = torch.randn(2, 1, 9, 11, dtype=torch.float64)
    for kernel, sigma in ((7, 1.0), (9, 1.5), (3, 0.7)):
        ours = gaussian_blur2d(maps, kernel, sigma)[:, 0].numpy()
        for b in range(2):
            ref = gaussian_filter(maps[b, 0].numpy(), sigma, mode="mirror", truncate=(kernel // 2) / sigma)
            np.testing.assert_allclose(ours[b], ref, atol=1e-12)
    with pytest.raises(ValueError, match="blur kernel 9 needs a patch grid larger than 4"):
        gaussian_blur2d(torch.zeros(1, 1, 4, 4), 9, 1.5)


def test_position_table_resize_keeps_cls_and_uses_antialias():
    table = torch.randn(1 + 24 * 24, 8)
    resized = resize_position_embedding(table, 37)
    assert resized.shape == (1 + 37 * 37, 8)
    torch.testing.assert_close(resized[0], table[0])
    grid = table[1:].reshape(1, 24, 24, 8).permute(0, 3, 1, 2)
    plain = F.interpolate(grid, size=(37, 37), mode="bicubic", align_corners=False)
    smooth = F.interpolate(grid, size=(37, 37), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(resized[1:], smooth.permute(0, 2, 3, 1).reshape(-1, 8))
    assert (resized[1:] - plain.permute(0, 2, 3, 1).reshape(-1, 8)).abs().max() > 1e-2
    torch.testing.assert_close(resize_position_embedding(table, 24), table)


# ---------------------------------------------------------------------------------- from an HF CLIP checkpoint


def _tiny_clip(tmp_path) -> tuple[CLIPModel, str]:
    cfg = AAClipConfig.tiny()
    text = cfg.text_config.to_dict()
    vision = dict(cfg.vision_config.to_dict(), image_size=24)
    torch.manual_seed(3)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    path = tmp_path / "clip"
    clip.save_pretrained(path)
    return clip, str(path)


def test_from_clip_pretrained_loads_every_clip_weight(tmp_path, processor):
    clip, path = _tiny_clip(tmp_path)
    model = AAClipModel.from_clip_pretrained(
        path,
        processor=processor,
        seed=5,
        image_size=40,
        hidden_act="gelu",
        feature_layers=(1, 2, 3, 4),
        text_adapter_layers=1,
        vision_adapter_layers=2,
    )
    assert model.config.vision_config.image_size == 40 and model.config.grid_size == 5
    assert model.config.vision_config.hidden_act == model.config.text_config.hidden_act == "gelu"
    ours, theirs = model.state_dict(), clip.state_dict()
    for key, value in theirs.items():
        if key == "vision_model.embeddings.position_embedding.weight":
            torch.testing.assert_close(ours[key], resize_position_embedding(value, 5))
        elif not key.endswith("position_ids"):
            assert torch.equal(ours[key], value), key
    # Adapters and heads: xavier-uniform, reproducible by seed.
    weight = model.vision_model.encoder.layers[0].adapter.fc.weight
    bound = math.sqrt(6.0 / (2 * 32))
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    again = AAClipModel.from_clip_pretrained(
        clip,
        processor=processor,
        seed=5,
        image_size=40,
        feature_layers=(1, 2, 3, 4),
        text_adapter_layers=1,
        vision_adapter_layers=2,
    )
    assert torch.equal(again.det_projection.fc.weight, model.det_projection.fc.weight)
    assert model.stored_class_names == ["object"] and model.text_anchors.abs().sum() > 0


# ---------------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"feature_layers": (1, 5)}, "feature_layers must be strictly increasing"),
        ({"feature_layers": (3, 2)}, "feature_layers must be strictly increasing"),
        ({"vision_adapter_layers": 9}, "vision_adapter_layers must be in"),
        ({"text_adapter_weight": 1.5}, "text_adapter_weight must be in"),
        ({"text_head": "mlp"}, "text_head must be one of"),
        ({"blur_kernel_size": {"industrial": 4, "medical": 9}}, "positive odd integer"),
        ({"image_score_mode": {"industrial": "max", "medical": "map"}}, "image_score_mode"),
        ({"default_domain": "xray"}, "default_domain must be one of .* got 'xray'"),
        ({"anchor_class_names": ["bottle"]}, "must be unique and start with 'object'"),
        ({"decision_threshold": 2.0}, "decision_threshold must be in"),
    ],
)
def test_invalid_config_fields_name_the_field(overrides, message):
    with pytest.raises(Exception, match=message):
        AAClipConfig.tiny(**overrides)


def test_config_defaults_are_the_paper_setting():
    config = AAClipConfig()
    assert (config.vision_config.image_size, config.vision_config.patch_size, config.grid_size) == (518, 14, 37)
    assert config.vision_config.num_hidden_layers == 24 and config.vision_config.hidden_size == 1024
    assert config.feature_layers == [6, 12, 18, 24]
    assert (config.text_adapter_layers, config.vision_adapter_layers) == (3, 6)
    assert config.text_adapter_weight == config.vision_adapter_weight == 0.1
    assert config.similarity_temperature == 100.0 and config.projector_activation is False
    assert config.blur_kernel_size == {"industrial": 7, "medical": 9}
    assert config.blur_sigma == {"industrial": 1.0, "medical": 1.5}
    # A partial tower dict completes from ViT-L, not from CLIP's ViT-B/32 class defaults.
    assert AAClipConfig(vision_config={"image_size": 336}).vision_config.hidden_size == 1024

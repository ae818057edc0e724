"""`AAClipModel.forward` does only what is asked: grid-level maps by default, named errors for unknown inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from aaclip_hf import AAClipConfig, AAClipModel
from aaclip_hf.modeling import modeling_aaclip
from aaclip_hf.modeling.modeling_aaclip import AAClipEncoderLayer, upsample_grid
from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline

from ..conftest import TINY_IMAGE_SIZE


# ---------------------------------------------------------------------------------- maps


@torch.no_grad()
def test_default_forward_computes_no_upsampled_map(tiny_model, pixel_values, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("forward upsampled a map nobody asked for")

    monkeypatch.setattr(modeling_aaclip, "upsample_grid", refuse)
    out = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"))
    grid = tiny_model.config.grid_size
    assert out.anomaly_map is None and out.anomaly_map_grid.shape == (3, grid, grid)
    assert len(out.anomaly_map_grid_levels) == tiny_model.config.num_levels
    torch.testing.assert_close(out.anomaly_map_grid, sum(out.anomaly_map_grid_levels), rtol=0, atol=0)


@torch.no_grad()
def test_output_size_gives_the_sum_of_upsampled_levels(tiny_model, pixel_values):
    out = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_size=(7, 11))
    expected = sum(upsample_grid(level, (7, 11)) for level in out.anomaly_map_grid_levels)
    torch.testing.assert_close(out.anomaly_map, expected, rtol=0, atol=1e-6)
    # Upsampling is linear: resizing the summed grid gives the same map to float rounding.
    torch.testing.assert_close(out.anomaly_map, upsample_grid(out.anomaly_map_grid, (7, 11)), rtol=1e-5, atol=1e-5)
    assert tiny_model(pixel_values, output_size=9).anomaly_map.shape == (3, 9, 9)
    assert tiny_model(pixel_values, output_size=torch.Size([5, 6])).anomaly_map.shape == (3, 5, 6)
    for bad in (0, -3, (4,), (4, 5, 6), (4.0, 5), True, "40"):
        with pytest.raises(ValueError, match="output_size must be a positive int or \\(height, width\\)"):
            tiny_model(pixel_values, output_size=bad)


@torch.no_grad()
def test_post_processing_defaults_to_the_processor_input_size(tiny_model, processor, pixel_values):
    out = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"))
    results = processor.post_process_anomaly_detection(out)
    full = tiny_model(
        pixel_values, class_ids=tiny_model.class_ids("bottle"), output_size=processor.image_size
    ).anomaly_map
    for index, result in enumerate(results):
        assert tuple(result["anomaly_map"].shape) == processor.image_size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
        torch.testing.assert_close(torch.from_numpy(result["anomaly_map"]), full[index], rtol=1e-5, atol=1e-5)


def test_pipeline_asks_the_model_for_grid_maps_only(tiny_model, processor):
    calls = []
    original = tiny_model.forward

    def recording_forward(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    tiny_model.forward = recording_forward
    pipe = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    result = pipe(image, class_name="bottle")
    assert calls and all("output_size" not in kwargs for kwargs in calls)
    assert result["anomaly_map"].shape == (30, 50)


# ---------------------------------------------------------------------------------- arguments


def test_unknown_forward_arguments_are_one_named_error(tiny_model, pixel_values):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'output_sise'"):
        tiny_model(pixel_values, output_sise=8, zzz=1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'input_ids'"):
        tiny_model(pixel_values, input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(TypeError, match=r"get_text_features\(\) got unexpected keyword argument\(s\) \['colour'\]"):
        tiny_model.get_text_features(torch.ones(1, 3, dtype=torch.long), colour="red")
    # transformers' Trainer passes `num_items_in_batch` to models whose forward takes **kwargs, unless told not to.
    assert AAClipModel.accepts_loss_kwargs is False


@torch.no_grad()
def test_hidden_states_and_attentions_only_when_asked(tiny_model, pixel_values):
    plain = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"))
    assert plain.hidden_states is None and plain.attentions is None
    assert plain.vision_model_output.hidden_states is None
    assert isinstance(plain.vision_model_output, BaseModelOutputWithPooling)

    tower = tiny_model.vision_model(pixel_values=pixel_values, output_hidden_states=True)
    full = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_hidden_states=True)
    assert len(full.hidden_states) == tiny_model.config.vision_config.num_hidden_layers + 1
    for ours, theirs in zip(full.hidden_states, tower.hidden_states):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for ours, theirs in zip(full.patch_embeds, plain.patch_embeds):  # features do not depend on what is recorded
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(full.anomaly_map_grid, plain.anomaly_map_grid, rtol=0, atol=0)

    some = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_hidden_states=[0, -1])
    assert [state is not None for state in some.hidden_states] == [True, False, False, False, True]
    torch.testing.assert_close(some.hidden_states[-1], tower.hidden_states[-1], rtol=0, atol=0)

    tiny_model.set_attn_implementation("eager")
    attended = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), output_attentions=True)
    assert len(attended.attentions) == tiny_model.config.vision_config.num_hidden_layers
    tokens = tiny_model.config.grid_size**2 + 1
    assert attended.attentions[0].shape == (3, tiny_model.config.vision_config.num_attention_heads, tokens, tokens)


@torch.no_grad()
def test_tuple_output_flattens_the_nested_tower_output(tiny_model, pixel_values):
    out = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"))
    as_tuple = tiny_model(pixel_values, class_ids=tiny_model.class_ids("bottle"), return_dict=False)
    assert len(as_tuple) == len(out.to_tuple())
    torch.testing.assert_close(as_tuple[0], out.anomaly_map_grid, rtol=0, atol=0)
    assert isinstance(as_tuple[-1], tuple) and not isinstance(as_tuple[-1], BaseModelOutputWithPooling)
    torch.testing.assert_close(as_tuple[-1][0], out.vision_model_output.last_hidden_state, rtol=0, atol=0)


@torch.no_grad()
def test_get_text_features_is_the_tower_output_with_projected_pooling(tiny_model, processor):
    ids = processor.tokenize(["a photo of object.", "a broken bottle."])
    out = tiny_model.get_text_features(**ids, output_hidden_states=True)
    tower = tiny_model.text_model(**ids, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, tower.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(out.pooler_output, tiny_model.text_projector(tower.pooler_output), rtol=0, atol=0)
    assert len(out.hidden_states) == tiny_model.config.text_config.num_hidden_layers + 1
    tiny_model.config.return_dict = False
    assert isinstance(tiny_model.get_text_features(**ids), tuple)
    # Anchor building never depends on `return_dict`.
    torch.testing.assert_close(
        tiny_model.compute_text_anchors(["bottle"], processor), tiny_model.text_anchors_for(["bottle"])
    )


# ---------------------------------------------------------------------------------- weight init


def _clip_attention_std(config: CLIPVisionConfig) -> float:
    """CLIP's init of q/k/v: `d**-0.5 * (2 L)**-0.5 * initializer_factor` (`CLIPPreTrainedModel._init_weights`)."""
    return config.hidden_size**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * config.initializer_factor


@pytest.mark.parametrize("path", ["constructor", "from_pretrained"])
@torch.no_grad()
def test_adapted_and_missing_tower_layers_get_clip_init(path):
    config = AAClipConfig.tiny(vision_adapter_layers=2)  # vision tower: 32 wide, 4 layers, CLIP std 1/16
    torch.manual_seed(0)
    if path == "constructor":
        model = AAClipModel(config)
    else:
        model = AAClipModel.from_pretrained(None, config=config, state_dict={})
    expected = _clip_attention_std(model.config.vision_config)
    assert not math.isclose(expected, model.config.initializer_range, rel_tol=0.5)  # the generic init would differ
    layers = model.vision_model.encoder.layers
    assert isinstance(layers[0], AAClipEncoderLayer) and not isinstance(layers[3], AAClipEncoderLayer)
    for layer in layers:
        weights = torch.cat([layer.self_attn.q_proj.weight.flatten(), layer.self_attn.k_proj.weight.flatten()])
        assert float(weights.std()) == pytest.approx(expected, rel=0.05)
    # A stock CLIP tower of the same shape, for the whole picture: same init scale in every layer.
    stock = CLIPVisionModel(model.config.vision_config)
    stock_std = float(stock.encoder.layers[0].mlp.fc1.weight.std())
    assert float(layers[0].mlp.fc1.weight.std()) == pytest.approx(stock_std, rel=0.05)

"""Inference-only AA-CLIP (no text tower, stored anchors): same outputs, smaller, clear errors."""

import pytest
import torch

from aaclip_hf import AAClipConfig, AAClipModel, AAClipProcessor
from aaclip_hf.runtime.flops import parameter_bytes


def test_same_outputs_as_full_model_for_stored_classes(tiny_model, pixel_values):
    small = tiny_model.to_inference_only()
    assert not hasattr(small, "text_model") and not small.config.include_text_model
    assert small.stored_class_names == tiny_model.stored_class_names
    with torch.no_grad():
        for names in (["bottle"] * 3, ["pcb1", "object", "bottle"]):
            size = pixel_values.shape[-2:]
            full = tiny_model(pixel_values, class_ids=tiny_model.class_ids(names), output_size=size)
            lean = small(pixel_values, class_ids=small.class_ids(names), output_size=size)
            for field in ("anomaly_map", "anomaly_map_grid", "image_score", "raw_anomaly_score", "image_embeds"):
                torch.testing.assert_close(getattr(lean, field), getattr(full, field), rtol=0, atol=0)


def test_save_load_round_trip_and_runs_through_processor(tiny_model, processor, tmp_path):
    small = tiny_model.to_inference_only()
    small.save_pretrained(tmp_path / "lean")
    processor.save_pretrained(tmp_path / "lean")
    loaded = AAClipModel.from_pretrained(tmp_path / "lean").eval()
    assert not loaded.config.include_text_model and not hasattr(loaded, "text_model")
    torch.testing.assert_close(loaded.text_anchors, tiny_model.text_anchors, rtol=0, atol=0)
    full_size = sum(p.numel() for p in tiny_model.parameters())
    assert sum(p.numel() for p in loaded.parameters()) < full_size
    # image in, anomaly map out, with the saved processor, no tokenizer call needed
    from PIL import Image

    image = Image.fromarray((torch.rand(50, 60, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    proc = AAClipProcessor.from_pretrained(tmp_path / "lean")
    inputs = proc(images=[image], return_tensors="pt")
    with torch.no_grad():
        size = inputs["pixel_values"].shape[-2:]
        got = loaded(inputs["pixel_values"], class_ids=loaded.class_ids("bottle"), output_size=size)
        want = tiny_model(inputs["pixel_values"], class_ids=tiny_model.class_ids("bottle"), output_size=size)
    torch.testing.assert_close(got.anomaly_map, want.anomaly_map, rtol=0, atol=0)
    result = proc.post_process_anomaly_detection(got, target_sizes=[(50, 60)])[0]
    assert result["anomaly_map"].shape == (50, 60) and 0.0 <= result["score"] <= 1.0


def test_clear_errors_for_unknown_class_and_text_features(tiny_model, processor, pixel_values):
    small = tiny_model.to_inference_only()
    with pytest.raises(KeyError, match="no stored text anchors for class"):
        small(pixel_values, class_ids=small.class_ids("carpet"))
    with pytest.raises(ValueError, match="inference-only"):
        small.get_text_features(torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="inference-only"):
        small.update_text_anchors(processor, ["carpet"])


def test_default_vit_l_inference_only_has_at_least_25_percent_fewer_parameters():
    # Built on the meta device: exact counts at the paper's ViT-L/14 518 px config, no memory allocated.
    counts = parameter_bytes(AAClipConfig())
    full, lean = counts["full_parameters"], counts["inference_only_parameters"]
    config = AAClipConfig()
    text = config.text_config
    # Independent count of what is dropped: CLIP text tower + text_projection + AA-CLIP text adapters/head + logit_scale.
    d, f, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d  # attention, MLP, two layer norms
    text_tower = text.vocab_size * d + text.max_position_embeddings * d + layers * per_layer + 2 * d
    dropped = text_tower + config.text_adapter_layers * d * d + d * config.projection_dim * 2 + 1
    assert full - lean == dropped
    assert 1 - lean / full >= 0.25, (full, lean)
    # ViT-L/14-336 CLIP (427.9M) + 0.8M more position rows at 518 px + 12.6M of adapters and heads
    assert 435e6 < full < 445e6

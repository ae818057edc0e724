"""Inference dtype selection (`aaclip_hf.runtime.devices`) and bf16-on-CPU closeness to fp32."""

import copy

import pytest
import torch

from aaclip_hf import AAClipConfig, AAClipModel
from aaclip_hf.runtime.devices import cast_for_inference, dtype_supported, resolve_dtype


# bf16 keeps 8 significand bits: unit roundoff u = 2**-8.
BF16_U = 2.0**-8


def test_resolve_dtype_names_and_defaults():
    assert resolve_dtype(None, "cpu") == torch.float32  # fp32 is the CPU default (the reference precision)
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("float32") == torch.float32
    assert resolve_dtype(torch.float32) == torch.float32
    if dtype_supported(torch.bfloat16, "cpu"):
        assert resolve_dtype("bf16", "cpu") == torch.bfloat16
        assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype must be one of"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="floating dtype"):
        resolve_dtype(torch.int32)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not supported on device cuda"):
            resolve_dtype("bf16", "cuda")


def _model():
    torch.manual_seed(0)
    config = AAClipConfig.tiny(vision_config={"image_size": 64, "patch_size": 8})
    model = AAClipModel(config).eval()
    model.init_adapter_weights(seed=0)
    anchors = torch.nn.functional.normalize(torch.randn(2, config.projection_dim, 2), dim=1)
    model.store_text_anchors(["object", "bottle"], anchors)
    return model


@pytest.mark.skipif(not dtype_supported(torch.bfloat16, "cpu"), reason="bf16 not supported on this CPU build")
def test_bf16_on_cpu_is_close_to_fp32():
    model = _model()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(pixels, class_ids=model.class_ids(["object", "bottle"]))
        half = cast_for_inference(copy.deepcopy(model), resolve_dtype("bf16", "cpu"))
        out = half(pixels.to(torch.bfloat16), class_ids=half.class_ids(["object", "bottle"]))
    # It really ran in bf16 (a no-op cast would pass the closeness checks trivially).
    assert out.anomaly_map_grid.dtype == torch.bfloat16 and half.text_anchors.dtype == torch.bfloat16
    assert (out.anomaly_map_grid.float() - ref.anomaly_map_grid).abs().max() > 0
    # Tolerances, from bf16's u = 2^-8 ~ 3.9e-3:
    # * unit-norm patch features: a handful of roundings along a 4-layer tower -> 4u absolute;
    for a, b in zip(out.patch_embeds, ref.patch_embeds):
        torch.testing.assert_close(a.float(), b, atol=4 * BF16_U, rtol=0)
    # * the map grid is `temperature * cosine` summed over L levels: one u of cosine error per level
    #   becomes temperature * L * u (= 1.56 here, on values of size ~40);
    atol_grid = model.config.similarity_temperature * model.config.num_levels * BF16_U
    torch.testing.assert_close(out.anomaly_map_grid.float(), ref.anomaly_map_grid, atol=atol_grid, rtol=0)
    # * scores in [0, 1] (sigmoid / cosine-based): 4u absolute.
    torch.testing.assert_close(out.image_score.float(), ref.image_score, atol=4 * BF16_U, rtol=0)
    torch.testing.assert_close(out.raw_anomaly_score.float(), ref.raw_anomaly_score, atol=4 * BF16_U, rtol=0)
    # and the map keeps its spatial pattern (the part that matters for segmentation).
    pair = torch.stack([out.anomaly_map_grid.float().flatten(), ref.anomaly_map_grid.flatten()])
    assert torch.corrcoef(pair)[0, 1] > 0.999

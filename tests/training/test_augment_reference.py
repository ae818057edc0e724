"""The reference-faithful augmentation (default): rotate, shift, flips one after the other, each zero-filling."""

from __future__ import annotations

import pytest
import torch

from aaclip_hf.training.arguments import AAClipTrainingArguments
from aaclip_hf.training.augment import (
    AugmentConfig,
    apply_geometric,
    apply_reference_geometric,
    augment_batch,
    sample_params,
    sample_seed,
)


def _params(**kw):
    p = {"angle": 0.0, "tx": 0, "ty": 0, "hflip": False, "vflip": False, "jitter": []}
    p.update(kw)
    return p


# 4 x 4 image, values 1..16 row by row (0 never occurs, so a 0 is always fill)
IMG = torch.arange(1.0, 17.0).view(1, 1, 4, 4)


def test_rotation_by_90_degrees_is_counter_clockwise():
    out, _ = apply_reference_geometric(IMG, None, [_params(angle=90.0)])
    expected = torch.tensor(
        [
            [4.0, 8.0, 12.0, 16.0],
            [3.0, 7.0, 11.0, 15.0],
            [2.0, 6.0, 10.0, 14.0],
            [1.0, 5.0, 9.0, 13.0],
        ]
    )
    assert torch.equal(out[0, 0], expected)


def test_shift_moves_whole_pixels_and_zero_fills():
    out, _ = apply_reference_geometric(IMG, None, [_params(tx=1, ty=-2)])  # right by 1, up by 2
    expected = torch.tensor(
        [
            [0.0, 9.0, 10.0, 11.0],
            [0.0, 13.0, 14.0, 15.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.equal(out[0, 0], expected)
    gone, _ = apply_reference_geometric(IMG, None, [_params(tx=4)])
    assert not gone.any()


def test_ops_run_in_the_reference_order_rotate_shift_hflip_vflip():
    out, _ = apply_reference_geometric(IMG, None, [_params(angle=90.0, tx=1, hflip=True, vflip=True)])
    # rotate (above), shift right by 1 -> [[0,4,8,12],[0,3,7,11],[0,2,6,10],[0,1,5,9]], then both flips
    expected = torch.tensor(
        [
            [9.0, 5.0, 1.0, 0.0],
            [10.0, 6.0, 2.0, 0.0],
            [11.0, 7.0, 3.0, 0.0],
            [12.0, 8.0, 4.0, 0.0],
        ]
    )
    assert torch.equal(out[0, 0], expected)


def test_what_the_rotation_cut_off_stays_black_after_the_shift():
    """45 degrees cuts the corners off; shifting by 3 then shows fill where the composed warp shows content."""
    img = torch.ones(1, 1, 9, 9)
    p = _params(angle=45.0, tx=3)
    ref, _ = apply_reference_geometric(img, None, [p])
    composed, _ = apply_geometric(img, None, [p])
    rotated, _ = apply_reference_geometric(img, None, [_params(angle=45.0)])
    assert torch.equal(ref[..., 3:], rotated[..., :-3]) and not ref[..., :3].any()  # shift of the rotated image
    assert composed[..., :3].any()  # the single warp samples the original image there
    assert torch.equal(ref[..., 3:] != 0, ref[..., 3:] == 1)


def test_mask_follows_the_image_and_stays_binary():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(6, 11, 11, generator=g) > 0.6).float()
    images = torch.randn(6, 3, 11, 11, generator=g)
    images[:, 1] = masks
    cfg = AugmentConfig(rotation_p=1.0, translate_p=1.0)
    assert cfg.mode == "reference"
    out, m = augment_batch(images, masks, [sample_seed(3, 0, i) for i in range(6)], cfg, (0, 0, 0), (1, 1, 1))
    assert torch.equal(out[:, 1], m) and set(m.unique().tolist()) <= {0.0, 1.0}
    # the same draws through the explicit function
    params = [sample_params(cfg, torch.Generator().manual_seed(sample_seed(3, 0, i)), 11, 11) for i in range(6)]
    again, m2 = apply_reference_geometric(images, masks, params)
    assert torch.equal(again, out) and torch.equal(m2, m)


def test_mode_is_a_flag_with_reference_as_default():
    args = AAClipTrainingArguments(model="m", train_data=["d"], output_dir="o")
    assert args.augment_mode == "reference" and args.augment_config("vision").mode == "reference"
    composed = AAClipTrainingArguments(model="m", train_data=["d"], output_dir="o", augment_mode="composed")
    assert composed.augment_config("text").mode == "composed"
    with pytest.raises(ValueError, match="augment-mode"):
        AAClipTrainingArguments(model="m", train_data=["d"], output_dir="o", augment_mode="warp").validate()
    with pytest.raises(ValueError, match="augmentation mode"):
        AugmentConfig(mode="warp")

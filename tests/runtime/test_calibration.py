"""Calibration inputs of static int8: deterministic pictures at the model's size, or your own images, through the
model's preprocessing; their digest keys the quantised tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf.runtime.calibration import calibration_digest, calibration_pixels, synthetic_pictures


def test_pictures_are_deterministic_and_varied():
    first, again = synthetic_pictures(3, 48), synthetic_pictures(3, 48)
    assert [p.size for p in first] == [(48, 48)] * 3 and all(p.mode == "RGB" for p in first)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))
    assert not np.array_equal(np.asarray(synthetic_pictures(1, 48, seed=1)[0]), np.asarray(first[0]))
    for picture in first:  # image-like: not flat, not clipped to the extremes
        values = np.asarray(picture, dtype=np.float32)
        assert values.std() > 5 and (values == 0).mean() < 0.05 and (values == 255).mean() < 0.05


def test_pixels_at_the_model_size(tiny_model):
    size = tiny_model.config.vision_config.image_size
    pixels = calibration_pixels(tiny_model.config, count=2)
    assert pixels.shape == (2, 3, size, size) and pixels.dtype == torch.float32
    own = [Image.new("RGB", (90, 60), (200, 30, 30)), Image.new("L", (20, 20), 128)]  # any size and mode
    mine = calibration_pixels(tiny_model.config, images=own)
    assert mine.shape == (2, 3, size, size)
    assert calibration_digest(mine) != calibration_digest(pixels)
    assert calibration_digest(pixels) == calibration_digest(calibration_pixels(tiny_model.config, count=2))


def test_refuses_no_images(tiny_model):
    with pytest.raises(ValueError, match="got none"):
        calibration_pixels(tiny_model.config, images=[])
    with pytest.raises(ValueError, match="at least one picture"):
        synthetic_pictures(0, 32)

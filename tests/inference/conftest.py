"""Shared pieces of the detect and calibrate tests: image files and saved tiny model folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def save_image(path, height, width, seed=0, exif_orientation=None):
    """A random RGB image file (optionally with an EXIF orientation tag); returns its path."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    return path


def image_folder(folder, count, seed=0, size=(30, 40)):
    """`count` random images `0.png ...` in `folder`."""
    for i in range(count):
        save_image(folder / f"{i}.png", *size, seed=seed + i)
    return folder


def store_references(model, processor, class_name, images):
    """Store `images` (PIL) as `class_name`'s normal references, as `aaclip add-class --references` does."""
    pixels = processor(images=images)["pixel_values"]
    with torch.no_grad():
        bank = model.reference_features(pixels)
    model.store_references(class_name, bank, len(images))


@pytest.fixture
def model_dir(tiny_model, processor, tmp_path):
    """The tiny model (anchors of object, bottle, pcb1) saved by the one writer."""
    from aaclip_hf.runtime.model_folder import save_model_folder

    return save_model_folder(tiny_model, processor, tmp_path / "model")

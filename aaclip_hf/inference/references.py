"""Normal references (few-shot) from image files, and new classes: what `aaclip add-references` and `aaclip add-class`
store in a model folder.

A class's references are K images of good parts. Their patch features per feature level form the class's bank
(`AAClipModel.reference_features`); at test time every patch's nearest-neighbour distance to that bank joins the
zero-shot map (`docs/method.md`, "Few-shot normal references"). The bank is stored with the weights and tied to the
vision weights that made it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ..data.image_io import DEFAULT_MAX_SIDE, load_image
from ..errors import BadInputError, InvalidInputError, UnknownClassError
from .detect import InputImage, collect_images


__all__ = ["DEFAULT_REFERENCE_SEED", "add_references_from_files", "choose_references"]

# The seed of the k-shot sampler (the reference implementation's).
DEFAULT_REFERENCE_SEED = 111


def choose_references(images: Sequence[InputImage], shots: int | None, seed: int) -> list[InputImage]:
    """`shots` images drawn with `seed` from `images` (all of them when `shots` is None), in a stable order."""
    if shots is None:
        return list(images)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise InvalidInputError(f"--shots must be a positive integer, got {shots!r}")
    if shots > len(images):
        raise BadInputError(f"{shots} references asked for, but only {len(images)} image(s) given", None, "--shots")
    order = sorted(images, key=lambda image: image.name)
    picked = np.random.default_rng(seed).choice(len(order), size=shots, replace=False)
    return [order[index] for index in sorted(picked.tolist())]


def add_references_from_files(
    model,
    processor,
    class_name: str,
    paths: Sequence[str | os.PathLike],
    *,
    shots: int | None = None,
    seed: int = DEFAULT_REFERENCE_SEED,
    augmentations: Sequence[str] = (),
    coreset_ratio: float = 1.0,
    max_image_side: int | None = DEFAULT_MAX_SIDE,
) -> list[InputImage]:
    """Store `class_name`'s references in `model` from image files and folders (`shots` of them drawn with `seed`);
    returns the images used. Bad references are one-line errors naming the file: none given, unreadable, or a class
    without stored anchors."""
    if class_name not in model.stored_class_names:
        hint = "aaclip add-class MODEL NAME --output NEW" if model.config.include_text_model else "the full model"
        raise UnknownClassError(
            f"class {class_name!r} has no stored anchors in this model (stored: {model.stored_class_names[:10]}); add "
            f"the class first ({hint}), then its references"
        )
    chosen = choose_references(collect_images(paths), shots, seed)
    pixels = processor(images=[load_image(image.path, max_side=max_image_side) for image in chosen])["pixel_values"]
    with torch.no_grad():
        model.add_references(
            class_name,
            pixels.to(model.device, model.dtype),
            augmentations=augmentations,
            coreset_ratio=coreset_ratio,
            seed=seed,
        )
    return chosen

# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""AA-CLIP image processor: CLIP's preprocessing as the reference runs it, and ground-truth masks.

Images: PIL bicubic resize to a square (518 px), no centre crop, OpenAI CLIP mean/std, exactly the reference's
torchvision `Resize((518, 518), BICUBIC) -> ToTensor -> Normalize` on a PIL image. The one departure from
`CLIPImageProcessorPil` is the RGB conversion: PIL's own `convert("RGB")` clips 16-bit scans (they turn white) and
shows whatever colour is stored under transparent pixels, so high-bit-depth images are scaled to 8 bit and alpha is
composited onto black (`image_to_rgb`).

Masks follow the reference's rule: a pixel is anomalous iff it is non-zero in any channel, resized with PIL nearest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil
from transformers.processing_utils import ImagesKwargs

from .configuration_aaclip import DEFAULT_IMAGE_SIZE, InvalidInputError


# PIL modes whose convert("RGB") clips instead of scaling: 16-bit PNG/TIFF scans, 32-bit integer, float.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# "range": the image's own min..max -> 0..255 (display windowing of scans); "max": divide by 65535.
HIGH_BIT_POLICIES = ("range", "max")
UINT16_MAX = 65535.0
# Modes that carry transparency; composited onto black so what is stored under transparent pixels never shows.
ALPHA_MODES = ("RGBA", "LA", "RGBa", "La", "PA")


def check_not_empty(width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise InvalidInputError(f"image is {width}x{height} pixels; expected at least 1x1")


def finite_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """The pixel array of an image; NaN/inf in a float image are refused (no windowing can place them, and
    `nan_to_num` would silently make them black, or "normal" in a mask)."""
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InvalidInputError(f"float image holds {bad} NaN/inf pixel value(s); expected finite intensities")
    return array


def high_bit_to_uint8(image: Image.Image | np.ndarray, policy: str = "range") -> np.ndarray:
    """A high-bit-depth image as uint8, scaled and never clipped.

    `"range"` stretches the image's own min..max to 0..255 (a constant image maps to 0); `"max"` divides by 65535 and
    keeps intensities comparable across images (float images always use `"range"`).
    """
    if policy not in HIGH_BIT_POLICIES:
        raise InvalidInputError(f"high_bit_depth must be one of {HIGH_BIT_POLICIES}, got {policy!r}")
    array = finite_pixels(image)
    is_float = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float64)
    if policy == "max" and not is_float:
        scaled = array / UINT16_MAX * 255.0
    else:
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def image_to_rgb(image: Image.Image, high_bit_depth: str = "range") -> Image.Image:
    """The one RGB conversion of a PIL image: high bit depth scaled (`high_bit_to_uint8`), transparency (RGBA, LA,
    palette with a transparent index) composited onto black, everything else `convert("RGB")`."""
    if image.mode in HIGH_BIT_MODES:
        return Image.fromarray(high_bit_to_uint8(image, high_bit_depth)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def binarize_mask(mask, size: tuple[int, int] | None = None) -> np.ndarray:
    """The reference's mask rule: a pixel is anomalous iff it is non-zero in any colour channel; with
    `size = (height, width)` the binary mask is then resized with PIL nearest neighbour (torch's nearest samples
    other source pixels and would move edges).

    Takes a PIL image of any mode (alpha ignored), a `(H, W)` array or a channels-last `(H, W, 1|3|4)` array;
    returns `(H, W)` bool.
    """
    if isinstance(mask, Image.Image) and (mask.mode in ALPHA_MODES or mask.mode == "P"):
        mask = mask.convert("RGB")
    array = finite_pixels(mask)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = (array != 0).any(axis=-1)
    if array.ndim != 2:
        raise InvalidInputError(
            f"a mask must be 2-D (height, width) or channels-last (height, width, 1|3|4), got shape {array.shape}"
        )
    binary = array != 0
    if size is not None and tuple(size) != binary.shape:
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
        binary = np.asarray(resized) != 0
    return binary


class AAClipImageProcessorKwargs(ImagesKwargs, total=False):
    """`high_bit_depth`: how 16-bit and float images become 8 bit (`HIGH_BIT_POLICIES`)."""

    high_bit_depth: str


class AAClipImageProcessor(CLIPImageProcessorPil):
    r"""
    `CLIPImageProcessorPil` at AA-CLIP's input size: bicubic resize to `size` (default 518 x 518), no centre crop,
    OpenAI CLIP mean/std, and an RGB conversion that scales high-bit-depth images and composites alpha onto black.

    Args:
        high_bit_depth (`str`, defaults to `"range"`): `"range"` stretches a 16-bit or float image's own min..max to
            0..255 (display windowing of scans); `"max"` divides 16-bit values by 65535.
        Other arguments as `CLIPImageProcessorPil`.
    """

    valid_kwargs = AAClipImageProcessorKwargs
    size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}
    crop_size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}
    do_center_crop = False
    high_bit_depth = "range"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.high_bit_depth not in HIGH_BIT_POLICIES:
            raise InvalidInputError(f"high_bit_depth must be one of {HIGH_BIT_POLICIES}, got {self.high_bit_depth!r}")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise InvalidInputError(f"{name} must be 3 finite numbers (one per channel), got {values!r}")
        if not all(v > 0 for v in self.image_std):
            raise InvalidInputError(f"image_std must be positive (it divides the pixels), got {self.image_std!r}")
        height, width = self.image_size
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise InvalidInputError(f"size must be positive integers {{height, width}}, got {self.size!r}")

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` of `pixel_values`."""
        return (self.size["height"], self.size["width"])

    def convert_to_rgb(self, image, input_data_format=None) -> np.ndarray:
        """RGB, `(H, W, 3)`: PIL images by `image_to_rgb`, arrays as `CLIPImageProcessorPil` converts them."""
        if isinstance(image, Image.Image):
            check_not_empty(*image.size)
        elif isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim >= 2:
            check_not_empty(*(image.shape[-2:] if image.shape[-1] > 4 else image.shape[:2])[::-1])
        if isinstance(image, Image.Image):
            return np.asarray(image_to_rgb(image, self.high_bit_depth))
        return super().convert_to_rgb(image, input_data_format=input_data_format)

    def preprocess_masks(self, masks, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Ground-truth masks -> `(B, H, W)` float {0, 1} at `size` (default: the image size), by `binarize_mask`.

        Takes one mask or a list: PIL images, `(H, W[, C])` arrays or tensors.
        """
        height, width = (size, size) if isinstance(size, int) else tuple(size or self.image_size)
        if isinstance(masks, Image.Image) or (isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 2):
            masks = [masks]
        out = []
        for index, mask in enumerate(masks):
            if isinstance(mask, torch.Tensor):
                mask = mask.detach().cpu().numpy()
            try:
                binary = binarize_mask(mask, (height, width))
            except InvalidInputError as error:
                raise InvalidInputError(f"mask {index}: {error}") from None
            out.append(torch.from_numpy(binary.astype(np.float32)))
        return torch.stack(out)


def reference_image_processor(image_size: int | Sequence[int] = DEFAULT_IMAGE_SIZE) -> AAClipImageProcessor:
    """The reference preprocessing at `image_size` (square)."""
    size = image_size if isinstance(image_size, int) else image_size[0]
    return AAClipImageProcessor(size={"height": size, "width": size}, crop_size={"height": size, "width": size})


AAClipImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "ALPHA_MODES",
    "HIGH_BIT_MODES",
    "HIGH_BIT_POLICIES",
    "AAClipImageProcessor",
    "binarize_mask",
    "finite_pixels",
    "high_bit_to_uint8",
    "image_to_rgb",
    "reference_image_processor",
]

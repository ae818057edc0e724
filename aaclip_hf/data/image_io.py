"""Robust image and mask files for anomaly-detection data.

Real datasets are messy: grey-scale and palette PNGs, RGBA screenshots, 16-bit medical scans, CMYK JPEGs, phone photos
rotated by an EXIF tag, truncated downloads, files whose extension lies, and 50-megapixel line-scan images. `load_image`
and `load_mask` turn all of these into one predictable form (``RGB`` images, ``L`` masks) or fail with an
`ImageFileError` that names the file and says what was expected.

Policies (each one a keyword argument):

- **EXIF orientation** is applied to images *and* masks, so a mask saved by the same tool stays aligned.
- **Colour**: the model's own RGB conversion (`AAClipImageProcessor`'s `image_to_rgb`): high bit depth (16-bit
  PNG/TIFF, 32-bit, float) scaled to 8 bit, never clipped (``high_bit_depth="range"`` stretches the image's own
  min..max, ``"max"`` divides by 65535); alpha composited onto black. Float images holding NaN/inf are refused.
- **Size and memory**: an image whose longest side exceeds ``max_side`` is decoded reduced where the format allows
  (JPEG's DCT scaling: 1/2, 1/4 or 1/8, never below ``max_side``) and then resized to ``max_side`` at once (aspect
  kept, Lanczos), so only one full-size decode buffer lives at a time and the maps computed for it stay small.
  Masks go through the same bound with nearest-neighbour resizing (their non-zero structure is kept). A file above
  ``max_pixels`` pixels is refused before decoding; PIL's decompression-bomb limit applies on top.
- **Multi-frame files** (animated GIF/PNG/WebP, multi-page TIFF) use their first frame, with a warning.
- **Masks** keep their non-zero structure exactly (they are binarised with ``!= 0``): grey masks are returned as they
  are, colour and palette masks take the maximum over R, G, B, high-bit-depth masks map every non-zero value to 255.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadInputError, ImageFileError, InvalidInputError, MissingFileError
from ..modeling.image_processing_aaclip import HIGH_BIT_MODES, HIGH_BIT_POLICIES, binarize_mask, image_to_rgb


logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_SIDE",
    "IMAGE_EXTENSIONS",
    "BadInputError",
    "ImageFileError",
    "MissingFileError",
    "load_image",
    "load_mask",
    "open_image_file",
]

# Lower-case file extensions treated as images by the folder readers.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Longest side an image is decoded at: above the model's 518 px input, enough for readable overlays and pixel metrics
# of common inspection cameras (4096 x 3000), and it bounds a decoded RGB image to 48 MiB and each full-size map to
# 64 MiB of float32.
DEFAULT_MAX_SIDE = 4096


def open_image_file(
    path: str | os.PathLike,
    max_pixels: int | None = Image.MAX_IMAGE_PIXELS,
    max_side: int | None = None,
    resample: int = Image.LANCZOS,
    field: str = "image_path",
) -> Image.Image:
    """Decode an image file in its stored mode, EXIF orientation applied, its longest side at most `max_side`.

    Every failure is an `ImageFileError` naming the file and `field` (`MissingFileError` when it does not exist).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError("does not exist (no such file)", path, field)
    if os.path.isdir(path):
        raise ImageFileError("is a folder, expected an image file", path, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size policy below is clearer
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        reason = f"image is larger than PIL's decompression-bomb limit ({error}); raise PIL.Image.MAX_IMAGE_PIXELS"
        raise ImageFileError(reason + " if the file is trusted", path, field) from None
    except UnidentifiedImageError:
        reason = "is not a readable image (the content is not a known image format, whatever the extension says)"
        raise ImageFileError(reason, path, field) from None
    except OSError as error:
        raise ImageFileError(f"cannot be opened as an image: {error}", path, field) from None
    with image:
        return _decode(image, path, field, max_pixels, max_side, resample)


def _decode(image: Image.Image, path: str, field: str, max_pixels, max_side, resample) -> Image.Image:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:  # animated GIF/PNG/WebP, multi-page TIFF
        logger.warning("%s holds %d frames; using the first one", path, frames)
        image.seek(0)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageFileError(f"image has an empty size {image.size}", path, field)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageFileError(
            f"image is {width}x{height} = {width * height} pixels, above max_pixels={max_pixels}; downscale it "
            "first or pass a larger max_pixels",
            path,
            field,
        )
    if max_side is not None and max(width, height) > max_side and image.format == "JPEG":
        # `draft` picks the smallest DCT scale whose result is at least the requested size.
        scale = max_side / max(width, height)
        image.draft(image.mode, (max(1, round(width * scale)), max(1, round(height * scale))))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        reason = f"image data is corrupt or truncated ({error}); expected a complete image file"
        raise ImageFileError(reason, path, field) from None
    transposed = ImageOps.exif_transpose(image)
    transposed = image.copy() if transposed is image else transposed  # detached from the file, which closes now
    if max_side is not None and max(transposed.size) > max_side:
        logger.info("%s is %dx%d: decoded at a longest side of %d px (max_side)", path, *transposed.size, max_side)
        transposed = ImageOps.contain(transposed, (max_side, max_side), method=resample)
    return transposed


def load_image(
    path: str | os.PathLike,
    *,
    high_bit_depth: Literal["range", "max"] = "range",
    max_pixels: int | None = Image.MAX_IMAGE_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
    field: str = "image_path",
) -> Image.Image:
    """Any image file as an 8-bit ``RGB`` PIL image (policies: see the module docstring)."""
    if high_bit_depth not in HIGH_BIT_POLICIES:
        raise InvalidInputError(f"high_bit_depth must be one of {HIGH_BIT_POLICIES}, got {high_bit_depth!r}")
    image = open_image_file(path, max_pixels, max_side, Image.LANCZOS, field)
    try:
        return image_to_rgb(image, high_bit_depth)
    except InvalidInputError as error:  # non-finite float pixels
        raise ImageFileError(str(error), path, field) from None


def load_mask(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = Image.MAX_IMAGE_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
    field: str = "mask_path",
) -> Image.Image:
    """A segmentation mask as an ``L`` image whose non-zero pixels are the anomaly (values kept for grey masks; the
    caller binarises with ``!= 0``)."""
    image = open_image_file(path, max_pixels, max_side, Image.NEAREST, field)
    if image.mode in HIGH_BIT_MODES:
        try:
            return Image.fromarray(binarize_mask(image).astype(np.uint8) * 255)
        except InvalidInputError as error:
            raise ImageFileError(str(error), path, field) from None
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("L", "LA", "La"):
        return image.getchannel("L") if image.mode != "L" else image
    return Image.fromarray(np.asarray(image.convert("RGB")).max(axis=2))

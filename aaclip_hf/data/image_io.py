"""Robust image and mask loading for anomaly-detection data.

Real datasets are messy: grey-scale and palette PNGs, RGBA screenshots, 16-bit medical
scans, CMYK JPEGs from print workflows, phone photos rotated by an EXIF tag, truncated
downloads and files whose extension lies. `load_image` and `load_mask` turn all of these
into one predictable form (``RGB`` images, ``L`` masks) or fail with a `BadInputError`
that names the file and says what was expected.

Policies (each one a keyword argument):

- **EXIF orientation** is applied (`PIL.ImageOps.exif_transpose`) to images *and* masks,
  so a mask saved by the same tool as its image stays aligned with it.
- **Alpha** (RGBA, LA, palette with transparency) is composited onto black: transparent
  pixels become black rather than whatever colour happens to be stored under them.
  Fully opaque images are unchanged, i.e. the same as dropping the alpha channel.
- **High bit depth** (16-bit PNG/TIFF ``I;16*``, 32-bit ``I``, float ``F``) is scaled to
  8 bit, never clipped (PIL's own ``convert("RGB")`` clips, so a 16-bit scan turns white).
  ``high_bit_depth="range"`` (default) stretches the image's own min..max to 0..255, the
  usual display windowing for medical scans whose intensities use only part of the range;
  ``"max"`` divides by 65535, which keeps absolute intensities comparable across images.
  A constant image maps to 0 under ``"range"``. Float images always use ``"range"``.
- **Very large images**: images with more than ``max_pixels`` pixels are refused with a
  clear error, except JPEGs, which are decoded at a reduced scale with ``draft`` (1/2, 1/4
  or 1/8 in each side, chosen so the result fits). The model resizes to 518 px anyway.
  PIL's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, twice it raises)
  still applies on top; raise that global to read bigger files.
- **Multi-frame files** (animated GIF/PNG/WebP, multi-page TIFF: ``n_frames > 1``) use their
  first frame, with a warning naming the file and the frame count.
- **Float images** (mode ``F``: 32-bit float TIFF) holding NaN or inf are refused with a
  `BadInputError` naming the file and the count: no windowing can place them, and a silent
  ``nan_to_num`` would turn them into black (images) or "normal" (masks) pixels.
- **Masks** keep the *non-zero* structure exactly, because masks are binarised with
  ``!= 0`` (SPEC section 7): grey masks are returned as they are, colour and palette masks
  take the maximum over R, G, B (so a dark-red label pixel never rounds to 0), and
  high-bit-depth masks map every non-zero value to 255.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
from PIL import Image

from ..modeling.configuration_aaclip import (
    HIGH_BIT_MODES,
    ImageFileError,
    MissingImageFileError,
    binarize_mask,
    finite_pixels,
    high_bit_to_uint8,
    image_to_rgb,
    open_image_file,
)


logger = logging.getLogger(__name__)

__all__ = ["BadInputError", "MissingFileError", "load_image", "load_mask", "IMAGE_EXTENSIONS", "high_bit_to_uint8"]

# Lower-case file extensions treated as images by the folder readers.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class BadInputError(ValueError):
    """Bad input data: carries the offending ``path``, the ``field`` and a readable reason.

    ``str(err)`` always names the file, so the message is useful even when the error
    surfaces far from where it was raised (in a DataLoader worker, for example).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.field = field
        self.reason = message
        where = []
        if self.path is not None:
            where.append(f"file {self.path!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class MissingFileError(BadInputError, FileNotFoundError):
    """A referenced file does not exist (also a `FileNotFoundError`)."""


def _open_checked(path: str | os.PathLike, field: str, max_pixels: int | None) -> Image.Image:
    """`open_image_file` (the policy the pipeline's Hub copy follows too), its errors as `BadInputError`s."""
    try:
        return open_image_file(path, max_pixels)
    except MissingImageFileError as error:
        raise MissingFileError(error.reason, path=error.path, field=field) from None
    except ImageFileError as error:
        raise BadInputError(error.reason, path=error.path, field=field) from None


def _apply(rule, path: str | os.PathLike, field: str, *args):
    """A modeling rule on decoded pixels, its `ValueError` (non-finite pixels) naming the file."""
    try:
        return rule(*args)
    except ValueError as error:
        raise BadInputError(str(error), path=os.fspath(path), field=field) from None


def load_image(
    path: str | os.PathLike,
    *,
    high_bit_depth: Literal["range", "max"] = "range",
    max_pixels: int | None = Image.MAX_IMAGE_PIXELS,
    field: str = "image_path",
) -> Image.Image:
    """Load any image file as an 8-bit ``RGB`` PIL image (policies: see the module docstring).

    Raises `MissingFileError` for a missing file and `BadInputError` for anything that is not
    a complete, readable image; both name ``path`` and ``field``.
    """
    if high_bit_depth not in ("range", "max"):
        raise ValueError(f"high_bit_depth must be 'range' or 'max', got {high_bit_depth!r}")
    return _apply(image_to_rgb, path, field, _open_checked(path, field, max_pixels), high_bit_depth)


def load_mask(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = Image.MAX_IMAGE_PIXELS,
    field: str = "mask_path",
) -> Image.Image:
    """Load a segmentation mask as an ``L`` image whose non-zero pixels are the anomaly.

    Values are kept for grey masks (the caller binarises with ``!= 0``); see the module
    docstring for colour, palette, alpha and high-bit-depth masks.
    """
    im = _open_checked(path, field, max_pixels)
    if im.mode in HIGH_BIT_MODES:
        pixels = _apply(finite_pixels, path, field, im)
        return Image.fromarray(binarize_mask(pixels).astype(np.uint8) * 255)
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("L", "LA", "La"):
        return im.getchannel("L") if im.mode != "L" else im
    rgb = np.asarray(im.convert("RGB"))
    return Image.fromarray(rgb.max(axis=2))

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
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


logger = logging.getLogger(__name__)

__all__ = ["BadInputError", "MissingFileError", "load_image", "load_mask", "IMAGE_EXTENSIONS"]

# Lower-case file extensions treated as images by the folder readers.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_MAX_UINT16 = 65535.0


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
    """Open and fully decode `path`, mapping every failure to a `BadInputError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError("does not exist", path=path, field=field)
    if os.path.isdir(path):
        raise BadInputError("is a directory, expected an image file", path=path, field=field)
    try:
        with warnings.catch_warnings():
            # We apply our own, clearer size policy below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as err:
        raise BadInputError(
            f"image is larger than PIL's decompression-bomb limit ({err}); raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted",
            path=path,
            field=field,
        ) from None
    except UnidentifiedImageError:
        raise BadInputError(
            "is not a readable image (the content is not a known image format, whatever the extension says)",
            path=path,
            field=field,
        ) from None
    except OSError as err:
        raise BadInputError(f"cannot be opened as an image: {err}", path=path, field=field) from None

    if max_pixels is not None and im.width * im.height > max_pixels:
        if im.format == "JPEG":
            # `draft` picks the largest DCT scale (1, 1/2, 1/4, 1/8) at least as big as the request.
            scale = (max_pixels / (im.width * im.height)) ** 0.5
            im.draft(im.mode, (max(1, int(im.width * scale)), max(1, int(im.height * scale))))
        if im.width * im.height > max_pixels:
            size = f"{im.width}x{im.height}"
            im.close()
            raise BadInputError(
                f"image is {size} = {im.width * im.height} pixels, above max_pixels={max_pixels}; "
                "downscale it first or pass a larger max_pixels",
                path=path,
                field=field,
            )
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        logger.warning("%s: %s holds %d frames; using the first one", field, path, frames)
        im.seek(0)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as err:
        im.close()
        raise BadInputError(
            f"image data is corrupt or truncated ({err}); expected a complete image file", path=path, field=field
        ) from None
    if im.width < 1 or im.height < 1:
        raise BadInputError(f"image has an empty size {im.size}", path=path, field=field)
    return im


def _finite_array(im: Image.Image, path: str | os.PathLike, field: str) -> np.ndarray:
    """The pixel array of a high-bit-depth image; NaN/inf (float images) are a `BadInputError`."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise BadInputError(
                f"float image holds {bad} NaN/inf pixel value(s); expected finite intensities",
                path=os.fspath(path),
                field=field,
            )
    return arr


def _high_bit_to_uint8(arr: np.ndarray, mode: Literal["range", "max"]) -> np.ndarray:
    is_float = arr.dtype.kind == "f"
    arr = arr.astype(np.float64)
    if mode == "max" and not is_float:
        out = arr / _MAX_UINT16 * 255.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        out = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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
    with _open_checked(path, field, max_pixels) as raw:
        im = ImageOps.exif_transpose(raw)
        if im.mode in _HIGH_BIT_MODES:
            return Image.fromarray(_high_bit_to_uint8(_finite_array(im, path, field), high_bit_depth)).convert("RGB")
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode == "PA":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "RGBa", "La"):
            rgba = im.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, rgba).convert("RGB")
        out = im.convert("RGB")
        return out if out is not raw else out.copy()


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
    with _open_checked(path, field, max_pixels) as raw:
        im = ImageOps.exif_transpose(raw)
        if im.mode in _HIGH_BIT_MODES:
            arr = _finite_array(im, path, field)
            return Image.fromarray(np.where(arr != 0, 255, 0).astype(np.uint8))
        if im.mode == "1":
            return im.convert("L")
        if im.mode in ("L", "LA", "La"):
            return im.getchannel("L") if im.mode != "L" else (im if im is not raw else im.copy())
        rgb = np.asarray(im.convert("RGB"))
        return Image.fromarray(rgb.max(axis=2))

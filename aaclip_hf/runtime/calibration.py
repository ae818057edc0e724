"""Calibration inputs for static int8 quantisation: a few deterministic, image-like pictures, or the caller's own.

Static (post-training) quantisation fixes each activation's int8 range from a few forward passes ("calibration",
https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training/basic-quantization-flow.html;
ONNX Runtime's `quantize_static`,
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html#static-quantization). The ranges
should come from inputs like the real ones, yet a cached quantised tower must not depend on whichever images a
run happens to score. So the default calibration set is drawn here, the same on every run: pictures with the
statistics of photographs and inspection images (smooth illumination, a textured surface, objects with hard
edges, sensor noise), preprocessed exactly as the model's inputs are. Callers with their own normal images pass
them instead (`calibration_pixels(config, images=...)`); the cache key then includes their pixels.

The accuracy against fp32 on the synthetic defect benchmark (images the calibration never saw) is measured by
`aaclip bench` (docs/performance.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InvalidInputError
from ..modeling.image_processing_aaclip import reference_image_processor


__all__ = ["CALIBRATION_IMAGES", "CALIBRATION_SEED", "calibration_digest", "calibration_pixels", "synthetic_pictures"]

# How many pictures calibrate a static int8 tower. NNCF's default subset is 300 samples; on a CPU each ViT-L/14
# 518 px calibration forward costs seconds (twice: SmoothQuant's statistics, then the ranges). Measured on ViT-L/14
# towers at 224 px against fp32 over 38 synthetic test images (docs/performance.md): 4 pictures gave a map
# correlation of 0.9989, 8 gave 0.9995 and 12 no better, so the default is 8.
CALIBRATION_IMAGES = 8
CALIBRATION_SEED = 0
# The drawing: a coarse illumination grid upsampled to the picture, a 1/f ("pink") texture (the power spectrum of
# natural images falls off as 1/f^2, so every scale of structure a 14 px patch can see is present), a sinusoidal
# pattern, a few hard-edged shapes and Gaussian sensor noise (amplitudes in 8-bit levels).
# Milder pictures calibrate better than wilder ones (narrower ranges, finer int8 steps on real inputs): texture and
# pattern amplitudes of (10-45, 5-30) levels gave a map correlation of 0.9988 with 4 pictures, these 0.9989-0.9995.
_ILLUMINATION_CELLS = 4
_ILLUMINATION_LEVELS = (40, 215)
_TEXTURE_LEVELS = (4, 16)
_PATTERN_PERIODS = (6.0, 40.0)
_PATTERN_LEVELS = (2, 10)
_SHAPES = (1, 4)
_SHAPE_SIZES = (0.05, 0.4)
_NOISE_LEVELS = 3.0


def _pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """`(size, size)` noise with a 1/f amplitude spectrum, scaled to unit standard deviation."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field / (field.std() + 1e-12)).astype(np.float32)


def synthetic_pictures(count: int, size: int, seed: int = CALIBRATION_SEED) -> list[Image.Image]:
    """`count` deterministic RGB pictures of `size` x `size` pixels (see the module docstring)."""
    if count < 1 or size < 1:
        raise InvalidInputError(f"calibration needs at least one picture of at least 1 px, got {count} of {size} px")
    pictures = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        # a surface colour lit unevenly: brightness varies across the picture, hue only a little (as under one light)
        colour = rng.uniform(*_ILLUMINATION_LEVELS, 3)
        light = rng.uniform(0.6, 1.2, (_ILLUMINATION_CELLS, _ILLUMINATION_CELLS, 1))
        cells = np.clip(colour * light * rng.uniform(0.9, 1.1, (_ILLUMINATION_CELLS, _ILLUMINATION_CELLS, 3)), 0, 255)
        base = np.asarray(Image.fromarray(cells.astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
        base += rng.uniform(*_TEXTURE_LEVELS) * _pink_noise(rng, size)[..., None] * rng.uniform(0.8, 1.0, 3)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(*_PATTERN_PERIODS)
        wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
        base += rng.uniform(*_PATTERN_LEVELS) * wave[..., None] * rng.uniform(0.5, 1.0, 3)
        picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(*_SHAPES))):
            x0, y0 = rng.uniform(0, size * (1 - _SHAPE_SIZES[0]), 2)
            w, h = rng.uniform(size * _SHAPE_SIZES[0], size * _SHAPE_SIZES[1], 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        noisy = np.asarray(picture, dtype=np.float32) + rng.normal(0, _NOISE_LEVELS, (size, size, 3))
        pictures.append(Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)))
    return pictures


def calibration_pixels(
    config, images: Sequence[Image.Image] | None = None, count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
) -> torch.Tensor:
    """`(N, 3, S, S)` fp32 pixel values for calibrating the tower of `config`: `images` (PIL, any size; your own
    normal images) or `count` synthetic pictures, through the reference preprocessing at the model's size."""
    size = config.vision_config.image_size
    pictures = list(images) if images is not None else synthetic_pictures(count, size, seed)
    if not pictures:
        raise InvalidInputError("calibration images: got none; pass at least one image or leave them to the default")
    processor = reference_image_processor(size)
    return processor([picture.convert("RGB") for picture in pictures], return_tensors="pt")["pixel_values"].float()


def calibration_digest(pixels: torch.Tensor) -> str:
    """A short SHA-256 of calibration pixels (part of a quantised tower's cache key)."""
    array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]

"""Detection overlays: the image, its anomaly heat map and the contour of the decision region, side by side.

Pure numpy + PIL (no matplotlib). The heat map shows the per-pixel anomaly probability on a fixed 0..1 scale,
so colours mean the same thing in every picture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage


__all__ = ["COLORMAP_STOPS", "apply_colormap", "contour_overlay", "detection_figure", "heatmap_overlay"]

# A perceptually ordered blue -> cyan -> yellow -> red ramp (jet-like, darker ends), as (position, RGB).
COLORMAP_STOPS = (
    (0.00, (0, 0, 128)),
    (0.15, (0, 0, 255)),
    (0.38, (0, 255, 255)),
    (0.62, (255, 255, 0)),
    (0.85, (255, 0, 0)),
    (1.00, (128, 0, 0)),
)
CONTOUR_COLOR = (255, 32, 32)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)


def apply_colormap(values: np.ndarray) -> np.ndarray:
    """`(H, W)` values in [0, 1] (clipped) -> `(H, W, 3)` uint8 colours."""
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    positions = np.array([p for p, _ in COLORMAP_STOPS], dtype=np.float32)
    colours = np.array([c for _, c in COLORMAP_STOPS], dtype=np.float32)
    channels = [np.interp(values, positions, colours[:, k]) for k in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def heatmap_overlay(image: Image.Image, probability: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend the colour-mapped `probability` (same size as `image`) over the image."""
    if probability.shape != (image.height, image.width):
        raise ValueError(f"map is {probability.shape} but the image is {(image.height, image.width)}")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = apply_colormap(probability).astype(np.float32)
    return Image.fromarray(((1.0 - alpha) * base + alpha * heat).round().astype(np.uint8))


def contour_overlay(
    image: Image.Image, region: np.ndarray, color: tuple[int, int, int] = CONTOUR_COLOR, thickness: int | None = None
) -> Image.Image:
    """Draw the outline of the boolean `region` on the image (thickness ~0.6% of the longer side by default)."""
    if region.shape != (image.height, image.width):
        raise ValueError(f"region is {region.shape} but the image is {(image.height, image.width)}")
    thickness = thickness or max(1, round(0.006 * max(image.size)))
    region = np.asarray(region, dtype=bool)
    inner = ndimage.binary_erosion(region, iterations=thickness, border_value=0)
    edge = region & ~inner
    out = np.asarray(image.convert("RGB")).copy()
    out[edge] = color
    return Image.fromarray(out)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _colorbar(width: int, height: int) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    return Image.fromarray(apply_colormap(ramp))


def detection_figure(
    image: Image.Image,
    probability: np.ndarray,
    region: np.ndarray,
    title: str,
    max_side: int = 512,
    min_side: int = 256,
    alpha: float = 0.5,
    heat_range: tuple[float, float] = (0.0, 1.0),
    heat_label: str = "anomaly probability",
) -> Image.Image:
    """`[image | heat map | decision contour]` under a title line, with a colour bar under the heat map.

    The heat map spans `heat_range` of `probability` (blue .. red). Panels are scaled so that the longer side lies
    in `[min_side, max_side]` (small images are enlarged).
    """
    low, high = heat_range
    scaled = (probability - low) / (high - low) if high > low else np.zeros_like(probability)
    longer = max(image.size)
    scale = min(max_side / longer, max(1.0, min_side / longer))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    panels = [
        ("image", image.convert("RGB")),
        (heat_label, heatmap_overlay(image, scaled, alpha)),
        ("decision region", contour_overlay(image, region)),
    ]
    panels = [(label, panel.resize(size, Image.BILINEAR) if scale != 1.0 else panel) for label, panel in panels]
    font_size = max(11, min(18, size[0] // 16))
    font, small = _font(font_size), _font(max(10, font_size - 3))
    gap, head = max(6, font_size // 2), font_size + 14
    bar_height = max(6, font_size // 2)
    width = 3 * size[0] + 4 * gap
    height = head + size[1] + 2 * gap + 2 * font_size + bar_height
    figure = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((gap, 6), title, fill=TEXT_COLOR, font=font)
    below = head + size[1] + 4
    for column, (label, panel) in enumerate(panels):
        left = gap + column * (size[0] + gap)
        figure.paste(panel, (left, head))
        draw.text((left, below), label, fill=TEXT_COLOR, font=small)
    left = 2 * gap + size[0]
    bar_top = below + font_size + 2
    figure.paste(_colorbar(size[0], bar_height), (left, bar_top))
    low_text, high_text = f"{low:.3g}", f"{high:.3g}"
    draw.text((left, bar_top + bar_height + 1), low_text, fill=TEXT_COLOR, font=small)
    right = left + size[0] - int(draw.textlength(high_text, font=small))
    draw.text((right, bar_top + bar_height + 1), high_text, fill=TEXT_COLOR, font=small)
    return figure

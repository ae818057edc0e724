"""Detection overlays: the image, its anomaly heat map and the outlined decision region, side by side.

Pure numpy + PIL (no matplotlib). The heat map is the pipeline's `anomaly_probability`, which every surface shows on
one scale: 0..1 with 0.5 at the class's decision threshold (`AAClipProcessor`'s `normalize_at_threshold`), so overlays
of different images compare directly: red marks what decides.

The decision panel marks the anomalous side unambiguously: the region is shaded and its outline is drawn on the
region's own pixels along its boundary, the image border included. A region that covers most of the image thus
reads as a shaded frame-to-frame area with the normal part left clear, never as a ring around the normal part.
A legend under the panel says what the outline means and at which threshold.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..errors import InvalidInputError


__all__ = [
    "COLORMAP_STOPS",
    "apply_colormap",
    "contour_overlay",
    "detection_figure",
    "heatmap_overlay",
    "region_edge",
    "region_legend",
]

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
# Opacity of the contour colour over the anomalous region's inside (0 = outline only).
REGION_SHADE = 0.3
# Outline thickness as a fraction of the image's longer side.
CONTOUR_FRACTION = 0.006
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
        raise InvalidInputError(f"map is {probability.shape} but the image is {(image.height, image.width)}")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = apply_colormap(probability).astype(np.float32)
    return Image.fromarray(((1.0 - alpha) * base + alpha * heat).round().astype(np.uint8))


def region_edge(region: np.ndarray, thickness: int) -> np.ndarray:
    """The band of `region`'s own pixels within `thickness` of a non-region pixel or of the image border.

    Pixels outside the image count as outside the region, so a region reaching the border is closed there: its
    outline surrounds the anomalous area, and the normal part stays clear of it."""
    region = np.asarray(region, dtype=bool)
    return region & ~ndimage.binary_erosion(region, iterations=thickness, border_value=0)


def contour_overlay(
    image: Image.Image,
    region: np.ndarray,
    color: tuple[int, int, int] = CONTOUR_COLOR,
    thickness: int | None = None,
    shade: float = REGION_SHADE,
) -> Image.Image:
    """Shade the boolean `region` with `color` at opacity `shade` and outline it (`region_edge`) in `color`.

    Thickness defaults to `CONTOUR_FRACTION` of the longer side. Pixels outside the region are left as they are."""
    if region.shape != (image.height, image.width):
        raise InvalidInputError(f"region is {region.shape} but the image is {(image.height, image.width)}")
    if not 0.0 <= shade <= 1.0:
        raise InvalidInputError(f"shade must be in [0, 1], got {shade}")
    thickness = thickness or max(1, round(CONTOUR_FRACTION * max(image.size)))
    region = np.asarray(region, dtype=bool)
    out = np.asarray(image.convert("RGB")).astype(np.float32)
    out[region] = (1.0 - shade) * out[region] + shade * np.asarray(color, dtype=np.float32)
    out = out.round().astype(np.uint8)
    out[region_edge(region, thickness)] = color
    return Image.fromarray(out)


def region_legend(pixel_threshold: float | None, area: float | None = None, fixed: bool = False) -> str:
    """The decision panel's legend line: what the outline marks, at which level of the anomaly probability.

    By default the region is the decision region (the pixels that alone make the image anomalous); `fixed=True` says
    it is a fixed probability level chosen by the caller (`--pixel-threshold`)."""
    if pixel_threshold is None:
        return "no decision region: this image score does not use the map"
    if fixed:
        text = f"outline = anomaly probability >= {pixel_threshold:.3g} (fixed level)"
    else:
        text = f"outline = pixels that alone reach the threshold (probability {pixel_threshold:.3g})"
    return text if area is None else f"{text}, {100 * area:.1f}% of the image"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _colorbar(width: int, height: int) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    return Image.fromarray(apply_colormap(ramp))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of `text` to lines no wider than `width` pixels (a too-long word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def detection_figure(
    image: Image.Image,
    probability: np.ndarray,
    region: np.ndarray,
    title: str,
    max_side: int = 512,
    min_side: int = 256,
    alpha: float = 0.5,
    legend: str | None = None,
) -> Image.Image:
    """`[image | heat map | decision region]` under a title line, a colour bar under the heat map and a legend
    (a swatch of the outline colour and `legend`, by default `region_legend` without a threshold) under the region.

    The heat map colours `probability` on the one 0..1 scale (0.5 = decision; blue .. red). Panels are scaled so that
    the longer side lies in `[min_side, max_side]` (small images are enlarged); the region is outlined at the panel's
    size, so the outline stays crisp.
    """
    if probability.shape != (image.height, image.width):
        raise InvalidInputError(f"map is {probability.shape} but the image is {(image.height, image.width)}")
    if region.shape != (image.height, image.width):
        raise InvalidInputError(f"region is {region.shape} but the image is {(image.height, image.width)}")
    region = np.asarray(region, dtype=bool)
    if legend is None:
        legend = f"outline = anomalous region ({100 * region.mean():.1f}% of the image)"
    longer = max(image.size)
    scale = min(max_side / longer, max(1.0, min_side / longer))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    rgb = image.convert("RGB")
    resized = rgb.resize(size, Image.BILINEAR) if size != rgb.size else rgb
    region_mask = Image.fromarray(region.astype(np.uint8) * 255)
    panel_region = np.asarray(region_mask.resize(size, Image.NEAREST) if size != rgb.size else region_mask) > 0
    heat = heatmap_overlay(image, probability, alpha)
    panels = [
        ("image", resized),
        ("anomaly heat (0.5 = threshold)", heat.resize(size, Image.BILINEAR) if size != rgb.size else heat),
        ("decision region", contour_overlay(resized, panel_region)),
    ]
    font_size = max(11, min(18, size[0] // 16))
    font, small = _font(font_size), _font(max(10, font_size - 3))
    gap, head = max(6, font_size // 2), font_size + 14
    bar_height = max(6, font_size // 2)
    swatch = bar_height
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_lines = _wrap(measure, legend, small, size[0] - swatch - 4)
    legend_height = len(legend_lines) * (font_size + 1)
    width = 3 * size[0] + 4 * gap
    height = head + size[1] + 2 * gap + font_size + max(font_size + bar_height, legend_height)
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
    for position, text in ((0.0, "0"), (0.5, "threshold"), (1.0, "1")):
        offset = int(position * size[0] - position * draw.textlength(text, font=small))
        draw.text((left + offset, bar_top + bar_height + 1), text, fill=TEXT_COLOR, font=small)
    left = 3 * gap + 2 * size[0]
    draw.rectangle((left, bar_top + 2, left + swatch - 1, bar_top + 1 + swatch), outline=CONTOUR_COLOR, width=2)
    for line_index, line in enumerate(legend_lines):
        draw.text((left + swatch + 4, bar_top + line_index * (font_size + 1)), line, fill=TEXT_COLOR, font=small)
    return figure

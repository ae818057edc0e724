"""One picture per class of an evaluation (PIL and numpy only): where its normal and anomalous image scores lie.

Left, the histogram of the normal and the anomalous images' scores (shared bins) with the decision threshold as a
vertical line; right, the ROC curve of the same scores with the operating point at that threshold (false-reject
rate, 1 - escape rate). An image is flagged anomalous when `score >= threshold`
(`aaclip_hf.evaluation.operating_points`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


__all__ = ["picture_name", "roc_points", "score_picture"]

WIDTH, HEIGHT = 960, 400
NORMAL_COLOUR = (46, 125, 210)
ANOMALOUS_COLOUR = (215, 60, 45)
INK = (30, 30, 30)
GREY = (170, 170, 170)
HISTOGRAM_BINS = 20


def picture_name(class_name: str, taken: set[str]) -> str:
    """A file name for `class_name`'s picture: letters, digits, `.`, `_`, `-` only, unique within `taken`."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", class_name).strip("._") or "class"
    name, number = f"{stem}.png", 2
    while name.lower() in {t.lower() for t in taken}:  # case-insensitive file systems
        name, number = f"{stem}-{number}.png", number + 1
    taken.add(name)
    return name


def roc_points(normal: Sequence[float], anomalous: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """`(false-positive rates, true-positive rates)` from `(0, 0)` to `(1, 1)`, one point per distinct score
    (flagging `score >= t` for each distinct `t`, highest first; tied scores move together)."""
    normal, anomalous = np.asarray(normal, dtype=np.float64), np.asarray(anomalous, dtype=np.float64)
    if normal.size == 0 or anomalous.size == 0:
        raise ValueError("a ROC curve needs normal and anomalous scores")
    thresholds = np.unique(np.concatenate([normal, anomalous]))[::-1]
    normal_sorted, anomalous_sorted = np.sort(normal), np.sort(anomalous)
    flagged_normal = normal.size - np.searchsorted(normal_sorted, thresholds, side="left")
    flagged_anomalous = anomalous.size - np.searchsorted(anomalous_sorted, thresholds, side="left")
    fpr = np.concatenate([[0.0], flagged_normal / normal.size])
    tpr = np.concatenate([[0.0], flagged_anomalous / anomalous.size])
    return fpr, tpr


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _label(value: float) -> str:
    return f"{value:.3g}"


def _histogram(draw: ImageDraw.ImageDraw, box, normal, anomalous, threshold, threshold_note: str) -> None:
    left, top, right, bottom = box
    scores = np.concatenate([normal, anomalous])
    low, high = float(scores.min()), float(scores.max())
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    counts = [np.histogram(values, bins=edges)[0] for values in (normal, anomalous)]
    tallest = max(1, max(int(c.max()) if c.size else 0 for c in counts))

    def x_of(value: float) -> float:
        return left + (value - low) / (high - low) * (right - left)

    bin_width = (right - left) / HISTOGRAM_BINS
    for offset, (count, colour) in enumerate(zip(counts, (NORMAL_COLOUR, ANOMALOUS_COLOUR))):
        for i, n in enumerate(count):
            if n:  # the two kinds side by side within a bin, so neither hides the other
                x0 = left + i * bin_width + offset * bin_width / 2
                y0 = bottom - n / tallest * (bottom - top - 20)
                draw.rectangle([x0 + 1, y0, x0 + bin_width / 2 - 1, bottom], fill=colour)
    draw.line([left, bottom, right, bottom], fill=INK, width=1)
    draw.line([left, top, left, bottom], fill=INK, width=1)
    small = _font(12)
    draw.text((left, bottom + 4), _label(low), fill=INK, font=small)
    draw.text((right, bottom + 4), _label(high), fill=INK, font=small, anchor="ra")
    draw.text(((left + right) / 2, bottom + 4), "image score", fill=INK, font=small, anchor="ma")
    draw.text((left - 4, top + 20), str(tallest), fill=INK, font=small, anchor="rm")
    draw.text((left - 4, (top + bottom) / 2), "images", fill=INK, font=small, anchor="rm")
    draw.text((left, top - 22), f"normal ({len(normal)})", fill=NORMAL_COLOUR, font=small)
    draw.text((left + 120, top - 22), f"anomalous ({len(anomalous)})", fill=ANOMALOUS_COLOUR, font=small)
    if threshold is not None:
        x = x_of(threshold)
        for y in range(int(top), int(bottom), 8):  # dashed
            draw.line([x, y, x, min(y + 4, bottom)], fill=INK, width=2)
        draw.text((x + 4, top + 2), f"threshold {_label(threshold)} {threshold_note}", fill=INK, font=small)


def _roc(draw: ImageDraw.ImageDraw, box, normal, anomalous, operating_point: dict | None) -> None:
    left, top, right, bottom = box
    small = _font(12)

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * (right - left), bottom - tpr * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline=INK, width=1)
    draw.line([xy(0, 0), xy(1, 1)], fill=GREY, width=1)
    draw.text(((left + right) / 2, bottom + 4), "false-positive rate", fill=INK, font=small, anchor="ma")
    draw.text((left - 4, (top + bottom) / 2), "TPR", fill=INK, font=small, anchor="rm")
    draw.text((left, bottom + 4), "0", fill=INK, font=small)
    draw.text((right, bottom + 4), "1", fill=INK, font=small, anchor="ra")
    draw.text((left - 4, top), "1", fill=INK, font=small, anchor="ra")
    draw.text((left, top - 22), "ROC", fill=INK, font=small)
    if len(normal) == 0 or len(anomalous) == 0:
        draw.text(
            ((left + right) / 2, (top + bottom) / 2), "no ROC: one label only", fill=INK, font=small, anchor="mm"
        )
        return
    fpr, tpr = roc_points(normal, anomalous)
    draw.line([xy(f, t) for f, t in zip(fpr, tpr)], fill=ANOMALOUS_COLOUR, width=2)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    draw.text((right - 6, bottom - 18), f"AUROC {area:.3f}", fill=INK, font=small, anchor="ra")
    if operating_point is not None:
        x, y = xy(operating_point["false_reject_rate"], 1.0 - operating_point["escape_rate"])
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=INK, width=2)


def score_picture(
    title: str,
    normal_scores: Sequence[float],
    anomalous_scores: Sequence[float],
    threshold: float | None = None,
    calibrated: bool = False,
    operating_point: dict | None = None,
) -> Image.Image:
    """The class's picture (module docstring). `operating_point` (`rates_at` at `threshold`) marks the ROC curve."""
    normal = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    anomalous = np.asarray(anomalous_scores, dtype=np.float64).reshape(-1)
    picture = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((20, 12), title, fill=INK, font=_font(16))
    if threshold is None:
        subtitle = "no decision threshold for this class (calibrate one: aaclip calibrate)"
    else:
        subtitle = f"threshold {_label(threshold)} ({'calibrated' if calibrated else 'fallback, not calibrated'})"
        if operating_point is not None:
            rates = [
                f"{what} {operating_point[key]:.1%}"
                for what, key in (("false rejects", "false_reject_rate"), ("escapes", "escape_rate"))
                if operating_point[key] is not None
            ]
            subtitle += ": " + ", ".join(rates)
    draw.text((20, 34), subtitle, fill=INK, font=_font(12))
    if normal.size + anomalous.size:
        note = "(calibrated)" if calibrated else "(fallback)"
        _histogram(draw, (60, 90, 560, HEIGHT - 40), normal, anomalous, threshold, note)
    _roc(draw, (660, 90, 920, HEIGHT - 50), normal, anomalous, operating_point)
    return picture

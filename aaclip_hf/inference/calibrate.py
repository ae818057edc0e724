"""Decision-threshold calibration (`aaclip calibrate`): a threshold on image scores from a few images.

Calibration rules (`calibrate_threshold`):

- normal images only (`method="normal"`): `threshold = quantile_q(normal scores) + margin` (defaults q = 1.0,
  i.e. the largest normal score, and margin 0.01), so every calibration normal is accepted with a margin.
- normal and anomalous images (`method="f1"`, the default when both are given): the F1-optimal threshold on
  the calibration scores (`score >= t` is anomalous), moved down to the midpoint between it and the next lower
  score: the same decisions on the calibration images, with room on both sides.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import CONFIG_NAME

from ..evaluation.metrics import binary_metrics
from ..modeling.configuration_aaclip import AAClipConfig
from ..runtime.outputs import atomic_write_text


__all__ = ["CALIBRATION_METHODS", "DEFAULT_MARGIN", "DEFAULT_QUANTILE", "calibrate_threshold", "save_threshold"]

CALIBRATION_METHODS = ("auto", "normal", "f1")
DEFAULT_QUANTILE = 1.0
DEFAULT_MARGIN = 0.01


def calibrate_threshold(
    normal_scores: Sequence[float],
    anomalous_scores: Sequence[float] | None = None,
    method: str = "auto",
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
) -> tuple[float, dict[str, Any]]:
    """A decision threshold on image scores (rules in the module docstring). Returns `(threshold, details)`."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    normal = np.asarray(normal_scores, dtype=np.float64)
    anomalous = np.asarray(anomalous_scores if anomalous_scores is not None else [], dtype=np.float64)
    if normal.size == 0:
        raise ValueError("calibration needs at least one normal image")
    if method == "auto":
        method = "f1" if anomalous.size else "normal"
    details: dict[str, Any] = {"method": method, "num_normal": int(normal.size), "num_anomalous": int(anomalous.size)}
    if method == "normal":
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        base = float(np.quantile(normal, quantile))
        threshold = base + margin
        details.update(quantile=quantile, margin=margin, normal_quantile_score=base)
    else:
        if anomalous.size == 0:
            raise ValueError("method 'f1' needs anomalous images too (--anomalous)")
        scores = np.concatenate([normal, anomalous])
        labels = np.concatenate([np.zeros(normal.size, int), np.ones(anomalous.size, int)])
        best = binary_metrics(scores, labels)
        t_f1 = float(best["f1_threshold"])
        below = scores[scores < t_f1]
        threshold = 0.5 * (t_f1 + float(below.max())) if below.size else t_f1
        details.update(f1_max=best["f1_max"], f1_threshold=t_f1, auroc=best["auroc"])
    clipped = float(min(1.0, max(0.0, threshold)))
    if clipped != threshold:
        details["clipped_from"] = threshold
    predictions_normal = normal >= clipped
    details.update(
        threshold=clipped,
        normal_accepted=int((~predictions_normal).sum()),
        anomalous_detected=int((anomalous >= clipped).sum()),
    )
    return clipped, details


def save_threshold(model_dir: str | os.PathLike, threshold: float, details: dict | None = None) -> Path:
    """Write `decision_threshold` into the folder's `config.json` (weights untouched) and `calibration.json`.

    Each file is replaced atomically (written beside it, then renamed), so a crash leaves the old or the new
    file, never half of one.
    """
    folder = Path(model_dir)
    config = AAClipConfig.from_pretrained(folder)
    config.decision_threshold = float(threshold)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".calibrate-") as staging:
        config.save_pretrained(staging)
        os.replace(Path(staging) / CONFIG_NAME, folder / CONFIG_NAME)
    if details is not None:
        atomic_write_text(folder / "calibration.json", json.dumps(details, indent=2) + "\n")
    return folder / CONFIG_NAME

"""Operating points: the error rates an inspector lives with at a threshold, and thresholds chosen for a target rate.

An image is flagged anomalous when its score is at or above the threshold (`score >= t`). At a threshold:

- the **false-reject rate** is the share of normal images flagged (`score >= t`): good parts sent to rework;
- the **escape rate** is the share of anomalous images passed (`score < t`): defects that reach the customer.

Thresholds for a target rate are placed between two observed scores (the midpoint of the last score that must be on
one side and the next distinct score), so the calibration images keep the same decisions with room on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError


__all__ = ["rates_at", "threshold_for_escape_rate", "threshold_for_false_reject_rate"]


def _scores(values: Sequence[float] | None, what: str) -> np.ndarray:
    array = np.asarray(values if values is not None else [], dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{what} scores hold NaN/inf; every score must be finite")
    return array


def rates_at(
    threshold: float, normal_scores: Sequence[float], anomalous_scores: Sequence[float] | None = None
) -> dict:
    """The operating point at `threshold`: counts and rates of false rejects (normal flagged) and escapes (anomalous
    passed); a rate is `None` when there is no image of its kind."""
    normal, anomalous = _scores(normal_scores, "normal"), _scores(anomalous_scores, "anomalous")
    false_rejects, escapes = int((normal >= threshold).sum()), int((anomalous < threshold).sum())
    return {
        "threshold": float(threshold),
        "false_reject_rate": false_rejects / normal.size if normal.size else None,
        "false_rejects": false_rejects,
        "num_normal": int(normal.size),
        "escape_rate": escapes / anomalous.size if anomalous.size else None,
        "escapes": escapes,
        "num_anomalous": int(anomalous.size),
    }


def _check_rate(name: str, rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0 or math.isnan(rate):
        raise InvalidInputError(f"{name} must be a rate in [0, 1), got {rate!r}")


def threshold_for_false_reject_rate(
    normal_scores: Sequence[float], max_rate: float, margin: float
) -> tuple[float, dict[str, Any]]:
    """The lowest threshold (the most sensitive) at which at most `max_rate` of the normal images are flagged.

    With `k = floor(max_rate * n)` allowed rejects, the threshold lies between the `(k+1)`-th largest normal score and
    the next larger distinct score; with `k = 0` it is the largest normal score plus `margin`.
    """
    _check_rate("max false-reject rate", max_rate)
    normal = np.sort(_scores(normal_scores, "normal"))[::-1]
    if normal.size == 0:
        raise InvalidInputError("a false-reject target needs at least one normal image")
    allowed = math.floor(max_rate * normal.size + 1e-9)
    kept = normal[min(allowed, normal.size - 1)]  # the largest score that must stay below the threshold
    above = normal[normal > kept]
    threshold = 0.5 * (kept + float(above.min())) if allowed and above.size else float(normal[0]) + margin
    return threshold, {"allowed_false_rejects": allowed, "target_false_reject_rate": max_rate}


def threshold_for_escape_rate(
    anomalous_scores: Sequence[float], max_rate: float, margin: float
) -> tuple[float, dict[str, Any]]:
    """The highest threshold (the fewest false rejects) at which at most `max_rate` of the anomalous images pass.

    With `j = floor(max_rate * m)` allowed escapes, the threshold lies between the `(j+1)`-th smallest anomalous score
    and the next smaller distinct score; with `j = 0` it is the smallest anomalous score minus `margin`.
    """
    _check_rate("max escape rate", max_rate)
    anomalous = np.sort(_scores(anomalous_scores, "anomalous"))
    if anomalous.size == 0:
        raise InvalidInputError("an escape-rate target needs anomalous images (--anomalous)")
    allowed = math.floor(max_rate * anomalous.size + 1e-9)
    caught = anomalous[min(allowed, anomalous.size - 1)]  # the smallest score that must stay flagged
    below = anomalous[anomalous < caught]
    threshold = 0.5 * (caught + float(below.max())) if allowed and below.size else float(anomalous[0]) - margin
    return threshold, {"allowed_escapes": allowed, "target_escape_rate": max_rate}

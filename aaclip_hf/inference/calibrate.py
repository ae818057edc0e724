"""Per-class decision thresholds (`aaclip calibrate`): a threshold on image scores from a few images of one class.

Rules (`calibrate_threshold`; operating points in `aaclip_hf.evaluation.operating_points`):

- `"normal"` (normal images only): `quantile_q(normal scores) + margin` (defaults q = 1.0, the largest normal score,
  and margin 0.01): every calibration normal is accepted with a margin.
- `"false-reject"`: the most sensitive threshold at which at most `max_false_reject` of the normal images are flagged.
- `"f1"` (normal and anomalous images): the F1-optimal threshold (`score >= t` is anomalous), moved down to the
  midpoint between it and the next lower score: the same decisions on the calibration images, with room on both sides.
- `"escape"` (with anomalous images): the least sensitive threshold at which at most `max_escape` of the anomalous
  images pass.
- `"auto"`: `"f1"` when anomalous images are given, else `"normal"`; a target rate chooses its own rule.

`save_threshold` stores the result for its class in `config.json` (`decision_thresholds`), next to the other classes'
thresholds, with the fingerprint of the scoring it was calibrated on (`threshold_fingerprints`), and says what it
replaced; `calibration.json` keeps the details per class.
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

from ..errors import InvalidInputError
from ..evaluation.anomaly_metrics.exact_metrics import binary_metrics
from ..evaluation.operating_points import rates_at, threshold_for_escape_rate, threshold_for_false_reject_rate
from ..runtime.loading import load_config
from ..runtime.model_folder import update_manifest
from ..runtime.outputs import atomic_write_text


__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_METHODS",
    "DEFAULT_MARGIN",
    "DEFAULT_QUANTILE",
    "calibrate_threshold",
    "check_calibration_settings",
    "save_threshold",
]

CALIBRATION_METHODS = ("auto", "normal", "false-reject", "f1", "escape")
DEFAULT_QUANTILE = 1.0
# Added to the largest normal score (or taken from the smallest anomalous one) where no second score bounds the
# threshold: room for the normal spread the calibration images did not show.
DEFAULT_MARGIN = 0.01
CALIBRATION_FILE = "calibration.json"


def calibrate_threshold(
    normal_scores: Sequence[float],
    anomalous_scores: Sequence[float] | None = None,
    method: str = "auto",
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    max_false_reject: float | None = None,
    max_escape: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """A decision threshold on image scores (rules in the module docstring). Returns `(threshold, details)`; the
    details hold the method, its settings and the operating point on the calibration images."""
    normal = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    anomalous = np.asarray(anomalous_scores if anomalous_scores is not None else [], dtype=np.float64).reshape(-1)
    if normal.size == 0:
        raise InvalidInputError("calibration needs at least one normal image")
    method = check_calibration_settings(method, quantile, margin, max_false_reject, max_escape, anomalous.size > 0)
    details: dict[str, Any] = {"method": method}
    if method == "normal":
        base = float(np.quantile(normal, quantile))
        threshold = base + margin
        details.update(quantile=quantile, margin=margin, normal_quantile_score=base)
    elif method == "false-reject":
        threshold, extra = threshold_for_false_reject_rate(normal, max_false_reject, margin)
        details.update(extra)
    elif method == "escape":
        threshold, extra = threshold_for_escape_rate(anomalous, max_escape, margin)
        details.update(extra)
    else:
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
    details["operating_point"] = rates_at(clipped, normal, anomalous)
    return clipped, details


def _check_number(name: str, value, low: float, high: float, high_open: bool) -> None:
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not inside or (high_open and value == high):
        raise InvalidInputError(f"{name} must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {value!r}")


def check_calibration_settings(
    method: str = "auto",
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    max_false_reject: float | None = None,
    max_escape: float | None = None,
    with_anomalous: bool = False,
) -> str:
    """The rule these settings choose (`"auto"` resolved), or an error naming the setting: checked before any image
    is scored. A target rate sets its rule (`--max-false-reject`: false-reject, `--max-escape`: escape); naming
    another method with it, or both targets, is refused."""
    if method not in CALIBRATION_METHODS:
        raise InvalidInputError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    _check_number("quantile", quantile, 0.0, 1.0, high_open=False)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
        raise InvalidInputError(
            f"margin must be in [0, 1), got {margin!r}: a negative margin would flag calibration normals; to accept "
            "a share of false rejects, set a target with --max-false-reject"
        )
    targets = {"false-reject": max_false_reject, "escape": max_escape}
    given = [rule for rule, rate in targets.items() if rate is not None]
    if len(given) > 1:
        raise InvalidInputError("give one target: --max-false-reject or --max-escape")
    for rule in given:
        _check_number(f"--max-{rule} rate", targets[rule], 0.0, 1.0, high_open=True)
        if method not in ("auto", rule):
            raise InvalidInputError(f"--max-{rule} sets the {rule} rule; it cannot be combined with --method {method}")
        method = rule
    if method in targets and targets[method] is None:
        raise InvalidInputError(f"the {method} rule needs a target rate (--max-{method})")
    if method == "auto":
        method = "f1" if with_anomalous else "normal"
    if method in ("f1", "escape") and not with_anomalous:
        raise InvalidInputError(f"the {method} rule needs anomalous images too (--anomalous)")
    return method


def save_threshold(
    model_dir: str | os.PathLike,
    class_name: str,
    threshold: float,
    details: dict | None = None,
    fingerprint: str | None = None,
) -> float | None:
    """Store `threshold` as `class_name`'s decision threshold in the folder's `config.json` (weights untouched) and
    its details in `calibration.json`; returns the threshold it replaced (`None` when the class had none).

    `fingerprint`: the scoring the scores came from (`AAClipAnomalyDetectionPipeline.scoring_fingerprint`); the model
    then uses the threshold only for that scoring (the same weights, anchors, references and domain).

    Each file is replaced atomically (written beside it, then renamed), so a crash leaves the old or the new file.
    """
    folder = Path(model_dir)
    config = load_config(folder)
    previous = config.set_decision_threshold(class_name, float(threshold), fingerprint)
    config.validate()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".calibrate-") as staging:
        config.save_pretrained(staging)
        os.replace(Path(staging) / CONFIG_NAME, folder / CONFIG_NAME)
    update_manifest(folder, [CONFIG_NAME])
    if details is not None:
        path = folder / CALIBRATION_FILE
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(recorded, dict) or "method" in recorded:  # one class per file before: start over
            recorded = {}
        recorded[class_name] = details
        atomic_write_text(path, json.dumps(recorded, indent=2) + "\n")
    return previous

"""`anomaly_metrics`: the AA-CLIP package's anomaly metrics as a Hugging Face `evaluate` module.

Image AUROC / AP / F1-max and pixel AUROC / AP / F1-max / AUPRO, per class and as the unweighted class
mean, under the `reference` (the AA-CLIP reference test script) or `per-image` image-score protocol.

Self-contained: this file and its sibling `exact_metrics.py` (numpy and scipy only) are the whole
module, so the folder loads with `evaluate.load(<folder>)` offline and runs as a Hub metric where
`aaclip_hf` is not installed. In the package the folder is `aaclip_hf.evaluation.anomaly_metrics.METRIC_DIR`;
`write_metric_module(dir)` there copies exactly the files a Hub metric needs.

Inputs, one entry per image (`add_batch` streams them, `compute` takes the rest):

- `predictions`: anomaly maps, each `(H, W)`; sizes may differ between images. Stored as float32.
- `references`: ground-truth masks of the same sizes, binarised with `!= 0` (the reference's rule);
  `None` for an image without a mask (a normal image then counts with an empty mask, an anomalous one
  is left out of the pixel metrics). Optional.
- `image_scores`: optional raw image scores (`AAClipOutput.raw_anomaly_score` for the reference protocol,
  `image_score` for per-image). Without them the image score is the map maximum (normalised per class
  under the reference protocol).
- `image_labels`: optional 0/1 labels; without them an image's label is whether its mask has a
  positive pixel.
- `class_names`: optional; metrics are computed per class and averaged. Without them all images form
  one class, `"all"`.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import evaluate
import numpy as np

from .exact_metrics import (
    AUPRO_VARIANTS,
    DEFAULT_CFLOW_THRESHOLDS,
    DEFAULT_CONNECTIVITY,
    DEFAULT_FPR_LIMIT,
    DEFAULT_MAP_WEIGHT,
    PROTOCOLS,
    PixelMetricAccumulator,
    _as_image_list,
    _to_numpy,
    class_mean,
    class_row,
    domain_for_class,
    reference_image_scores,
)


DOMAINS = ("auto", "industrial", "medical")
# Column values that stand for "not given" (Arrow rows need a value of the column's type).
NO_SCORE = math.nan
NO_LABEL = -1
NO_CLASS = ""
ALL_CLASS = "all"

_CITATION = """\
@InProceedings{Ma_2025_CVPR,
    author    = {Ma, Wenxin and Zhang, Xu and Yao, Qingsong and Tang, Fenghe and Wu, Chenxu and Li, Yingtai and
                 Yan, Rui and Jiang, Zihang and Zhou, S. Kevin},
    title     = {AA-CLIP: Enhancing Zero-Shot Anomaly Detection via Anomaly-Aware CLIP},
    booktitle = {Proceedings of the Computer Vision and Pattern Recognition Conference (CVPR)},
    month     = {June},
    year      = {2025}
}
"""

_DESCRIPTION = """\
Exact (unbinned) anomaly detection and segmentation metrics: image-level AUROC, AP and F1-max, pixel-level
AUROC, AP, F1-max and AUPRO (MVTec AD definition by default, or the cflow/APRIL-GAN variant), computed per
class and averaged over classes like the AA-CLIP paper's tables. Values are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: anomaly maps, one (H, W) array per image (sizes may differ).
    references: ground-truth masks of the same shapes (binarised with != 0), None where an image has none.
    image_scores: optional raw image scores, one per image.
    image_labels: optional 0/1 image labels (default: whether the mask has an anomalous pixel).
    class_names: optional class name per image (default: one class, "all").
    protocol: "reference" (default; per-class min-max image score, single-label classes count 0 in the
        image means) or "per-image" (scores used as given, single-label classes left out of the means).
    domain: "auto" (default; medical for the reference's medical classes), "industrial" or "medical".
    map_weight: weight of the normalised map maximum in the industrial reference score (0.5).
    aupro_variant: "mvtec" (default) or "cflow"; fpr_limit (0.3), num_thresholds (200, cflow only),
        connectivity (2 = 8-neighbour regions).
Returns:
    pixel_auroc, pixel_aupro, pixel_ap, pixel_f1_max, image_auroc, image_ap, image_f1_max: class means;
    per_class: the full row of every class (counts, thresholds, notes); notes: what the means left out.
Examples:
    >>> metric = aaclip_hf.load_metric()
    >>> metric.compute(predictions=maps, references=masks)["pixel_auroc"]
"""


def _maps(predictions: Any) -> list[np.ndarray]:
    return [np.asarray(m, dtype=np.float32) for m in _as_image_list(_to_numpy(predictions), "predictions")]


def _masks(references: Any, n: int) -> list[np.ndarray]:
    """Masks as uint8 0/1, an empty (0, 0) array for "no mask"."""
    if references is None:
        return [np.zeros((0, 0), dtype=np.uint8)] * n
    references = _to_numpy(references)
    if isinstance(references, np.ndarray):
        references = list(_as_image_list(references, "references"))
    if len(references) != n:
        raise ValueError(f"references: {len(references)} masks for {n} predictions; expected one per map")
    out = []
    for i, mask in enumerate(references):
        if mask is None:
            out.append(np.zeros((0, 0), dtype=np.uint8))
            continue
        arr = np.asarray(_to_numpy(mask))
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise ValueError(f"references[{i}]: expected a 2-D mask or None, got shape {tuple(arr.shape)}")
        out.append((arr != 0).astype(np.uint8))
    return out


def _column(values: Any, n: int, name: str, missing: Any, convert) -> list:
    if values is None:
        return [missing] * n
    values = _to_numpy(values)
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} predictions; expected one per map")
    return [missing if v is None else convert(v, i) for i, v in enumerate(values)]


def _label(value: Any, i: int) -> int:
    if value not in (0, 1):
        raise ValueError(f"image_labels[{i}]: expected 0 or 1, got {value!r}")
    return int(value)


def _class_name(value: Any, i: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"class_names[{i}]: expected a non-empty string, got {value!r}")
    return value


def _score(value: Any, i: int) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"image_scores[{i}]: expected a finite score, got {value!r}")
    return value


def _columns(predictions, references, image_scores, image_labels, class_names) -> dict[str, list]:
    """The user's inputs as the module's five stored columns (missing optional inputs as sentinels)."""
    if predictions is None:
        raise ValueError("predictions: expected anomaly maps, one (H, W) array per image, got None")
    maps = _maps(predictions)
    n = len(maps)
    masks = _masks(references, n)
    for i, (m, g) in enumerate(zip(maps, masks)):
        if g.size and g.shape != m.shape:
            raise ValueError(f"references[{i}] has shape {g.shape} but predictions[{i}] has shape {m.shape}")
    return {
        "predictions": maps,
        "references": masks,
        "image_scores": _column(image_scores, n, "image_scores", NO_SCORE, _score),
        "image_labels": _column(image_labels, n, "image_labels", NO_LABEL, _label),
        "class_names": _column(class_names, n, "class_names", NO_CLASS, _class_name),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AnomalyMetrics(evaluate.Metric):
    """Image and pixel anomaly metrics per class and their class mean (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # Nested sequences: maps of any (H, W); evaluate's Array2D needs a fixed width.
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
                    "image_scores": datasets.Value("float64"),
                    "image_labels": datasets.Value("int8"),
                    "class_names": datasets.Value("string"),
                }
            ),
        )

    def add_batch(
        self, *, predictions=None, references=None, image_scores=None, image_labels=None, class_names=None
    ) -> None:
        """Add a batch of images; only `predictions` is required (the module docstring lists the rest)."""
        super().add_batch(**_columns(predictions, references, image_scores, image_labels, class_names))

    def add(self, *, prediction=None, reference=None, image_score=None, image_label=None, class_name=None) -> None:
        """Add one image."""
        self.add_batch(
            predictions=[prediction],
            references=[reference],
            image_scores=[image_score],
            image_labels=[image_label],
            class_names=[class_name],
        )

    def compute(
        self,
        *,
        predictions=None,
        references=None,
        image_scores=None,
        image_labels=None,
        class_names=None,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """Metrics over everything added (plus these inputs, if given); keyword options as in `_compute`."""
        if predictions is not None:
            self.add_batch(
                predictions=predictions,
                references=references,
                image_scores=image_scores,
                image_labels=image_labels,
                class_names=class_names,
            )
        elif any(v is not None for v in (references, image_scores, image_labels, class_names)):
            raise ValueError("predictions: the other inputs were given without the anomaly maps they belong to")
        if self.writer is None:
            raise ValueError("anomaly_metrics: no images; pass predictions= to compute() or add_batch() first")
        return super().compute(**kwargs)

    def _compute(
        self,
        predictions,
        references,
        image_scores,
        image_labels,
        class_names,
        protocol: str = "reference",
        domain: str = "auto",
        map_weight: float = DEFAULT_MAP_WEIGHT,
        aupro_variant: str = "mvtec",
        fpr_limit: float = DEFAULT_FPR_LIMIT,
        num_thresholds: int = DEFAULT_CFLOW_THRESHOLDS,
        connectivity: int = DEFAULT_CONNECTIVITY,
    ) -> dict[str, Any]:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
        if domain not in DOMAINS:
            raise ValueError(f"domain: expected one of {DOMAINS}, got {domain!r}")
        if aupro_variant not in AUPRO_VARIANTS:
            raise ValueError(f"aupro_variant: expected one of {AUPRO_VARIANTS}, got {aupro_variant!r}")
        by_class: dict[str, list[int]] = {}
        for i, name in enumerate(class_names):
            by_class.setdefault(name or ALL_CLASS, []).append(i)
        rows: dict[str, dict[str, Any]] = {}
        notes: list[str] = []
        for name, indices in by_class.items():
            class_domain = domain_for_class(name) if domain == "auto" else domain
            rows[name], class_notes = _class_metrics(
                name,
                [np.asarray(predictions[i], dtype=np.float32) for i in indices],
                [references[i] for i in indices],
                [image_scores[i] for i in indices],
                [image_labels[i] for i in indices],
                protocol,
                class_domain,
                map_weight,
                {
                    "aupro_variant": aupro_variant,
                    "fpr_limit": fpr_limit,
                    "num_thresholds": num_thresholds,
                    "connectivity": connectivity,
                },
            )
            notes.extend(class_notes)
        mean, mean_notes = class_mean(rows, protocol)
        return {**mean, "per_class": rows, "notes": notes + mean_notes}


def _class_metrics(name, maps, masks, scores, labels, protocol, domain, map_weight, pixel_kwargs):
    """One class's row (`class_row`) from the stored columns, and notes on the defaults it used."""
    notes = []
    masks = [np.asarray(g, dtype=np.uint8) if len(g) else None for g in masks]
    for k, (label, mask) in enumerate(zip(labels, masks)):
        if label == NO_LABEL:
            if mask is None:
                raise ValueError(f"class {name!r}, image {k}: no image label and no mask; give either")
            labels[k] = int(mask.any())
    given = [not math.isnan(s) for s in scores]
    if any(given) and not all(given):
        raise ValueError(f"image_scores: class {name!r} has scores for {sum(given)} of {len(given)} images")
    map_max = np.asarray([float(m.max()) for m in maps])
    map_min = np.asarray([float(m.min()) for m in maps])
    if all(given):
        raw = np.asarray(scores, dtype=np.float64)
    else:
        raw = map_max
        notes.append(f"class {name!r}: no image_scores, the image score is the anomaly map maximum")
    if protocol == "reference":
        # Without raw scores the reference score reduces to the normalised map maximum (its medical rule).
        score_domain = domain if all(given) else "medical"
        image_scores = reference_image_scores(map_max, map_min, raw, score_domain, map_weight)
    else:
        image_scores = raw
    pixels = PixelMetricAccumulator()
    masked_anomalies = without_mask = 0
    for m, g, label in zip(maps, masks, labels):
        if g is None and label == 1:
            without_mask += 1
            continue
        pixels.update([m], [g if g is not None else np.zeros(m.shape, dtype=np.uint8)])
        masked_anomalies += int(label == 1)
    row = class_row(
        labels,
        image_scores,
        pixels,
        masked_anomalies=masked_anomalies,
        without_mask=without_mask,
        domain=domain,
        **pixel_kwargs,
    )
    return row, notes

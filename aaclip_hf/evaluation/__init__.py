"""Evaluation: exact anomaly metrics (`metrics`) and the evaluation protocols and results (`protocols`)."""

from .metrics import (
    AUPRO_VARIANTS,
    PixelMetricAccumulator,
    aupro,
    auroc,
    average_precision,
    binary_metrics,
    f1_max,
    image_metrics,
    pixel_metrics,
)
from .protocols import (
    MEDICAL_CLASSES,
    PROTOCOLS,
    RESOLUTIONS,
    EvaluationResult,
    domain_for_class,
    evaluate,
    reference_image_scores,
)


__all__ = [
    "AUPRO_VARIANTS",
    "EvaluationResult",
    "MEDICAL_CLASSES",
    "PROTOCOLS",
    "PixelMetricAccumulator",
    "RESOLUTIONS",
    "aupro",
    "auroc",
    "average_precision",
    "binary_metrics",
    "domain_for_class",
    "evaluate",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
    "reference_image_scores",
]

"""Exact anomaly-detection metrics (AUROC, AP, F1-max, AUPRO): the package's import path.

The implementation is `anomaly_metrics/exact_metrics.py`, a numpy/scipy-only file that also ships inside
the `evaluate` module folder (and so to the Hub), so the package and the `evaluate` metric run one code.
"""

from .anomaly_metrics.exact_metrics import (
    AUPRO_VARIANTS,
    DEFAULT_CFLOW_THRESHOLDS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONNECTIVITY,
    DEFAULT_FPR_LIMIT,
    PixelMetricAccumulator,
    aupro,
    auroc,
    average_precision,
    binary_metrics,
    f1_max,
    image_metrics,
    pixel_metrics,
)


__all__ = [
    "AUPRO_VARIANTS",
    "DEFAULT_CFLOW_THRESHOLDS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONNECTIVITY",
    "DEFAULT_FPR_LIMIT",
    "PixelMetricAccumulator",
    "aupro",
    "auroc",
    "average_precision",
    "binary_metrics",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
]

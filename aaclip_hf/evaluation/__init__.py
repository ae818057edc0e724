"""Evaluation: exact anomaly metrics (`anomaly_metrics/exact_metrics.py`, also the `evaluate` module's code), the
evaluation protocols and their results (`protocols`), few-shot references (`few_shot`), operating points
(`operating_points`) and the per-class score pictures (`score_pictures`). Names load on first use."""

from .._lazy import lazy_exports


_METRICS = ".anomaly_metrics.exact_metrics"

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "AUPRO_VARIANTS": _METRICS,
        "DEFAULT_FPR_LIMIT": _METRICS,
        "PixelMetricAccumulator": _METRICS,
        "aupro": _METRICS,
        "auroc": _METRICS,
        "average_precision": _METRICS,
        "binary_metrics": _METRICS,
        "f1_max": _METRICS,
        "image_metrics": _METRICS,
        "pixel_metrics": _METRICS,
        "EvaluationResult": ".protocols",
        "PROTOCOLS": ".protocols",
        "RESOLUTIONS": ".protocols",
        "domain_for_class": ".protocols",
        "evaluate": ".protocols",
        "reference_image_scores": ".protocols",
        "rates_at": ".operating_points",
        "FewShotReferences": ".few_shot",
        "build_references": ".few_shot",
        "select_references": ".few_shot",
        "score_picture": ".score_pictures",
    },
)

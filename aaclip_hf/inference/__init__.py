"""Inference on your own images: detection with overlays (`detect`, `visualize`) and per-class thresholds
(`calibrate`). Names load on first use."""

from .._lazy import lazy_exports


__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "CALIBRATION_METHODS": ".calibrate",
        "calibrate_threshold": ".calibrate",
        "save_threshold": ".calibrate",
        "collect_images": ".detect",
        "detect": ".detect",
        "make_pipeline": ".detect",
        "score_images": ".detect",
        "detection_figure": ".visualize",
    },
)

"""Inference on your own images: detection with overlays (`detect`, `visualize`) and thresholds (`calibrate`)."""

from .calibrate import CALIBRATION_METHODS, DEFAULT_MARGIN, DEFAULT_QUANTILE, calibrate_threshold, save_threshold
from .detect import anomaly_probability, collect_images, decision_pixel_threshold, detect, make_pipeline, score_images
from .visualize import COLORMAP_STOPS, apply_colormap, contour_overlay, detection_figure, heatmap_overlay


__all__ = [
    "CALIBRATION_METHODS",
    "COLORMAP_STOPS",
    "DEFAULT_MARGIN",
    "DEFAULT_QUANTILE",
    "anomaly_probability",
    "apply_colormap",
    "calibrate_threshold",
    "collect_images",
    "contour_overlay",
    "decision_pixel_threshold",
    "detect",
    "detection_figure",
    "heatmap_overlay",
    "make_pipeline",
    "save_threshold",
    "score_images",
]

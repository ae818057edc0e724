"""`--calibration-images`: your own normal images calibrate the static int8 tower of `--quantize int8`.

Static int8 fixes each activation's range from a few calibration images (`aaclip_hf/runtime/calibration.py`).
Without them `--quantize int8` quantises dynamically (ONNX Runtime); with images of your own good parts `auto` runs
OpenVINO's static int8 calibrated on them, the fastest int8 path, whose ranges then fit your data (the
`openvino_int8_normals` row of `aaclip bench`, docs/performance.md; `--backend openvino` without them calibrates on
deterministic built-in pictures). The quantised tower is cached
under a key that includes their pixels, so the same images reuse it.
"""

from __future__ import annotations

import argparse


__all__ = ["MAX_CALIBRATION_IMAGES", "backend_options"]

# Each calibration image costs about two forward passes at quantisation time (statistics for SmoothQuant and for
# the ranges); beyond a few dozen the ranges no longer move.
MAX_CALIBRATION_IMAGES = 32


def backend_options(args: argparse.Namespace) -> dict:
    """`apply_backend` keyword arguments from the flags: `calibration=` (decoded images) with --calibration-images."""
    from ..errors import BadInputError

    paths = getattr(args, "calibration_images", None)
    if not paths:
        return {}
    if getattr(args, "quantize", "none") != "int8":
        raise BadInputError(
            "calibrates --quantize int8; add --quantize int8 or leave it out", field="--calibration-images"
        )
    from ..data.image_io import load_image
    from ..inference.detect import collect_images

    images = collect_images(paths)
    if len(images) > MAX_CALIBRATION_IMAGES:
        raise BadInputError(
            f"{len(images)} images; give at most {MAX_CALIBRATION_IMAGES} (a few normal images suffice)",
            field="--calibration-images",
        )
    return {"calibration": [load_image(image.path, field="--calibration-images") for image in images]}

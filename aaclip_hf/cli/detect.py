"""`aaclip detect` and `aaclip calibrate`: score your images, set a decision threshold."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from ..inference.calibrate import (
    CALIBRATION_METHODS,
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    calibrate_threshold,
    save_threshold,
)
from ..inference.detect import collect_images, detect, make_pipeline, score_images
from ..modeling.configuration_aaclip import GENERIC_CLASS
from ..runtime.backends import add_backend_arguments, apply_backend
from ..runtime.batching import add_batch_size_argument
from ..runtime.loading import is_aaclip_folder, load_model_and_processor
from ..runtime.outputs import atomic_output_dir, output_lock, safe_text


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="AA-CLIP folder or Hub id")
    parser.add_argument("--class-name", default=None, help="object class for the prompts (default: generic 'object')")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold on the image score (default: the model's calibrated one, else 0.5)",
    )
    parser.add_argument(
        "--pixel-threshold",
        type=float,
        default=None,
        help="anomaly-probability level of the drawn region (default: the pixels that alone make the "
        "image anomalous, see docs/usage.md)",
    )
    parser.add_argument(
        "--heatmap-scale",
        choices=("image", "fixed"),
        default="image",
        help="heat map colours over each image's own probability range (default) or fixed 0..1",
    )
    parser.add_argument("--domain", default=None, help="industrial or medical (default: the model's)")
    add_batch_size_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--save-maps", action="store_true", help="also save each anomaly map as .npy")
    parser.add_argument("--max-side", type=int, default=512, help="longest side of each overlay panel in pixels")
    parser.add_argument(
        "--output",
        required=True,
        help="folder for overlays/, detections.json and detections.csv: written whole when the run ends, an "
        "earlier run's output replaced; refused while another run writes it (lock file OUTPUT.lock) or when it "
        "holds other files",
    )
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="log and skip unreadable images (listed in skipped.json) instead of stopping",
    )
    parser.add_argument("--no-progress", action="store_true")


def run_detect(args: argparse.Namespace) -> int:
    # One run at a time per --output (aaclip_hf.runtime.outputs): refused before the model loads, held throughout.
    with output_lock(args.output, "aaclip detect"):
        return _detect(args)


def _detect(args: argparse.Namespace) -> int:

    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    model, _ = apply_backend(model, args.backend, args.quantize)
    records = detect(
        model,
        processor,
        args.images,
        args.output,
        class_name=args.class_name,
        threshold=args.threshold,
        pixel_threshold=args.pixel_threshold,
        domain=args.domain,
        batch_size=args.batch_size,
        save_maps=args.save_maps,
        max_side=args.max_side,
        heatmap_scale=args.heatmap_scale,
        progress=not args.no_progress,
        skip_bad_files=args.skip_bad_files,
        lock=False,
    )
    flagged = sum(r["is_anomaly"] for r in records)
    shown = [safe_text(Path(r["image"]).name) for r in records]  # a non-UTF-8 name prints with \xNN escapes
    width = max(len(name) for name in shown)
    for name, r in zip(shown, records):
        print(f"{name:<{width}}  score {r['score']:.4f}  {r['label']}")
    print(f"\n{flagged} of {len(records)} image(s) anomalous at threshold {records[0]['threshold']:.4f}")
    out = safe_text(args.output)
    print(f"overlays in {Path(out) / 'overlays'}; scores in {Path(out) / 'detections.csv'}")
    skipped = Path(args.output) / "skipped.json"
    if skipped.is_file():
        print(
            f"{len(json.loads(skipped.read_text()))} unreadable image(s) skipped, listed in {Path(out) / skipped.name}"
        )
    return 0


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AA-CLIP folder (updated in place unless --output is given)")
    parser.add_argument("--normal", required=True, nargs="+", help="normal image files/folders")
    parser.add_argument("--anomalous", nargs="+", default=None, help="anomalous image files/folders (optional)")
    parser.add_argument("--class-name", default=None, help="object class for the prompts (default: 'object')")
    parser.add_argument(
        "--method",
        choices=CALIBRATION_METHODS,
        default="auto",
        help="auto: f1 when anomalous images are given, else normal",
    )
    parser.add_argument(
        "--quantile",
        type=float,
        default=DEFAULT_QUANTILE,
        help="normal method: quantile of the normal scores (default 1.0 = max)",
    )
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="normal method: added to the quantile")
    parser.add_argument("--domain", default=None)
    add_batch_size_argument(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--output",
        default=None,
        help="write a calibrated copy of the model here instead (a new folder, or an earlier calibrated copy, "
        "which is replaced; written whole when the run ends)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run_calibrate(args: argparse.Namespace) -> int:

    if args.output is None and not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model} is not a local folder; pass --output to save a calibrated copy")
    # One run at a time on the folder that is written (aaclip_hf.runtime.outputs), held for the whole run.
    with output_lock(args.model if args.output is None else args.output, "aaclip calibrate"):
        return _calibrate(args)


def _earlier_calibration(folder: Path) -> bool:
    """A calibrated copy written by an earlier `aaclip calibrate --output` may be replaced."""
    return (folder / "calibration.json").is_file() and is_aaclip_folder(folder)


def _calibrate(args: argparse.Namespace) -> int:
    model, processor = load_model_and_processor(args.model, args.device)
    pipe = make_pipeline(model, processor)

    def scores(paths, what):
        files = collect_images(paths)
        return [
            float(r["score"])
            for _, _, r in score_images(
                pipe, files, args.class_name, args.domain, args.batch_size, not args.no_progress, f"scoring {what}"
            )
        ]

    normal = scores(args.normal, "normal")
    anomalous = scores(args.anomalous, "anomalous") if args.anomalous else None
    threshold, details = calibrate_threshold(normal, anomalous, args.method, args.quantile, args.margin)
    details.update(class_name=args.class_name or GENERIC_CLASS, normal_scores=normal, anomalous_scores=anomalous or [])
    target = args.model
    if args.output is None:
        save_threshold(target, threshold, details)  # each file replaced atomically
    else:
        target = args.output
        with atomic_output_dir(
            args.output, "aaclip calibrate", replaceable=_earlier_calibration, lock=False
        ) as staging:  # the copy appears whole, or not at all
            if os.path.isdir(args.model):
                shutil.copytree(args.model, staging, dirs_exist_ok=True)
            else:
                model.save_pretrained(staging)
                processor.save_pretrained(staging)
            save_threshold(staging, threshold, details)
    print(f"decision threshold {threshold:.4f} ({details['method']} rule) saved in {Path(target) / 'config.json'}")
    print(
        f"on the calibration images: {len(normal) - details['normal_accepted']} of {len(normal)} normal flagged"
        + (f", {details['anomalous_detected']} of {len(anomalous)} anomalous detected" if anomalous else "")
    )
    return 0

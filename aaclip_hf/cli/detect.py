"""`aaclip detect` and `aaclip calibrate`: score your images, set one class's decision threshold."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from pathlib import Path

from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers,
        "detect",
        "Score your images: overlays (image | heat map | decision region), JSON and CSV.",
        run_detect,
        add_detect_arguments,
    )
    add_command(
        subparsers,
        "calibrate",
        "Set one class's decision threshold from a few of its images, at a known error rate.",
        run_calibrate,
        add_calibrate_arguments,
    )


def _add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """What `detect` and `calibrate` share: the class, references, domain, batching, device and image bound."""
    from ..data.image_io import DEFAULT_MAX_SIDE
    from ..runtime.batching import add_batch_size_argument

    parser.add_argument(
        "--class-name",
        default=None,
        help="object class: its prompts, stored references and threshold (default: the generic 'object')",
    )
    parser.add_argument(
        "--no-references",
        dest="use_references",
        action="store_false",
        help="score zero-shot even where the class has stored normal references (to compare)",
    )
    parser.add_argument("--domain", default=None, help="industrial or medical (default: the model's)")
    add_batch_size_argument(parser)
    parser.add_argument("--device", default="auto", help="torch device (auto: the best available)")
    parser.add_argument(
        "--max-image-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help="images larger than this are decoded reduced (JPEG) and resized at once, bounding memory",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    from ..runtime.backends import add_backend_arguments
    from ..runtime.devices import add_dtype_argument

    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="AA-CLIP folder or Hub id")
    _add_scoring_arguments(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold on the image score (default: the class's calibrated one, else the model's "
        "fallback, else 0.5)",
    )
    parser.add_argument(
        "--pixel-threshold",
        type=float,
        default=None,
        help="anomaly-probability level of the drawn region (default: the pixels that alone make the image "
        "anomalous, the heat map's 0.5 contour)",
    )
    add_backend_arguments(parser)
    add_dtype_argument(parser, default="float32")
    parser.add_argument("--save-maps", action="store_true", help="also save each anomaly map as .npy")
    parser.add_argument("--max-side", type=int, default=512, help="longest side of each overlay panel in pixels")
    parser.add_argument(
        "--output",
        required=True,
        help="folder for overlays/, detections.json and detections.csv: written whole when the run ends, an "
        "earlier run's output replaced; refused while another run writes it (lock file OUTPUT.lock), when it "
        "holds other files, or when it is an input or the model",
    )
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="log and skip unreadable images (listed in skipped.json) instead of stopping",
    )


@contextlib.contextmanager
def _progress_bars(shown: bool):
    """`--no-progress` also silences transformers' weight-loading bar for the command."""
    from transformers.utils import logging as hf_logging

    was_shown = hf_logging.is_progress_bar_enabled()
    if not shown:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_shown and not shown:
            hf_logging.enable_progress_bar()


def _check_class_name(args: argparse.Namespace) -> None:
    """`--class-name` must be a name: refused before the model loads."""
    from ..modeling.configuration_aaclip import check_class_name

    if args.class_name is not None:
        check_class_name(args.class_name)


def run_detect(args: argparse.Namespace) -> int:
    from ..runtime.outputs import check_output_apart, output_lock

    _check_class_name(args)
    check_output_apart(args.output, inputs=args.images, model=args.model, what="--output")
    # One run at a time per --output: refused before the model loads, held throughout.
    with output_lock(args.output, "aaclip detect"), _progress_bars(not args.no_progress):
        return _detect(args)


def _detect(args: argparse.Namespace) -> int:
    from ..inference.detect import detect
    from ..runtime.backends import apply_backend
    from ..runtime.loading import load_model_and_processor
    from ..runtime.outputs import safe_text
    from .backend_options import backend_options

    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    model, _ = apply_backend(model, args.backend, args.quantize, **backend_options(args))
    records = detect(
        model, processor, args.images, args.output, class_name=args.class_name, threshold=args.threshold,
        pixel_threshold=args.pixel_threshold, domain=args.domain, use_references=args.use_references,
        batch_size=args.batch_size, save_maps=args.save_maps, max_side=args.max_side,
        max_image_side=args.max_image_side, progress=not args.no_progress, skip_bad_files=args.skip_bad_files,
        lock=False,
    )  # fmt: skip
    _print_detections(records)
    out = Path(safe_text(args.output))
    print(f"overlays in {out / 'overlays'}; scores in {out / 'detections.csv'}")
    skipped = Path(args.output) / "skipped.json"
    if skipped.is_file():
        print(f"{len(json.loads(skipped.read_text()))} unreadable image(s) skipped, listed in {out / skipped.name}")
    return 0


def _print_detections(records: list[dict]) -> None:
    """One line per image (its name relative to the input given), then per class its threshold, where that came
    from (calibrated for the class or not) and how many normal references scored it."""
    from ..inference.detect import THRESHOLD_SOURCES
    from ..runtime.outputs import safe_text

    shown = [safe_text(r["image"]) for r in records]  # non-UTF-8 bytes as \xNN escapes
    width = max(len(name) for name in shown)
    for name, r in zip(shown, records):
        print(f"{name:<{width}}  score {r['score']:.4f}  {r['label']:<7}  threshold {r['threshold']:.4f}")
    print()
    for name in sorted({r["class_name"] for r in records}):
        rows = [r for r in records if r["class_name"] == name]
        flagged, first = sum(r["is_anomaly"] for r in rows), rows[0]
        how = THRESHOLD_SOURCES[first["threshold_source"]]
        how = f"calibrated for {name}" if how == "calibrated" else "given with --threshold" if how == "given" else how
        shots = f"{first['normal_references']}-shot" if first["normal_references"] else "zero-shot"
        print(
            f"{name}: {flagged} of {len(rows)} image(s) anomalous at threshold {first['threshold']:.4f} ({how}; {shots})"
        )


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.readers import DATA_SPEC_HELP
    from ..inference.calibrate import CALIBRATION_METHODS, DEFAULT_MARGIN, DEFAULT_QUANTILE

    parser.add_argument("--model", required=True, help="AA-CLIP folder (updated in place unless --output is given)")
    parser.add_argument("--normal", nargs="+", default=None, help="normal image files/folders of the class")
    parser.add_argument("--anomalous", nargs="+", default=None, help="anomalous image files/folders of the class")
    parser.add_argument(
        "--data",
        default=None,
        help="instead of --normal/--anomalous: a dataset; its images of --class-name (or of its one class) are "
        f"used. {DATA_SPEC_HELP}",
    )
    _add_scoring_arguments(parser)
    parser.add_argument(
        "--method",
        choices=CALIBRATION_METHODS,
        default="auto",
        help="auto: f1 with anomalous images, else normal; false-reject / escape: a target rate (below)",
    )
    parser.add_argument(
        "--max-false-reject",
        type=float,
        default=None,
        help="target rate of normal images flagged: the most sensitive threshold within it (sets --method)",
    )
    parser.add_argument(
        "--max-escape",
        type=float,
        default=None,
        help="target rate of anomalous images passed: the least sensitive threshold within it (sets --method)",
    )
    parser.add_argument(
        "--quantile", type=float, default=DEFAULT_QUANTILE, help="normal method: quantile of the normal scores"
    )
    parser.add_argument(
        "--margin", type=float, default=DEFAULT_MARGIN, help="added above the highest normal score (in [0, 1))"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="write a calibrated copy of the model here instead (a new folder, or an earlier calibrated copy, "
        "which is replaced; written whole when the run ends)",
    )


def run_calibrate(args: argparse.Namespace) -> int:
    from ..errors import InvalidInputError
    from ..runtime.outputs import check_output_apart, output_lock

    if args.output is None and not os.path.isdir(args.model):
        raise InvalidInputError(f"--model {args.model} is not a local folder; pass --output to save a calibrated copy")
    if (args.data is None) == (args.normal is None):
        raise InvalidInputError("give the calibration images as --normal [--anomalous] folders, or as --data SPEC")
    _check_class_name(args)
    _calibration_method(args, with_anomalous=args.anomalous is not None or args.data is not None)
    if args.output is not None:
        inputs = [*(args.normal or []), *(args.anomalous or []), *([args.data.split("::")[0]] if args.data else [])]
        check_output_apart(args.output, inputs=inputs, model=args.model, what="--output")
    # One run at a time on the folder that is written, held for the whole run.
    with (
        output_lock(args.model if args.output is None else args.output, "aaclip calibrate"),
        _progress_bars(not args.no_progress),
    ):
        return _calibrate(args)


def _earlier_calibration(folder: Path) -> bool:
    """A calibrated copy written by an earlier `aaclip calibrate --output` may be replaced."""
    from ..inference.calibrate import CALIBRATION_FILE
    from ..runtime.loading import is_aaclip_folder

    return (folder / CALIBRATION_FILE).is_file() and is_aaclip_folder(folder)


def _calibration_method(args: argparse.Namespace, with_anomalous: bool) -> str:
    """The rule the flags choose, or a one-line error naming the flag (checked before any image is scored)."""
    from ..inference.calibrate import check_calibration_settings

    return check_calibration_settings(
        args.method, args.quantile, args.margin, args.max_false_reject, args.max_escape, with_anomalous
    )


def _calibration_images(args: argparse.Namespace) -> tuple[list, list, str]:
    """`(normal inputs, anomalous inputs, class name)` from the folders or the data spec."""
    from ..data.readers import load_samples
    from ..errors import InvalidInputError
    from ..inference.detect import InputImage, collect_images
    from ..modeling.configuration_aaclip import GENERIC_CLASS

    if args.data is None:
        anomalous = collect_images(args.anomalous) if args.anomalous else []
        return collect_images(args.normal), anomalous, args.class_name or GENERIC_CLASS
    samples = load_samples(args.data)
    classes = sorted({s.class_name for s in samples})
    name = args.class_name or (classes[0] if len(classes) == 1 else None)
    if name not in classes:
        raise InvalidInputError(f"--data holds classes {classes}; choose one with --class-name")
    chosen = [s for s in samples if s.class_name == name]
    normal = [InputImage(Path(s.image_path), Path(s.image_path).name) for s in chosen if s.label == 0]
    anomalous = [InputImage(Path(s.image_path), Path(s.image_path).name) for s in chosen if s.label == 1]
    return normal, anomalous, name


def _calibrate(args: argparse.Namespace) -> int:
    from ..inference.calibrate import calibrate_threshold
    from ..inference.detect import make_pipeline
    from ..runtime.loading import load_model_and_processor

    normal_inputs, anomalous_inputs, class_name = _calibration_images(args)
    method = _calibration_method(args, with_anomalous=bool(anomalous_inputs))
    model, processor = load_model_and_processor(args.model, args.device)
    pipe = make_pipeline(model, processor)
    normal, shots = _scores(args, pipe, normal_inputs, class_name, "normal")
    anomalous, _ = _scores(args, pipe, anomalous_inputs, class_name, "anomalous") if anomalous_inputs else ([], 0)
    threshold, details = calibrate_threshold(
        normal, anomalous, method, args.quantile, args.margin, args.max_false_reject, args.max_escape
    )
    details.update(normal_references=shots, normal_scores=normal, anomalous_scores=anomalous)
    scoring = pipe.scoring_fingerprint(class_name, domain=args.domain, use_references=args.use_references)
    target, previous = _save_calibration(args, model, processor, class_name, (threshold, scoring), details)
    replaced = "new for this class" if previous is None else f"replaces {previous:.4f}"
    print(
        f"{class_name}: decision threshold {threshold:.4f} ({details['method']} rule, {replaced}) in "
        f"{target / 'config.json'}"
    )
    point = details["operating_point"]
    line = f"on the calibration images: {point['false_rejects']} of {point['num_normal']} normal flagged"
    if anomalous:
        line += f", {point['escapes']} of {point['num_anomalous']} anomalous passed"
    print(line + (f" ({shots}-shot: the class's stored normal references)" if shots else " (zero-shot)"))
    return 0


def _scores(args: argparse.Namespace, pipe, images: list, class_name: str, what: str) -> tuple[list[float], int]:
    """Image scores of one group of calibration images, and how many normal references scored them."""
    from ..inference.detect import score_images

    results = score_images(
        pipe, images, class_name, batch_size=args.batch_size, progress=not args.no_progress,
        description=f"scoring {what}", max_image_side=args.max_image_side, domain=args.domain,
        use_references=args.use_references,
    )  # fmt: skip
    found = [result for _, _, result in results]
    return [float(result["score"]) for result in found], max((r["normal_references"] for r in found), default=0)


def _save_calibration(args: argparse.Namespace, model, processor, class_name: str, decision: tuple, details: dict):
    """`(folder written, the class's previous threshold)`: in place (each file replaced atomically), or a calibrated
    copy written whole. `decision`: the threshold and the fingerprint of the scoring it was calibrated on."""
    from ..inference.calibrate import save_threshold
    from ..runtime.model_folder import save_model_folder
    from ..runtime.outputs import atomic_output_dir

    if args.output is None:
        return Path(args.model), save_threshold(args.model, class_name, decision[0], details, decision[1])
    target = Path(args.output)
    with atomic_output_dir(target, "aaclip calibrate", replaceable=_earlier_calibration, lock=False) as staging:
        if os.path.isdir(args.model):
            shutil.copytree(args.model, staging, dirs_exist_ok=True, symlinks=True)
        else:
            save_model_folder(model, processor, staging)
        previous = save_threshold(staging, class_name, decision[0], details, decision[1])
    return target, previous

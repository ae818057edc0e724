"""Anomaly detection on your own images (`aaclip detect`) and decision-threshold calibration (`aaclip calibrate`).

`detect` runs the `zero-shot-anomaly-detection` pipeline on image files (EXIF orientation applied, any size;
the map comes back at each image's own size) and writes, per image, an overlay PNG
`[image | heat map | decision contour]`, plus `detections.json` and `detections.csv` with score and decision.

The decision is `score >= threshold` on the per-image score (in [0, 1]). The threshold is `--threshold`, else
the model's `config.decision_threshold` (set by `aaclip calibrate`), else 0.5.

Pictures use the per-pixel anomaly probability `p = sigmoid(2 * anomaly_map / L - 1)` (L feature levels: the
softmax anomaly probability of the level-averaged patch logits, whose maximum is the map part of the image
score). The heat map shows `p` scaled to the image's own min..max (`heatmap_scale="image"`, the usual
visualisation; the range is printed under the colour bar) or on the fixed 0..1 scale (`"fixed"`). The contour
outlines the **decision region**: the pixels that by themselves make the image anomalous under the image score's
definition, i.e. `p >= t` for the `"map"` score, `w * p + (1 - w) * r >= t` for the `"fused"` score (r the image
branch's raw score, w `config.image_score_map_weight`); the `"raw"` score does not use the map, so no region is
drawn. `pixel_threshold=` replaces this with a fixed level of `p`.

Calibration rules (`calibrate_threshold`):

- normal images only (`method="normal"`): `threshold = quantile_q(normal scores) + margin` (defaults q = 1.0,
  i.e. the largest normal score, and margin 0.01), so every calibration normal is accepted with a margin.
- normal and anomalous images (`method="f1"`, the default when both are given): the F1-optimal threshold on
  the calibration scores (`score >= t` is anomalous), moved down to the midpoint between it and the next lower
  score: the same decisions on the calibration images, with room on both sides.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .image_io import IMAGE_EXTENSIONS, BadInputError, load_image
from .metrics import binary_metrics
from .modeling.pipeline_aaclip import DEFAULT_THRESHOLD, AAClipAnomalyDetectionPipeline
from .visualize import detection_figure


logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_METHODS",
    "anomaly_probability",
    "calibrate_threshold",
    "collect_images",
    "detect",
    "decision_pixel_threshold",
    "make_pipeline",
    "save_threshold",
    "score_images",
]

CALIBRATION_METHODS = ("auto", "normal", "f1")
DEFAULT_QUANTILE = 1.0
DEFAULT_MARGIN = 0.01


def make_pipeline(model, processor, device: str | int | torch.device | None = None) -> AAClipAnomalyDetectionPipeline:
    """The pipeline around an in-memory model (no registry or remote code involved)."""
    device = device if device is not None else next(model.parameters()).device
    return AAClipAnomalyDetectionPipeline(model=model, processor=processor, device=device)


def anomaly_probability(anomaly_map: np.ndarray | torch.Tensor, num_levels: int) -> np.ndarray:
    """Per-pixel anomaly probability `sigmoid(2 * map / L - 1)` of a summed `L`-level map, in [0, 1]."""
    values = torch.as_tensor(np.asarray(anomaly_map), dtype=torch.float64)
    return torch.sigmoid(2.0 * values / num_levels - 1.0).numpy().astype(np.float32)


def decision_pixel_threshold(config, threshold: float, raw_score: float, domain: str | None = None) -> float:
    """The level of `p` above which a pixel alone makes the image score reach `threshold` (module docstring)."""
    mode = config.image_score_mode[domain or config.default_domain]
    if mode == "map":
        return threshold
    if mode == "raw":
        return math.inf
    weight = config.image_score_map_weight
    return (threshold - (1.0 - weight) * raw_score) / weight if weight > 0 else math.inf


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders (folders searched recursively, sorted); a clear error if none."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise BadInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder", str(path), "images")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise BadInputError("no such file or folder", str(path), "images")
    return found


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names: the file stem, extended by as many parent folders as needed to tell inputs apart."""
    parts = [Path(p).resolve().with_suffix("").parts[1:] for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["_".join(part[-k:]) for part, k in zip(parts, depth)]
        clashes = {name for name in names if names.count(name) > 1}
        grow = [i for i, name in enumerate(names) if name in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # the same file given twice
        seen[name] = seen.get(name, -1) + 1
        names[i] = f"{name}_{seen[name]}" if seen[name] else name
    return names


def score_images(
    pipe: AAClipAnomalyDetectionPipeline,
    images: Sequence[str | os.PathLike],
    class_name: str | Sequence[str] | None = None,
    domain: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    description: str = "scoring",
    skipped: list[dict] | None = None,
):
    """Yield `(path, PIL image, pipeline result)` for image files, `batch_size` at a time, with a progress bar.

    `class_name`: one name for all images or one per image. With a `skipped` list, unreadable files are
    logged, recorded there (`{"image", "error"}`) and left out instead of stopping the run.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in images]
    per_image = class_name is not None and not isinstance(class_name, str)
    if per_image and len(class_name) != len(paths):
        raise ValueError(f"got {len(class_name)} class names for {len(paths)} images")
    kwargs = {"domain": domain} if domain else {}
    with tqdm(total=len(paths), desc=description, unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            names = list(class_name[start : start + batch_size]) if per_image else class_name
            readable, pil_images = [], []
            for index, path in enumerate(chunk):
                try:
                    pil_images.append(load_image(path))
                    readable.append(index)
                except BadInputError as error:
                    if skipped is None:
                        raise
                    logger.warning("skipping %s: %s", path, error)
                    skipped.append({"image": str(path), "error": str(error)})
            bar.update(len(chunk) - len(readable))
            if not readable:
                continue
            chunk = [chunk[i] for i in readable]
            if per_image:
                names = [names[i] for i in readable]
            results = pipe(pil_images, batch_size=batch_size, **({"class_name": names} if names else {}), **kwargs)
            for path, image, result in zip(chunk, pil_images, results):
                yield path, image, result
            bar.update(len(chunk))


def detect(
    model,
    processor,
    images: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    class_name: str | Sequence[str] | None = None,
    threshold: float | None = None,
    pixel_threshold: float | None = None,
    domain: str | None = None,
    batch_size: int = 8,
    save_maps: bool = False,
    max_side: int = 512,
    heatmap_scale: str = "image",
    progress: bool = True,
    skip_bad_files: bool = False,
) -> list[dict[str, Any]]:
    """Score image files and write overlays, `detections.json` and `detections.csv` under `output_dir`.

    `class_name` is one name for all images or one per collected image (files in the given order).
    `skip_bad_files`: unreadable images are logged and listed in `skipped.json` instead of stopping the run.

    Returns one record per image: `image`, `class_name`, `score`, `raw_anomaly_score`, `is_anomaly`, `label`,
    `threshold`, `anomalous_area` (fraction of pixels in the decision region), `height`, `width`, `overlay`.
    """
    if threshold is None:
        threshold = (
            model.config.decision_threshold if model.config.decision_threshold is not None else DEFAULT_THRESHOLD
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (image scores are), got {threshold}")
    if heatmap_scale not in ("image", "fixed"):
        raise ValueError(f"heatmap_scale must be 'image' or 'fixed', got {heatmap_scale!r}")
    paths = collect_images(images)
    out = Path(output_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    if save_maps:
        (out / "maps").mkdir(parents=True, exist_ok=True)
    names = dict(zip(paths, _unique_stems(paths)))
    pipe = make_pipeline(model, processor)
    records = []
    (out / "skipped.json").unlink(missing_ok=True)  # never report a previous run's skips
    skipped: list[dict] | None = [] if skip_bad_files else None
    levels = model.config.num_levels
    scored = score_images(pipe, paths, class_name, domain, batch_size, progress, "detecting", skipped)
    for path, image, result in scored:
        is_anomaly = result["score"] >= threshold
        probability = anomaly_probability(result["anomaly_map"], levels)
        level = pixel_threshold
        if level is None:
            level = decision_pixel_threshold(model.config, threshold, result["raw_anomaly_score"], domain)
        region = probability >= level
        if heatmap_scale == "image":
            heat_range, heat_label = (
                (float(probability.min()), float(probability.max())),
                "anomaly probability (image range)",
            )
        else:
            heat_range, heat_label = (0.0, 1.0), "anomaly probability"
        verdict = "ANOMALY" if is_anomaly else "normal"
        title = (
            f"{path.parent.name}/{path.name}  [{result['class_name']}]  score {result['score']:.3f} "
            f"{'>=' if is_anomaly else '<'} {threshold:.3f}: {verdict}"
        )
        overlay = out / "overlays" / f"{names[path]}.png"
        detection_figure(
            image, probability, region, title, max_side=max_side, heat_range=heat_range, heat_label=heat_label
        ).save(overlay)
        record = {
            "image": str(path),
            "class_name": result["class_name"],
            "score": float(result["score"]),
            "raw_anomaly_score": float(result["raw_anomaly_score"]),
            "is_anomaly": bool(is_anomaly),
            "label": "anomaly" if is_anomaly else "normal",
            "threshold": float(threshold),
            "pixel_threshold": float(level) if math.isfinite(level) else None,
            "anomalous_area": float(region.mean()),
            "height": image.height,
            "width": image.width,
            "overlay": str(overlay),
        }
        if save_maps:
            map_path = out / "maps" / f"{names[path]}.npy"
            np.save(map_path, result["anomaly_map"].astype(np.float32))
            record["anomaly_map"] = str(map_path)
        records.append(record)
    if skipped:
        (out / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n", encoding="utf-8")
    if not records:
        raise BadInputError(
            f"none of the {len(paths)} image(s) could be read (see {out / 'skipped.json'})", str(paths[0]), "images"
        )
    (out / "detections.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    with open(out / "detections.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return records


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------


def calibrate_threshold(
    normal_scores: Sequence[float],
    anomalous_scores: Sequence[float] | None = None,
    method: str = "auto",
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
) -> tuple[float, dict[str, Any]]:
    """A decision threshold on image scores (rules in the module docstring). Returns `(threshold, details)`."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    normal = np.asarray(normal_scores, dtype=np.float64)
    anomalous = np.asarray(anomalous_scores if anomalous_scores is not None else [], dtype=np.float64)
    if normal.size == 0:
        raise ValueError("calibration needs at least one normal image")
    if method == "auto":
        method = "f1" if anomalous.size else "normal"
    details: dict[str, Any] = {"method": method, "num_normal": int(normal.size), "num_anomalous": int(anomalous.size)}
    if method == "normal":
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        base = float(np.quantile(normal, quantile))
        threshold = base + margin
        details.update(quantile=quantile, margin=margin, normal_quantile_score=base)
    else:
        if anomalous.size == 0:
            raise ValueError("method 'f1' needs anomalous images too (--anomalous)")
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
    predictions_normal = normal >= clipped
    details.update(
        threshold=clipped,
        normal_accepted=int((~predictions_normal).sum()),
        anomalous_detected=int((anomalous >= clipped).sum()),
    )
    return clipped, details


def save_threshold(model_dir: str | os.PathLike, threshold: float, details: dict | None = None) -> Path:
    """Write `decision_threshold` into the folder's `config.json` (weights untouched) and `calibration.json`."""
    from .modeling import AAClipConfig

    folder = Path(model_dir)
    config = AAClipConfig.from_pretrained(folder)
    config.decision_threshold = float(threshold)
    config.save_pretrained(folder)
    if details is not None:
        (folder / "calibration.json").write_text(json.dumps(details, indent=2) + "\n", encoding="utf-8")
    return folder / "config.json"


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--save-maps", action="store_true", help="also save each anomaly map as .npy")
    parser.add_argument("--max-side", type=int, default=512, help="longest side of each overlay panel in pixels")
    parser.add_argument("--output", required=True, help="folder for overlays/, detections.json and detections.csv")
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="log and skip unreadable images (listed in skipped.json) instead of stopping",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from .evaluation import load_model_and_processor

    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
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
    )
    flagged = sum(r["is_anomaly"] for r in records)
    width = max(len(Path(r["image"]).name) for r in records)
    for r in records:
        print(f"{Path(r['image']).name:<{width}}  score {r['score']:.4f}  {r['label']}")
    print(f"\n{flagged} of {len(records)} image(s) anomalous at threshold {records[0]['threshold']:.4f}")
    print(f"overlays in {Path(args.output) / 'overlays'}; scores in {Path(args.output) / 'detections.csv'}")
    skipped = Path(args.output) / "skipped.json"
    if skipped.is_file():
        print(f"{len(json.loads(skipped.read_text()))} unreadable image(s) skipped, listed in {skipped}")
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
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default=None, help="write a calibrated copy of the model here instead")
    parser.add_argument("--no-progress", action="store_true")


def run_calibrate(args: argparse.Namespace) -> int:
    from .evaluation import load_model_and_processor

    if args.output is None and not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model} is not a local folder; pass --output to save a calibrated copy")
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
    details.update(class_name=args.class_name or "object", normal_scores=normal, anomalous_scores=anomalous or [])
    target = args.model
    if args.output is not None:
        if os.path.isdir(args.model):
            shutil.copytree(args.model, args.output, dirs_exist_ok=True)
        else:
            model.save_pretrained(args.output)
            processor.save_pretrained(args.output)
        target = args.output
    save_threshold(target, threshold, details)
    print(f"decision threshold {threshold:.4f} ({details['method']} rule) saved in {Path(target) / 'config.json'}")
    print(
        f"on the calibration images: {len(normal) - details['normal_accepted']} of {len(normal)} normal flagged"
        + (f", {details['anomalous_detected']} of {len(anomalous)} anomalous detected" if anomalous else "")
    )
    return 0

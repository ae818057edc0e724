"""Anomaly detection on your own images (`aaclip detect`).

`detect` runs the `zero-shot-anomaly-detection` pipeline on image files (EXIF orientation applied, any size;
the map comes back at each image's own size) and writes, per image, an overlay PNG
`[image | heat map | decision region]`, plus `detections.json` and `detections.csv` with score and decision.

The decision is `score >= threshold` on the per-image score (in [0, 1]). The threshold is `--threshold`, else
the model's `config.decision_threshold` (set by `aaclip calibrate`), else 0.5.

Pictures use the per-pixel anomaly probability `p = sigmoid(2 * anomaly_map / L - 1)` (L feature levels: the
softmax anomaly probability of the level-averaged patch logits, whose maximum is the map part of the image
score); `anomaly_probability` and `decision_pixel_threshold` are defined once, in the Hub-portable pipeline
module, and re-exported here. The heat map shows `p` scaled to the image's own min..max
(`heatmap_scale="image"`, the usual visualisation; the range is printed under the colour bar) or on the fixed
0..1 scale (`"fixed"`). The third panel shades and outlines the **decision region**: the pixels that by
themselves make the image anomalous under the image score's definition, i.e. `p >= t` for the `"map"` score,
`w * p + (1 - w) * r >= t` for the `"fused"` score (r the image branch's raw score, w
`config.image_score_map_weight`); the `"raw"` score does not use the map, so no region is drawn.
`pixel_threshold=` replaces this with a fixed level of `p`. A legend names the level and the region's area.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.image_io import IMAGE_EXTENSIONS, BadInputError, load_image
from ..modeling.pipeline_aaclip import (
    DEFAULT_THRESHOLD,
    AAClipAnomalyDetectionPipeline,
    anomaly_probability,
    decision_pixel_threshold,
)
from ..runtime.batching import prefetch, resolve_batch_size
from ..runtime.outputs import atomic_output_dir, holds_only, safe_text
from .visualize import detection_figure, region_legend


logger = logging.getLogger(__name__)

__all__ = [
    "anomaly_probability",
    "collect_images",
    "detect",
    "decision_pixel_threshold",
    "make_pipeline",
    "score_images",
]

# What `detect` writes into its output folder; a folder holding only these (an earlier run's) may be replaced.
DETECT_OUTPUTS = ("overlays", "maps", "detections.json", "detections.csv", "skipped.json")


def make_pipeline(model, processor, device: str | int | torch.device | None = None) -> AAClipAnomalyDetectionPipeline:
    """The pipeline around an in-memory model (no registry or remote code involved)."""
    device = device if device is not None else next(model.parameters()).device
    return AAClipAnomalyDetectionPipeline(model=model, processor=processor, device=device)


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
    batch_size: int | None = None,
    progress: bool = True,
    description: str = "scoring",
    skipped: list[dict] | None = None,
    **pipeline_kwargs: Any,
):
    """Yield `(path, PIL image, pipeline result)` for image files, `batch_size` at a time, with a progress bar.

    `class_name`: one name for all images or one per image. With a `skipped` list, unreadable files are
    logged, recorded there (`{"image", "error"}`) and left out instead of stopping the run.
    `batch_size=None`: chosen from the device and its free memory (`aaclip_hf.runtime.batching`). The next
    batch's files are decoded in a background thread while the current batch runs; results keep input order.
    `pipeline_kwargs` (`threshold`, `pixel_threshold`) go to the pipeline call.
    """

    paths = [Path(p) for p in images]
    per_image = class_name is not None and not isinstance(class_name, str)
    if per_image and len(class_name) != len(paths):
        raise ValueError(f"got {len(class_name)} class names for {len(paths)} images")
    kwargs = {"domain": domain} if domain else {}
    kwargs.update({key: value for key, value in pipeline_kwargs.items() if value is not None})
    batch_size = resolve_batch_size(batch_size, pipe.model, max(len(paths), 1))
    starts = range(0, len(paths), batch_size)

    def decode(start: int) -> list:
        """A batch's images, or the error of each unreadable one (raised, or skipped, in the loop below)."""
        decoded = []
        for path in paths[start : start + batch_size]:
            try:
                decoded.append(load_image(path))
            except BadInputError as error:
                decoded.append(error)
        return decoded

    with tqdm(total=len(paths), desc=description, unit="img", disable=not progress) as bar:
        for start, decoded in zip(starts, prefetch(decode, starts)):
            chunk = paths[start : start + batch_size]
            names = list(class_name[start : start + batch_size]) if per_image else class_name
            readable, pil_images = [], []
            for index, (path, image) in enumerate(zip(chunk, decoded)):
                try:
                    if isinstance(image, BadInputError):
                        raise image
                    pil_images.append(image)
                    readable.append(index)
                except BadInputError as error:
                    if skipped is None:
                        raise
                    logger.warning("skipping %s: %s", safe_text(path), safe_text(str(error)))
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
    batch_size: int | None = None,
    save_maps: bool = False,
    max_side: int = 512,
    heatmap_scale: str = "image",
    progress: bool = True,
    skip_bad_files: bool = False,
    lock: bool = True,
) -> list[dict[str, Any]]:
    """Score image files and write overlays, `detections.json` and `detections.csv` under `output_dir`.

    `class_name` is one name for all images or one per collected image (files in the given order).
    `skip_bad_files`: unreadable images are logged and listed in `skipped.json` instead of stopping the run.
    `output_dir` is written whole or not at all, by one run at a time (`aaclip_hf.runtime.outputs`): a folder
    in use by another run is refused, an earlier run's output is replaced, a folder of other files is refused.
    `lock=False` when the caller already holds the folder's `output_lock` (the CLI takes it before loading).

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
    with atomic_output_dir(out, "aaclip detect", replaceable=holds_only(DETECT_OUTPUTS), lock=lock) as staging:
        records = _detect_into(
            staging,
            out,
            model,
            processor,
            paths,
            class_name=class_name,
            threshold=threshold,
            pixel_threshold=pixel_threshold,
            domain=domain,
            batch_size=batch_size,
            save_maps=save_maps,
            max_side=max_side,
            heatmap_scale=heatmap_scale,
            progress=progress,
            skip_bad_files=skip_bad_files,
        )
    return records


def _detect_into(
    staging: Path,
    out: Path,
    model,
    processor,
    paths: list[Path],
    *,
    class_name,
    threshold: float,
    pixel_threshold: float | None,
    domain: str | None,
    batch_size: int | None,
    save_maps: bool,
    max_side: int,
    heatmap_scale: str,
    progress: bool,
    skip_bad_files: bool,
) -> list[dict[str, Any]]:
    """`detect`'s work: files go into `staging` (the temporary folder), records name their place under `out`.

    Score, decision, probability map and decision region are the pipeline's own (one definition of each)."""
    (staging / "overlays").mkdir()
    if save_maps:
        (staging / "maps").mkdir()
    names = dict(zip(paths, _unique_stems(paths)))
    pipe = make_pipeline(model, processor)
    records = []
    skipped: list[dict] | None = [] if skip_bad_files else None
    scored = score_images(
        pipe, paths, class_name, domain, batch_size, progress, "detecting", skipped,
        threshold=threshold, pixel_threshold=pixel_threshold,
    )  # fmt: skip
    for path, image, result in scored:
        overlay = Path("overlays") / f"{names[path]}.png"
        _overlay(path, image, result, max_side, heatmap_scale).save(staging / overlay)
        record = _record(path, image, result, out / overlay)
        if save_maps:
            map_path = Path("maps") / f"{names[path]}.npy"
            np.save(staging / map_path, result["anomaly_map"].astype(np.float32))
            record["anomaly_map"] = str(out / map_path)
        records.append(record)
    if not records:
        first = skipped[0] if skipped else {"image": str(paths[0]), "error": "unreadable"}
        raise BadInputError(
            f"none of the {len(paths)} image(s) could be read (the first: {safe_text(first['error'])})",
            safe_text(first["image"]),
            "images",
        )
    _write_tables(staging, records, skipped)
    return records


def _overlay(path: Path, image, result: dict[str, Any], max_side: int, heatmap_scale: str):
    """`[image | heat map | decision region]` with the score and decision in the title and a legend."""
    probability = result["anomaly_probability"]
    region = np.asarray(result["mask"]) > 0
    if heatmap_scale == "image":
        heat_range = (float(probability.min()), float(probability.max()))
        heat_label = "anomaly probability (image range)"
    else:
        heat_range, heat_label = (0.0, 1.0), "anomaly probability"
    verdict = "ANOMALY" if result["is_anomaly"] else "normal"
    title = (
        f"{safe_text(path.parent.name)}/{safe_text(path.name)}  [{result['class_name']}]  score {result['score']:.3f} "
        f"{'>=' if result['is_anomaly'] else '<'} {result['threshold']:.3f}: {verdict}"
    )
    legend = region_legend(result["pixel_threshold"], float(region.mean()))
    return detection_figure(
        image, probability, region, title, max_side=max_side, heat_range=heat_range, heat_label=heat_label,
        legend=legend,
    )  # fmt: skip


def _record(path: Path, image, result: dict[str, Any], overlay: Path) -> dict[str, Any]:
    """One row of detections.json / .csv."""
    return {
        "image": str(path),
        "class_name": result["class_name"],
        "score": float(result["score"]),
        "raw_anomaly_score": float(result["raw_anomaly_score"]),
        "is_anomaly": bool(result["is_anomaly"]),
        "label": result["label"],
        "threshold": float(result["threshold"]),
        "pixel_threshold": result["pixel_threshold"],
        "anomalous_area": float((np.asarray(result["mask"]) > 0).mean()),
        "height": image.height,
        "width": image.width,
        "overlay": str(overlay),
    }


def _write_tables(staging: Path, records: list[dict[str, Any]], skipped: list[dict] | None) -> None:
    """detections.json, detections.csv and skipped.json; file names that are not valid UTF-8 are written with
    \\xNN escapes (`safe_text`), while the returned records keep the real paths."""
    if skipped:
        skipped_safe = [{key: safe_text(value) for key, value in entry.items()} for entry in skipped]
        (staging / "skipped.json").write_text(json.dumps(skipped_safe, indent=2) + "\n", encoding="utf-8")
    written = [{key: safe_text(v) if isinstance(v, str) else v for key, v in r.items()} for r in records]
    (staging / "detections.json").write_text(
        json.dumps(written, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    with open(staging / "detections.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(written[0]))
        writer.writeheader()
        writer.writerows(written)

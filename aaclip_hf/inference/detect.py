"""Anomaly detection on your own images (`aaclip detect`).

`detect` runs the `zero-shot-anomaly-detection` pipeline on image files (EXIF orientation applied, decoding bounded by
`max_image_side`; the maps come back at each decoded image's size) and writes, per image, an overlay PNG
`[image | heat map | decision region]`, plus `detections.json` and `detections.csv`.

Decisions are the pipeline's: `score >= threshold`, where the threshold is `--threshold`, else the class's calibrated
one (`config.decision_thresholds`), else the model's fallback, else 0.5; each record says which (`calibrated`). A
class with stored normal references is scored few-shot (`normal_references` > 0) unless `use_references=False`.

Pictures show the pipeline's `anomaly_probability`: the one heat scale of the package, 0..1 with 0.5 at the decision
level of the image's class (`AAClipProcessor`'s `normalize_at_threshold`), so overlays of different images compare
directly. The third panel shades and outlines the decision region: the pixels that by themselves make the image
anomalous (the heat map's 0.5 contour); `pixel_threshold=` replaces it with a fixed probability level.

Inputs are named by their path relative to the folder given (prefixed by that folder's name when several are
given); overlays take unique names derived from it. Files under the output folder are never inputs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.image_io import DEFAULT_MAX_SIDE, IMAGE_EXTENSIONS, load_image
from ..errors import BadInputError, InvalidInputError
from ..modeling.configuration_aaclip import GENERIC_CLASS, check_class_name
from ..modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline
from ..runtime.batching import prefetch, resolve_batch_size
from ..runtime.outputs import atomic_output_dir, holds_only, safe_text
from .visualize import detection_figure, region_legend


logger = logging.getLogger(__name__)

__all__ = [
    "DETECT_OUTPUTS",
    "THRESHOLD_SOURCES",
    "InputImage",
    "collect_images",
    "detect",
    "make_pipeline",
    "overlay_names",
    "score_images",
]

# What `detect` writes into its output folder; a folder holding only these (an earlier run's) may be replaced.
DETECT_OUTPUTS = ("overlays", "maps", "detections.json", "detections.csv", "skipped.json")
# Longest overlay file stem in bytes (file systems allow 255 per name; multi-byte characters count as several);
# longer names keep their start and end with a hash of the whole name.
MAX_OVERLAY_STEM_BYTES = 120
HASH_CHARS = 10


@dataclass(frozen=True)
class InputImage:
    """An image file and its name relative to the input it came from (what tables and overlays show)."""

    path: Path
    name: str


def make_pipeline(model, processor, device: str | int | torch.device | None = None) -> AAClipAnomalyDetectionPipeline:
    """The pipeline around an in-memory model (no registry or remote code involved)."""
    device = device if device is not None else next(model.parameters()).device
    return AAClipAnomalyDetectionPipeline(model=model, processor=processor, device=device)


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == folder or folder in resolved.parents for folder in folders)


def collect_images(paths: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()) -> list[InputImage]:
    """Image files from files and folders (folders searched recursively, sorted), never under `exclude` (the outputs,
    and their temporary siblings); a clear error for a missing path or a folder without images."""
    excluded = [Path(p).resolve() for p in exclude]
    excluded += [sibling for folder in excluded for sibling in folder.parent.glob(f".{folder.name}.tmp-*")]
    several = len(paths) > 1
    found: list[InputImage] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = [
                p
                for p in sorted(path.rglob("*"))
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _inside(p, excluded)
            ]
            if not files:
                raise BadInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder", path, "images")
            prefix = Path(path.resolve().name) if several else Path()
            found += [InputImage(p, (prefix / p.relative_to(path)).as_posix()) for p in files]
        elif path.is_file():
            if _inside(path, excluded):
                raise BadInputError("is inside the output folder; outputs are never inputs", path, "images")
            found.append(InputImage(path, path.name))
        else:
            raise BadInputError("no such file or folder", path, "images")
    return found


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:HASH_CHARS]


def _shorten(stem: str, name: str) -> str:
    """`stem` cut (at a character boundary) to fit `MAX_OVERLAY_STEM_BYTES` with a hash of `name` appended."""
    room = MAX_OVERLAY_STEM_BYTES - HASH_CHARS - 1
    kept = ""
    for character in stem:
        if len(os.fsencode(kept + character)) > room:
            break
        kept += character
    return f"{kept}-{_digest(name.encode('utf-8', 'surrogateescape'))}"


def overlay_names(images: Sequence[InputImage]) -> list[str]:
    """Unique overlay file stems, the same for the same inputs on every run: the relative name without its extension
    and with `/` as `__`; a stem above `MAX_OVERLAY_STEM_BYTES` keeps its start and ends with a hash of the whole name;
    names that would clash (the same stem reached twice, also when they differ only in case, as file systems without
    case take them) are told apart by a hash of the full path."""
    names, seen = [], set()
    for image in images:
        stem = image.name.rsplit(".", 1)[0].replace("/", "__")
        if len(os.fsencode(stem)) > MAX_OVERLAY_STEM_BYTES:
            stem = _shorten(stem, image.name)
        if stem.casefold() in seen:
            stem = _shorten(stem, str(image.path.resolve()))
        while stem.casefold() in seen:  # a file already named like a shortened one
            stem = _shorten(stem, stem)
        seen.add(stem.casefold())
        names.append(stem)
    return names


def score_images(
    pipe: AAClipAnomalyDetectionPipeline,
    images: Sequence[InputImage],
    class_name: str | Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    description: str = "scoring",
    skipped: list[dict] | None = None,
    max_image_side: int | None = DEFAULT_MAX_SIDE,
    **pipeline_kwargs: Any,
) -> Iterator[tuple[InputImage, Any, dict]]:
    """Yield `(input, PIL image, pipeline result)`, `batch_size` at a time, with a progress bar.

    `class_name`: one name for all images or one per image. With a `skipped` list, unreadable files are logged,
    recorded there (`{"image", "error"}`) and left out instead of stopping the run. `batch_size=None`: chosen from the
    device and its free memory. The next batch's files are decoded in a background thread while the current batch
    runs (each image decoded and bounded to `max_image_side` at once); results keep input order. `pipeline_kwargs`
    (`threshold`, `pixel_threshold`, `domain`, `use_references`, `reference_images`) go to the pipeline call.
    """
    per_image = class_name is not None and not isinstance(class_name, str)
    if per_image and len(class_name) != len(images):
        raise InvalidInputError(f"got {len(class_name)} class names for {len(images)} images")
    kwargs = {key: value for key, value in pipeline_kwargs.items() if value is not None}
    batch_size = resolve_batch_size(batch_size, pipe.model, max(len(images), 1))
    starts = range(0, len(images), batch_size)

    def decode(start: int) -> list:
        """A batch's images, or the error of each unreadable one (raised, or skipped, in the loop below)."""
        decoded = []
        for item in images[start : start + batch_size]:
            try:
                decoded.append(load_image(item.path, max_side=max_image_side))
            except BadInputError as error:
                decoded.append(error)
        return decoded

    with tqdm(total=len(images), desc=description, unit="img", disable=not progress) as bar:
        for start, decoded in zip(starts, prefetch(decode, starts)):
            chunk = list(zip(images[start : start + batch_size], decoded))
            names = class_name[start : start + batch_size] if per_image else [class_name] * len(chunk)
            readable = []
            for (item, image), name in zip(chunk, names):
                if isinstance(image, BadInputError):
                    if skipped is None:
                        raise image
                    logger.warning("skipping %s: %s", safe_text(item.name), safe_text(str(image)))
                    skipped.append({"image": item.name, "error": str(image)})
                    continue
                readable.append((item, image, name))
            bar.update(len(chunk) - len(readable))
            if not readable:
                continue
            inputs = [{"image": image, "class_name": name, "name": str(item.path)} for item, image, name in readable]
            results = pipe(inputs, batch_size=batch_size, **kwargs)
            for (item, image, _), result in zip(readable, results):
                yield item, image, result
            bar.update(len(readable))


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
    use_references: bool = True,
    batch_size: int | None = None,
    save_maps: bool = False,
    max_side: int = 512,
    max_image_side: int | None = DEFAULT_MAX_SIDE,
    progress: bool = True,
    skip_bad_files: bool = False,
    lock: bool = True,
) -> list[dict[str, Any]]:
    """Score image files and write overlays, `detections.json` and `detections.csv` under `output_dir`.

    `class_name` is one name for all images or one per collected image (files in the given order).
    `skip_bad_files`: unreadable images are logged and listed in `skipped.json` instead of stopping the run.
    `output_dir` is written whole or not at all, by one run at a time (`aaclip_hf.runtime.outputs`): a folder in use
    by another run is refused, an earlier run's output is replaced, a folder of other files is refused. `lock=False`
    when the caller already holds the folder's `output_lock`.

    Returns one record per image (see `_record`).
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must be in [0, 1] (image scores are), got {threshold}")
    for name in [class_name] if class_name is None or isinstance(class_name, str) else class_name:
        check_class_name(GENERIC_CLASS if name is None else name)  # before anything is read or written
    inputs = collect_images(images, exclude=[output_dir])
    out = Path(output_dir)
    fallback = model.config.decision_threshold
    with atomic_output_dir(out, "aaclip detect", replaceable=holds_only(DETECT_OUTPUTS), lock=lock) as staging:
        (staging / "overlays").mkdir()
        if save_maps:
            (staging / "maps").mkdir()
        names = dict(zip(inputs, overlay_names(inputs)))
        records, skipped = [], [] if skip_bad_files else None
        scored = score_images(
            make_pipeline(model, processor), inputs, class_name, batch_size=batch_size, progress=progress,
            description="detecting", skipped=skipped, max_image_side=max_image_side, threshold=threshold,
            pixel_threshold=pixel_threshold, domain=domain, use_references=use_references,
        )  # fmt: skip
        for item, image, result in scored:
            overlay = Path("overlays") / f"{names[item]}.png"
            source = _threshold_source(result, threshold is not None, fallback)
            _overlay(item, image, result, max_side, source, fixed_region=pixel_threshold is not None).save(
                staging / overlay
            )
            record = _record(item, image, result, overlay, source)
            if save_maps:
                record["anomaly_map"] = (Path("maps") / f"{names[item]}.npy").as_posix()
                np.save(staging / record["anomaly_map"], result["anomaly_map"].astype(np.float32))
            records.append(record)
        if not records:
            first = skipped[0] if skipped else {"image": inputs[0].name, "error": "unreadable"}
            reason = f"none of the {len(inputs)} image(s) could be read (the first: {safe_text(first['error'])})"
            raise BadInputError(reason, safe_text(first["image"]), "images")
        _write_tables(staging, records, skipped)
    return records


# How a record's threshold was chosen (`threshold_source`) and how overlays and `aaclip detect` name it.
THRESHOLD_SOURCES = {
    "given": "given",
    "calibrated": "calibrated",
    "fallback": "the model's fallback, not calibrated for this class",
    "default": "the default, not calibrated for this class",
}


def _threshold_source(result: dict[str, Any], given: bool, fallback: float | None) -> str:
    """`given` (the caller's threshold), `calibrated` (the class's own), `fallback` (the model's
    `decision_threshold`) or `default` (the processor's 0.5)."""
    if given:
        return "given"
    if result["calibrated"]:
        return "calibrated"
    return "default" if fallback is None else "fallback"


def _overlay(item: InputImage, image, result: dict[str, Any], max_side: int, source: str, fixed_region: bool):
    """`[image | heat map | decision region]` with the score, threshold and decision in the title and a legend."""
    region = np.asarray(result["mask"]) > 0
    verdict = "ANOMALY" if result["is_anomaly"] else "normal"
    threshold = f"{result['threshold']:.3f} ({source if source in ('given', 'calibrated') else 'uncalibrated'})"
    shots = f", {result['normal_references']}-shot" if result["normal_references"] else ""
    title = (
        f"{safe_text(item.name)}  [{result['class_name']}{shots}]  score {result['score']:.3f} "
        f"{'>=' if result['is_anomaly'] else '<'} {threshold}: {verdict}"
    )
    legend = region_legend(result["pixel_threshold"], float(region.mean()), fixed=fixed_region)
    return detection_figure(image, result["anomaly_probability"], region, title, max_side=max_side, legend=legend)


def _record(item: InputImage, image, result: dict[str, Any], overlay: Path, source: str) -> dict[str, Any]:
    """One row of detections.json / .csv: `image` is the name relative to its input, `path` the file, `overlay`
    relative to the output folder, `threshold_source` one of `THRESHOLD_SOURCES`."""
    if not math.isfinite(result["score"]):
        raise InvalidInputError(f"{item.path}: non-finite anomaly score; no decision can be made")
    return {
        "image": item.name,
        "path": str(item.path),
        "class_name": result["class_name"],
        "score": float(result["score"]),
        "label": result["label"],
        "is_anomaly": bool(result["is_anomaly"]),
        "threshold": float(result["threshold"]),
        "calibrated": bool(result["calibrated"]),
        "threshold_source": source,
        "normal_references": int(result["normal_references"]),
        "raw_anomaly_score": float(result["raw_anomaly_score"]),
        "map_score": float(result["map_score"]),
        "pixel_threshold": result["pixel_threshold"],
        "anomalous_area": float((np.asarray(result["mask"]) > 0).mean()),
        "height": image.height,
        "width": image.width,
        "overlay": overlay.as_posix(),
    }


def _write_tables(staging: Path, records: list[dict[str, Any]], skipped: list[dict] | None) -> None:
    """detections.json, detections.csv and skipped.json; file names that are not valid UTF-8 are written with
    \\xNN escapes (`safe_text`)."""
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

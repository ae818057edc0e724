"""Benchmark evaluation: per-class and mean metrics in the paper's table layout (`aaclip evaluate`).

Two image-score protocols:

``reference`` (default; reproduces `test.py` of the reference implementation, https://github.com/Mwxinnn/AA-CLIP)
    Per class, over all its test images: the anomaly maps (at the model's input resolution) are min-max
    normalised together and the raw image scores ``r`` together; industrial classes score
    ``0.5 * max(map_norm) + 0.5 * r_norm``, medical classes ``max(map_norm)``. A class whose images all
    carry one label has no image metric; the reference counts it as 0 in the mean, and so does this
    protocol (the class row says so).
``per-image``
    The model's own per-image ``image_score`` (depends on that image alone, as in deployment). Single-label
    classes are left out of the image-metric means.

Pixel metrics (AUROC, AP, F1-max, AUPRO) are the same under both protocols (min-max is monotone), computed
over all pixels of all images of a class with masks: at the model's input size (``--resolution model``,
the reference; masks resized with PIL nearest and binarised with ``!= 0``) or at each image's own size
(``--resolution original``; maps bilinearly resized from the patch grid). Anomalous images without a mask are
left out of the pixel metrics; data without any mask gets image metrics only (said in the notes).

The smoothing domain comes from ``--domain`` or, with ``auto``, from the class name (the reference's medical
sets: Brain, Liver, Retina, Colon_*/CVC/Kvasir are medical; everything else industrial).

Few-shot (``references``, `aaclip_hf.evaluation.few_shot`; WinCLIP's and APRIL-GAN's protocol): each image is also
scored against the reference bank of its class (K normal images of another split). The pixel metrics then use the
model's fused per-patch probability map (``anomaly_probability_grid``: the zero-shot probability joined with the
nearest-neighbour map by ``config.few_shot_fusion``), resized like the zero-shot map. ``per-image`` takes the model's
own ``image_score``, which uses that map; ``reference`` applies the same per-class min-max rule as zero-shot, to the
fused map instead of the summed zero-shot map. Zero-shot evaluation (no references) is unchanged: the summed map.
A model's own stored references (`stored_references`) are used the same way, so that a model is measured as
``aaclip detect`` scores with it.

Operating points: a class with a decision threshold (`AAClipModel.decision_threshold`: its own, when calibrated on
the scoring this run uses, else the fallback ``decision_threshold``) gets the false-reject and escape rates at it on its test images
(`aaclip_hf.evaluation.operating_points.rates_at`), always on the model's per-image ``image_score`` (the score the
threshold applies to in deployment), whatever the protocol. ``save`` also writes ``scores.csv`` (every image's score)
and one picture per class (``pictures/``: score histogram with the threshold, ROC curve).

Memory stays bounded: samples are processed class by class (batches may still mix two classes at a class
boundary), and a class's maps are released as soon as its metrics are computed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset
from tqdm.auto import tqdm

from ..data.dataset import CarryErrors, collate_or_error, raise_carried
from ..data.hf_datasets import dataset_samples
from ..data.image_io import BadInputError, load_image, load_mask
from ..data.samples import Sample
from ..errors import InvalidInputError
from ..modeling.configuration_aaclip import AAClipConfig
from ..modeling.image_processing_aaclip import binarize_mask
from ..modeling.modeling_aaclip import AAClipModel, upsample_grid
from ..modeling.processing_aaclip import AAClipProcessor
from ..runtime.batching import resolve_batch_size
from ..runtime.outputs import atomic_output_dir, holds_only, safe_text
from .anomaly_metrics.exact_metrics import (
    DEFAULT_FPR_LIMIT,
    MEDICAL_CLASSES,
    PROTOCOLS,
    PixelMetricAccumulator,
    class_mean,
    class_row,
    domain_for_class,
    reference_image_scores,
)
from .few_shot import FewShotReferences
from .operating_points import rates_at
from .score_pictures import picture_name, score_picture


logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationResult",
    "MEDICAL_CLASSES",
    "PROTOCOLS",
    "RESOLUTIONS",
    "domain_for_class",
    "evaluate",
    "reference_image_scores",
]

RESOLUTIONS = ("model", "original")
# What `EvaluationResult.save` writes (json, csv, markdown); a folder holding only these may be replaced.
RESULT_FILES = ("results.json", "results.csv", "results.md")
SCORES_FILE = "scores.csv"  # every image's score
PICTURES_DIR = "pictures"  # one PNG per class (`score_pictures`)
# Table columns in the paper's order (pixel-level AUROC/AUPRO, image-level AUROC/AP), then the extras.
METRIC_COLUMNS = OrderedDict(
    [
        ("pixel_auroc", "P-AUROC"),
        ("pixel_aupro", "P-AUPRO"),
        ("pixel_ap", "P-AP"),
        ("pixel_f1_max", "P-F1max"),
        ("image_auroc", "I-AUROC"),
        ("image_ap", "I-AP"),
        ("image_f1_max", "I-F1max"),
    ]
)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


class _ImageDataset(torch.utils.data.Dataset):
    """Preprocessed images with their index and original size (masks are read by the consumer)."""

    def __init__(self, samples: Sequence[Sample], processor):
        self.samples = list(samples)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        image = load_image(self.samples[index].image_path)
        pixel_values = self.processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixel_values, "index": index, "size": (image.height, image.width)}


def _collate(items: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
        "size": torch.tensor([item["size"] for item in items]),
    }


def _read_mask(sample: Sample, image_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """Ground truth `(H, W)` bool at `out_size`: PIL nearest resize, `!= 0` (the reference's rule)."""
    if sample.label == 0 or sample.mask_path is None:
        return np.zeros(out_size, dtype=bool)
    mask = load_mask(sample.mask_path)
    if (mask.height, mask.width) != tuple(image_size):
        raise BadInputError(
            f"mask is {mask.width}x{mask.height} but its image {sample.image_path} is {image_size[1]}x{image_size[0]}; "
            "expected equal sizes",
            sample.mask_path,
            "mask_path",
        )
    return binarize_mask(mask, tuple(out_size))


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * value:.1f}"


@dataclass
class EvaluationResult:
    """Per-class rows, the class mean, the settings used and plain-language notes. Metric values are fractions."""

    dataset: str
    protocol: str
    resolution: str
    classes: dict[str, dict[str, Any]]
    mean: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    split: str = "test"
    # Per image, in input order: path, class_name, label, score (the model's own image_score) and, under the
    # reference protocol, reference_score (what the image metrics use). Written to scores.csv, not to the JSON.
    scores: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def columns(self) -> list[str]:
        """Metric columns that have a value somewhere (pixel columns vanish for mask-less data)."""
        return [
            key
            for key in METRIC_COLUMNS
            if any(
                isinstance(row.get(key), float) and not math.isnan(row[key])
                for row in [*self.classes.values(), self.mean]
            )
        ]

    def to_markdown(self) -> str:
        columns = self.columns()
        header = ["Class", "#normal", "#anomalous", *[METRIC_COLUMNS[key] for key in columns]]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for name, row in self.classes.items():
            cells = [name, str(row["num_normal"]), str(row["num_anomalous"]), *[_fmt(row.get(key)) for key in columns]]
            lines.append("| " + " | ".join(cells) + " |")
        total_normal = sum(row["num_normal"] for row in self.classes.values())
        total_anomalous = sum(row["num_anomalous"] for row in self.classes.values())
        cells = [
            "**Mean**",
            str(total_normal),
            str(total_anomalous),
            *[f"**{_fmt(self.mean.get(key))}**" for key in columns],
        ]
        lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["scores"]
        data["format"] = "aaclip-eval/1"
        data["table_markdown"] = self.to_markdown()
        return _json_safe(data)

    def save(self, output_dir: str | os.PathLike, lock: bool = True) -> dict[str, Path]:
        """Write `results.json` (fractions), `results.csv` and `results.md` (percent, paper layout), `scores.csv`
        (every image's score) and `pictures/<class>.png` (score histogram with the threshold, ROC curve).

        The folder is written whole or not at all (`aaclip_hf.runtime.outputs.atomic_output_dir`): an earlier
        run's results are replaced, a folder of other files is refused. `lock=False` when the caller already
        holds the folder's `output_lock` (the CLI holds it for the whole evaluation).
        """
        final = Path(output_dir)
        written = (*RESULT_FILES, SCORES_FILE, PICTURES_DIR)
        with atomic_output_dir(final, "aaclip evaluate", replaceable=holds_only(written), lock=lock) as staging:
            self._write(staging)
        paths = {key: final / name for key, name in zip(("json", "csv", "markdown"), RESULT_FILES)}
        return paths | {"scores": final / SCORES_FILE, "pictures": final / PICTURES_DIR}

    def _write(self, folder: Path) -> None:
        paths = {key: folder / name for key, name in zip(("json", "csv", "markdown"), RESULT_FILES)}
        self._write_scores(folder)
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "num_normal", "num_anomalous", *[f"{key} (%)" for key in METRIC_COLUMNS]])
            for name, row in [*self.classes.items(), ("mean", {**self.mean, "num_normal": "", "num_anomalous": ""})]:
                values = [row.get(key) for key in METRIC_COLUMNS]
                writer.writerow(
                    [
                        name,
                        row["num_normal"],
                        row["num_anomalous"],
                        *[
                            "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:.4f}"
                            for v in values
                        ],
                    ]
                )
        title = f"# {self.dataset}: {self.protocol} protocol, pixel metrics at {self.resolution} resolution\n\n"
        notes = "".join(f"- {note}\n" for note in self.notes)
        paths["markdown"].write_text(
            title + "Values in %, unweighted mean over classes.\n\n" + self.to_markdown() + "\n\n" + notes,
            encoding="utf-8",
        )

    def _write_scores(self, folder: Path) -> None:
        """`scores.csv` and one picture per class; records each picture's file in its class row."""
        columns = ["path", "class_name", "label", "score"]
        if any("reference_score" in record for record in self.scores):
            columns.append("reference_score")
        with open(folder / SCORES_FILE, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for record in self.scores:
                writer.writerow({**record, "path": safe_text(record["path"])})
        (folder / PICTURES_DIR).mkdir()
        taken: set[str] = set()
        few_shot = self.settings.get("few_shot") or {}
        for name, row in self.classes.items():
            records = [record for record in self.scores if record["class_name"] == name]
            if not records:
                continue
            threshold, calibrated = row.get("threshold"), bool(row.get("threshold_calibrated"))
            shots = few_shot.get("shots") or (few_shot.get("stored") or {}).get(name)
            kind = f"{shots}-shot" if shots else "zero-shot"
            picture = score_picture(
                f"{self.dataset} / {name}: per-image image scores ({kind}, split {self.split})",
                [r["score"] for r in records if r["label"] == 0],
                [r["score"] for r in records if r["label"] == 1],
                threshold,
                calibrated,
                row.get("operating_point"),
            )
            row["picture"] = f"{PICTURES_DIR}/{picture_name(name, taken)}"
            picture.save(folder / row["picture"])


def _json_safe(value):
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


class _ClassState:
    """What one class accumulates until its last image is seen."""

    def __init__(self, name: str, indices: list[int], domain: str):
        self.name = name
        self.remaining = set(indices)
        self.domain = domain
        self.index: list[int] = []
        self.labels: list[int] = []
        self.image_score: list[float] = []  # the model's own, per image
        self.raw_score: list[float] = []
        self.map_max: list[float] = []
        self.map_min: list[float] = []
        self.pixels = PixelMetricAccumulator()  # maps and masks of the images with known pixel truth
        self.without_mask = 0
        self.masked_anomalies = 0


def _class_order(samples: Sequence[Sample]) -> list[Sample]:
    """Samples grouped by class (first-appearance order), stable within a class."""
    groups: dict[str, list[Sample]] = OrderedDict()
    for sample in samples:
        groups.setdefault(sample.class_name, []).append(sample)
    return [sample for group in groups.values() for sample in group]


@torch.no_grad()
def evaluate(
    model: AAClipModel,
    processor: AAClipProcessor,
    samples: Sequence[Sample] | Dataset,
    *,
    protocol: str = "reference",
    resolution: str = "model",
    batch_size: int | None = None,
    domain: str | None = None,
    aupro_variant: str = "mvtec",
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    num_workers: int = 0,
    dataset_name: str = "dataset",
    split: str = "test",
    progress: bool = True,
    accelerator: Accelerator | None = None,
    references: FewShotReferences | None = None,
) -> EvaluationResult | None:
    """Evaluate `model` on `samples` (see the module docstring for the protocols).

    Args:
        samples: `Sample`s, or a `datasets.Dataset` in the `aaclip_hf.data.hf_datasets` schema (image, mask,
            label, class_name).
        domain: `None`/`"auto"` (per class name), `"industrial"` or `"medical"`.
        batch_size: `None` chooses one from the device and its free memory (`aaclip_hf.runtime.batching`).
        accelerator: an `accelerate.Accelerator` to shard the images over processes; results are gathered
            without tail duplicates (`gather_for_metrics`) and returned on the main process (`None` elsewhere).
        references: reference banks per class: drawn (`aaclip_hf.evaluation.few_shot.build_references`; every
            class evaluated needs one, and reference images among `samples` are left out of the scoring, noted) or
            the model's stored ones (`stored_references`; classes without them are scored zero-shot).
    """
    _check_arguments(model, protocol, resolution, domain, batch_size)
    if isinstance(samples, Dataset):
        samples = dataset_samples(samples)
    samples, left_out = _without_references(samples, references)
    if not samples:
        raise InvalidInputError("no samples to evaluate")
    batch_size = resolve_batch_size(batch_size, model, len(samples))
    started = time.time()
    run = _Run.start(model, processor, _class_order(samples), protocol, resolution, domain, aupro_variant, fpr_limit)
    if references is not None:
        run.use_references(references, model.config.few_shot_fusion, left_out)
    run.resolve_thresholds(model, processor)

    loader = torch.utils.data.DataLoader(
        CarryErrors(_ImageDataset(run.samples, processor)), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=collate_or_error(_collate),
    )  # fmt: skip
    is_main = True
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
        is_main = accelerator.is_main_process
    bar = tqdm(
        total=len(run.samples), desc=f"evaluating {dataset_name}", unit="img", disable=not (progress and is_main)
    )
    for batch in raise_carried(loader):
        gathered = _score_batch(model, batch, run)
        if accelerator is not None:
            gathered = accelerator.gather_for_metrics(gathered)
        if is_main:
            _consume(gathered, run)
            bar.update(len(gathered["index"]))
    bar.close()
    if not is_main:
        return None
    return run.result(model, dataset_name, split, batch_size, time.time() - started)


def _without_references(samples, references: FewShotReferences | None) -> tuple[list[Sample], int]:
    """`samples` less the few-shot reference images (a reference is never scored against itself)."""
    if references is None:
        return list(samples), 0
    used = {path for paths in references.images.values() for path in paths}
    kept = [sample for sample in samples if sample.image_path not in used]
    return kept, len(samples) - len(kept)


def _check_arguments(model, protocol: str, resolution: str, domain: str | None, batch_size: int | None) -> None:
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if resolution not in RESOLUTIONS:
        raise InvalidInputError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if domain not in (None, "auto", *model.config.blur_kernel_size):
        raise InvalidInputError(
            f"domain must be 'auto' or one of {sorted(model.config.blur_kernel_size)}, got {domain!r}"
        )
    if batch_size is not None and batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")


@dataclass
class _Run:
    """One evaluation: its fixed choices, one accumulator per class, and the rows of the finished classes."""

    samples: list[Sample]
    states: dict[str, _ClassState]
    protocol: str
    resolution: str
    config: AAClipConfig
    model_size: tuple[int, int]
    aupro_variant: str
    fpr_limit: float
    notes: list[str]
    rows: dict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    scores: list[dict[str, Any]] = field(default_factory=list)  # per image, filed as classes finish
    references: FewShotReferences | None = None
    few_shot: dict[str, Any] | None = None  # settings.few_shot
    thresholds: dict[str, tuple[float | None, bool]] = field(default_factory=dict)  # class -> (threshold, own)

    def resolve_thresholds(self, model, processor) -> None:
        """Each class's threshold for the scoring this run uses (`AAClipModel.decision_threshold`): its calibrated
        one only when it was calibrated on the same weights, anchors, references and domain, else the fallback."""
        prompts = processor.prompt_fingerprint()
        for name, state in self.states.items():
            bank = None if self.references is None else self.references.bank(name)
            anchors = model.anchor_source(name, prompts)
            self.thresholds[name] = model.decision_threshold(name, anchors, bank, state.domain)

    def use_references(self, references: FewShotReferences, fusion: str, left_out: int) -> None:
        """Score every image against its class's bank too (all classes need a drawn one; stored ones are optional)."""
        for name in self.states:
            references.bank(name)  # refuses a class without drawn references, naming it
        self.references = references
        self.few_shot = references.settings(fusion)
        if left_out:
            self.notes.append(
                f"{left_out} few-shot reference image(s) were also in the evaluated split and are left out of it"
            )

    @classmethod
    def start(cls, model, processor, samples, protocol, resolution, domain, aupro_variant, fpr_limit) -> _Run:
        """Anchors for every class (computed once where missing) and an empty accumulator per class."""
        class_names = list(OrderedDict.fromkeys(sample.class_name for sample in samples))
        notes = []
        missing = [name for name in class_names if name not in model.stored_class_names]
        if missing:
            logger.info("computing text anchors for %d class(es) once: %s", len(missing), missing)
            model.update_text_anchors(processor, missing)
            notes.append(f"text anchors computed at evaluation time for: {', '.join(missing)}")
        states: dict[str, _ClassState] = OrderedDict()
        for name in class_names:
            indices = [i for i, sample in enumerate(samples) if sample.class_name == name]
            auto = domain in (None, "auto")
            states[name] = _ClassState(
                name, indices, domain_for_class(name, model.config.default_domain) if auto else domain
            )
        model_size = tuple(processor.image_size)
        return cls(samples, states, protocol, resolution, model.config, model_size, aupro_variant, fpr_limit, notes)

    def result(self, model, dataset_name: str, split: str, batch_size: int, seconds: float) -> EvaluationResult:
        unfinished = [name for name, state in self.states.items() if state.remaining]
        if unfinished:
            raise RuntimeError(f"evaluation ended with images of {unfinished} never scored (a data loader problem)")
        mean, mean_notes = _mean(self.rows, self.protocol)
        notes = self.notes + mean_notes
        if not any("pixel_auroc" in row for row in self.rows.values()):
            notes.append("no ground-truth masks in this data: image metrics only (pixel metrics need masks)")
        parameter = next(model.parameters())
        config = self.config
        settings = {
            "protocol": self.protocol,
            "resolution": self.resolution,
            "model_input_size": list(self.model_size),
            "domains": {name: state.domain for name, state in self.states.items()},
            "blur_kernel_size": dict(config.blur_kernel_size),
            "blur_sigma": dict(config.blur_sigma),
            "image_score_map_weight": config.image_score_map_weight,
            "image_score_mode": dict(config.image_score_mode),
            "aupro_variant": self.aupro_variant,
            "fpr_limit": self.fpr_limit,
            "mask_resize": "PIL nearest, binarised with != 0"
            if self.resolution == "model"
            else "none (original size)",
            "map_resize": "bilinear (align_corners=True) from the patch grid",
            "batch_size": batch_size,
            "dtype": str(parameter.dtype).replace("torch.", ""),
            "device": str(parameter.device),
            "num_images": len(self.samples),
            "seconds": round(seconds, 2),
            "few_shot": self.few_shot,
            "map": "anomaly_probability_grid (zero-shot fused with the references)"
            if self.references is not None
            else "anomaly_map_grid (zero-shot, summed over levels)",
            "operating_point_score": "image_score (the model's own, per image)",
        }
        if self.references is not None:
            settings["reference_images"] = {name: self.references.images.get(name, []) for name in self.states}
        scores = [{k: v for k, v in record.items() if k != "index"} for record in sorted(self.scores, key=_index)]
        return EvaluationResult(
            dataset_name, self.protocol, self.resolution, self.rows, mean, settings, notes, split, scores
        )


def _index(record: dict) -> int:
    return record["index"]


def _score_batch(model, batch: dict, run: _Run) -> dict[str, torch.Tensor]:
    """Grid maps and image scores of one batch; one forward per domain present (blur and score rule differ)."""
    parameter = next(model.parameters())
    device = parameter.device
    indices = batch["index"].tolist()
    pixel_values = batch["pixel_values"].to(device=device, dtype=parameter.dtype)
    names = [run.samples[i].class_name for i in indices]
    grid = model.config.grid_size
    grids = torch.empty(len(indices), grid, grid, device=device)
    image_score = torch.empty(len(indices), device=device)
    raw_score = torch.empty(len(indices), device=device)
    # one forward per domain (zero-shot) or per domain and class (few-shot: one reference bank per call)
    groups: dict[tuple[str, str | None], list[int]] = OrderedDict()
    for position, name in enumerate(names):
        key = (run.states[name].domain, name if run.references is not None else None)
        groups.setdefault(key, []).append(position)
    for (batch_domain, name), positions in groups.items():
        select = torch.tensor(positions, device=device)
        bank = None if name is None else run.references.bank(name)
        bank = None if bank is None else bank.to(device=device)  # the model scores it with its fp32 features
        out = model(  # grid-level maps only: _consume resizes each to its image's size
            pixel_values=pixel_values[select],
            class_ids=model.class_ids([names[p] for p in positions]),
            references=bank,
            domain=batch_domain,
        )
        grids[select] = (out.anomaly_map_grid if bank is None else out.anomaly_probability_grid).float()
        image_score[select] = out.image_score.float()
        raw_score[select] = out.raw_anomaly_score.float()
    return {
        "index": batch["index"].to(device),
        "size": batch["size"].to(device),
        "grid": grids,
        "image_score": image_score,
        "raw_score": raw_score,
    }


def _consume(gathered: dict[str, torch.Tensor], run: _Run) -> None:
    """File a (gathered) batch into the per-class states; finish every class whose last image arrived."""
    grids = gathered["grid"].float().cpu()
    model_maps = upsample_grid(grids, run.model_size)
    for row, index in enumerate(gathered["index"].tolist()):
        sample = run.samples[index]
        state = run.states[sample.class_name]
        if index not in state.remaining:
            continue  # a duplicate (padding) that gather_for_metrics did not drop
        state.remaining.discard(index)
        model_map = model_maps[row]
        state.index.append(index)
        state.labels.append(sample.label)
        state.image_score.append(float(gathered["image_score"][row]))
        state.raw_score.append(float(gathered["raw_score"][row]))
        state.map_max.append(float(model_map.max()))
        state.map_min.append(float(model_map.min()))
        if sample.has_mask:
            image_size = tuple(int(v) for v in gathered["size"][row].tolist())
            if run.resolution == "model":
                pixel_map, out_size = model_map, run.model_size
            else:
                pixel_map, out_size = upsample_grid(grids[row : row + 1], image_size)[0], image_size
            state.pixels.update([pixel_map.numpy()], [_read_mask(sample, image_size, out_size)])
            state.masked_anomalies += sample.label
        else:
            state.without_mask += 1
        if not state.remaining:
            run.rows[state.name], scores = _finish_class(
                state, run.protocol, run.config, run.aupro_variant, run.fpr_limit, run.thresholds[state.name]
            )
            run.scores.extend(_score_records(state, run, scores))
            state.pixels.reset()  # release the class's maps


def _score_records(state: _ClassState, run: _Run, scores: np.ndarray) -> list[dict[str, Any]]:
    """The class's per-image records for scores.csv (`index` orders them, then goes)."""
    records = []
    for index, label, own, protocol_score in zip(state.index, state.labels, state.image_score, scores):
        record = {"index": index, "path": run.samples[index].image_path, "class_name": state.name}
        record.update(label=int(label), score=float(own))
        if run.protocol == "reference":
            record["reference_score"] = float(protocol_score)
        records.append(record)
    return records


def _operating_point(state: _ClassState, decision: tuple[float | None, bool]) -> dict[str, Any]:
    """The class's threshold (`_Run.resolve_thresholds`) and the rates at it on the model's own image scores."""
    threshold, calibrated = decision
    if threshold is None:
        return {"threshold": None, "threshold_calibrated": False, "operating_point": None}
    scores, labels = np.asarray(state.image_score, dtype=np.float64), np.asarray(state.labels)
    return {
        "threshold": threshold,
        "threshold_calibrated": calibrated,
        "operating_point": rates_at(threshold, scores[labels == 0], scores[labels == 1]),
    }


def _finish_class(
    state: _ClassState, protocol: str, config, aupro_variant: str, fpr_limit: float, decision: tuple
) -> tuple[dict[str, Any], np.ndarray]:
    """The class's row (metrics, operating point) and the image scores its image metrics used."""
    labels = np.asarray(state.labels)
    if protocol == "reference":
        scores = reference_image_scores(
            np.asarray(state.map_max),
            np.asarray(state.map_min),
            np.asarray(state.raw_score),
            state.domain,
            config.image_score_map_weight,
        )
    else:
        scores = np.asarray(state.image_score, dtype=np.float64)
    row = class_row(
        labels,
        scores,
        state.pixels,
        masked_anomalies=state.masked_anomalies,
        without_mask=state.without_mask,
        domain=state.domain,
        fpr_limit=fpr_limit,
        aupro_variant=aupro_variant,
    )
    return row | _operating_point(state, decision), scores


def _mean(rows: dict[str, dict[str, Any]], protocol: str) -> tuple[dict[str, float], list[str]]:
    return class_mean(rows, protocol, tuple(METRIC_COLUMNS))


# ----------------------------------------------------------------------------------------------
# CLI: aaclip evaluate
# ----------------------------------------------------------------------------------------------

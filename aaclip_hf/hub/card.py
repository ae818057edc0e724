"""The model card of a published AA-CLIP folder: YAML metadata, model and training summary, evaluation tables.

Built offline with `huggingface_hub.ModelCard` / `ModelCardData`. Inputs, all optional: the folder's
`training_summary.json` or `training_args.json` (written by `aaclip train`), the JSON of `aaclip evaluate`
(`results.json`), an overlay grid picture, and Space metadata when the folder is pushed with its app.

Metadata rules (the Hub renders and indexes them):
- `pipeline_tag` is one the Hub accepts. The Hub has no anomaly-detection task (its task list is fixed), so the
  card uses `other`, as `save_pretrained`'s card does, and carries the transformers task name
  `zero-shot-anomaly-detection` in `tags`.
- `base_model` holds a Hub id (`owner/name`) only. A local folder appears in the text by its folder name, never by its path;
  with nothing recorded the card says "unknown" instead of guessing from the architecture.
- `datasets` names the training data: Hub dataset ids as they are, local folders by their folder name.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInputError, MissingFileError
from ..modeling.configuration_aaclip import TASK
from ..modeling.processing_aaclip import DEFAULT_THRESHOLD
from ..runtime.loading import is_hub_id


__all__ = [
    "CARD_METRICS",
    "CARD_TAGS",
    "PIPELINE_TAG",
    "PROTOCOL_TEXT",
    "TRAINING_ARGS_FILE",
    "TRAINING_SUMMARY_FILE",
    "UNKNOWN",
    "build_model_card",
    "card_eval_results",
    "dataset_names",
    "describe_base_model",
    "load_json",
    "overlay_grid",
    "read_training_summary",
]

TRAINING_SUMMARY_FILE = "training_summary.json"
TRAINING_ARGS_FILE = "training_args.json"  # written by `aaclip train`
# training_args.json fields shown in the card (besides the mapped model / data / stage / epochs).
TRAINING_ARGS_SHOWN = (
    "text_lr",
    "vision_lr",
    "text_batch_size",
    "vision_batch_size",
    "image_size",
    "stage1_loss",
    "dpam_mode",
    "mixed_precision",
    "num_processes",
)
# The Hub has no anomaly-detection task; "other" is its tag for models outside its task list.
PIPELINE_TAG = "other"
CARD_TAGS = ["anomaly-detection", TASK, "anomaly-segmentation", "clip", "aa-clip"]
UNKNOWN = "unknown"
# Metric keys of the `aaclip evaluate` JSON -> (card metric type, readable name), in the paper's order.
CARD_METRICS = {
    "pixel_auroc": ("roc_auc", "pixel AUROC"),
    "pixel_aupro": ("aupro", "pixel AUPRO"),
    "pixel_ap": ("average_precision", "pixel AP"),
    "pixel_f1_max": ("f1", "pixel F1-max"),
    "image_auroc": ("roc_auc", "image AUROC"),
    "image_ap": ("average_precision", "image AP"),
    "image_f1_max": ("f1", "image F1-max"),
}
# What each `aaclip evaluate --protocol` means for the numbers in the table.
PROTOCOL_TEXT = {
    "reference": (
        "the paper's protocol: within each test class, anomaly maps and image scores are min-max normalised over "
        "the class's images before the image score is formed, so a score depends on the other test images"
    ),
    "per-image": "each image's own score as the pipeline returns it, with no normalisation across images",
}

CITATION = """@InProceedings{Ma_2025_CVPR,
    author    = {Ma, Wenxin and Zhang, Xu and Yao, Qingsong and Tang, Fenghe and Wu, Chenxu and Li, Yingtai and Yan, Rui and Jiang, Zihang and Zhou, S. Kevin},
    title     = {AA-CLIP: Enhancing Zero-Shot Anomaly Detection via Anomaly-Aware CLIP},
    booktitle = {Proceedings of the Computer Vision and Pattern Recognition Conference (CVPR)},
    month     = {June},
    year      = {2025}
}"""

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

AA-CLIP (Ma et al., CVPR 2025) for zero-shot anomaly detection and segmentation: a CLIP whose text and vision
towers carry small residual adapters trained so that "normal" and "anomalous" text anchors separate and patch
features align with them. Given an image and an object class name, it returns a per-pixel anomaly map and a
per-image anomaly score, also for classes never seen in training.

Packaged with the `aaclip-hf` package on native `transformers` CLIP towers; this repository holds the
weights, the processor and the remote code, so only `transformers` is needed.
{{ picture_text }}{{ space_text }}
## Model

| | |
|---|---|
| base model | {{ base_model_text }} |
| backbone | CLIP ViT: vision {{ vision_layers }} layers x {{ vision_width }}, patch {{ patch_size }}; text {{ text_layers }} layers x {{ text_width }} |
| input | {{ image_size }} x {{ image_size }} RGB, bicubic resize (no crop), OpenAI CLIP mean/std |
| adapters | text: after layers 1..{{ text_adapters }}, vision: after layers 1..{{ vision_adapters }} (weight {{ adapter_weight }}) |
| feature levels | vision layers {{ feature_layers }} |
| stored class anchors | {{ anchor_classes }} |

## Decisions

{{ threshold_text }}

{{ references_text }}

## Training

{{ training_text }}

## Evaluation

{{ eval_text }}

## Usage

```python
from transformers import pipeline

detector = pipeline("{{ task }}", model="{{ repo_id }}", trust_remote_code=True)
result = detector("image.png", class_name="bottle")
print(result["score"], result["label"], result["threshold"], result["calibrated"])
heat = result["anomaly_probability"]  # numpy (height, width) at the image's own size; 0.5 = the decision level
result = detector("image.png", class_name="bottle", reference_images=["good1.png", "good2.png"])  # few-shot
```

With the model and processor directly:

```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{{ repo_id }}", trust_remote_code=True)
image = Image.open("image.png").convert("RGB")
with torch.no_grad():
    model.update_text_anchors(processor, ["bottle"])  # once per new class name (stored in the model)
    outputs = model(**processor(images=[image], return_tensors="pt"), class_ids=model.class_ids("bottle"))
result = processor.post_process_anomaly_detection(outputs, target_sizes=[(image.height, image.width)])[0]
```

The per-image `score` (in [0, 1]) depends on that image alone. The paper's benchmark image scores instead
min-max normalise maps and image scores over each test class (`aaclip evaluate --protocol reference`).

## Limitations

- Zero-shot scores come from text prompts about the class name: a name the model never saw in training works, but
  its threshold must be calibrated on that class's own normal images before decisions are trusted
  (`aaclip calibrate --class-name NAME`). Uncalibrated classes use the fallback threshold above.
- A few normal reference images of a class (few-shot) usually help much more than the name alone; their bank is
  tied to these weights and must be rebuilt after any retraining.
- The image score depends on the image alone, but its scale differs between classes and domains: compare scores
  only within a class, at that class's threshold.
- Inputs are resized to {{ image_size }} x {{ image_size }}: defects much smaller than a patch
  ({{ patch_size }} px at that size) may be missed on large images; tile them first.
- The evaluation numbers above were measured on the named data; results on other parts, cameras and lighting
  differ. Measure the error rates at your threshold on your own images (`aaclip evaluate` reports them).

## Licence

The CLIP backbone weights come from {{ base_model_text }}; OpenAI's CLIP weights are released under the MIT
licence. The AA-CLIP method and reference implementation are by Ma et al.
(https://github.com/Mwxinnn/AA-CLIP; see that repository for its licence). This packaging code is Apache-2.0.
The card's `license` field ({{ license }}) refers to these weights; check the licences of the training data too.

## Citation

```bibtex
{{ citation }}
```
"""


# ----------------------------------------------------------------------------------------------
# Inputs: JSON files, the training summary, names of the base model and the data
# ----------------------------------------------------------------------------------------------


def load_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from `path`; errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: no such file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{what}: {path} is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise InvalidInputError(f"{what}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def is_local_path(value: str) -> bool:
    """Whether a string names a local file system location: absolute, home-relative, a drive, or existing."""
    return (
        value.startswith(("/", "~", "\\", "file:"))
        or bool(re.match(r"^[A-Za-z]:[\\/]", value))
        or os.path.isabs(value)
        or os.path.exists(value)
    )


def _basename(value: str) -> str:
    """The last path component, for POSIX and Windows separators alike."""
    return posixpath.basename(value.replace("\\", "/").rstrip("/")) or value


def describe_base_model(value: str | None) -> tuple[str, str | None]:
    """(text for the card, Hub id for the YAML or None). A local path shows only its folder name."""
    if not value:
        return UNKNOWN, None
    value = str(value)
    if is_hub_id(value) and "/" in value:  # the card's metadata names namespaced repositories only
        return f"`{value}`", value
    if is_local_path(value) or "/" in value or "\\" in value:
        return f"`{_basename(value)}` (a local folder, not a Hub id)", None
    if re.fullmatch(r"[\w.-]+", value):  # a bare name, e.g. a folder name left by `sanitise_paths`
        return f"`{value}` (not a Hub id)", None
    return value, None  # a description such as "a randomly initialised tiny CLIP"


def dataset_names(summary: Mapping | None) -> list[str]:
    """Hub dataset ids of the training data, for the card's `datasets` metadata (local folders never go there: the
    training section names them by their last component)."""
    summary = summary or {}
    entries = summary.get("train_datasets") or summary.get("train_data") or []
    if isinstance(entries, str):
        entries = [entries]
    specs = (str(entry).split("::")[0] for entry in entries)  # `PATH::classes=a,b` specs name the path
    return list(dict.fromkeys(spec for spec in specs if is_hub_id(spec) and "/" in spec))


def read_training_summary(folder: str | os.PathLike) -> dict | None:
    """The folder's `training_summary.json`, else its `training_args.json` (from `aaclip train`) in that form."""
    folder = Path(folder)
    if (folder / TRAINING_SUMMARY_FILE).is_file():
        return load_json(folder / TRAINING_SUMMARY_FILE, "training summary")
    if not (folder / TRAINING_ARGS_FILE).is_file():
        return None
    args = load_json(folder / TRAINING_ARGS_FILE, "training arguments")
    summary = {
        "base_model": args.get("model"),
        "train_data": args.get("train_data"),
        "shots": args.get("shots"),
        "stages": {"both": "text + vision", "text": "text only", "vision": "vision only"}.get(
            args.get("stage"), args.get("stage")
        ),
        "epochs": {"text": args.get("text_epochs"), "vision": args.get("vision_epochs")},
        "seed": args.get("seed"),
    }
    summary.update({key: args[key] for key in TRAINING_ARGS_SHOWN if args.get(key) is not None})
    return summary


# ----------------------------------------------------------------------------------------------
# Evaluation results
# ----------------------------------------------------------------------------------------------


def _eval_runs(eval_results: dict | Sequence[dict] | None) -> list[dict]:
    if eval_results is None:
        return []
    runs = [eval_results] if isinstance(eval_results, dict) else list(eval_results)
    for index, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("mean"), dict):
            raise InvalidInputError(
                f"eval results [{index}]: expected the JSON written by `aaclip evaluate` (with a 'mean' object), "
                f"got keys {sorted(run) if isinstance(run, dict) else type(run).__name__}"
            )
    return runs


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _aupro_name(run: dict) -> str:
    limit = (run.get("settings") or {}).get("fpr_limit")
    return f"pixel AUPRO@{limit:g}" if _finite(limit) else "pixel AUPRO"


def card_eval_results(eval_results: dict | Sequence[dict] | None) -> list:
    """`huggingface_hub.EvalResult`s (values in percent) from the class means of `aaclip evaluate` JSONs."""
    results = []
    for run in _eval_runs(eval_results):
        dataset = str(run.get("dataset") or UNKNOWN)
        protocol = run.get("protocol", "reference")
        for key, (metric_type, metric_name) in CARD_METRICS.items():
            value = run["mean"].get(key)
            if not _finite(value):
                continue
            name = _aupro_name(run) if key == "pixel_aupro" else metric_name
            results.append(
                EvalResult(
                    task_type=TASK,
                    task_name="Zero-shot anomaly detection and segmentation",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=run.get("split") or "test",
                    metric_type=metric_type,
                    metric_name=f"{name} ({protocol} protocol, class mean)",
                    metric_value=round(100.0 * float(value), 2),
                )
            )
    return results


def _mean_table(run: dict) -> str:
    keys = [key for key in CARD_METRICS if _finite(run["mean"].get(key))]
    if not keys:
        return "No finite metric values."
    names = [_aupro_name(run) if key == "pixel_aupro" else CARD_METRICS[key][1] for key in keys]
    return "\n".join(
        [
            "| " + " | ".join(["Class", *names]) + " |",
            "|" + "|".join(["---"] + ["---:"] * len(keys)) + "|",
            "| " + " | ".join(["**Mean**", *[f"{100.0 * run['mean'][key]:.1f}" for key in keys]]) + " |",
        ]
    )


def _protocol_markdown(run: dict) -> str:
    protocol = run.get("protocol", "reference")
    settings = run.get("settings") or {}
    resolution = run.get("resolution", "model")
    lines = [
        f"- protocol `{protocol}`: {PROTOCOL_TEXT.get(protocol, 'as recorded by `aaclip evaluate`')}",
        f"- pixel metrics at the {resolution} resolution"
        + (" (the model input size, masks resized nearest-neighbour)" if resolution == "model" else ""),
        f"- split `{run.get('split') or 'test'}`; values in %, unweighted mean over classes",
    ]
    if settings.get("aupro_variant") or _finite(settings.get("fpr_limit")):
        lines.append(
            f"- AUPRO: {settings.get('aupro_variant', 'mvtec')} variant, FPR limit {settings.get('fpr_limit', 0.3)}"
        )
    if _finite(settings.get("num_images")):
        lines.append(f"- {int(settings['num_images'])} test images")
    return "\n".join(lines)


def _eval_markdown(eval_results: dict | Sequence[dict] | None) -> str:
    runs = _eval_runs(eval_results)
    if not runs:
        return "No evaluation results were attached (run `aaclip evaluate` and push with `--eval-results`)."
    parts = []
    for run in runs:
        table = run.get("table_markdown") or _mean_table(run)
        notes = "".join(f"\n- {note}" for note in run.get("notes", []))
        parts.append(
            f"### {run.get('dataset') or UNKNOWN}\n\n{_protocol_markdown(run)}\n\n{table}\n"
            + (f"\nNotes:\n{notes}\n" if notes else "")
        )
    return "\n".join(parts)


def _training_markdown(summary: dict | None) -> str:
    if not summary:
        return "No training summary was found next to the weights (`training_summary.json` or `training_args.json`)."
    lines = []
    readable = {
        "base_model": "base model",
        "train_data": "training data",
        "train_classes": "training classes",
        "shots": "shots per class",
        "stages": "stages",
        "epochs": "epochs",
        "seed": "seed",
    }
    for key, label in readable.items():
        if summary.get(key) not in (None, "", []):
            value = summary[key]
            if key == "base_model":
                value = describe_base_model(value)[0]
            elif isinstance(value, (list, tuple)):
                value = ", ".join(map(str, value))
            elif isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            lines.append(f"- {label}: {value}")
    extra = {k: v for k, v in summary.items() if k not in readable and isinstance(v, (str, int, float, bool))}
    if extra:
        lines.append("- other settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(extra.items())))
    return "\n".join(lines) if lines else "The training summary holds no readable fields."


def _thresholds_markdown(config) -> str:
    """The decision threshold of each calibrated class, and what every other class uses (`config.threshold_for`)."""
    fallback = config.decision_threshold
    rest = (
        f"{fallback:.4f} (the model's fallback threshold, not calibrated on the class)"
        if fallback is not None
        else f"{DEFAULT_THRESHOLD} (not calibrated: pass `threshold=` or run `aaclip calibrate --class-name NAME`)"
    )
    if not config.decision_thresholds:
        return (
            f"An image is anomalous when its score reaches the threshold: {rest} for every class; the pipeline "
            "reports it as `threshold`, with `calibrated: False`."
        )
    rows = [f"| `{name}` | {value:.4f} | yes |" for name, value in sorted(config.decision_thresholds.items())]
    return "\n".join(
        [
            "An image is anomalous when its score reaches its class's threshold (set by `aaclip calibrate` on that",
            "class's images; the pipeline reports it as `threshold`, and `calibrated` says whether it is the class's",
            "own):",
            "",
            "| class | threshold | calibrated |",
            "|---|---:|---|",
            *rows,
            f"| any other class | {rest} | no |",
        ]
    )


def _references_markdown(config) -> str:
    """Classes with stored normal references (few-shot), which the pipeline uses automatically."""
    if not config.reference_classes:
        return "No normal reference images are stored: every score is zero-shot."
    rows = [
        f"| `{name}` | {record['images']} | {record['patches']} |"
        for name, record in sorted(config.reference_classes.items())
    ]
    return "\n".join(
        [
            "Normal reference images (few-shot) stored with the weights; the pipeline uses them for these classes",
            "(`use_references=False` turns them off):",
            "",
            "| class | reference images | patches per level |",
            "|---|---:|---:|",
            *rows,
        ]
    )


# ----------------------------------------------------------------------------------------------
# The picture
# ----------------------------------------------------------------------------------------------


def overlay_grid(
    paths: Sequence[str | os.PathLike], *, columns: int, tile_width: int, background=(255, 255, 255)
) -> Image.Image:
    """Tile overlay images row by row, `columns` per row, each scaled to `tile_width` (aspect kept).

    Rows are as tall as their tallest tile; gaps are `background`. Errors name the unreadable file.
    """
    if not paths:
        raise InvalidInputError("overlay grid: no images given")
    if columns < 1 or tile_width < 1:
        raise InvalidInputError(f"overlay grid: columns and tile width must be >= 1, got {columns} and {tile_width}")
    tiles = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise InvalidInputError(f"{path}: not a readable image for the card's overlay grid ({error})") from None
        height = max(1, round(image.height * tile_width / image.width))
        tiles.append(image.resize((tile_width, height), Image.BICUBIC))
    rows = [tiles[start : start + columns] for start in range(0, len(tiles), columns)]
    heights = [max(tile.height for tile in row) for row in rows]
    grid = Image.new("RGB", (tile_width * min(columns, len(tiles)), sum(heights)), background)
    top = 0
    for row, height in zip(rows, heights):
        for index, tile in enumerate(row):
            grid.paste(tile, (index * tile_width, top))
        top += height
    return grid


# ----------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------


def build_model_card(
    config,
    repo_id: str,
    *,
    training_summary: dict | None = None,
    eval_results: dict | Sequence[dict] | None = None,
    base_model: str | None = None,
    license: str = "mit",
    model_name: str | None = None,
    picture: str | None = None,
    space: Mapping[str, str] | None = None,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` for an AA-CLIP model (offline; no Hub call).

    The base model is the first of `base_model`, `config.base_model` and the summary's `base_model`; `picture`
    is a file name in the folder shown under the title; `space` adds Space metadata (`sdk`, `app_file`, ...).
    """
    summary = training_summary or {}
    recorded = base_model or getattr(config, "base_model", None) or summary.get("base_model")
    base_model_text, base_model_id = describe_base_model(recorded)
    name = model_name or repo_id.split("/")[-1]
    datasets = dataset_names(summary)
    data = ModelCardData(
        base_model=base_model_id,
        datasets=datasets or None,
        eval_results=card_eval_results(eval_results) or None,
        library_name="transformers",
        license=license,
        model_name=name,
        metrics=["roc_auc", "average_precision", "f1", "aupro"],
        pipeline_tag=PIPELINE_TAG,
        tags=list(CARD_TAGS),
        **dict(space or {}),
    )
    vision, text = config.vision_config, config.text_config
    anchors = list(config.anchor_class_names)
    picture_text = (
        f"\n![Anomaly overlays from the evaluation: image, heat map and decision outline]({picture})\n\n"
        "*Overlays from the evaluation run (image | anomaly heat map | decision outline).*\n"
        if picture
        else ""
    )
    space_text = (
        f"\nThis repository also runs as a Gradio Space (`{space.get('app_file', 'app.py')}`): upload an image, "
        "choose a class name (its own threshold and stored references are used), optionally add a few normal "
        "images of the part (few-shot), and see the heat map and the decision.\n"
        if space
        else ""
    )
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        model_name=name,
        repo_id=repo_id,
        task=TASK,
        picture_text=picture_text,
        space_text=space_text,
        base_model_text=base_model_text,
        vision_layers=vision.num_hidden_layers,
        vision_width=vision.hidden_size,
        patch_size=vision.patch_size,
        text_layers=text.num_hidden_layers,
        text_width=text.hidden_size,
        image_size=vision.image_size,
        text_adapters=config.text_adapter_layers,
        vision_adapters=config.vision_adapter_layers,
        adapter_weight=config.vision_adapter_weight,
        feature_layers=", ".join(map(str, config.feature_layers)),
        anchor_classes=", ".join(f"`{name}`" for name in anchors[:40]) + (" ..." if len(anchors) > 40 else ""),
        threshold_text=_thresholds_markdown(config),
        references_text=_references_markdown(config),
        training_text=_training_markdown(summary),
        eval_text=_eval_markdown(eval_results),
        license=license,
        citation=CITATION,
    )

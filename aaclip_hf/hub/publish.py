"""Publishing AA-CLIP models: a Hub-ready folder, a generated model card, and `aaclip push`.

A Hub-ready folder is what `save_pretrained` writes for the model and the processor (weights, config,
remote code `configuration_aaclip.py` / `modeling_aaclip.py` / `processing_aaclip.py`, tokenizer) plus
the pipeline code `pipeline_aaclip.py` declared in `config.custom_pipelines`, and a `README.md` model card.
From such a folder or repo, users need only transformers:

    pipeline("zero-shot-anomaly-detection", model="org/name", trust_remote_code=True)

The card is built with `huggingface_hub.ModelCard` / `ModelCardData`. It reads, when present, the
training summary the trainer writes (`training_summary.json`) and the JSON of `aaclip evaluate`
(`--eval-results`), whose class means become the card's `eval_results`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from ..modeling.configuration_aaclip import AAClipConfig
from ..modeling.pipeline_aaclip import TASK, AAClipAnomalyDetectionPipeline


__all__ = [
    "CARD_TAGS",
    "PIPELINE_FILE",
    "TRAINING_SUMMARY_FILE",
    "build_model_card",
    "prepare_hub_folder",
    "push_folder_to_hub",
    "push_model_to_hub",
    "read_training_summary",
    "save_for_hub",
]

PIPELINE_FILE = "pipeline_aaclip.py"
TRAINING_SUMMARY_FILE = "training_summary.json"
TRAINING_ARGS_FILE = "training_args.json"  # written by `aaclip train`
# training_args.json fields shown in the card (besides the mapped model / stage / epochs).
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
CARD_TAGS = ["anomaly-detection", "zero-shot-anomaly-detection", "anomaly-segmentation", "clip", "aa-clip"]
DEFAULT_BASE_MODEL = "openai/clip-vit-large-patch14-336"
CUSTOM_PIPELINE_ENTRY = {
    "impl": f"{Path(PIPELINE_FILE).stem}.{AAClipAnomalyDetectionPipeline.__name__}",
    "pt": ["AutoModel"],
    "type": "multimodal",
}
# Training state that stays local (optimizer checkpoints, VCS data).
NOT_UPLOADED = shutil.ignore_patterns("checkpoints", "checkpoint-*", ".tmp-*", ".git", "*.tmp")
# Files a complete folder must hold (weights may be sharded: checked separately).
REQUIRED_FILES = (
    "config.json",
    "configuration_aaclip.py",
    "modeling_aaclip.py",
    "processor_config.json",
    "processing_aaclip.py",
    PIPELINE_FILE,
    "README.md",
)
# Metric keys of the `aaclip evaluate` JSON -> (card metric type, readable name), in the paper's order.
CARD_METRICS = {
    "pixel_auroc": ("roc_auc", "pixel AUROC"),
    "pixel_aupro": ("aupro", "pixel AUPRO@0.3"),
    "pixel_ap": ("average_precision", "pixel AP"),
    "pixel_f1_max": ("f1", "pixel F1-max"),
    "image_auroc": ("roc_auc", "image AUROC"),
    "image_ap": ("average_precision", "image AP"),
    "image_f1_max": ("f1", "image F1-max"),
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

## Model

| | |
|---|---|
| base model | {{ base_model_text }} |
| backbone | CLIP ViT: vision {{ vision_layers }} layers x {{ vision_width }}, patch {{ patch_size }}; text {{ text_layers }} layers x {{ text_width }} |
| input | {{ image_size }} x {{ image_size }} RGB, bicubic resize (no crop), OpenAI CLIP mean/std |
| adapters | text: after layers 1..{{ text_adapters }}, vision: after layers 1..{{ vision_adapters }} (weight {{ adapter_weight }}) |
| feature levels | vision layers {{ feature_layers }} |
| stored class anchors | {{ anchor_classes }} |
| decision threshold | {{ threshold_text }} |

## Training

{{ training_text }}

## Evaluation

{{ eval_text }}

## Usage

```python
from transformers import pipeline

detector = pipeline("zero-shot-anomaly-detection", model="{{ repo_id }}", trust_remote_code=True)
result = detector("image.png", class_name="bottle")
print(result["score"], result["is_anomaly"], result["label"])
anomaly_map = result["anomaly_map"]  # numpy (height, width) at the image's own size; larger = more anomalous
```

With the model and processor directly:

```python
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{{ repo_id }}", trust_remote_code=True)
image = Image.open("image.png").convert("RGB")
model.update_text_anchors(processor, ["bottle"])          # once per new class name (stored in the model)
outputs = model(**processor(images=[image], return_tensors="pt"), class_names=["bottle"])
result = processor.post_process_anomaly_detection(outputs, target_sizes=[(image.height, image.width)])[0]
```

The per-image `score` (in [0, 1]) depends on that image alone. The paper's benchmark image scores instead
min-max normalise maps and image scores over each test class (`aaclip evaluate --protocol reference`).

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
# Reading the training summary and the evaluation results
# ----------------------------------------------------------------------------------------------


def load_json(path: str | os.PathLike, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{what}: {path} is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


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


def _eval_runs(eval_results: dict | Sequence[dict] | None) -> list[dict]:
    if eval_results is None:
        return []
    runs = [eval_results] if isinstance(eval_results, dict) else list(eval_results)
    for index, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("mean"), dict):
            raise ValueError(
                f"eval results [{index}]: expected the JSON written by `aaclip evaluate` (with a 'mean' object), "
                f"got keys {sorted(run) if isinstance(run, dict) else type(run).__name__}"
            )
    return runs


def card_eval_results(eval_results: dict | Sequence[dict] | None) -> list:
    """`huggingface_hub.EvalResult`s (values in percent) from the class means of `aaclip evaluate` JSONs."""

    results = []
    for run in _eval_runs(eval_results):
        dataset = str(run.get("dataset") or "unknown")
        protocol = run.get("protocol", "reference")
        for key, (metric_type, metric_name) in CARD_METRICS.items():
            value = run["mean"].get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            results.append(
                EvalResult(
                    task_type="zero-shot-anomaly-detection",
                    task_name="Zero-shot anomaly detection and segmentation",
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=run.get("split") or "test",
                    metric_type=metric_type,
                    metric_name=f"{metric_name} ({protocol} protocol, class mean)",
                    metric_value=round(100.0 * float(value), 2),
                )
            )
    return results


def _eval_markdown(eval_results: dict | Sequence[dict] | None) -> str:
    runs = _eval_runs(eval_results)
    if not runs:
        return "No evaluation results were attached (run `aaclip evaluate` and push with `--eval-results`)."
    parts = []
    for run in runs:
        head = (
            f"**{run.get('dataset', 'dataset')}** ({run.get('protocol', 'reference')} protocol, pixel metrics at "
            f"{run.get('resolution', 'model')} resolution; values in %, mean over classes):"
        )
        table = run.get("table_markdown")
        if not table:
            cells = [
                f"{name} {100.0 * run['mean'][key]:.1f}"
                for key, (_, name) in CARD_METRICS.items()
                if isinstance(run["mean"].get(key), (int, float)) and not math.isnan(run["mean"][key])
            ]
            table = ", ".join(cells)
        notes = "".join(f"\n- {note}" for note in run.get("notes", []))
        parts.append(f"{head}\n\n{table}\n{notes}")
    return "\n\n".join(parts)


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
            if isinstance(value, (list, tuple)):
                value = ", ".join(map(str, value))
            elif isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            lines.append(f"- {label}: {value}")
    extra = {k: v for k, v in summary.items() if k not in readable and isinstance(v, (str, int, float, bool))}
    if extra:
        lines.append("- other settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(extra.items())))
    return "\n".join(lines) if lines else "The training summary holds no readable fields."


def _looks_like_vit_l14(config) -> bool:
    vision = config.vision_config
    return vision.hidden_size == 1024 and vision.num_hidden_layers == 24 and vision.patch_size == 14


def build_model_card(
    config,
    repo_id: str,
    *,
    training_summary: dict | None = None,
    eval_results: dict | Sequence[dict] | None = None,
    base_model: str | None = None,
    license: str = "mit",
    model_name: str | None = None,
):
    """A `huggingface_hub.ModelCard` for an AA-CLIP model (offline; no Hub call)."""

    summary = training_summary or {}
    base_model = (
        base_model or summary.get("base_model") or (DEFAULT_BASE_MODEL if _looks_like_vit_l14(config) else None)
    )
    # Only Hub ids belong in `base_model` metadata; a local path or a description stays in the text.
    base_is_hub_id = bool(base_model) and base_model.count("/") == 1 and not os.path.exists(base_model)
    datasets = summary.get("train_datasets") or []
    data = ModelCardData(
        base_model=base_model if base_is_hub_id else None,
        datasets=list(datasets) or None,
        eval_results=card_eval_results(eval_results) or None,
        library_name="transformers",
        license=license,
        model_name=model_name or repo_id.split("/")[-1],
        metrics=["roc_auc", "average_precision", "f1", "aupro"],
        tags=list(CARD_TAGS),
    )
    vision, text = config.vision_config, config.text_config
    threshold = getattr(config, "decision_threshold", None)
    anchors = list(config.anchor_class_names)
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        model_name=model_name or repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model_text=f"`{base_model}`" if base_model else "a randomly initialised CLIP (no pretrained weights)",
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
        threshold_text=(
            f"{threshold:.4f} on the image score (set by `aaclip calibrate`)"
            if threshold is not None
            else "not calibrated: the pipeline uses 0.5 unless given `threshold=`"
        ),
        training_text=_training_markdown(summary),
        eval_text=_eval_markdown(eval_results),
        license=license,
        citation=CITATION,
    )


# ----------------------------------------------------------------------------------------------
# Hub-ready folders
# ----------------------------------------------------------------------------------------------


def _add_pipeline_code(folder: Path) -> None:
    """Copy the pipeline file and declare it in `config.json` (what `Pipeline.save_pretrained` records)."""

    source = Path(inspect.getsourcefile(AAClipAnomalyDetectionPipeline))
    shutil.copyfile(source, folder / PIPELINE_FILE)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = {TASK: dict(CUSTOM_PIPELINE_ENTRY)}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_for_hub(
    model,
    processor,
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    training_summary: dict | None = None,
    eval_results: dict | Sequence[dict] | None = None,
    base_model: str | None = None,
    license: str = "mit",
) -> Path:
    """Write a complete Hub-ready folder: weights, processor, remote code, pipeline code and model card."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if training_summary is not None:
        (folder / TRAINING_SUMMARY_FILE).write_text(json.dumps(training_summary, indent=2) + "\n", encoding="utf-8")
    return prepare_hub_folder(
        folder, repo_id=repo_id, eval_results=eval_results, base_model=base_model, license=license
    )


def prepare_hub_folder(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    eval_results: dict | Sequence[dict] | str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str = "mit",
) -> Path:
    """Complete a `save_pretrained` folder in place: pipeline code, `custom_pipelines` and `README.md`.

    Raises naming the missing file when the folder lacks the model or the processor.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a folder written by save_pretrained")
    if not any(folder.glob("model*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{folder}: no model weights (model.safetensors); expected a saved AA-CLIP model")
    if not (folder / "processor_config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no processor_config.json; save the processor too (processor.save_pretrained(folder))"
        )
    _add_pipeline_code(folder)
    if isinstance(eval_results, (str, os.PathLike)):
        eval_results = load_json(eval_results, "eval results")
    summary = read_training_summary(folder)
    config = AAClipConfig.from_pretrained(folder)
    card = build_model_card(
        config,
        repo_id or f"your-name/{folder.resolve().name}",
        training_summary=summary,
        eval_results=eval_results,
        base_model=base_model,
        license=license,
    )
    card.save(str(folder / "README.md"))
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: the Hub folder is incomplete, missing {missing}")
    return folder


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    eval_results: dict | Sequence[dict] | str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str = "mit",
) -> str:
    """Upload a saved model folder to `repo_id` (created if needed) after completing it in a staging copy.

    The source folder is not modified. Returns the commit URL.
    """

    source = Path(folder)
    if not source.is_dir():
        raise FileNotFoundError(f"model folder {source} does not exist")
    with tempfile.TemporaryDirectory(prefix="aaclip-push-") as tmp:
        staging = Path(tmp) / source.resolve().name
        shutil.copytree(source, staging, ignore=NOT_UPLOADED)
        prepare_hub_folder(staging, repo_id=repo_id, eval_results=eval_results, base_model=base_model, license=license)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staging),
            commit_message=commit_message or "Upload AA-CLIP model (aaclip-hf)",
            token=token,
        )
    return str(getattr(info, "commit_url", info))


def push_model_to_hub(
    model,
    processor,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    training_summary: dict | None = None,
    eval_results: dict | Sequence[dict] | None = None,
    base_model: str | None = None,
    commit_message: str | None = None,
) -> str:
    """What `--push-to-hub` of `aaclip train` / `aaclip convert` calls: save to a temporary folder, then push."""
    with tempfile.TemporaryDirectory(prefix="aaclip-save-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if training_summary is not None:
            (folder / TRAINING_SUMMARY_FILE).write_text(
                json.dumps(training_summary, indent=2) + "\n", encoding="utf-8"
            )
        return push_folder_to_hub(
            folder,
            repo_id,
            private=private,
            token=token,
            eval_results=eval_results,
            base_model=base_model,
            commit_message=commit_message,
        )


# ----------------------------------------------------------------------------------------------
# CLI: aaclip push
# ----------------------------------------------------------------------------------------------

"""`aaclip demo` (what `make demo` runs): the whole workflow, offline, in a few minutes on a laptop CPU.

1. Generate the synthetic defect dataset (MVTec layout, exact masks; `aaclip_hf.synthetic`).
2. Build a small AA-CLIP. Offline, no pretrained CLIP weights can be downloaded, so the default is a tiny
   **randomly initialised** CLIP: the numbers show that training works and transfers to unseen classes, not
   what the paper's ViT-L/14 reaches. `--model openai/clip-vit-large-patch14-336` (or a local CLIP / AA-CLIP
   folder) runs the same steps on real weights where they can be had (a GPU is advisable).
3. Evaluate the untrained model on the held-out classes: zero-shot, then 1-, 2- and 4-shot (K normal train images of
   each class as references, `aaclip evaluate --few-shot K`).
4. Train both stages on the training classes with the training module (`aaclip_hf.training`).
5. Evaluate the trained model the same way; `comparison.md` puts untrained and trained side by side.
6. Calibrate a decision threshold per held-out class on a few of its normal images (`aaclip calibrate` rule); the
   thresholds are published with the model (`config.decision_thresholds`) and `comparison.md` gives the false-reject
   and escape rates they give on the held-out test images.
7. Run detection on sample held-out images and write overlays.
8. Save a Hub-ready folder (weights, processor, remote code, pipeline code, model card, thresholds) and reload it with
   `pipeline(..., trust_remote_code=True)` in a fresh Python process; check it gives the same scores and decisions.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from .data.readers import load_samples
from .data.synthetic import (
    SYNTHETIC_HELD_OUT_CLASSES,
    SYNTHETIC_PROMPT_NAMES,
    SYNTHETIC_TRAIN_CLASSES,
    generate_synthetic_dataset,
)
from .evaluation.few_shot import build_references
from .evaluation.operating_points import rates_at
from .evaluation.protocols import METRIC_COLUMNS, EvaluationResult, evaluate
from .hub.publish import save_for_hub
from .inference.calibrate import DEFAULT_MARGIN, calibrate_threshold
from .inference.detect import collect_images, detect, make_pipeline, score_images
from .modeling.configuration_aaclip import DEFAULT_IMAGE_SIZE
from .modeling.modeling_aaclip import AAClipModel
from .modeling.processing_aaclip import AAClipProcessor
from .runtime.loading import load_model_and_processor
from .training.arguments import AAClipTrainingArguments
from .training.trainer import AAClipTrainer


__all__ = ["DemoSettings", "QUICK", "FULL", "LearningComparison", "run_demo", "train_and_compare"]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (synthetic data, tiny backbone, training length)."""

    image_size: int = 128  # synthetic images (px)
    n_train_good: int = 4  # normal train-split images per class (few-shot references, calibration)
    n_test_good: int = 6  # normal test images per class
    n_test_defect_per_kind: int = 2  # defective test images per class and defect kind
    model_image_size: int = 96  # tiny CLIP input size
    patch_size: int = 8
    hidden_size: int = 64
    num_layers: int = 4
    text_epochs: int = 3
    vision_epochs: int = 20
    text_batch_size: int = 8
    vision_batch_size: int = 4
    text_lr: float = 1e-3  # a random tiny text tower needs larger steps than the paper's 1e-5
    vision_lr: float = 5e-4  # the paper's
    train_classes: tuple[str, ...] | None = None  # None: the synthetic module's suggested split
    held_out_classes: tuple[str, ...] | None = None
    detect_images_per_class: int = 3
    few_shots: tuple[int, ...] = (1, 2, 4)  # K of the few-shot evaluations (at most n_train_good)


FULL = DemoSettings()
PAPER_TEXT_LR = 1e-5
PAPER_IMAGE_SIZE = DEFAULT_IMAGE_SIZE
QUICK = DemoSettings(
    image_size=64,
    n_train_good=4,
    n_test_good=2,
    n_test_defect_per_kind=1,
    model_image_size=32,
    hidden_size=32,
    num_layers=4,
    text_epochs=1,
    vision_epochs=1,
    train_classes=("stripes", "disc"),
    held_out_classes=("carpet", "bottle"),
    detect_images_per_class=2,
)


def _say(message: str) -> None:
    print(message, flush=True)


def _banner(step: int, total: int, message: str) -> None:
    _say(f"\n[{step}/{total}] {message}")


def build_tiny_model(settings: DemoSettings, seed: int):
    """A tiny random CLIP (real tokenizer vocabulary) wrapped as AA-CLIP, and its processor."""

    width = settings.hidden_size
    common = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": settings.num_layers,
        "num_attention_heads": 4,
        "projection_dim": width,
    }
    clip_config = CLIPConfig(
        text_config=dict(common, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407),
        vision_config=dict(common, image_size=settings.model_image_size, patch_size=settings.patch_size),
        projection_dim=width,
    )
    torch.manual_seed(seed)
    clip = CLIPModel(clip_config).eval()
    layers = settings.num_layers
    processor = AAClipProcessor.for_model(clip.config)
    model = AAClipModel.from_clip_pretrained(
        clip,
        processor=processor,
        seed=seed,
        text_adapter_layers=1,
        vision_adapter_layers=max(1, layers // 2),
        feature_layers=list(range(1, layers + 1)),
    )
    return model, processor


def load_base_model(name: str, seed: int):
    """`--model`: an AA-CLIP folder as it is, or AA-CLIP built on a CLIP (Hub id or folder; patch-14 CLIPs at 518 px)."""

    config_path = Path(name) / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text()).get("model_type") == "aaclip":
        return load_model_and_processor(name, device="cpu")

    clip = CLIPModel.from_pretrained(name)
    # The paper runs ViT-L/14 at 518 px (37 x 37 patches); other CLIPs keep their own input size.
    size = PAPER_IMAGE_SIZE if clip.config.vision_config.patch_size == 14 else clip.config.vision_config.image_size
    vision_layers = clip.config.vision_config.num_hidden_layers
    text_layers = clip.config.text_config.num_hidden_layers
    # The paper's choices for ViT-L/14 (levels 6/12/18/24, 6 vision and 3 text adapters) as fractions of the depth.
    overrides = {
        "feature_layers": sorted({max(1, round(vision_layers * k / 4)) for k in (1, 2, 3, 4)}),
        "vision_adapter_layers": max(1, round(vision_layers / 4)),
        "text_adapter_layers": max(1, round(text_layers / 4)),
    }
    model = AAClipModel.from_clip_pretrained(clip, seed=seed, image_size=size, **overrides)
    processor = AAClipProcessor.for_model(model.config)
    model.refresh_text_anchors(processor)
    return model, processor


def _side_by_side(untrained, trained) -> str:

    columns = [key for key in METRIC_COLUMNS if key in trained.columns()]
    header = ["Class", *[f"{METRIC_COLUMNS[key]} before -> after" for key in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]

    def cell(before, after):
        fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"  # noqa: E731
        return f"{fmt(before)} -> {fmt(after)}"

    for name in trained.classes:
        lines.append(
            "| "
            + " | ".join(
                [name, *[cell(untrained.classes[name].get(k), trained.classes[name].get(k)) for k in columns]]
            )
            + " |"
        )
    lines.append(
        "| "
        + " | ".join(["**Mean**", *[f"**{cell(untrained.mean.get(k), trained.mean.get(k))}**" for k in columns]])
        + " |"
    )
    return "\n".join(lines)


RELOAD_SCRIPT = """
import json, sys
from transformers import pipeline
folder, images, classes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
detector = pipeline("zero-shot-anomaly-detection", model=folder, trust_remote_code=True, device="cpu")
results = detector(images, class_name=classes, batch_size=4)
print(json.dumps({"pipeline_module": type(detector).__module__,
                  "scores": [r["score"] for r in results], "labels": [r["label"] for r in results],
                  "calibrated": [r["calibrated"] for r in results],
                  "map_shapes": [list(r["anomaly_map"].shape) for r in results]}))
"""


def reload_in_fresh_process(folder: Path, images: list[str], classes: list[str], timeout: float = 600) -> dict:
    """Load `folder` with `pipeline(..., trust_remote_code=True)` in a new interpreter and score `images`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    images = [str(Path(image).resolve()) for image in images]  # the child runs in another working directory
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(folder.resolve()), json.dumps(images), json.dumps(classes)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(folder.resolve().parent),
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reloading {folder} in a fresh process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_demo(
    output_dir: str | os.PathLike = "demo_output",
    model_name: str | None = None,
    quick: bool = False,
    seed: int = 111,
    settings: DemoSettings | None = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> dict:
    """Run the demo (see the module docstring); returns a summary dict (also written to `summary.json`).

    `num_threads`: torch intra-op threads for the run (default: 1 for the tiny model, torch's default otherwise).
    """

    settings = _resolve_settings(settings or (QUICK if quick else FULL), model_name)
    with _demo_threads(model_name, num_threads):
        return _run_demo(output_dir, model_name, settings, seed, progress)


def train_and_compare(
    output_dir: str | os.PathLike,
    model_name: str | None = None,
    quick: bool = False,
    seed: int = 111,
    settings: DemoSettings | None = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> LearningComparison:
    """Demo steps 1-5 only (data, model, untrained evaluation, training, trained evaluation on the held-out classes).

    The learning-evidence test uses it so that it measures exactly the demo's recipe without the detection and
    Hub steps. Arguments as `run_demo`.
    """
    settings = _resolve_settings(settings or (QUICK if quick else FULL), model_name)
    with _demo_threads(model_name, num_threads):
        return _train_and_compare(Path(output_dir), model_name, settings, seed, progress, {}, total=5)


def _resolve_settings(settings: DemoSettings, model_name: str | None) -> DemoSettings:
    if model_name is not None and settings.text_lr == FULL.text_lr:
        settings = replace(settings, text_lr=PAPER_TEXT_LR)  # a pretrained text tower: the paper's step size
    return settings


@contextmanager
def _demo_threads(model_name: str | None, num_threads: int | None):
    if model_name is None and num_threads is None:
        # Tiny tensors gain nothing from intra-op threads, and on a busy machine idle-spinning threads cost up to
        # 10x (measured); real models keep torch's default.
        num_threads = 1
    previous_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


@dataclass
class LearningComparison:
    """What demo steps 1-5 produce: the held-out evaluations before and after training, and the trained model."""

    untrained: EvaluationResult
    trained: EvaluationResult
    model: torch.nn.Module
    processor: object
    data_root: Path
    train_classes: list[str]
    held_out_classes: list[str]
    train_samples: list
    test_samples: list
    base_description: str
    model_dir: Path
    seconds: dict[str, float]  # per step, as the demo's summary reports them
    # "untrained"/"trained" -> shots -> per-image evaluation on the held-out classes (0 = zero-shot)
    few_shot: dict[str, dict[int, EvaluationResult]] = field(default_factory=dict)
    reference_samples: list = field(default_factory=list)  # the held-out classes' normal train images


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    timings[name] = round(time.perf_counter() - since, 1)
    return time.perf_counter()


def _evaluate_held_out(model, processor, samples, folder: Path, progress: bool) -> EvaluationResult:
    """Zero-shot evaluation on the held-out classes in the paper's protocol, saved under `folder`."""
    result = evaluate(
        model,
        processor,
        samples,
        protocol="reference",
        batch_size=16,
        dataset_name="synthetic (held-out)",
        progress=progress,
    )
    result.save(folder)
    return result


def _few_shot_series(model, processor, samples, references, shots, seed: int, folder: Path, progress: bool):
    """Zero-shot and K-shot per-image evaluations on the held-out classes, each saved under `folder`.

    The per-image protocol (the model's own image score, as deployed), so that zero-shot and few-shot compare on the
    same footing; K normal train-split images per class are the references (`aaclip evaluate --few-shot K`).
    """
    classes = list(dict.fromkeys(sample.class_name for sample in samples))
    results = {}
    for k in (0, *shots):
        bank = build_references(model, processor, references, classes, k, seed, "train") if k else None
        results[k] = evaluate(
            model,
            processor,
            samples,
            protocol="per-image",
            batch_size=16,
            dataset_name="synthetic (held-out)",
            progress=progress,
            references=bank,
        )
        results[k].save(folder / (f"{k}-shot" if k else "zero-shot"))
    return results


def _few_shot_table(few_shot: dict[str, dict[int, EvaluationResult]], fusion: str, seed: int) -> str:
    """comparison.md's few-shot section: class means per model and K, then pixel AUROC per class."""
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "## Few-shot on the held-out classes (%, per-image protocol)",
        "",
        f"K normal images of each class's `train` split are its references (seed {seed}); the map joins the "
        f'zero-shot map and the references\' nearest-neighbour map by `config.few_shot_fusion = "{fusion}"`. '
        "Zero-shot (K = 0) in the same protocol. Class means:",
        "",
        "| Model | K | P-AUROC | P-AUPRO | I-AUROC |",
        "|---|---:|---:|---:|---:|",
    ]
    for model, series in few_shot.items():
        for k, result in series.items():
            cells = [fmt(result.mean.get(key)) for key in ("pixel_auroc", "pixel_aupro", "image_auroc")]
            lines.append(f"| {model} | {k if k else '0 (zero-shot)'} | " + " | ".join(cells) + " |")
    columns = [(model, k) for model, series in few_shot.items() for k in series]
    classes = list(next(iter(next(iter(few_shot.values())).values())).classes)
    lines += ["", "Pixel AUROC per class:", ""]
    lines.append("| Class | " + " | ".join(f"{model} K={k}" for model, k in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for name in classes:
        cells = [fmt(few_shot[model][k].classes[name].get("pixel_auroc")) for model, k in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _make_data(out: Path, settings: DemoSettings, train_classes: list[str], held_out: list[str], progress: bool):
    """Step 1: the synthetic defect set; training samples of the train classes, test samples of the others, and
    the others' normal train-split images (few-shot references)."""
    data_root = out / "data"
    generate_synthetic_dataset(
        data_root,
        classes=train_classes + held_out,
        image_size=settings.image_size,
        n_train_good=settings.n_train_good,
        n_test_good=settings.n_test_good,
        n_test_defect_per_kind=settings.n_test_defect_per_kind,
        seed=0,
        progress=progress,
    )
    train_samples = load_samples(str(data_root), "test", classes=train_classes)
    test_samples = load_samples(str(data_root), "test", classes=held_out)
    reference_samples = load_samples(str(data_root), "train", classes=held_out)
    _say(f"    {data_root}: {len(train_samples)} training images, {len(test_samples)} held-out test images")
    return data_root, train_samples, test_samples, reference_samples


def _make_model(model_name: str | None, settings: DemoSettings, seed: int, total: int):
    """Step 2: a tiny random AA-CLIP, or one on a real CLIP; returns `(model, processor, description, device)`."""
    if model_name is None:
        _banner(
            2,
            total,
            "a tiny AA-CLIP on a RANDOMLY INITIALISED CLIP: no pretrained weights can be downloaded here, "
            "so expect modest absolute numbers; the point is the gain from training on unseen classes",
        )
        model, processor = build_tiny_model(settings, seed)
        description = (
            f"random tiny CLIP (vision {settings.num_layers}x{settings.hidden_size}, "
            f"{settings.model_image_size}px, patch {settings.patch_size})"
        )
    else:
        _banner(2, total, f"AA-CLIP on {model_name}")
        model, processor = load_base_model(model_name, seed)
        description = model_name
    processor.class_name_table.update(SYNTHETIC_PROMPT_NAMES)
    device = "cuda" if torch.cuda.is_available() and model_name is not None else "cpu"
    model.to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    _say(f"    {n_params / 1e6:.2f} M parameters, input {model.config.vision_config.image_size} px, device {device}")
    return model, processor, description, device


def _train(model, processor, train_samples, data_root: Path, model_dir: Path, settings, seed, device, progress, base):
    """Step 4: both stages on the training classes, with the demo's settings (the paper's recipe, scaled down)."""
    args = AAClipTrainingArguments(
        model=base,
        train_data=[str(data_root)],
        output_dir=str(model_dir),
        split="test",
        shots="full",
        text_epochs=settings.text_epochs,
        vision_epochs=settings.vision_epochs,
        text_lr=settings.text_lr,
        vision_lr=settings.vision_lr,
        text_batch_size=settings.text_batch_size,
        vision_batch_size=settings.vision_batch_size,
        seed=seed,
        num_workers=0,
        cpu=device == "cpu",
        overwrite_output_dir=True,
        progress=progress,
        log_every=1000,
    )
    trainer = AAClipTrainer(args, model=model, processor=processor, samples=train_samples)
    trainer.train()
    return trainer.model.eval()


def _report_gain(out: Path, result: LearningComparison, fusion: str, seed: int, random_backbone: bool) -> None:
    """Step 5's tables (comparison.md) and one line of what changed on the classes never seen in training."""
    baseline, trained = result.untrained, result.trained
    comparison = _side_by_side(baseline, trained)
    few_shot = _few_shot_table(result.few_shot, fusion, seed)
    (out / "comparison.md").write_text(
        "# Zero-shot on held-out synthetic classes: untrained -> trained (%, reference protocol)\n\n"
        + comparison
        + "\n\n"
        + few_shot
        + "\n",
        encoding="utf-8",
    )
    _say("\n" + comparison + "\n\n" + few_shot + "\n")

    def pct(result: EvaluationResult, key: str) -> float:
        return 100 * result.mean.get(key, math.nan)

    _say(
        f"    on classes never seen in training: mean pixel AUROC {pct(baseline, 'pixel_auroc'):.1f} -> "
        f"{pct(trained, 'pixel_auroc'):.1f}, AUPRO {pct(baseline, 'pixel_aupro'):.1f} -> {pct(trained, 'pixel_aupro'):.1f}, "
        f"image AUROC {pct(baseline, 'image_auroc'):.1f} -> {pct(trained, 'image_auroc'):.1f}"
    )
    if random_backbone:
        _say(
            "    (a random tiny CLIP knows nothing about objects: expect localisation to improve more than image-level "
            "detection; pretrained CLIP weights are what make the paper's numbers)"
        )


def _train_and_compare(
    out: Path, model_name, settings: DemoSettings, seed: int, progress: bool, timings: dict[str, float], total: int
) -> LearningComparison:
    """Demo steps 1-5: data, model, untrained baseline (zero- and few-shot), training, trained evaluations."""
    out.mkdir(parents=True, exist_ok=True)
    train_classes = list(settings.train_classes or SYNTHETIC_TRAIN_CLASSES)
    held_out = list(settings.held_out_classes or SYNTHETIC_HELD_OUT_CLASSES)
    t = time.perf_counter()

    _banner(
        1,
        total,
        f"synthetic defect dataset: train on {', '.join(train_classes)}; zero-shot test on {', '.join(held_out)}",
    )
    data_root, train_samples, test_samples, references = _make_data(out, settings, train_classes, held_out, progress)
    t = _lap(timings, "data", t)

    model, processor, base_description, device = _make_model(model_name, settings, seed, total)
    t = _lap(timings, "model", t)

    # on a copy, so its held-out anchors do not leak into training
    shots = ", ".join(str(k) for k in settings.few_shots)
    _banner(3, total, f"zero-shot and {shots}-shot evaluation of the UNTRAINED model on the held-out classes")
    untrained_model = copy.deepcopy(model)
    baseline = _evaluate_held_out(untrained_model, processor, test_samples, out / "eval_untrained", progress)
    few_shot = {}
    few_shot["untrained"] = _few_shot_series(
        untrained_model,
        processor,
        test_samples,
        references,
        settings.few_shots,
        seed,
        out / "eval_few_shot" / "untrained",
        progress,
    )
    del untrained_model
    t = _lap(timings, "evaluate untrained", t)

    _banner(
        4,
        total,
        f"training stage 1 (text, {settings.text_epochs} epochs) and stage 2 (vision, "
        f"{settings.vision_epochs} epochs) on {len(train_classes)} classes",
    )
    model_dir = out / "trained_model"
    model = _train(
        model, processor, train_samples, data_root, model_dir, settings, seed, device, progress, base_description
    )
    t = _lap(timings, "train", t)

    _banner(5, total, f"zero-shot and {shots}-shot evaluation of the TRAINED model on the held-out classes")
    trained = _evaluate_held_out(model, processor, test_samples, out / "eval_trained", progress)
    few_shot["trained"] = _few_shot_series(
        model,
        processor,
        test_samples,
        references,
        settings.few_shots,
        seed,
        out / "eval_few_shot" / "trained",
        progress,
    )
    result = LearningComparison(
        baseline,
        trained,
        model,
        processor,
        data_root,
        train_classes,
        held_out,
        train_samples,
        test_samples,
        base_description,
        model_dir,
        timings,
        few_shot,
        references,
    )
    _report_gain(out, result, model.config.few_shot_fusion, seed, random_backbone=model_name is None)
    _lap(timings, "evaluate trained", t)
    return result


def _calibrate_held_out(pipe, data_root: Path, held_out: list[str]) -> dict[str, float]:
    """Step 6: a decision threshold per held-out class from its normal train-split images (never trained on), stored
    in the model's config with the fingerprint of the scoring it was calibrated on (as `aaclip calibrate` does)."""
    thresholds = {}
    for name in held_out:
        files = collect_images([data_root / name / "train" / "good"])
        scores = [r["score"] for _, _, r in score_images(pipe, files, name, progress=False)]
        thresholds[name], details = calibrate_threshold(scores)
        pipe.model.config.set_decision_threshold(name, thresholds[name], pipe.scoring_fingerprint(name))
        _say(
            f"    {name}: threshold {thresholds[name]:.4f} (largest of {len(scores)} normal scores + {details['margin']})"
        )
    return thresholds


def _publish_thresholds(out: Path, result: LearningComparison, thresholds: dict[str, float]) -> dict[str, dict]:
    """Step 6, continued: the thresholds (in the model's config, saved with the model in step 8) and the false-reject
    and escape rates they give on the held-out test images in comparison.md (the trained model's zero-shot per-image
    scores, the ones the thresholds apply to)."""
    zero_shot = result.few_shot["trained"][0].scores
    points, lines = {}, []
    for name, threshold in thresholds.items():
        scores = [record for record in zero_shot if record["class_name"] == name]
        points[name] = point = rates_at(
            threshold, [r["score"] for r in scores if r["label"] == 0], [r["score"] for r in scores if r["label"] == 1]
        )
        cells = [
            f"{point[count]}/{point[total]} ({100 * point[rate]:.1f}%)" if point[rate] is not None else "-"
            for count, total, rate in (
                ("false_rejects", "num_normal", "false_reject_rate"),
                ("escapes", "num_anomalous", "escape_rate"),
            )
        ]
        lines.append(f"| {name} | {threshold:.4f} | " + " | ".join(cells) + " |")
    section = "\n".join(
        [
            "## Published decision thresholds (trained model, zero-shot image score)",
            "",
            "Per held-out class, calibrated on its normal `train` images (the largest score + "
            f"{DEFAULT_MARGIN}, `aaclip calibrate`'s default) and saved in the Hub folder's `config.json` "
            "(`decision_thresholds`). Rates on the class's test images: false rejects = normal images flagged, "
            "escapes = anomalous images passed.",
            "",
            "| Class | Threshold | False rejects | Escapes |",
            "|---|---:|---:|---:|",
            *lines,
        ]
    )
    with open(out / "comparison.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + section + "\n")
    _say("\n" + section + "\n")
    return points


def _detect_examples(result: LearningComparison, settings: DemoSettings, thresholds: dict[str, float], out: Path):
    """Step 7: overlays on one normal and one image per defect kind of each held-out class."""
    records, images, classes = [], [], []
    for name in result.held_out_classes:
        normals = [s for s in result.test_samples if s.class_name == name and s.label == 0][:1]
        defects = {}
        for sample in result.test_samples:
            if sample.class_name == name and sample.label == 1:
                defects.setdefault(sample.defect_type, sample)
        chosen = normals + list(defects.values())[: settings.detect_images_per_class - 1]
        records += detect(
            result.model,
            result.processor,
            [s.image_path for s in chosen],
            out / name,
            class_name=name,
            threshold=thresholds[name],
            progress=False,
        )
        images += [s.image_path for s in chosen]
        classes += [name] * len(chosen)
    for record in records:
        _say(
            f"    {Path(record['path']).relative_to(result.data_root)}: score {record['score']:.3f} -> {record['label']}"
        )
    return records, images, classes


def _publish_and_reload(
    result: LearningComparison, pipe, hub_dir: Path, training_summary: dict, model_name: str | None, examples
) -> float:
    """Step 8: a Hub-ready folder, reloaded with the pipeline in a fresh process; returns the largest score gap."""
    images, classes = examples
    save_for_hub(
        result.model,
        result.processor,
        hub_dir,
        repo_id="your-name/aaclip-demo",
        training_summary=training_summary,
        eval_results=result.trained.to_dict() | {"dataset": "synthetic-held-out"},
        base_model=model_name,
    )
    in_process = pipe(images, class_name=classes, batch_size=4)
    reloaded = reload_in_fresh_process(hub_dir, images, classes)
    max_diff = max(abs(a["score"] - b) for a, b in zip(in_process, reloaded["scores"]))
    if max_diff > 1e-4:
        raise RuntimeError(
            f"the reloaded pipeline disagrees with the in-process model (max score diff {max_diff:.2e})"
        )
    if [r["label"] for r in in_process] != reloaded["labels"] or not all(reloaded["calibrated"]):
        raise RuntimeError("the reloaded pipeline does not decide with the published per-class thresholds")
    _say(
        f"    fresh process: {reloaded['pipeline_module']} reproduced all {len(images)} scores "
        f"(max difference {max_diff:.1e}) and their decisions at the published thresholds"
    )
    return max_diff


def _print_where_to_look(out: Path, detect_dir: Path, hub_dir: Path, timings: dict[str, float]) -> None:
    places = [
        (out / "comparison.md", "untrained -> trained, zero- vs few-shot, rates at the thresholds (held-out)"),
        (out / "eval_few_shot", "per-image evaluations: zero-shot and K-shot, scores.csv, score pictures"),
        (detect_dir / "<class>" / "overlays", "image | heat map | decision contour, one PNG per image"),
        (detect_dir / "<class>" / "detections.csv", "score and decision per image"),
        (hub_dir, f"Hub-ready model, README.md = model card; publish: aaclip push {hub_dir} your-name/aaclip-demo"),
        (out / "data", "the synthetic dataset (MVTec layout)"),
    ]
    width = max(len(str(path)) for path, _ in places)
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items() if k != "total")
    _say(f"\nDone in {timings['total']:.0f} s ({steps}). Where to look:")
    for path, what in places:
        _say(f"  {str(path):<{width}}  {what}")
    _say("Next: `make test`, then the README's real-CLIP commands (convert, train on a GPU, evaluate, detect, push).")


def _run_demo(output_dir, model_name, settings: DemoSettings, seed: int, progress: bool) -> dict:
    """Steps 1-5 (`_train_and_compare`), then calibrate, detect, publish and reload; writes summary.json."""
    out = Path(output_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    total = 8
    result = _train_and_compare(out, model_name, settings, seed, progress, timings, total)
    pipe = make_pipeline(result.model, result.processor)
    t = time.perf_counter()

    _banner(6, total, "calibrating a decision threshold per held-out class on a few of its normal images")
    thresholds = _calibrate_held_out(pipe, result.data_root, result.held_out_classes)
    operating_points = _publish_thresholds(out, result, thresholds)
    t = _lap(timings, "calibrate", t)

    _banner(7, total, "detecting anomalies on sample held-out images (overlays)")
    detect_dir = out / "detect"
    records, images, classes = _detect_examples(result, settings, thresholds, detect_dir)
    t = _lap(timings, "detect", t)

    _banner(8, total, "saving a Hub-ready folder and reloading it with the pipeline in a fresh process")
    hub_dir = out / "hub_model"
    training_summary = {
        "base_model": result.base_description if model_name is None else model_name,
        "train_data": "aaclip_hf.data.synthetic (seed 0)",
        "train_classes": result.train_classes,
        "shots": "full",
        "stages": "text + vision",
        "epochs": {"text": settings.text_epochs, "vision": settings.vision_epochs},
        "seed": seed,
    }
    max_diff = _publish_and_reload(result, pipe, hub_dir, training_summary, model_name, (images, classes))
    _lap(timings, "hub folder + reload", t)
    timings["total"] = round(time.perf_counter() - started, 1)

    summary = {
        "base_model": training_summary["base_model"],
        "train_classes": result.train_classes,
        "held_out_classes": result.held_out_classes,
        "untrained_mean": result.untrained.to_dict()["mean"],
        "trained_mean": result.trained.to_dict()["mean"],
        "few_shot": {
            "fusion": result.model.config.few_shot_fusion,
            "seed": seed,
            **{
                model: {k: evaluation.to_dict()["mean"] for k, evaluation in series.items()}
                for model, series in result.few_shot.items()
            },
        },
        "decision_thresholds": thresholds,
        "operating_points": operating_points,
        "detections": [{k: r[k] for k in ("path", "class_name", "score", "label")} for r in records],
        "reload_max_score_difference": max_diff,
        "seconds": timings,
        "outputs": {
            "comparison": str(out / "comparison.md"),
            "eval_untrained": str(out / "eval_untrained"),
            "eval_trained": str(out / "eval_trained"),
            "eval_few_shot": str(out / "eval_few_shot"),
            "overlays": [str(detect_dir / name / "overlays") for name in result.held_out_classes],
            "detections": [str(detect_dir / name / "detections.csv") for name in result.held_out_classes],
            "hub_folder": str(hub_dir),
            "model_card": str(hub_dir / "README.md"),
            "trained_model": str(result.model_dir),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _print_where_to_look(out, detect_dir, hub_dir, timings)
    return summary


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

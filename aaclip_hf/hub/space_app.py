"""A Gradio app for an AA-CLIP model: upload or paste an image, pick a class name and domain, optionally add normal
reference images (few-shot), and see the heat map, the score and the decision at the class's own threshold.

Scoring is zero-shot, or few-shot with the class's stored references (used automatically) or with the normal images
uploaded for the call (they replace the stored ones); the decision line says which ran and where the threshold came
from (the class's calibrated one, the model's uncalibrated fallback, or set by hand with the slider). The heat map
is the pipeline's `anomaly_probability` on one fixed 0..1 colour scale: 0.5 is the decision level in every image.

This file is standalone on purpose: it imports only gradio, transformers, torch, numpy and PIL, and loads the
model through `pipeline("zero-shot-anomaly-detection", model=..., trust_remote_code=True)`, so the pipeline
code comes with the model folder. It therefore runs unchanged as a Hugging Face Space's `app.py` next to the
model files (`aaclip push --with-app` copies it there as `app.py` and adds the Space metadata), and in-package
as `aaclip app MODEL` (aaclip_hf/cli/app.py). Never import the `aaclip_hf` package here.

As a Space (or `python app.py`): the model is the folder this file lies in, or `$AACLIP_MODEL`.
"""

from __future__ import annotations

import os
import sys

import gradio as gr
import numpy as np
from PIL import Image
from transformers import pipeline


TASK = "zero-shot-anomaly-detection"
# The environment variable that names the model when this file runs as a script (default: its own folder).
MODEL_ENV = "AACLIP_MODEL"
DEFAULT_PORT = 7860
# The heat map's colour ramp (blue -> cyan -> yellow -> red), as (position, RGB), on the fixed 0..1 scale of the
# anomaly probability, so a colour means the same probability in every image.
COLORMAP_STOPS = (
    (0.00, (0, 0, 128)),
    (0.15, (0, 0, 255)),
    (0.38, (0, 255, 255)),
    (0.62, (255, 255, 0)),
    (0.85, (255, 0, 0)),
    (1.00, (128, 0, 0)),
)
HEAT_ALPHA = 0.5
OUTLINE_COLOR = (255, 32, 32)
# Outline thickness as a fraction of the image's longer side (at least one pixel).
OUTLINE_FRACTION = 0.006
SCORE_DIGITS = 4
# The pipeline's threshold when neither the call nor the model's config gives one (scores lie in [0, 1]).
DEFAULT_THRESHOLD = 0.5
SLIDER_STEP = 0.01


def load_detector(model: str, device: str | int | None = None):
    """The task's pipeline for a model folder or Hub id, with the model's own pipeline code."""
    return pipeline(TASK, model=model, trust_remote_code=True, device=device)


def overlay_image(image: Image.Image, probability: np.ndarray, mask: Image.Image) -> Image.Image:
    """The heat map of `probability` (fixed 0..1 scale) over the image, with the mask's region outlined.

    The outline lies on the region's own pixels, closed at the image border, so a region covering most of the
    image is drawn around the anomalous area and not around the normal rest."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    values = np.clip(np.nan_to_num(np.asarray(probability, dtype=np.float32)), 0.0, 1.0)
    positions = np.array([p for p, _ in COLORMAP_STOPS], dtype=np.float32)
    colours = np.array([c for _, c in COLORMAP_STOPS], dtype=np.float32)
    heat = np.stack([np.interp(values, positions, colours[:, k]) for k in range(3)], axis=-1)
    out = ((1.0 - HEAT_ALPHA) * rgb + HEAT_ALPHA * heat).round().astype(np.uint8)
    region = np.asarray(mask) > 0
    thickness = max(1, round(OUTLINE_FRACTION * max(image.size)))
    inner = region.copy()
    for _ in range(thickness):  # erosion by a 3 x 3 cross, with outside-the-image counted as outside the region
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out[region & ~inner] = OUTLINE_COLOR
    return Image.fromarray(out)


def describe_threshold(result: dict, manual: bool = False, fallback: float | None = None, stored: bool = False) -> str:
    """Where the decision threshold came from: set by hand, the class's calibrated one, or an uncalibrated one.
    `stored`: the class has a calibrated threshold that the pipeline did not use (calibrated on other scoring: other
    weights, anchors or references, e.g. without the references given now)."""
    name = result.get("class_name", "this class")
    if manual:
        return "set by hand"
    if result.get("calibrated"):
        return f"{name}'s calibrated threshold"
    source = "the model's fallback" if fallback is not None else "the default"
    if stored:
        return f"{source}; {name}'s calibrated threshold is for other scoring (references, anchors or weights)"
    return f"{source}; not calibrated for {name}"


def describe_mode(result: dict, uploaded: int = 0) -> str:
    """Which scoring ran: zero-shot, or K-shot with stored or uploaded normal references."""
    count = int(result.get("normal_references") or 0)
    if count == 0:
        return "zero-shot"
    return f"{count}-shot, {'uploaded' if uploaded else 'stored'} references"


def describe(
    result: dict, manual: bool = False, uploaded: int = 0, fallback: float | None = None, stored: bool = False
) -> str:
    """The decision line: label, score against threshold (and where it came from), the mode, the anomalous area."""
    verdict = "ANOMALY" if result["label"] == "anomaly" else "normal"
    relation = ">=" if result["label"] == "anomaly" else "<"
    area = float(np.mean(np.asarray(result["mask"]) > 0))
    level = result.get("pixel_threshold")
    region = (
        f"outline = anomalous region at threshold {level:.3g} ({100 * area:.1f}% of the image)"
        if level is not None
        else "no decision region (this image score does not use the map)"
    )
    threshold = f"{result['threshold']:.3f} ({describe_threshold(result, manual, fallback, stored)})"
    return (
        f"{verdict}: score {result['score']:.{SCORE_DIGITS}f} {relation} {threshold}; "
        f"{describe_mode(result, uploaded)}; {region}"
    )


def class_settings(config, class_name: str) -> tuple[float, str]:
    """The class's decision threshold (as the pipeline picks it) and a line on what the app will use for it."""
    threshold, calibrated = config.threshold_for(class_name)
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    record = (getattr(config, "reference_classes", None) or {}).get(class_name)
    references = (
        f"{record['images']} stored normal reference images (few-shot)"
        if record
        else "no stored references (zero-shot unless you add normal images)"
    )
    state = "calibrated" if calibrated else "not calibrated"
    return threshold, f"**{class_name}**: threshold {threshold:.4f} ({state}); {references}"


def _expected_errors(detector) -> tuple[type[BaseException], ...]:
    """The model's own error family (from its config's module: the installed package's or the Space's remote code),
    and file errors: shown to the user as a message, never as a crash."""
    module = sys.modules.get(type(detector.model.config).__module__)
    family = getattr(module, "AAClipError", None)
    return (OSError,) + ((family,) if isinstance(family, type) else ())


def analyze(
    detector,
    image,
    class_name: str | None,
    domain: str | None = None,
    threshold: float | None = None,
    references=None,
    use_stored: bool = True,
):
    """Score one image: `(overlay, score, decision line)`, or `(None, None, hint)` without an image.

    `threshold=None` uses the class's own threshold (the pipeline's choice: calibrated, else the fallback);
    `references` are uploaded normal images of the class (paths or images), which replace its stored references
    for this call; `use_stored=False` scores zero-shot when none are uploaded."""
    if image is None:
        return None, None, "upload or paste an image"
    config = detector.model.config
    name = (class_name or "").strip() or (list(config.anchor_class_names) or ["object"])[0]
    uploaded = [item for item in (references or []) if item is not None]
    options = {"class_name": name, "domain": domain, "use_references": bool(use_stored)}
    if threshold is not None:
        options["threshold"] = float(threshold)
    if uploaded:
        options["reference_images"] = uploaded
    try:
        result = detector(image, **options)
    except _expected_errors(detector) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise gr.Error(" ".join(str(message).split())) from None
    overlay = overlay_image(image, result["anomaly_probability"], result["mask"])
    stored = config.threshold_for(name)[1]
    text = describe(result, threshold is not None, len(uploaded), getattr(config, "decision_threshold", None), stored)
    return overlay, round(float(result["score"]), SCORE_DIGITS), text


def build_app(detector, title: str | None = None) -> gr.Blocks:
    """The Blocks app around a loaded pipeline (see `load_detector`)."""
    config = detector.model.config
    classes = list(getattr(config, "anchor_class_names", None) or ["object"])
    domains = sorted(config.image_score_mode)
    threshold, info = class_settings(config, classes[0])

    def own_threshold(class_name) -> tuple[float, str]:
        return class_settings(config, (class_name or "").strip() or classes[0])

    def run(image, class_name, domain, value, custom, references, use_stored):
        return analyze(detector, image, class_name, domain, value if custom else None, references, use_stored)

    def slider_moved(image, class_name, domain, value, custom, references, use_stored):
        """A slider value other than the class's own threshold is a threshold set by hand. The class's own value
        with `custom` unticked is what `choose_class` / `custom_toggled` just set and scored: nothing to do."""
        if not custom and abs(float(value) - own_threshold(class_name)[0]) <= SLIDER_STEP / 2:
            return (gr.skip(),) * 4
        return (*run(image, class_name, domain, value, True, references, use_stored), True)

    def custom_toggled(image, class_name, domain, value, custom, references, use_stored):
        value = value if custom else own_threshold(class_name)[0]
        return (*run(image, class_name, domain, value, custom, references, use_stored), value)

    def choose_class(image, class_name, domain, value, custom, references, use_stored):
        value, line = own_threshold(class_name)
        return (*run(image, class_name, domain, value, False, references, use_stored), value, False, line)

    with gr.Blocks(title=title or "AA-CLIP anomaly detection") as app:
        gr.Markdown(
            f"# {title or 'AA-CLIP anomaly detection'}\n"
            "Upload or paste an image, choose the object's class name (a stored one or your own) and the domain. "
            "Optionally add a few normal images of the same part (few-shot). The heat map shows the anomaly "
            "probability on one fixed scale (blue 0 .. red 1; 0.5 = the decision threshold); the red outline marks "
            "the region that alone makes the image anomalous."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", sources=["upload", "clipboard"], label="image", elem_id="image")
                class_name = gr.Dropdown(
                    choices=classes, value=classes[0], allow_custom_value=True, label="class name", elem_id="class"
                )
                class_info = gr.Markdown(info, elem_id="class_info")
                domain = gr.Radio(choices=domains, value=config.default_domain, label="domain", elem_id="domain")
                references = gr.File(
                    file_count="multiple",
                    file_types=["image"],
                    type="filepath",
                    label="normal reference images of this class (optional, few-shot)",
                    elem_id="references",
                )
                use_stored = gr.Checkbox(value=True, label="use the class's stored references", elem_id="stored")
                slider = gr.Slider(0.0, 1.0, value=threshold, step=SLIDER_STEP, label="threshold", elem_id="threshold")
                custom = gr.Checkbox(
                    value=False, label="threshold set by hand (untick: the class's own)", elem_id="custom"
                )
                button = gr.Button("Detect", variant="primary", elem_id="detect")
            with gr.Column():
                overlay = gr.Image(type="pil", label="overlay", interactive=False, format="png", elem_id="overlay")
                score = gr.Number(label="score", precision=SCORE_DIGITS, interactive=False, elem_id="score")
                decision = gr.Textbox(label="decision", interactive=False, elem_id="decision")
        inputs = [image, class_name, domain, slider, custom, references, use_stored]
        outputs = [overlay, score, decision]
        button.click(run, inputs, outputs)
        image.upload(run, inputs, outputs)
        slider.change(slider_moved, inputs, [*outputs, custom])
        custom.input(custom_toggled, inputs, [*outputs, slider])
        class_name.change(choose_class, inputs, [*outputs, slider, custom, class_info])
        for control in (domain, use_stored):
            control.input(run, inputs, outputs)
        references.change(run, inputs, outputs)
    return app


def main(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    share: bool = False,
    device: str | int | None = None,
    prepare=None,
    load=load_detector,
) -> None:
    """Load the model and serve the app until interrupted. `prepare(model)`, when given, is called on the loaded
    model first (`aaclip app --quantize int8 / --backend onnx` put it on the faster CPU path in place).

    `load(model, device)` builds the pipeline: on a Space, the folder's own remote code (`load_detector`); with
    the package installed, `aaclip app` passes a loader that uses the installed classes and runs no remote code."""
    model = model or os.environ.get(MODEL_ENV) or os.path.dirname(os.path.abspath(__file__))
    detector = load(model, device)
    if prepare is not None:
        prepare(detector.model)
    build_app(detector, title=f"AA-CLIP: {os.path.basename(os.path.normpath(model))}").launch(
        server_name=host, server_port=port, share=share
    )


if __name__ == "__main__":  # a Space runs `python app.py`
    main(
        host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
    )

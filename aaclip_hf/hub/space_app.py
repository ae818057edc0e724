"""A Gradio app for an AA-CLIP model: upload or paste an image, pick a class name and domain, move the threshold.

This file is standalone on purpose: it imports only gradio, transformers, torch, numpy and PIL, and loads the
model through `pipeline("zero-shot-anomaly-detection", model=..., trust_remote_code=True)`, so the pipeline
code comes with the model folder. It therefore runs unchanged as a Hugging Face Space's `app.py` next to the
model files (`aaclip push --with-app` copies it there as `app.py` and adds the Space metadata), and in-package
as `aaclip app MODEL` (aaclip_hf/cli/app.py). Never import the `aaclip_hf` package here.

As a Space (or `python app.py`): the model is the folder this file lies in, or `$AACLIP_MODEL`.
"""

from __future__ import annotations

import os

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


def describe(result: dict) -> str:
    """The decision line: label, score against threshold, and the anomalous area."""
    verdict = "ANOMALY" if result["label"] == "anomaly" else "normal"
    relation = ">=" if result["label"] == "anomaly" else "<"
    area = float(np.mean(np.asarray(result["mask"]) > 0))
    level = result.get("pixel_threshold")
    region = (
        f"outline = anomalous region at threshold {level:.3g} ({100 * area:.1f}% of the image)"
        if level is not None
        else "no decision region (this image score does not use the map)"
    )
    return f"{verdict}: score {result['score']:.{SCORE_DIGITS}f} {relation} {result['threshold']:.3f}; {region}"


def build_app(detector, title: str | None = None) -> gr.Blocks:
    """The Blocks app around a loaded pipeline (see `load_detector`)."""
    config = detector.model.config
    classes = list(getattr(config, "anchor_class_names", None) or ["object"])
    domains = sorted(config.image_score_mode)
    threshold = config.decision_threshold if getattr(config, "decision_threshold", None) is not None else 0.5

    def analyze(image, class_name, domain, threshold):
        if image is None:
            return None, None, "upload or paste an image"
        name = (class_name or "").strip() or classes[0]
        result = detector(image, class_name=name, domain=domain, threshold=float(threshold))
        overlay = overlay_image(image, result["anomaly_probability"], result["mask"])
        return overlay, round(float(result["score"]), SCORE_DIGITS), describe(result)

    with gr.Blocks(title=title or "AA-CLIP anomaly detection") as app:
        gr.Markdown(
            f"# {title or 'AA-CLIP zero-shot anomaly detection'}\n"
            "Upload or paste an image, choose the object's class name (a stored one or your own) and the domain. "
            "The heat map shows the anomaly probability (blue 0 .. red 1); the red outline marks the anomalous "
            "region at the threshold."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", sources=["upload", "clipboard"], label="image", elem_id="image")
                class_name = gr.Dropdown(
                    choices=classes, value=classes[0], allow_custom_value=True, label="class name", elem_id="class"
                )
                domain = gr.Radio(choices=domains, value=config.default_domain, label="domain", elem_id="domain")
                slider = gr.Slider(0.0, 1.0, value=threshold, step=0.01, label="threshold", elem_id="threshold")
                button = gr.Button("Detect", variant="primary", elem_id="detect")
            with gr.Column():
                overlay = gr.Image(type="pil", label="overlay", interactive=False, format="png", elem_id="overlay")
                score = gr.Number(label="score", precision=SCORE_DIGITS, interactive=False, elem_id="score")
                decision = gr.Textbox(label="decision", interactive=False, elem_id="decision")
        inputs, outputs = [image, class_name, domain, slider], [overlay, score, decision]
        button.click(analyze, inputs, outputs)
        image.upload(analyze, inputs, outputs)
        slider.change(analyze, inputs, outputs)
        for control in (class_name, domain):
            control.change(analyze, inputs, outputs)
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

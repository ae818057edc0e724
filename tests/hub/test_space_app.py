"""The Gradio app (aaclip_hf/hub/space_app.py) in a real browser: Debian's chromium, headless, via Playwright.

The app runs on 127.0.0.1 at a free port around a tiny saved model loaded the way a Space loads it
(`pipeline(..., trust_remote_code=True)`). The test uploads a synthetic defect image, reads back the score and the
decision, checks that the overlay image is shown, moves the threshold (set by hand, then back to the class's own),
and uploads normal reference images (the decision names the few-shot mode).
"""

from __future__ import annotations

import ast
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.data.synthetic import render_defect


try:
    from aaclip_hf.hub import space_app
except ImportError as error:  # gradio: the `app` extra (the test extra installs it, so CI always has it)
    if os.environ.get("CI"):
        raise
    pytest.skip(f"the app extra is not installed (pip install aaclip-hf[app]): {error}", allow_module_level=True)


CHROMIUM = os.environ.get("AACLIP_CHROMIUM", "/usr/bin/chromium")
# Generous: the browser shares 2 CPU cores with other test processes.
BROWSER_TIMEOUT_MS = 90_000
ALLOWED_IMPORTS = {"__future__", "os", "sys", "gradio", "numpy", "PIL", "transformers"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def model_dir(tiny_model, processor, tmp_path):
    from aaclip_hf.runtime.model_folder import save_model_folder

    return save_model_folder(tiny_model, processor, tmp_path / "model")


def test_app_file_is_standalone():
    """A Space has no aaclip_hf: the app imports only gradio, transformers, numpy, PIL and the standard library."""
    tree = ast.parse(Path(space_app.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports do not work in a Space's app.py"
            imported.add(node.module.split(".")[0])
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


def test_overlay_outlines_the_mask_and_describe_says_the_decision():
    image = Image.new("RGB", (30, 30), (0, 0, 0))
    probability = np.zeros((30, 30), np.float32)
    mask = np.full((30, 30), 255, np.uint8)
    mask[10:20, 10:20] = 0  # anomalous everywhere but a normal square
    drawn = np.asarray(space_app.overlay_image(image, probability, Image.fromarray(mask)))
    outline = np.all(drawn == space_app.OUTLINE_COLOR, axis=-1)
    assert outline[0].all() and outline[:, 0].all()  # closed at the image border
    assert not outline[10:20, 10:20].any()  # nothing drawn in the normal part
    assert outline[9, 12] and not outline[5, 5]  # the band along the normal square, on the region's side
    np.testing.assert_array_equal(drawn[15, 15], [0, 0, 64])  # heat of p = 0 (navy) blended 50 % over black
    result = {"label": "anomaly", "score": 0.61234, "threshold": 0.5, "mask": Image.fromarray(mask)}
    result.update(class_name="bottle", calibrated=False, normal_references=0)
    text = space_app.describe({**result, "pixel_threshold": 0.5})
    assert text == (
        "ANOMALY: score 0.6123 >= 0.500 (the default; not calibrated for bottle); zero-shot; "
        "outline = anomalous region at threshold 0.5 (88.9% of the image)"
    )
    assert "no decision region" in space_app.describe({**result, "label": "normal", "pixel_threshold": None})


def test_the_heat_map_uses_the_one_fixed_scale_of_every_surface():
    """The app cannot import the package, so it carries the colour ramp: the same stops as `aaclip detect`'s
    overlays, on the fixed 0..1 scale of `anomaly_probability` (0.5 = the decision level), never rescaled per image."""
    from aaclip_hf.inference.visualize import COLORMAP_STOPS

    assert space_app.COLORMAP_STOPS == COLORMAP_STOPS
    image = Image.new("RGB", (4, 1), (0, 0, 0))
    low = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)
    drawn = np.asarray(space_app.overlay_image(image, low, Image.new("L", (4, 1), 0)))
    high = np.asarray(space_app.overlay_image(image, low + 0.5, Image.new("L", (4, 1), 0)))
    assert (drawn[0, 2] == high[0, 0]).all()  # 0.5 has one colour whatever else the image holds


@pytest.fixture
def detector(tiny_model, processor):
    from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline

    return AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")


def _picture(seed: int, size: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_analyze_scores_at_the_class_threshold_and_says_where_it_came_from(detector):
    image = _picture(0)
    overlay, score, text = space_app.analyze(detector, image, "bottle")
    expected = detector(image, class_name="bottle")
    assert score == pytest.approx(expected["score"], abs=1e-4) and overlay.size == image.size
    assert f"{expected['threshold']:.3f} (the default; not calibrated for bottle); zero-shot;" in text
    config = detector.model.config
    config.decision_threshold = 0.05
    assert "0.050 (the model's fallback; not calibrated for bottle)" in space_app.analyze(detector, image, "bottle")[2]
    config.decision_thresholds = {"bottle": 0.99}
    _, _, text = space_app.analyze(detector, image, "bottle")
    assert text.startswith("normal: ") and "< 0.990 (bottle's calibrated threshold)" in text
    _, _, text = space_app.analyze(detector, image, "bottle", threshold=0.0)
    assert text.startswith("ANOMALY: ") and ">= 0.000 (set by hand)" in text
    assert space_app.class_settings(config, "bottle") == (
        0.99,
        "**bottle**: threshold 0.9900 (calibrated); no stored references (zero-shot unless you add normal images)",
    )
    assert space_app.class_settings(config, "pcb1")[0] == 0.05
    assert space_app.analyze(detector, None, "bottle") == (None, None, "upload or paste an image")


def test_analyze_says_which_references_scored(detector, processor, tmp_path):
    image = _picture(1)
    model = detector.model
    model.add_references("bottle", processor(images=[_picture(s) for s in (2, 3, 4)])["pixel_values"])
    _, stored_score, text = space_app.analyze(detector, image, "bottle")
    assert "; 3-shot, stored references;" in text
    assert stored_score == pytest.approx(detector(image, class_name="bottle")["score"], abs=1e-4)
    _, zero_score, text = space_app.analyze(detector, image, "bottle", use_stored=False)
    assert "; zero-shot;" in text
    assert zero_score == pytest.approx(detector(image, class_name="bottle", use_references=False)["score"], abs=1e-4)
    paths = []
    for seed in (5, 6):
        paths.append(str(tmp_path / f"good{seed}.png"))
        _picture(seed).save(paths[-1])
    _, uploaded_score, text = space_app.analyze(detector, image, "bottle", references=paths)
    assert "; 2-shot, uploaded references;" in text  # uploaded images replace the stored ones for the call
    expected = detector(image, class_name="bottle", reference_images=paths)["score"]
    assert uploaded_score == pytest.approx(expected, abs=1e-4)
    _, _, text = space_app.analyze(detector, image, "pcb1", references=paths)  # a class without stored ones
    assert "; 2-shot, uploaded references;" in text
    # A threshold calibrated on the stored-references scoring is not used with uploaded ones, and the app says why.
    model.config.set_decision_threshold("bottle", 0.97, detector.scoring_fingerprint("bottle"))
    assert "(bottle's calibrated threshold); 3-shot, stored" in space_app.analyze(detector, image, "bottle")[2]
    with pytest.warns(UserWarning, match="calibrated on other scoring"):
        _, _, text = space_app.analyze(detector, image, "bottle", references=paths)
    assert "(the default; bottle's calibrated threshold is for other scoring" in text


def test_analyze_shows_a_bad_upload_as_a_message(detector, tmp_path):
    import gradio as gr

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="broken.png"):
        space_app.analyze(detector, _picture(0), "bottle", references=[str(broken)])


def _browser():
    """Playwright and Debian's chromium; in CI both must be there, on a developer machine a missing one skips."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"chromium not found at {CHROMIUM}: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium, or set AACLIP_CHROMIUM)")
    return sync_playwright


def test_app_in_a_real_browser(model_dir, tmp_path, monkeypatch):
    sync_playwright = _browser()
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    _, defective, _ = render_defect("bottle", "scratch", np.random.default_rng(3), 96)
    picture = tmp_path / "defect.png"
    Image.fromarray(defective).save(picture)
    references = []
    for seed in (4, 5):
        good, _, _ = render_defect("bottle", "scratch", np.random.default_rng(seed), 96)
        references.append(tmp_path / f"good{seed}.png")
        Image.fromarray(good).save(references[-1])
    detector = space_app.load_detector(str(model_dir), "cpu")
    expected = detector(Image.open(picture), class_name="bottle", threshold=0.5)
    port = _free_port()
    app = space_app.build_app(detector)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
            )
            page = browser.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            # the class name: typed into the dropdown (free text or a stored name), then the image upload
            class_box = page.locator("#class input")
            class_box.fill("bottle")
            class_box.press("Enter")
            threshold_box = page.locator("#threshold input[type=number]")
            threshold_box.fill("0.5")
            threshold_box.press("Enter")
            page.locator("#image input[type=file]").set_input_files(str(picture))
            page.wait_for_function("document.querySelector('#score input').value !== ''")
            page.wait_for_function("(document.querySelector('#decision textarea') || {}).value?.includes('score')")
            score = float(page.locator("#score input").input_value())
            decision = page.locator("#decision textarea").input_value()
            assert score == pytest.approx(expected["score"], abs=10**-space_app.SCORE_DIGITS)
            assert decision.startswith("ANOMALY" if expected["label"] == "anomaly" else "normal"), decision
            assert f"{expected['score']:.4f}" in decision
            # the overlay is shown: a loaded <img> at the uploaded image's size
            page.wait_for_function("(document.querySelector('#overlay img') || {}).naturalWidth > 0")
            size = page.evaluate(
                "[document.querySelector('#overlay img').naturalWidth, "
                "document.querySelector('#overlay img').naturalHeight]"
            )
            assert size == [96, 96]
            # the threshold decides: at 0 every image is anomalous, at 1 (scores < 1) normal
            for value, verdict in (("0", "ANOMALY"), ("1", "normal")):
                threshold_box.fill(value)
                threshold_box.press("Enter")
                page.wait_for_function(f"document.querySelector('#decision textarea').value.startsWith('{verdict}')")
            decision = "document.querySelector('#decision textarea').value"
            assert "(set by hand)" in page.locator("#decision textarea").input_value()
            assert page.locator("#custom input").is_checked()
            # unticked: back to the class's own threshold, and the slider shows it
            page.locator("#custom input").uncheck()
            page.wait_for_function(f"{decision}.includes('(the default; not calibrated for bottle)')")
            assert float(threshold_box.input_value()) == pytest.approx(expected["threshold"])
            # normal reference images uploaded for the class: the decision says the few-shot mode scored
            page.locator("#references input[type=file]").set_input_files([str(p) for p in references])
            page.wait_for_function(f"{decision}.includes('2-shot, uploaded references')")
            few_shot = detector(Image.open(picture), class_name="bottle", reference_images=references)
            assert float(page.locator("#score input").input_value()) == pytest.approx(few_shot["score"], abs=1e-4)
            browser.close()
    finally:
        app.close()

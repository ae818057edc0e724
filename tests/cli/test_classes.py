"""`aaclip add-class` and `aaclip add-references`: a new folder with the class's anchors or references, one-line
errors for bad references, and the folder as the plain transformers way loads it, with and without the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.cli import main
from aaclip_hf.runtime.loading import load_model
from aaclip_hf.runtime.model_folder import save_model_folder

from ..conftest import make_tiny_model


@pytest.fixture(autouse=True)
def _no_progress_bars():
    """Loading and writing bars of transformers go to stderr; the one-line checks read stderr."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


@pytest.fixture
def saved(tmp_path, processor):
    model = make_tiny_model()
    model.update_text_anchors(processor, ["object", "bottle"])
    save_model_folder(model, processor, tmp_path / "model")
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(good / f"{index:03d}.png")
    return tmp_path / "model", good


def _one_line(capsys, command: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aaclip {command}: error: "), lines
    return lines[0]


def test_add_references_stores_k_drawn_images_and_info_lists_them(saved, tmp_path, capsys):
    model_dir, good = saved
    argv = ["add-references", str(model_dir), "--class-name", "bottle", "--images", str(good), "--shots", "3"]
    assert main([*argv, "--output", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "bottle: 3 normal reference(s)" in out and "25 patches per level" not in out
    model, _ = load_model(tmp_path / "new")
    assert model.config.reference_classes["bottle"]["images"] == 3
    assert model.references_for("bottle").shape == (4, 3 * 25, 24)
    assert main([*argv, "--output", str(tmp_path / "again")]) == 0  # the same seed draws the same images
    capsys.readouterr()
    again, _ = load_model(tmp_path / "again")
    assert again.references_for("bottle").equal(model.references_for("bottle"))
    assert main(["info", str(tmp_path / "new")]) == 0
    listed = json.loads(capsys.readouterr().out)["model"]["references"]
    assert listed == {"bottle": {"images": 3, "patches_per_level": 75, "bytes": 75 * 4 * 24 * 4}}
    assert load_model(model_dir)[0].config.reference_classes == {}  # the source folder is untouched


@pytest.mark.parametrize("fault", ["no_images", "not_images", "unknown_class", "too_many_shots", "output_is_model"])
def test_bad_references_are_one_named_line(saved, tmp_path, capsys, fault):
    model_dir, good = saved
    empty, junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir()
    junk.mkdir()
    (junk / "notes.png").write_text("not an image")
    images, name, extra, output = str(good), "bottle", [], str(tmp_path / "new")
    expected = {
        "no_images": (str(empty), "no images"),
        "not_images": (str(junk), "notes.png"),
        "unknown_class": (None, "'widget' has no stored anchors"),
        "too_many_shots": (None, "9 references asked for, but only 5"),
        "output_is_model": (None, "is the model"),
    }[fault]
    if fault in ("no_images", "not_images"):
        images = expected[0]
    elif fault == "unknown_class":
        name = "widget"
    elif fault == "too_many_shots":
        extra = ["--shots", "9"]
    else:
        output = str(model_dir)
    code = main(
        ["add-references", str(model_dir), "--class-name", name, "--images", images, *extra, "--output", output]
    )
    assert code == 2
    assert expected[1] in _one_line(capsys, "add-references")
    assert not (tmp_path / "new").exists()


def test_add_class_stores_anchors_and_an_inference_only_model_cannot(saved, tmp_path, capsys):
    model_dir, _ = saved
    assert main(["add-class", str(model_dir), "gear", "widget", "--output", str(tmp_path / "new")]) == 0
    model, _ = load_model(tmp_path / "new")
    assert model.stored_class_names == ["object", "bottle", "gear", "widget"]
    assert model.anchor_status()["state"] == "fresh"
    small = model.to_inference_only()
    save_model_folder(small, load_model_processor(tmp_path / "new"), tmp_path / "small")
    capsys.readouterr()
    assert main(["add-class", str(tmp_path / "small"), "bolt", "--output", str(tmp_path / "nope")]) == 2
    assert "inference-only" in _one_line(capsys, "add-class")


def load_model_processor(folder):
    from aaclip_hf.runtime.loading import load_model_and_processor

    return load_model_and_processor(folder)[1]


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "aaclip_hf" or name.startswith("aaclip_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockPackage())
    from transformers import pipeline

    folder, image, out = sys.argv[1:4]
    detector = pipeline("zero-shot-anomaly-detection", model=folder, trust_remote_code=True, device="cpu")
    few = detector(image, class_name="bottle")
    zero = detector(image, class_name="bottle", use_references=False)
    json.dump({"few": few["score"], "shots": few["normal_references"], "zero": zero["score"]}, open(out, "w"))
    """
)


def test_stored_references_load_through_remote_code_without_the_package(saved, tmp_path, capsys):
    from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline
    from aaclip_hf.runtime.loading import load_model_and_processor

    model_dir, good = saved
    argv = ["add-references", str(model_dir), "--class-name", "bottle", "--images", str(good)]
    assert main([*argv, "--output", str(tmp_path / "new")]) == 0
    image = good / "000.png"
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    command = [
        sys.executable,
        str(tmp_path / "remote.py"),
        str(tmp_path / "new"),
        str(image),
        str(tmp_path / "o.json"),
    ]
    subprocess.run(command, cwd=tmp_path, env=env, check=True, timeout=600)
    remote = json.loads((tmp_path / "o.json").read_text())
    local = AAClipAnomalyDetectionPipeline(
        *[], **dict(zip(("model", "processor"), load_model_and_processor(tmp_path / "new")))
    )
    assert remote["shots"] == 5
    assert remote["few"] == pytest.approx(local(str(image), class_name="bottle")["score"], abs=1e-6)
    assert remote["zero"] != pytest.approx(remote["few"])


@pytest.mark.parametrize(
    "flags", [["--quantize", "int8"], ["--backend", "onnx"], ["--dtype", "bfloat16"]], ids=["int8", "onnx", "bf16"]
)
def test_stored_references_score_on_every_backend_and_dtype(saved, tmp_path, capsys, flags):
    """A backend runs the same weights in another form and a dtype casts them: the stored references (made and checked
    in fp32) still apply, to that form's rounding, and an edited bank is still refused."""
    model_dir, good = saved
    argv = ["add-references", str(model_dir), "--class-name", "bottle", "--images", str(good), "--shots", "2"]
    assert main([*argv, "--output", str(tmp_path / "new")]) == 0
    capsys.readouterr()
    detect = ["detect", str(good / "004.png"), "--model", str(tmp_path / "new"), "--class-name", "bottle"]
    detect += ["--device", "cpu", "--no-progress"]
    assert main([*detect, "--output", str(tmp_path / "fp32")]) == 0
    assert main([*detect, *flags, "--output", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    fp32, other = (json.loads((tmp_path / d / "detections.json").read_text())[0] for d in ("fp32", "other"))
    assert other["normal_references"] == 2 and other["score"] == pytest.approx(fp32["score"], abs=0.05)

    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "new" / "model.safetensors")
    weights["reference_bank"][0, 0, 0] += 1.0  # edited outside the model
    save_file(weights, tmp_path / "new" / "model.safetensors", metadata={"format": "pt"})
    assert main([*detect, *flags, "--output", str(tmp_path / "edited")]) == 2
    assert "do not match their record" in _one_line(capsys, "detect")

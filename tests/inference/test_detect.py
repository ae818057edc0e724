"""`aaclip detect` and `aaclip calibrate`: overlays, records, EXIF, the threshold rules and where they are saved."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from aaclip_hf.data.image_io import BadInputError
from aaclip_hf.inference.calibrate import calibrate_threshold
from aaclip_hf.inference.detect import (
    anomaly_probability,
    collect_images,
    decision_pixel_threshold,
    detect,
    make_pipeline,
)
from aaclip_hf.inference.visualize import apply_colormap, contour_overlay, detection_figure


def _save(path, height, width, seed=0, exif_orientation=None):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    return path


def test_detect_writes_overlays_records_and_respects_exif(tiny_model, processor, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    _save(folder / "a.png", 37, 53, seed=1)
    _save(folder / "sub" / "a.png", 20, 20, seed=2)  # same stem, other folder
    _save(folder / "rotated.jpg", 40, 60, seed=3, exif_orientation=6)  # stored 60 wide x 40 high, shown 40 x 60
    out = tmp_path / "out"
    records = detect(
        tiny_model, processor, [folder], out, class_name="bottle", threshold=0.5, save_maps=True, progress=False
    )
    assert [r["image"].split("images/")[1] for r in records] == ["a.png", "rotated.jpg", "sub/a.png"]
    by_name = {r["image"].split("images/")[1]: r for r in records}
    assert (by_name["rotated.jpg"]["height"], by_name["rotated.jpg"]["width"]) == (60, 40)
    assert np.load(by_name["rotated.jpg"]["anomaly_map"]).shape == (60, 40)
    assert np.load(by_name["a.png"]["anomaly_map"]).shape == (37, 53)
    assert len({r["overlay"] for r in records}) == 3
    for r in records:
        width, height = Image.open(r["overlay"]).size
        assert height > 256 and width > 3 * 256 * min(r["width"], r["height"]) / max(
            r["width"], r["height"]
        )  # enlarged
        assert r["is_anomaly"] == (r["score"] >= 0.5) and r["label"] == ("anomaly" if r["is_anomaly"] else "normal")
    saved = json.loads((out / "detections.json").read_text())
    assert [s["score"] for s in saved] == [r["score"] for r in records]
    rows = list(csv.DictReader(open(out / "detections.csv")))
    assert [float(row["score"]) for row in rows] == pytest.approx([r["score"] for r in records])
    # scores equal the pipeline's on the upright image
    pipe = make_pipeline(tiny_model, processor)
    upright = ImageOps.exif_transpose(Image.open(folder / "rotated.jpg"))
    assert upright.size == (40, 60)
    assert pipe(upright, class_name="bottle")["score"] == pytest.approx(by_name["rotated.jpg"]["score"], abs=1e-6)


def test_probability_is_the_map_part_of_the_image_score(processor):
    from ..conftest import make_tiny_model

    model = make_tiny_model(image_score_mode={"industrial": "map", "medical": "map"})
    model.update_text_anchors(processor, ["object"])
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    with torch.no_grad():
        out = model(**processor(images=[image], return_tensors="pt"))
    levels = model.config.num_levels
    p = anomaly_probability(out.anomaly_map_grid[0].numpy(), levels)
    assert float(p.max()) == pytest.approx(float(out.image_score[0]), abs=1e-6)
    np.testing.assert_allclose(
        anomaly_probability(np.array([0.0, levels / 2, levels]), levels),
        1 / (1 + np.exp(-np.array([-1.0, 0.0, 1.0]))),
        rtol=1e-6,
    )


def test_decision_region_threshold_follows_the_score_definition(tiny_model):
    config = tiny_model.config
    # fused: w * p + (1 - w) * r >= t  <=>  p >= (t - (1 - w) r) / w; w = 0.5, t = 0.6, r = 0.4 -> 0.8
    assert decision_pixel_threshold(config, 0.6, 0.4) == pytest.approx(0.8)
    assert decision_pixel_threshold(config, 0.6, 0.4, domain="medical") == pytest.approx(0.6)  # "map" score
    config.image_score_mode = {"industrial": "raw", "medical": "map"}
    assert math.isinf(decision_pixel_threshold(config, 0.6, 0.4))


def test_calibration_rules_by_hand():
    t, info = calibrate_threshold([0.2, 0.3, 0.5])
    assert t == pytest.approx(0.51) and info["method"] == "normal" and info["normal_accepted"] == 3
    assert calibrate_threshold([0.2, 0.3, 0.5], quantile=0.5, margin=0.0)[0] == pytest.approx(0.3)
    # separable: F1-optimal threshold 0.6 (lowest anomalous), moved to the midpoint with the next lower score 0.3
    t, info = calibrate_threshold([0.1, 0.2, 0.3], [0.6, 0.7])
    assert t == pytest.approx(0.45) and info["method"] == "f1" and info["f1_max"] == 1.0
    # overlapping: thresholds 0.8/0.5/0.4/0.1 give F1 2/3, 1/2, 4/5, 2/3 -> 0.4, midpoint with 0.1 -> 0.25
    t, info = calibrate_threshold([0.1, 0.5], [0.4, 0.8])
    assert t == pytest.approx(0.25) and info["f1_max"] == pytest.approx(0.8) and info["anomalous_detected"] == 2
    t, info = calibrate_threshold([0.995])
    assert t == 1.0 and info["clipped_from"] == pytest.approx(1.005)
    with pytest.raises(ValueError, match="anomalous"):
        calibrate_threshold([0.1], method="f1")
    with pytest.raises(ValueError, match="normal"):
        calibrate_threshold([])


def test_calibrate_cli_stores_the_threshold_with_the_model(tiny_model, processor, tmp_path, capsys):
    from aaclip_hf.cli import main
    from aaclip_hf.runtime.loading import load_model_and_processor

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    normal = tmp_path / "normal"
    normal.mkdir()
    for i in range(3):
        _save(normal / f"{i}.png", 30 + i, 40, seed=10 + i)
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_dir),
                "--normal",
                str(normal),
                "--class-name",
                "bottle",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    pipe = make_pipeline(tiny_model, processor)
    scores = [pipe(Image.open(p), class_name="bottle")["score"] for p in sorted(normal.iterdir())]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["decision_threshold"] == pytest.approx(max(scores) + 0.01, abs=1e-6)
    assert hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest() == weights
    details = json.loads((model_dir / "calibration.json").read_text())
    assert details["normal_scores"] == pytest.approx(scores, abs=1e-6) and details["class_name"] == "bottle"
    assert "saved in" in capsys.readouterr().out
    # the pipeline and detect now use it by default
    model, proc = load_model_and_processor(str(model_dir), "cpu")
    result = make_pipeline(model, proc)(Image.open(normal / "0.png"), class_name="bottle")
    assert result["threshold"] == pytest.approx(config["decision_threshold"]) and not result["is_anomaly"]
    # a copy instead of in place
    copy_dir = tmp_path / "copy"
    anomalous = tmp_path / "anomalous"
    anomalous.mkdir()
    _save(anomalous / "x.png", 33, 33, seed=99)
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_dir),
                "--normal",
                str(normal),
                "--anomalous",
                str(anomalous),
                "--class-name",
                "bottle",
                "--output",
                str(copy_dir),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((copy_dir / "calibration.json").read_text())["method"] == "f1"


def test_detect_cli_and_input_errors(tiny_model, processor, tmp_path, capsys):
    from aaclip_hf.cli import main

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    image = _save(tmp_path / "x.png", 25, 31)
    out = tmp_path / "out"
    assert (
        main(
            [
                "detect",
                str(image),
                "--model",
                str(model_dir),
                "--output",
                str(out),
                "--threshold",
                "0.0",
                "--device",
                "cpu",
                "--no-progress",
                "--heatmap-scale",
                "fixed",
            ]
        )
        == 0
    )
    assert "1 of 1 image(s) anomalous" in capsys.readouterr().out
    assert (out / "overlays" / "x.png").is_file()
    with pytest.raises(BadInputError, match="missing.png"):
        collect_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        collect_images([tmp_path / "empty"])
    with pytest.raises(ValueError, match="threshold"):
        detect(tiny_model, processor, [image], out, threshold=2.0, progress=False)


def test_overlay_pieces():
    np.testing.assert_array_equal(
        apply_colormap(np.array([[0.0, 1.0, 2.0]])), [[[0, 0, 128], [128, 0, 0], [128, 0, 0]]]
    )
    image = Image.new("RGB", (20, 20), (10, 10, 10))
    region = np.zeros((20, 20), bool)
    region[5:15, 5:15] = True
    drawn = np.asarray(contour_overlay(image, region, thickness=1, shade=0.0))
    assert (
        tuple(drawn[5, 5]) == (255, 32, 32)
        and tuple(drawn[10, 10]) == (10, 10, 10)
        and tuple(drawn[0, 0]) == (10, 10, 10)
    )
    figure = detection_figure(image, np.full((20, 20), 0.5, np.float32), region, "title")
    assert figure.size[0] > 3 * 256
    with pytest.raises(ValueError, match="map"):
        detection_figure(image, np.zeros((5, 5)), region, "title")


def test_bad_files_stop_detect_unless_skipped(tiny_model, processor, tmp_path, capsys):
    from aaclip_hf.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    _save(folder / "a_good.png", 20, 24)
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _save(folder / "c_good.png", 30, 18, seed=1)
    with pytest.raises(BadInputError, match="b_corrupt.png"):
        detect(tiny_model, processor, [folder], tmp_path / "strict", progress=False, batch_size=2)
    records = detect(
        tiny_model,
        processor,
        [folder],
        tmp_path / "lenient",
        progress=False,
        batch_size=2,
        class_name=["bottle", "pcb1", "object"],
        skip_bad_files=True,
    )
    assert [Path(r["image"]).name for r in records] == ["a_good.png", "c_good.png"]
    assert [r["class_name"] for r in records] == ["bottle", "object"]  # per-image names stay aligned
    skipped = json.loads((tmp_path / "lenient" / "skipped.json").read_text())
    assert [Path(s["image"]).name for s in skipped] == ["b_corrupt.png"]
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    argv = [
        "detect",
        str(folder),
        "--model",
        str(model_dir),
        "--output",
        str(tmp_path / "cli"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 2 and "b_corrupt.png" in capsys.readouterr().err
    assert main(argv + ["--skip-bad-files"]) == 0
    assert "1 unreadable image(s) skipped" in capsys.readouterr().out

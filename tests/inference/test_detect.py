"""`aaclip detect`: overlays, records, EXIF, names relative to the input, overlay names, the one heat scale, the
threshold each class is decided at, and the memory bounds of image decoding."""

from __future__ import annotations

import csv
import importlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from aaclip_hf.cli import main
from aaclip_hf.data.image_io import BadInputError
from aaclip_hf.inference.detect import InputImage, collect_images, detect, make_pipeline, overlay_names
from aaclip_hf.inference.visualize import apply_colormap, contour_overlay, detection_figure

from ..conftest import make_tiny_model
from .conftest import image_folder, save_image, store_references


detect_module = importlib.import_module("aaclip_hf.inference.detect")  # the package re-exports `detect`
QUIET = ["--device", "cpu", "--no-progress"]


def _detect_cli(model_dir, out, *inputs_and_flags):
    return main(["detect", *map(str, inputs_and_flags), "--model", str(model_dir), "--output", str(out), *QUIET])


def test_detect_writes_overlays_records_and_respects_exif(tiny_model, processor, tmp_path):
    folder = tmp_path / "images"
    save_image(folder / "a.png", 37, 53, seed=1)
    save_image(folder / "sub" / "a.png", 20, 20, seed=2)  # same stem, other folder
    save_image(folder / "rotated.jpg", 40, 60, seed=3, exif_orientation=6)  # stored 60 wide x 40 high, shown 40 x 60
    out = tmp_path / "out"
    records = detect(
        tiny_model, processor, [folder], out, class_name="bottle", threshold=0.5, save_maps=True, progress=False
    )
    assert [r["image"] for r in records] == ["a.png", "rotated.jpg", "sub/a.png"]  # relative to the folder given
    assert [r["path"] for r in records] == [str(folder / r["image"]) for r in records]
    by_name = {r["image"]: r for r in records}
    assert (by_name["rotated.jpg"]["height"], by_name["rotated.jpg"]["width"]) == (60, 40)
    assert np.load(out / by_name["rotated.jpg"]["anomaly_map"]).shape == (60, 40)
    assert np.load(out / by_name["a.png"]["anomaly_map"]).shape == (37, 53)
    assert [r["overlay"] for r in records] == ["overlays/a.png", "overlays/rotated.png", "overlays/sub__a.png"]
    for r in records:
        width, height = Image.open(out / r["overlay"]).size
        assert height > 256 and width > 3 * 256 * min(r["width"], r["height"]) / max(r["width"], r["height"])
        assert r["is_anomaly"] == (r["score"] >= 0.5) and r["label"] == ("anomaly" if r["is_anomaly"] else "normal")
        assert r["threshold_source"] == "given" and not r["calibrated"]
    saved = json.loads((out / "detections.json").read_text())
    assert [s["score"] for s in saved] == [r["score"] for r in records]
    rows = list(csv.DictReader(open(out / "detections.csv")))
    assert [float(row["score"]) for row in rows] == pytest.approx([r["score"] for r in records])
    # scores equal the pipeline's on the upright image
    pipe = make_pipeline(tiny_model, processor)
    upright = ImageOps.exif_transpose(Image.open(folder / "rotated.jpg"))
    assert upright.size == (40, 60)
    assert pipe(upright, class_name="bottle")["score"] == pytest.approx(by_name["rotated.jpg"]["score"], abs=1e-6)


def test_names_are_relative_to_the_input_and_printed_so(model_dir, tmp_path, capsys):
    first, second = tmp_path / "line1", tmp_path / "line2"
    save_image(first / "a.png", 20, 20, seed=1)
    save_image(first / "deep" / "b.png", 20, 20, seed=2)
    save_image(second / "a.png", 20, 20, seed=3)
    single = save_image(tmp_path / "single.png", 20, 20, seed=4)
    names = [image.name for image in collect_images([first, second, single])]
    assert names == ["line1/a.png", "line1/deep/b.png", "line2/a.png", "single.png"]  # prefixed: several inputs
    assert [image.name for image in collect_images([first])] == ["a.png", "deep/b.png"]
    assert _detect_cli(model_dir, tmp_path / "out", first, second) == 0
    printed = capsys.readouterr().out
    for name in ("line1/a.png  ", "line1/deep/b.png  ", "line2/a.png  "):
        assert name in printed
    assert str(tmp_path) not in printed.split("overlays in")[0]  # no absolute paths in the table
    overlays = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert overlays == ["line1__a.png", "line1__deep__b.png", "line2__a.png"]


def test_overlay_names_are_unique_short_and_the_same_on_every_run(tmp_path):
    long_name = "x" * 247 + ".png"  # 251 characters: the overlay (with a folder prefix) would pass 255 bytes
    images = [
        InputImage(tmp_path / "a.png", "a.png"),
        InputImage(tmp_path / "a.jpg", "a.jpg"),  # the same stem
        InputImage(tmp_path / "A.png", "A.png"),  # the same on a file system without case
        InputImage(tmp_path / "one" / long_name, "one/" + long_name),
        InputImage(tmp_path / "two" / long_name, "two/" + long_name),
        InputImage(tmp_path / "s" / ("y" * 246 + "1.png"), "s/" + "y" * 246 + "1.png"),  # differ only at the end
        InputImage(tmp_path / "s" / ("y" * 246 + "2.png"), "s/" + "y" * 246 + "2.png"),
        InputImage(tmp_path / "subfolder1" / ("の" * 80 + ".png"), "subfolder1/" + "の" * 80 + ".png"),
    ]
    names = overlay_names(images)
    assert names == overlay_names(images)  # the same inputs, the same names
    assert len({name.casefold() for name in names}) == len(images)
    assert all(len(os.fsencode(name + ".png")) <= 124 for name in names)
    assert names[:3] == ["a", f"a-{names[1][-10:]}", f"A-{names[2][-10:]}"]
    assert names[3].startswith("one__xxx") and names[7].startswith("subfolder1__のの")


def test_clashing_and_long_file_names_are_all_written(model_dir, tmp_path, capsys):
    """Two 251-character file names that would clash, and a name of multi-byte characters that would pass 255
    bytes with its folder prefix: every image gets its own overlay and map."""
    folder = tmp_path / "images"
    long_name = "x" * 247 + ".png"
    for i, path in enumerate(
        [folder / "one" / long_name, folder / "two" / long_name, folder / "subfolder1" / ("の" * 80 + ".png")]
    ):
        save_image(path, 16, 16, seed=i)
    out = tmp_path / "out"
    assert _detect_cli(model_dir, out, folder, "--save-maps") == 0, capsys.readouterr().err
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == 3 and len({r["overlay"] for r in records}) == 3
    for r in records:
        assert (out / r["overlay"]).is_file() and (out / r["anomaly_map"]).is_file()
        assert len(os.fsencode(Path(r["overlay"]).name)) <= 255
    assert sorted(r["image"] for r in records) == sorted(
        ["one/" + long_name, "two/" + long_name, f"subfolder1/{'の' * 80}.png"]
    )


def test_decision_region_follows_the_score_definition(processor, tmp_path):
    """The region is where one pixel alone makes the image score reach the threshold: fused `w * p + (1 - w) r >= t`
    gives `p >= (t - (1 - w) r) / w`; a map-only score gives `p >= t`; a score without the map has no region."""
    image = save_image(tmp_path / "x.png", 24, 24, seed=5)
    model = make_tiny_model(image_score_mode={"industrial": "fused", "medical": "map"})
    model.update_text_anchors(processor, ["object"])
    fused = detect(model, processor, [image], tmp_path / "a", threshold=0.6, progress=False)[0]
    w = model.config.image_score_map_weight
    assert fused["pixel_threshold"] == pytest.approx((0.6 - (1 - w) * fused["raw_anomaly_score"]) / w, abs=1e-6)
    medical = detect(model, processor, [image], tmp_path / "b", threshold=0.6, domain="medical", progress=False)[0]
    assert medical["pixel_threshold"] == pytest.approx(0.6)
    model.config.image_score_mode = {"industrial": "raw", "medical": "map"}
    raw = detect(model, processor, [image], tmp_path / "c", threshold=0.6, progress=False)[0]
    assert raw["pixel_threshold"] is None and raw["anomalous_area"] == 0.0


def test_heat_maps_of_one_class_are_on_one_scale(tiny_model, processor, tmp_path, monkeypatch):
    """A normal and an anomalous image of one class: each overlay shows the pipeline's heat map as it is (0.5 = the
    class's decision level), never stretched to the image's own range, so only the anomalous one shows the colours
    at and above the threshold, and the same heat value has the same colour in both."""
    pipe = make_pipeline(tiny_model, processor)
    paths = [save_image(tmp_path / "images" / f"{i}.png", 32, 32, seed=20 + i) for i in range(6)]
    scores = sorted((pipe(Image.open(p), class_name="bottle")["score"], p) for p in paths)
    low, high = scores[0], scores[-1]
    threshold = 0.5 * (low[0] + high[0])
    shown = {}
    original = detect_module.detection_figure

    def capture(image, probability, region, title, **kwargs):
        shown[title.split()[0]] = (probability, region)
        return original(image, probability, region, title, **kwargs)

    monkeypatch.setattr(detect_module, "detection_figure", capture)
    records = detect(
        tiny_model, processor, [low[1], high[1]], tmp_path / "out", class_name="bottle", threshold=threshold,
        progress=False,
    )  # fmt: skip
    normal, anomalous = (shown[Path(p).name] for _, p in (low, high))
    assert [r["is_anomaly"] for r in records] == [False, True]
    assert normal[0].max() < 0.5 <= anomalous[0].max()  # a per-image stretch would paint the normal one red too
    for (heat, region), (_, path) in zip((normal, anomalous), (low, high)):
        expected = pipe(Image.open(path), class_name="bottle", threshold=threshold)["anomaly_probability"]
        np.testing.assert_allclose(heat, expected, atol=1e-6)
        np.testing.assert_array_equal(region, heat >= 0.5)
    level = np.array([[0.25, 0.5, 0.75]], np.float32)
    np.testing.assert_array_equal(apply_colormap(level), apply_colormap(level.copy()))  # one fixed colour ramp


def test_each_class_is_decided_at_its_own_threshold_and_says_where_it_came_from(processor, tmp_path, capsys):
    from aaclip_hf.runtime.model_folder import save_model_folder

    model = make_tiny_model(decision_thresholds={"bottle": 0.61}, decision_threshold=0.42)
    model.update_text_anchors(processor, ["object", "bottle", "pcb1"])
    model_dir = save_model_folder(model, processor, tmp_path / "model")
    images = image_folder(tmp_path / "images", 2)
    records = detect(
        model, processor, [images, images / "0.png"], tmp_path / "api", class_name=["bottle", "pcb1", "bottle"],
        progress=False,
    )  # fmt: skip
    assert [(r["threshold"], r["calibrated"], r["threshold_source"]) for r in records] == [
        (pytest.approx(0.61), True, "calibrated"),
        (pytest.approx(0.42), False, "fallback"),
        (pytest.approx(0.61), True, "calibrated"),
    ]
    assert _detect_cli(model_dir, tmp_path / "a", images, "--class-name", "bottle") == 0
    assert "image(s) anomalous at threshold 0.6100 (calibrated for bottle; zero-shot)" in capsys.readouterr().out
    assert _detect_cli(model_dir, tmp_path / "b", images, "--class-name", "pcb1") == 0
    assert "at threshold 0.4200 (the model's fallback, not calibrated for this class; zero-shot)" in (
        capsys.readouterr().out
    )
    assert _detect_cli(model_dir, tmp_path / "c", images, "--class-name", "bottle", "--threshold", "0.3") == 0
    assert "at threshold 0.3000 (given with --threshold; zero-shot)" in capsys.readouterr().out
    plain = save_model_folder(make_tiny_model(), processor, tmp_path / "plain")
    assert _detect_cli(plain, tmp_path / "d", images) == 0
    assert "object: " in (out := capsys.readouterr().out) and "(the default, not calibrated for this class" in out


def test_stored_references_make_detect_few_shot_unless_turned_off(tiny_model, processor, tmp_path, capsys):
    from aaclip_hf.runtime.model_folder import save_model_folder

    references = [Image.open(save_image(tmp_path / "refs" / f"{i}.png", 32, 32, seed=40 + i)) for i in range(3)]
    store_references(tiny_model, processor, "bottle", references)
    model_dir = save_model_folder(tiny_model, processor, tmp_path / "model")
    images = image_folder(tmp_path / "images", 2)
    assert _detect_cli(model_dir, tmp_path / "a", images, "--class-name", "bottle") == 0
    assert "(default, not calibrated" not in (out := capsys.readouterr().out) and "; 3-shot)" in out
    few = json.loads((tmp_path / "a" / "detections.json").read_text())
    assert [r["normal_references"] for r in few] == [3, 3]
    assert _detect_cli(model_dir, tmp_path / "b", images, "--class-name", "bottle", "--no-references") == 0
    assert "; zero-shot)" in capsys.readouterr().out
    zero = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert [r["normal_references"] for r in zero] == [0, 0]
    assert [r["score"] for r in zero] != [r["score"] for r in few]


def test_detect_cli_and_input_errors(model_dir, tiny_model, processor, tmp_path, capsys):
    image = save_image(tmp_path / "x.png", 25, 31)
    out = tmp_path / "out"
    assert _detect_cli(model_dir, out, image, "--threshold", "0.0") == 0
    assert "1 of 1 image(s) anomalous" in capsys.readouterr().out
    assert (out / "overlays" / "x.png").is_file()
    with pytest.raises(BadInputError, match="missing.png"):
        collect_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        collect_images([tmp_path / "empty"])
    with pytest.raises(ValueError, match="threshold"):
        detect(tiny_model, processor, [image], out, threshold=2.0, progress=False)


def test_an_empty_class_name_is_one_line_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("aaclip_hf.runtime.loading.load_model_and_processor", never)
    image = save_image(tmp_path / "x.png", 16, 16)
    for command in (["detect", str(image), "--output", str(tmp_path / "o")], ["calibrate", "--normal", str(image)]):
        code = main([*command, "--model", str(model_dir), "--class-name", "", *QUIET])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "class names must be non-empty strings, got ''" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="non-empty"):
        detect(None, None, [image], tmp_path / "o", class_name=" ", progress=False)


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


def test_bad_files_stop_detect_unless_skipped(model_dir, tiny_model, processor, tmp_path, capsys):
    folder = tmp_path / "images"
    save_image(folder / "a_good.png", 20, 24)
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    save_image(folder / "c_good.png", 30, 18, seed=1)
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
    assert [r["image"] for r in records] == ["a_good.png", "c_good.png"]
    assert [r["class_name"] for r in records] == ["bottle", "object"]  # per-image names stay aligned
    skipped = json.loads((tmp_path / "lenient" / "skipped.json").read_text())
    assert [s["image"] for s in skipped] == ["b_corrupt.png"]
    assert _detect_cli(model_dir, tmp_path / "cli", folder) == 2 and "b_corrupt.png" in capsys.readouterr().err
    assert _detect_cli(model_dir, tmp_path / "cli", folder, "--skip-bad-files") == 0
    assert "1 unreadable image(s) skipped" in capsys.readouterr().out


# ------------------------------------------------------------------ memory


def test_large_images_are_decoded_one_at_a_time_and_bounded(model_dir, tmp_path, monkeypatch):
    """Four PNGs far above the longest-side bound (the default bound lowered here so the test runs fast): each one
    is decoded alone and reduced at once, so the pipeline, the maps and the overlays only see bounded images."""
    import aaclip_hf.data.image_io as image_io

    monkeypatch.setattr(image_io, "DEFAULT_MAX_SIDE", 64)  # what --max-image-side defaults to
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (900, 600), (40 * i, 90, 120)).save(folder / f"{i}.png", compress_level=1)
    decoding, peak, decoded = [0], [0], []
    lock = threading.Lock()
    original = image_io._decode

    def counting(image, *args, **kwargs):
        with lock:
            decoding[0] += 1
            peak[0] = max(peak[0], decoding[0])
        try:
            result = original(image, *args, **kwargs)
            decoded.append(result.size)
            return result
        finally:
            with lock:
                decoding[0] -= 1

    monkeypatch.setattr(image_io, "_decode", counting)
    out = tmp_path / "out"
    assert _detect_cli(model_dir, out, folder, "--save-maps", "--batch-size", "2") == 0
    assert peak == [1] and decoded == [(64, 43)] * 4  # one full-size decode at a time, each reduced before the next
    for record in json.loads((out / "detections.json").read_text()):
        assert (record["width"], record["height"]) == (64, 43)
        assert np.load(out / record["anomaly_map"]).shape == (43, 64)


def test_a_huge_processor_size_is_refused_before_anything_is_allocated(model_dir, tmp_path, capsys, monkeypatch):
    from aaclip_hf.modeling.image_processing_aaclip import AAClipImageProcessor

    config_path = model_dir / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["size"] = {"height": 100000, "width": 100000}
    config_path.write_text(json.dumps(config))

    def never(*args, **kwargs):
        raise AssertionError("no image may be preprocessed at this size")

    monkeypatch.setattr(AAClipImageProcessor, "preprocess", never)
    image = save_image(tmp_path / "x.png", 16, 16)
    code = _detect_cli(model_dir, tmp_path / "out", image)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "processor_config.json" in err and "(100000, 100000) but the model expects 40x40" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ non-finite values


def test_a_non_finite_score_is_an_error_naming_the_image(model_dir, tmp_path, capsys, monkeypatch):
    from aaclip_hf.modeling.modeling_aaclip import AAClipModel

    forward = AAClipModel.forward

    def nan_scores(self, *args, **kwargs):
        outputs = forward(self, *args, **kwargs)
        outputs.image_score = outputs.image_score * float("nan")
        return outputs

    monkeypatch.setattr(AAClipModel, "forward", nan_scores)
    image = save_image(tmp_path / "images" / "broken_model.png", 16, 16)
    code = _detect_cli(model_dir, tmp_path / "out", image.parent)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert str(image) in err and "non-finite anomaly score" in err
    assert not (tmp_path / "out").exists()

"""`aaclip calibrate`: one class's operating point at a time, from its normal (and anomalous) images, with the
class's stored references; the rules by hand; flags refused before anything is scored."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
from PIL import Image

from aaclip_hf.cli import main
from aaclip_hf.evaluation.operating_points import threshold_for_escape_rate, threshold_for_false_reject_rate
from aaclip_hf.inference.calibrate import calibrate_threshold, check_calibration_settings
from aaclip_hf.inference.detect import make_pipeline
from aaclip_hf.modeling.configuration_aaclip import StaleThresholdWarning
from aaclip_hf.runtime.loading import load_model_and_processor

from .conftest import image_folder, save_image, store_references


QUIET = ["--device", "cpu", "--no-progress"]


def _calibrate(model_dir, *flags):
    return main(["calibrate", "--model", str(model_dir), *map(str, flags), *QUIET])


def _scores(model_dir, folder, class_name, **kwargs):
    pipe = make_pipeline(*load_model_and_processor(model_dir, "cpu"))
    return [pipe(Image.open(p), class_name=class_name, **kwargs)["score"] for p in sorted(folder.iterdir())]


def test_calibration_rules_by_hand():
    t, info = calibrate_threshold([0.2, 0.3, 0.5])
    assert t == pytest.approx(0.51) and info["method"] == "normal" and info["operating_point"]["false_rejects"] == 0
    assert calibrate_threshold([0.2, 0.3, 0.5], quantile=0.5, margin=0.0)[0] == pytest.approx(0.3)
    # separable: F1-optimal threshold 0.6 (lowest anomalous), moved to the midpoint with the next lower score 0.3
    t, info = calibrate_threshold([0.1, 0.2, 0.3], [0.6, 0.7])
    assert t == pytest.approx(0.45) and info["method"] == "f1" and info["f1_max"] == 1.0
    # overlapping: thresholds 0.8/0.5/0.4/0.1 give F1 2/3, 1/2, 4/5, 2/3 -> 0.4, midpoint with 0.1 -> 0.25
    t, info = calibrate_threshold([0.1, 0.5], [0.4, 0.8])
    assert t == pytest.approx(0.25) and info["f1_max"] == pytest.approx(0.8)
    assert info["operating_point"]["escapes"] == 0 and info["operating_point"]["false_rejects"] == 1
    # targets: one of four normal images may be flagged -> between the two largest normal scores
    t, info = calibrate_threshold([0.1, 0.2, 0.3, 0.4], max_false_reject=0.25)
    assert t == pytest.approx(0.35) and info["method"] == "false-reject"
    # one of four anomalous images may pass -> between the two smallest anomalous scores
    t, info = calibrate_threshold([0.1], [0.5, 0.6, 0.7, 0.8], max_escape=0.25)
    assert t == pytest.approx(0.55) and info["method"] == "escape" and info["operating_point"]["escapes"] == 1
    t, info = calibrate_threshold([0.995])
    assert t == 1.0 and info["clipped_from"] == pytest.approx(1.005)
    with pytest.raises(ValueError, match="anomalous"):
        calibrate_threshold([0.1], method="f1")
    with pytest.raises(ValueError, match="normal"):
        calibrate_threshold([])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"margin": 1.0}, r"margin must be in \[0, 1\)"),
        ({"margin": -0.1}, "negative margin"),
        ({"quantile": 1.5}, r"quantile must be in \[0, 1\]"),
        ({"max_false_reject": 1.0}, r"--max-false-reject rate must be in \[0, 1\)"),
        ({"max_escape": float("nan"), "with_anomalous": True}, "--max-escape rate must be in"),
        ({"max_false_reject": 0.1, "max_escape": 0.1, "with_anomalous": True}, "give one target"),
        ({"method": "f1", "max_false_reject": 0.1}, "--max-false-reject sets the false-reject rule"),
        ({"method": "escape", "with_anomalous": True}, r"needs a target rate \(--max-escape\)"),
        ({"max_escape": 0.1}, r"the escape rule needs anomalous images too \(--anomalous\)"),
        ({"method": "f1"}, "the f1 rule needs anomalous images"),
        ({"method": "best"}, "method must be one of"),
    ],
)
def test_calibration_settings_are_checked_before_scoring(settings, message):
    with pytest.raises(ValueError, match=message):
        check_calibration_settings(**settings)


def test_calibration_flags_are_one_line_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("aaclip_hf.runtime.loading.load_model_and_processor", never)
    normal = image_folder(tmp_path / "normal", 2)
    for flags, message in (
        (["--max-escape", "0.1"], "the escape rule needs anomalous images too (--anomalous)"),
        (["--method", "f1"], "the f1 rule needs anomalous images too"),
        (["--margin", "1"], "margin must be in [0, 1)"),
        (["--max-false-reject", "1.5"], "--max-false-reject rate must be in [0, 1)"),
        (["--method", "normal", "--max-false-reject", "0.1"], "cannot be combined with --method normal"),
    ):
        assert _calibrate(model_dir, "--normal", normal, *flags) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not json.loads((model_dir / "config.json").read_text()).get("decision_thresholds")


def test_calibrating_one_class_keeps_the_others_and_says_what_it_replaced(model_dir, tmp_path, capsys):
    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    bottle_normal = image_folder(tmp_path / "bottle" / "good", 3, seed=10)
    bottle_bad = image_folder(tmp_path / "bottle" / "bad", 2, seed=20)
    carpet_normal = image_folder(tmp_path / "carpet" / "good", 3, seed=30)
    carpet_bad = image_folder(tmp_path / "carpet" / "bad", 2, seed=40)

    assert _calibrate(model_dir, "--normal", bottle_normal, "--class-name", "bottle") == 0
    bottle = max(_scores(model_dir, bottle_normal, "bottle")) + 0.01
    printed = capsys.readouterr().out
    assert f"bottle: decision threshold {bottle:.4f} (normal rule, new for this class) in " in printed
    assert "on the calibration images: 0 of 3 normal flagged (zero-shot)" in printed

    flags = ["--normal", carpet_normal, "--anomalous", carpet_bad, "--class-name", "carpet"]
    assert _calibrate(model_dir, *flags) == 0
    assert "carpet: decision threshold " in (printed := capsys.readouterr().out) and "(f1 rule, new for" in printed
    config = json.loads((model_dir / "config.json").read_text())
    assert config["decision_thresholds"]["bottle"] == pytest.approx(bottle, abs=1e-6)  # kept
    assert set(config["decision_thresholds"]) == {"bottle", "carpet"}
    details = json.loads((model_dir / "calibration.json").read_text())
    assert details["bottle"]["method"] == "normal" and details["carpet"]["method"] == "f1"
    assert details["bottle"]["normal_scores"] == pytest.approx(_scores(model_dir, bottle_normal, "bottle"), abs=1e-6)

    assert _calibrate(model_dir, "--normal", bottle_normal, "--anomalous", bottle_bad, "--class-name", "bottle") == 0
    assert f"(f1 rule, replaces {bottle:.4f})" in capsys.readouterr().out
    config = json.loads((model_dir / "config.json").read_text())
    assert config["decision_thresholds"]["carpet"] == pytest.approx(details["carpet"]["operating_point"]["threshold"])
    assert hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest() == weights

    # detect then decides each class at its own threshold, and says so
    images = image_folder(tmp_path / "check", 1, seed=50)
    for name in ("bottle", "carpet"):
        out = tmp_path / f"out-{name}"
        argv = ["detect", str(images), "--model", str(model_dir), "--output", str(out), "--class-name", name]
        assert main([*argv, *QUIET]) == 0
        expected = config["decision_thresholds"][name]
        assert f"at threshold {expected:.4f} (calibrated for {name}; zero-shot)" in capsys.readouterr().out
        record = json.loads((out / "detections.json").read_text())[0]
        assert record["threshold"] == pytest.approx(expected) and record["calibrated"]


def test_target_rates_from_normal_images_alone_or_with_anomalous_ones(model_dir, tmp_path, capsys):
    normal = image_folder(tmp_path / "normal", 4, seed=60)
    anomalous = image_folder(tmp_path / "anomalous", 4, seed=70)
    normal_scores = _scores(model_dir, normal, "bottle")
    anomalous_scores = _scores(model_dir, anomalous, "bottle")

    assert _calibrate(model_dir, "--normal", normal, "--class-name", "bottle", "--max-false-reject", "0.25") == 0
    printed = capsys.readouterr().out
    expected, _ = threshold_for_false_reject_rate(normal_scores, 0.25, 0.01)
    assert f"bottle: decision threshold {expected:.4f} (false-reject rule, new for this class)" in printed
    assert "on the calibration images: 1 of 4 normal flagged (zero-shot)" in printed

    flags = ["--normal", normal, "--anomalous", anomalous, "--class-name", "bottle", "--max-escape", "0.25"]
    assert _calibrate(model_dir, *flags) == 0
    printed = capsys.readouterr().out
    expected_escape, _ = threshold_for_escape_rate(anomalous_scores, 0.25, 0.01)
    assert f"bottle: decision threshold {max(0.0, expected_escape):.4f} (escape rule, replaces {expected:.4f})" in (
        printed
    )
    assert "1 of 4 anomalous passed" in printed
    details = json.loads((model_dir / "calibration.json").read_text())["bottle"]
    assert details["target_escape_rate"] == 0.25 and details["operating_point"]["escapes"] == 1


def test_calibration_scores_with_the_class_stored_references(tiny_model, processor, tmp_path, capsys):
    from aaclip_hf.runtime.model_folder import save_model_folder

    references = [Image.open(save_image(tmp_path / "refs" / f"{i}.png", 32, 32, seed=80 + i)) for i in range(2)]
    store_references(tiny_model, processor, "bottle", references)
    model_dir = save_model_folder(tiny_model, processor, tmp_path / "model")
    normal = image_folder(tmp_path / "normal", 3, seed=90)
    copy = tmp_path / "copy"
    assert _calibrate(model_dir, "--normal", normal, "--class-name", "bottle", "--output", copy) == 0
    assert "(2-shot: the class's stored normal references)" in capsys.readouterr().out
    few_shot = json.loads((copy / "calibration.json").read_text())["bottle"]
    assert few_shot["normal_references"] == 2
    assert few_shot["normal_scores"] == pytest.approx(_scores(model_dir, normal, "bottle"), abs=1e-6)
    zero = tmp_path / "zero"
    assert (
        _calibrate(model_dir, "--normal", normal, "--class-name", "bottle", "--output", zero, "--no-references") == 0
    )
    assert "(zero-shot)" in capsys.readouterr().out
    zero_shot = json.loads((zero / "calibration.json").read_text())["bottle"]
    assert zero_shot["normal_references"] == 0 and zero_shot["normal_scores"] != few_shot["normal_scores"]
    assert zero_shot["normal_scores"] == pytest.approx(
        _scores(model_dir, normal, "bottle", use_references=False), abs=1e-6
    )
    # each threshold is used for the scoring it was calibrated on only (few-shot scores sit on another scale)
    check = image_folder(tmp_path / "check", 1, seed=95)
    for folder, flags, calibrated in (
        (copy, [], True),
        (copy, ["--no-references"], False),
        (zero, ["--no-references"], True),
        (zero, [], False),
    ):
        out = tmp_path / f"out-{folder.name}-{len(flags)}"
        argv = ["detect", str(check), "--model", str(folder), "--output", str(out), "--class-name", "bottle", *flags]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main([*argv, *QUIET]) == 0
        record = json.loads((out / "detections.json").read_text())[0]
        assert record["calibrated"] is calibrated, (folder.name, flags)
        stale = [w for w in caught if issubclass(w.category, StaleThresholdWarning)]
        assert bool(stale) is not calibrated


def test_calibrate_from_a_dataset_spec_and_into_a_copy(model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    image_folder(data / "good", 3, seed=100)
    image_folder(data / "bad", 2, seed=110)
    copy = tmp_path / "copy"
    assert _calibrate(model_dir, "--data", f"{data}::name=widget", "--output", copy) == 0
    printed = capsys.readouterr().out
    assert "widget: decision threshold" in printed and "(f1 rule, new for this class)" in printed
    assert "widget" in json.loads((copy / "config.json").read_text())["decision_thresholds"]
    assert not json.loads((model_dir / "config.json").read_text()).get("decision_thresholds")  # untouched
    assert _calibrate(model_dir, "--data", str(data), "--class-name", "other", "--output", copy) == 2
    assert "choose one with --class-name" in capsys.readouterr().err

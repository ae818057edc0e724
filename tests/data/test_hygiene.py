"""Data hygiene: duplicates, paths outside the root, class names as folders, multi-frame and
non-finite float images."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.data import BadInputError, load_image, load_mask, load_samples
from aaclip_hf.data.hf_datasets import from_hf_dataset, safe_folder_name


def _img(path, value=10, size=8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return str(path)


def _write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    _img(root / "c" / "n0.png", 1)
    _img(root / "c" / "n1.png", 2)
    _img(root / "c" / "a0.png", 50)
    _img(root / "c" / "a0_gt.png", 255)
    return root


def _records():
    return [
        {"image_path": "c/n0.png", "label": 0, "class_name": "c"},
        {"image_path": "c/a0.png", "label": 1, "class_name": "c", "mask_path": "c/a0_gt.png"},
        {"image_path": "c/n1.png", "label": 0, "class_name": "c"},
    ]


# ------------------------------------------------------------------ duplicates


def test_duplicate_jsonl_line_is_an_error_naming_both_lines(data):
    path = _write_jsonl(data / "meta.jsonl", [*_records(), _records()[1]])
    with pytest.raises(BadInputError) as info:
        load_samples(path)
    message = str(info.value)
    assert f"{path}:4 repeats {path}:2" in message and "a0.png" in message
    # the same image spelled differently ("./c/../c/a0.png") is the same image
    other = dict(_records()[1], image_path="./c/../c/a0.png")
    path = _write_jsonl(data / "meta2.jsonl", [*_records(), other])
    with pytest.raises(BadInputError, match=r"meta2.jsonl:4 repeats .*meta2.jsonl:2"):
        load_samples(path)


def test_duplicates_dropped_with_a_warning_under_skip_bad_files(data, caplog):
    path = _write_jsonl(data / "meta.jsonl", [*_records(), _records()[1], _records()[0]])
    with caplog.at_level(logging.WARNING):
        samples = load_samples(path, skip_bad_files=True)
    assert [os.path.basename(s.image_path) for s in samples] == ["n0.png", "a0.png", "n1.png"]
    assert "duplicate image" in caplog.text and "skipped 2 bad entries" in caplog.text


def test_duplicate_in_meta_json_and_across_specs(data):
    meta = {"test": {"c": [{"img_path": "c/n0.png", "anomaly": 0}, {"img_path": "c/n0.png", "anomaly": 0}]}}
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match=r"meta.json:test.c\[1\] repeats .*meta.json:test.c\[0\]"):
        load_samples(data / "meta.json")
    path = _write_jsonl(data / "meta.jsonl", _records())
    with pytest.raises(BadInputError, match=r"dataset 2 .* repeats dataset 1"):
        load_samples([str(path), str(path)])
    assert len(load_samples([str(path), str(path)], skip_bad_files=True)) == 3


# ------------------------------------------------------------------ paths outside the root


@pytest.mark.parametrize(
    "field,value",
    [("mask_path", "../../etc/passwd"), ("image_path", "../outside.png"), ("image_path", "ABSOLUTE")],
)
def test_paths_leaving_the_root_are_refused(data, tmp_path, field, value):
    outside = _img(tmp_path / "outside.png")
    if value == "ABSOLUTE":
        value = outside
    rec = {"image_path": "c/a0.png", "label": 1, "class_name": "c", "mask_path": "c/a0_gt.png", field: value}
    path = _write_jsonl(data / "meta.jsonl", [rec])
    with pytest.raises(BadInputError) as info:
        load_samples(path, check_files=False)
    assert "line 1" in str(info.value) and "outside the dataset root" in str(info.value)
    assert info.value.field == field and "--allow-outside-root" in str(info.value)
    # the explicit opt-in reads it (file checks then apply as usual)
    samples = load_samples(path, check_files=False, allow_outside_root=True)
    assert len(samples) == 1


def test_absolute_path_inside_the_root_is_fine(data):
    rec = {"image_path": str(data / "c" / "n0.png"), "label": 0, "class_name": "c"}
    assert len(load_samples(_write_jsonl(data / "meta.jsonl", [rec]))) == 1


def test_meta_json_and_visa_csv_refuse_escaping_paths(data, tmp_path):
    _img(tmp_path / "x.png")
    (data / "meta.json").write_text(json.dumps({"test": {"c": [{"img_path": "../x.png", "anomaly": 0}]}}))
    with pytest.raises(BadInputError, match="outside the dataset root"):
        load_samples(data / "meta.json")
    assert len(load_samples(data / "meta.json", allow_outside_root=True)) == 1
    visa = tmp_path / "visa"
    (visa / "split_csv").mkdir(parents=True)
    (visa / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\nc,test,normal,../x.png,\n", encoding="utf-8"
    )
    with pytest.raises(BadInputError, match="line 2: the path '../x.png' leads outside"):
        load_samples(visa)


def test_cli_flag_allow_outside_root(data, tmp_path, capsys):
    from aaclip_hf.cli import main

    _img(tmp_path / "elsewhere" / "n.png", 3)
    _img(tmp_path / "elsewhere" / "a.png", 60)
    records = [
        {"image_path": "../elsewhere/n.png", "label": 0, "class_name": "c"},
        {"image_path": "../elsewhere/a.png", "label": 1, "class_name": "c"},
    ]
    path = _write_jsonl(data / "meta.jsonl", records)
    out = tmp_path / "shots.jsonl"
    assert main(["sample-shots", str(path), "--shots", "2", "--output", str(out)]) == 2
    assert "outside the dataset root" in capsys.readouterr().err
    argv = ["sample-shots", str(path), "--shots", "2", "--output", str(out), "--allow-outside-root"]
    assert main(argv) == 0
    from aaclip_hf.cli import evaluate as evaluate_cli
    from aaclip_hf.training.arguments import AAClipTrainingArguments, add_arguments, arguments_from_namespace

    for add in (evaluate_cli.add_evaluate_arguments, add_arguments):
        import argparse

        parser = argparse.ArgumentParser()
        add(parser)
        flags = {a for action in parser._actions for a in action.option_strings}
        assert "--allow-outside-root" in flags
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--model", "m", "--train-data", "d", "--output", "o", "--allow-outside-root"])
    assert arguments_from_namespace(ns).allow_outside_root is True
    assert AAClipTrainingArguments(model="m", train_data=["d"], output_dir="o").allow_outside_root is False


# ------------------------------------------------------------------ datasets bridge: class names as folders


@pytest.mark.parametrize(
    "name,expected",
    [
        ("../x", "___x"),
        ("..", "__"),
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("/etc", "_etc"),
        (".hidden", "_hidden"),
        ("x\x00y", "x_y"),
        ("metal nut", "metal nut"),
    ],
)
def test_safe_folder_name(name, expected):
    assert safe_folder_name(name) == expected


def test_from_hf_dataset_keeps_files_inside_the_cache(tmp_path):
    datasets = pytest.importorskip("datasets")
    png = tmp_path / "src.png"
    _img(png, 5)
    raw = png.read_bytes()
    names = ["../../escape", "a/b", "..", "ok"]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": raw, "path": "x.png"} for _ in names],
            "label": [0, 1, 0, 1],
            "class_name": names,
        },
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Value("int64"), "class_name": datasets.Value("string")}
        ),
    )
    cache = tmp_path / "cache"
    samples = from_hf_dataset(ds, cache)
    assert [s.class_name for s in samples] == names  # the samples keep the real names
    for s in samples:
        assert os.path.commonpath([os.path.abspath(cache), os.path.abspath(s.image_path)]) == os.path.abspath(cache)
        assert os.path.dirname(os.path.relpath(s.image_path, cache)).count(os.sep) == 0  # one folder level
    assert not (tmp_path / "escape").exists()


# ------------------------------------------------------------------ multi-frame and non-finite float images


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_uses_the_first_frame_with_a_warning(tmp_path, caplog, fmt):
    frames = [Image.new("RGB", (6, 4), (40 * (i + 1), 0, 0)) for i in range(3)]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    with Image.open(path) as check:
        assert check.n_frames == 3
    with caplog.at_level(logging.WARNING):
        im = load_image(path)
    assert np.asarray(im)[0, 0, 0] == pytest.approx(40, abs=2) and im.size == (6, 4)
    assert "3 frames" in caplog.text and str(path) in caplog.text
    mask_frames = [Image.new("L", (6, 4), v) for v in (0, 255)]
    mpath = tmp_path / f"mask.{fmt.lower()}"
    mask_frames[0].save(mpath, format=fmt, save_all=True, append_images=mask_frames[1:])
    assert not np.asarray(load_mask(mpath)).any()  # the first (empty) frame, not the second


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_image_with_non_finite_values_is_a_clear_error(tmp_path, bad):
    arr = np.array([[0.0, 1.0], [2.0, bad]], dtype=np.float32)
    path = tmp_path / "scan.tiff"
    Image.fromarray(arr).save(path)
    with Image.open(path) as check:
        assert check.mode == "F"
    with pytest.raises(BadInputError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "1 NaN/inf" in str(info.value)
    with pytest.raises(BadInputError, match="NaN/inf"):
        load_mask(path)
    finite = tmp_path / "ok.tiff"
    Image.fromarray(np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)).save(finite)
    assert np.asarray(load_image(finite))[:, :, 0].tolist() == [[0, 64], [128, 255]]

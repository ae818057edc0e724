"""Your own folders: anomalib-style spec keys, good/ + bad/ folders, the class name in the prompts, the
unrecognised-layout error, export-dataset and paths outside the root, symbolic links, masks on normal records."""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.cli import main
from aaclip_hf.data import FORMATS, BadInputError, MissingFileError, detect_format, load_samples, read_folder
from aaclip_hf.data.folders import ANOMALY_FOLDER_NAMES, NORMAL_FOLDER_NAMES

from ..conftest import make_tiny_model


def _img(path, value=10, size=8):
    """An image whose every pixel is ``value``: the value identifies the file later."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return str(path)


def _mask(path, n_on, size=8):
    """A mask with the first ``n_on`` pixels set: the count identifies the file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.zeros(size * size, np.uint8)
    arr[:n_on] = 255
    Image.fromarray(arr.reshape(size, size)).save(path)
    return str(path)


def _value(path):
    return int(np.asarray(Image.open(path))[0, 0, 0])


def _n_on(path):
    return int((np.asarray(Image.open(path)) != 0).sum())


def _write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def parts(tmp_path):
    """Inspection folders with names no layout knows: ok/, ng/ (one in a sub-folder) and masks/.

    Anomalous image value v pairs with a mask of v // 10 pixels.
    """
    root = tmp_path / "parts"
    _img(root / "ok" / "0.png", 1)
    _img(root / "ok" / "1.png", 2)
    _img(root / "ng" / "000.png", 30)
    _img(root / "ng" / "001.png", 50)
    _img(root / "ng" / "line2" / "000.png", 70)  # same stem, another sub-folder
    _mask(root / "masks" / "000_mask.png", 3)  # anomalib / MVTec naming
    _mask(root / "masks" / "001.png", 5)  # same file name as the image
    _mask(root / "masks" / "line2" / "000.png", 7)
    return root


SPEC_KEYS = "::normal_dir=ok::abnormal_dir=ng::mask_dir=masks::name=widget"


# ------------------------------------------------------------------ spec keys with anomalib's Folder names


def test_spec_keys_read_any_folder_names(parts):
    samples = load_samples(f"{parts}{SPEC_KEYS}")
    assert [(s.label, s.class_name) for s in samples] == [(0, "widget")] * 2 + [(1, "widget")] * 3
    for s in samples:
        if s.label:
            assert _n_on(s.mask_path) == _value(s.image_path) // 10, s  # paired by stem, per sub-folder
        else:
            assert s.mask_path is None
    # the Python reader takes the same names, and absolute folders too
    again = read_folder(parts, normal_dir=str(parts / "ok"), abnormal_dir="ng", mask_dir="masks", class_name="w")
    assert [(s.image_path, s.mask_path) for s in again] == [(s.image_path, s.mask_path) for s in samples]


def test_abnormal_and_mask_dirs_are_optional(parts):
    normal_only = load_samples(f"{parts}::normal_dir=ok")
    assert [s.label for s in normal_only] == [0, 0] and {s.class_name for s in normal_only} == {"parts"}
    image_level = load_samples(f"{parts}::normal_dir=ok::abnormal_dir=ng")
    assert [s.has_mask for s in image_level if s.label] == [False] * 3


def test_abnormal_image_without_its_mask_is_named_or_skipped(parts, caplog):
    os.remove(parts / "masks" / "001.png")
    with pytest.raises(MissingFileError) as info:
        load_samples(f"{parts}{SPEC_KEYS}")
    assert "001.png" in str(info.value) and "001_mask.png" in str(info.value)
    with caplog.at_level(logging.WARNING):
        samples = load_samples(f"{parts}{SPEC_KEYS}", skip_bad_files=True)
    assert len(samples) == 4 and "skipped 1 bad entry" in caplog.text


@pytest.mark.parametrize(
    "keys, field, text",
    [
        ("::abnormal_dir=ng", "normal_dir", "normal_dir= is missing"),
        ("::normal_dir=nope", "normal_dir", "normal_dir='nope' names no folder"),
        ("::normal_dir=ok::mask_dir=masks", None, "mask_dir= without abnormal_dir="),
        ("::normal_dir=ok::abnormal_dir=ng::mask_dir=ng/line2", "mask_dir", "lies inside abnormal_dir='ng'"),
        ("::normal_dir=ok::format=mvtec", "format", "the format is 'mvtec'"),
    ],
)
def test_bad_folder_keys_are_one_line_errors_naming_the_key(parts, keys, field, text):
    with pytest.raises(BadInputError) as info:
        load_samples(f"{parts}{keys}")
    message = str(info.value)
    assert text in message and info.value.field == field and "\n" not in message, message


def test_a_missing_folder_is_called_a_folder(parts):
    with pytest.raises(FileNotFoundError) as info:
        load_samples(f"{parts}::normal_dir=nope")
    assert str(info.value).startswith(f"folder {str(parts / 'nope')!r}")


def test_evaluate_reads_the_spec_keys(parts, tmp_path, capsys):
    from aaclip_hf import AAClipProcessor

    model_dir = tmp_path / "model"
    model = make_tiny_model()
    processor = AAClipProcessor.for_model(model.config)
    model.update_text_anchors(processor, ["widget"])
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    argv = ["evaluate", "--model", str(model_dir), "--data", f"{parts}{SPEC_KEYS}", "--output", str(tmp_path / "out")]
    assert main([*argv, "--device", "cpu", "--num-workers", "0", "--no-progress"]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(result["classes"]) == ["widget"]


def test_help_documents_the_spec_keys():
    from aaclip_hf.cli import evaluate as evaluate_cli
    from aaclip_hf.training.arguments import add_arguments as add_train_arguments

    for add, flag in ((evaluate_cli.add_evaluate_arguments, "--data"), (add_train_arguments, "--train-data")):
        parser = argparse.ArgumentParser()
        add(parser)
        (action,) = [a for a in parser._actions if flag in a.option_strings]
        for key in ("normal_dir=", "abnormal_dir=", "mask_dir=", "name=", "classes=", "format=", "::"):
            assert key in action.help, (flag, key)
        for name in (*NORMAL_FOLDER_NAMES, *ANOMALY_FOLDER_NAMES):
            assert f"{name}/" in action.help, (flag, name)
        parser.format_help()  # argparse can render it


# ------------------------------------------------------------------ good/ + bad/ and the common names


@pytest.mark.parametrize(
    "normal, anomalous", [("good", "bad"), ("OK", "NG"), ("normal", "defect"), ("ok", "abnormal")]
)
def test_good_and_bad_folders_are_the_folder_layout(tmp_path, normal, anomalous):
    root = tmp_path / "widget"
    _img(root / normal / "a.png", 1)
    _img(root / anomalous / "b.png", 40)
    _mask(root / "masks" / "b_mask.png", 4)
    assert detect_format(root) == "folder"
    samples = load_samples(root)
    assert [(s.label, s.class_name, s.mask_path is not None) for s in samples] == [
        (0, "widget", False),
        (1, "widget", True),
    ]


def test_one_class_per_sub_folder_and_unknown_sub_folders_are_named(tmp_path, caplog):
    _img(tmp_path / "line" / "gear" / "good" / "a.png", 1)
    _img(tmp_path / "line" / "gear" / "bad" / "b.png", 40)
    _img(tmp_path / "line" / "gear" / "scratch" / "c.png", 60)
    _img(tmp_path / "line" / "shaft" / "ok" / "a.png", 2)
    _img(tmp_path / "line" / "shaft" / "ng" / "b.png", 50)
    with caplog.at_level(logging.WARNING):
        samples = load_samples(tmp_path / "line")
    assert [(s.class_name, s.label) for s in samples] == [("gear", 0), ("gear", 1), ("shaft", 0), ("shaft", 1)]
    assert "scratch" in caplog.text and "::abnormal_dir=" in caplog.text


# ------------------------------------------------------------------ the class name in the prompts


def test_the_class_name_from_the_folder_is_announced_and_name_overrides_it(tmp_path, caplog):
    root = tmp_path / "lot_2024_07"
    _img(root / "good" / "a.png", 1)
    _img(root / "bad" / "b.png", 40)
    with caplog.at_level(logging.WARNING, logger="aaclip_hf.data"):
        assert {s.class_name for s in load_samples(root)} == {"lot_2024_07"}
    notices = [r.getMessage() for r in caplog.records if "prompts" in r.getMessage()]
    assert len(notices) == 1 and "'lot_2024_07'" in notices[0] and "::name=" in notices[0], notices
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aaclip_hf.data"):
        assert {s.class_name for s in load_samples(f"{root}::name=metal plate")} == {"metal plate"}
    assert "prompts" not in caplog.text


# ------------------------------------------------------------------ the unrecognised-layout error


def test_unrecognised_folder_is_one_line_listing_layouts_and_keys(tmp_path, capsys):
    root = tmp_path / "photos"
    _img(root / "cam1" / "a.png", 1)
    with pytest.raises(BadInputError) as info:
        detect_format(root)
    message = str(info.value)
    assert message.startswith(f"folder {str(root)!r}") and "\n" not in message
    for name, text in FORMATS.items():
        if not text.startswith("alias"):
            assert name in message, name
    for key in ("normal_dir=", "abnormal_dir=", "mask_dir=", "name=", "classes=", "format="):
        assert key in message, key
    assert f"{root}::normal_dir=ok::abnormal_dir=ng" in message  # an example
    assert main(["sample-shots", str(root), "--shots", "2", "--output", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"folder {str(root)!r}: cannot recognise" in err


# ------------------------------------------------------------------ export-dataset: nothing from outside the root


@pytest.fixture
def secret(tmp_path):
    """A file outside every dataset root (an image, so only the path check can stop it)."""
    return _img(tmp_path / "private" / "secret.png", 99)


def _export(capsys, tmp_path, *data):
    code = main(["export-dataset", *map(str, data), "--output", str(tmp_path / "exported")])
    return code, capsys.readouterr().err


def test_export_refuses_a_symbolic_link_out_of_a_folder(tmp_path, secret, capsys):
    root = tmp_path / "widget"
    _img(root / "good" / "a.png", 1)
    _img(root / "bad" / "b.png", 40)
    os.symlink(secret, root / "good" / "leak.png")
    assert len(load_samples(root)) == 3  # reading it is fine: the file is only decoded
    code, err = _export(capsys, tmp_path, root)
    assert code == 2 and "good/leak.png" in err and secret in err and "outside the dataset root" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "exported").exists()
    code, err = _export(capsys, tmp_path, root, "--allow-outside-root")
    assert code == 0, err


def test_export_refuses_metadata_links_and_paths_outside_naming_the_line(tmp_path, secret, capsys):
    data = tmp_path / "data"
    _img(data / "c" / "n.png", 1)
    _img(data / "c" / "a.png", 40)
    os.symlink(secret, data / "c" / "leak.png")
    records = [
        {"image_path": "c/n.png", "label": 0, "class_name": "c"},
        {"image_path": "c/leak.png", "label": 1, "class_name": "c"},
    ]
    code, err = _export(capsys, tmp_path, _write_jsonl(data / "meta.jsonl", records))
    assert code == 2 and "line 2" in err and "'c/leak.png'" in err and secret in err, err
    for outside in ("../private/secret.png", secret):
        records[1]["image_path"] = outside
        code, err = _export(capsys, tmp_path, _write_jsonl(data / "meta.jsonl", records))
        assert code == 2 and "line 2" in err and repr(outside) in err and "outside the dataset root" in err, err


def test_export_refuses_a_datasets_row_that_references_a_file_outside(tmp_path, secret, capsys):
    from datasets import Dataset

    folder = tmp_path / "saved"
    inside = _img(folder / "files" / "n.png", 1)
    # A column of paths (strings) is used in place, not copied into the cache: the path check applies to it.
    rows = {"image": [inside, secret], "label": [0, 1], "class_name": ["c", "c"]}
    Dataset.from_dict(rows).save_to_disk(str(folder))
    code, err = _export(capsys, tmp_path, folder)
    assert code == 2 and "row 1" in err and secret in err and "outside the dataset root" in err, err
    assert len(load_samples(folder)) == 2  # reading it is fine: the file is only decoded


# ------------------------------------------------------------------ one image reached twice through a link


def test_a_linked_copy_of_an_image_counts_once_with_a_warning(tmp_path, caplog):
    root = tmp_path / "widget"
    real = _img(root / "good" / "b.png", 1)
    _img(root / "bad" / "x.png", 40)
    os.symlink("b.png", root / "good" / "a_link.png")  # sorts first: the real file is still the one kept
    with caplog.at_level(logging.WARNING):
        samples = load_samples(root)
    assert [s.image_path for s in samples if s.label == 0] == [real]
    assert "symbolic link" in caplog.text and "a_link.png" in caplog.text and real in caplog.text


def test_a_linked_copy_with_the_other_label_is_an_error(tmp_path):
    root = tmp_path / "widget"
    _img(root / "good" / "a.png", 1)
    _img(root / "bad" / "x.png", 40)
    os.symlink(os.path.join("..", "good", "a.png"), root / "bad" / "a.png")
    with pytest.raises(BadInputError, match="normal in one place and anomalous in the other"):
        load_samples(root)
    assert [s.label for s in load_samples(root, skip_bad_files=True)] == [1]  # both copies dropped


def test_a_metadata_link_to_a_listed_image_is_a_duplicate(tmp_path):
    data = tmp_path / "data"
    _img(data / "c" / "a.png", 1)
    os.symlink("a.png", data / "c" / "link.png")
    records = [
        {"image_path": "c/a.png", "label": 0, "class_name": "c"},
        {"image_path": "c/link.png", "label": 0, "class_name": "c"},
    ]
    path = _write_jsonl(data / "meta.jsonl", records)
    with pytest.raises(BadInputError, match=r"meta.jsonl:2 repeats .*meta.jsonl:1"):
        load_samples(path)
    assert len(load_samples(path, skip_bad_files=True)) == 1


# ------------------------------------------------------------------ a mask on a normal record


def test_a_normal_record_with_a_mask_is_refused_unless_the_mask_is_empty(tmp_path):
    data = tmp_path / "data"
    _img(data / "c" / "n.png", 1)
    _img(data / "c" / "a.png", 40)
    _mask(data / "c" / "a_gt.png", 4)
    _mask(data / "c" / "empty.png", 0)
    records = [
        {"image_path": "c/a.png", "label": 1, "class_name": "c", "mask_path": "c/a_gt.png"},
        {"image_path": "c/n.png", "label": 0, "class_name": "c", "mask_path": "c/a_gt.png"},
    ]
    path = _write_jsonl(data / "meta.jsonl", records)
    with pytest.raises(BadInputError) as info:
        load_samples(path)
    message = str(info.value)
    assert "line 2" in message and "label 0" in message and info.value.field == "mask_path" and "\n" not in message
    assert len(load_samples(path, skip_bad_files=True)) == 1
    records[1]["mask_path"] = "c/empty.png"
    samples = load_samples(_write_jsonl(data / "meta.jsonl", records))
    assert [(s.label, s.mask_path is None) for s in samples] == [(1, False), (0, True)]

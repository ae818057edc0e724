"""Outputs of detect, evaluate and calibrate are never silently lost (runtime/outputs.py at work).

- a second run into an --output that a run is writing is refused (exit 2, the lock named) and the first run's
  records stay whole;
- an output folder appears whole when a run ends, or not at all: a failed run leaves the previous one untouched;
- file names that are not valid UTF-8 are written into JSON/CSV (and printed) with \\xNN escapes.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.cli import main
from aaclip_hf.evaluation.protocols import EvaluationResult
from aaclip_hf.inference.calibrate import save_threshold


detect_module = importlib.import_module("aaclip_hf.inference.detect")  # the package re-exports `detect`


def _save(path, size=24, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def model_dir(tiny_model, processor, tmp_path):
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _detect(model_dir, out, *images):
    return main(
        ["detect", *map(str, images), "--model", str(model_dir), "--output", str(out), "--no-progress"]
        + ["--device", "cpu", "--threshold", "0.5"]
    )


def test_two_detect_runs_into_one_output_the_second_is_refused(model_dir, tmp_path, monkeypatch, capsys):
    first, second = _save(tmp_path / "first.png", seed=1), _save(tmp_path / "second.png", seed=2)
    out = tmp_path / "out"
    original = detect_module.detection_figure
    codes = []

    def second_run_meanwhile(*args, **kwargs):  # while the first run is writing its overlays
        if not codes:
            codes.append(_detect(model_dir, out, second))
        return original(*args, **kwargs)

    monkeypatch.setattr(detect_module, "detection_figure", second_run_meanwhile)
    assert _detect(model_dir, out, first) == 0
    err = capsys.readouterr().err
    assert codes == [2]
    assert (
        f"{out}: output folder in use by another run (aaclip detect, pid {os.getpid()}, lock file {out}.lock)" in err
    )
    records = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in records] == ["first.png"]  # the first run's records, whole
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["first.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.png", "model", "out", "second.png"]


def test_a_later_run_replaces_the_output_whole_and_a_failed_one_changes_nothing(model_dir, tmp_path, caplog):
    a, b = _save(tmp_path / "a.png", seed=1), _save(tmp_path / "b.png", seed=2)
    out = tmp_path / "out"
    assert _detect(model_dir, out, a, b) == 0
    assert _detect(model_dir, out, b) == 0
    assert "replacing the output of an earlier aaclip detect" in caplog.text
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["b.png"]  # no overlay of the first run left
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert _detect(model_dir, out, a, broken) == 2  # fails half-way, after a's overlay was drawn
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left


def test_a_folder_of_other_files_is_never_replaced(model_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _detect(model_dir, mine, _save(tmp_path / "a.png")) == 2
    assert "mine: the folder holds files that aaclip detect did not write (notes.txt" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_file_names_that_are_not_utf8_are_written_escaped(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    raw_name = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not valid UTF-8
    try:
        image = _save(folder / raw_name)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not take non-UTF-8 names")
    _save(folder / "plain.png", seed=3)
    out = tmp_path / "out"
    assert _detect(model_dir, out, folder) == 0
    printed = capsys.readouterr().out
    assert "caf\\xe9-\\xff.png  score" in printed
    records = json.loads((out / "detections.json").read_text(encoding="utf-8"))
    rows = list(csv.DictReader(open(out / "detections.csv", encoding="utf-8")))
    assert [Path(r["image"]).name for r in records] == ["caf\\xe9-\\xff.png", "plain.png"]
    assert [Path(row["image"]).name for row in rows] == ["caf\\xe9-\\xff.png", "plain.png"]
    assert len(rows) == 2  # the whole CSV, not a partial one
    assert Path(records[0]["overlay"]).name == "caf\\xe9-\\xff.png"  # the escaped name of the real file
    assert (out / "overlays" / os.fsdecode(b"caf\xe9-\xff.png")).is_file()
    # the Python API returns the real path, which opens the file
    returned = detect_module.detect(
        *_load(model_dir), [image], tmp_path / "api", threshold=0.5, progress=False, batch_size=1
    )
    assert returned[0]["image"] == str(image) and Image.open(returned[0]["image"]).size == (24, 24)


def _load(model_dir):
    from aaclip_hf.runtime.loading import load_model_and_processor

    return load_model_and_processor(model_dir, "cpu")


def test_evaluation_results_are_written_whole(tmp_path, monkeypatch):
    result = EvaluationResult("set", "reference", "model", {"a": {"num_normal": 1, "num_anomalous": 1}}, {})
    out = tmp_path / "eval"
    paths = result.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md"]
    assert paths["json"] == out / "results.json"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(self, folder):
        (folder / "results.json").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(EvaluationResult, "_write", fail)
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_calibrate_writes_its_copy_whole_and_config_files_atomically(model_dir, tmp_path, monkeypatch, capsys):
    normal = tmp_path / "normal"
    normal.mkdir()
    _save(normal / "n.png")
    argv = ["calibrate", "--model", str(model_dir), "--normal", str(normal), "--no-progress", "--device", "cpu"]
    copy = tmp_path / "copy"
    assert main([*argv, "--output", str(copy)]) == 0
    assert (copy / "calibration.json").is_file() and (copy / "model.safetensors").is_file()
    assert main([*argv, "--output", str(copy)]) == 0  # an earlier calibrated copy is replaced
    import aaclip_hf.cli.detect as cli_detect

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cli_detect, "save_threshold", crash)
    fresh = tmp_path / "fresh"
    assert main([*argv, "--output", str(fresh)]) == 2
    assert "disk full" in capsys.readouterr().err
    assert not fresh.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    # in place: config.json is replaced through a temporary file; a failed write keeps the old one
    config = (model_dir / "config.json").read_bytes()
    monkeypatch.setattr("aaclip_hf.inference.calibrate.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_threshold(model_dir, 0.7, {"method": "normal"})
    assert (model_dir / "config.json").read_bytes() == config
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]

"""Outputs are never silently lost, and your files are never overwritten or deleted (runtime/outputs.py at work).

- a second run into an --output that a run is writing is refused (exit 2, the lock named) and the first run's
  records stay whole;
- an output folder appears whole when a run ends, or not at all: a failed run leaves the previous one untouched;
- a folder holding a file the command did not write (also nested, `maps/notes.txt`) is refused and left as it is;
  an output is never an input, the model or a dataset (detect, calibrate, train, sample-shots, export-onnx,
  make-synthetic); an output inside the input folder is never scored; a symlinked output is written through;
- file names that are not valid UTF-8 are written into JSON/CSV (and printed) with \\xNN escapes.
"""

from __future__ import annotations

import csv
import hashlib
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
from aaclip_hf.runtime.outputs import OUTPUT_RECORD


detect_module = importlib.import_module("aaclip_hf.inference.detect")  # the package re-exports `detect`


def _save(path, size=24, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, nested ones too, by relative name."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    assert returned[0]["path"] == str(image) and Image.open(returned[0]["path"]).size == (24, 24)


def _load(model_dir):
    from aaclip_hf.runtime.loading import load_model_and_processor

    return load_model_and_processor(model_dir, "cpu")


def test_evaluation_results_are_written_whole(tmp_path, monkeypatch):
    result = EvaluationResult("set", "reference", "model", {"a": {"num_normal": 1, "num_anomalous": 1}}, {})
    out = tmp_path / "eval"
    paths = result.save(out)
    written = sorted(p.name for p in out.iterdir())
    assert {"results.csv", "results.json", "results.md", OUTPUT_RECORD} <= set(written)
    assert paths["json"] == out / "results.json"
    before = _files(out)

    def fail(self, folder):
        (folder / "results.json").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(EvaluationResult, "_write", fail)
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    assert _files(out) == before
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
    import aaclip_hf.inference.calibrate as calibrate_module

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device (disk full)", str(tmp_path / "fresh" / "config.json"))

    monkeypatch.setattr(calibrate_module, "save_threshold", crash)
    fresh = tmp_path / "fresh"
    assert main([*argv, "--output", str(fresh)]) == 2
    assert "disk full" in capsys.readouterr().err
    assert not fresh.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    # in place: config.json is replaced through a temporary file; a failed write keeps the old one
    config = (model_dir / "config.json").read_bytes()
    monkeypatch.setattr("aaclip_hf.inference.calibrate.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_threshold(model_dir, "object", 0.7, {"method": "normal"})
    assert (model_dir / "config.json").read_bytes() == config
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ your files are never overwritten or deleted


def _hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in _files(folder).items()}


def test_a_file_you_added_inside_an_earlier_detect_output_is_never_deleted(model_dir, tmp_path, capsys):
    image = _save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert _detect(model_dir, out, image, "--save-maps") == 0
    (out / "maps" / "notes.txt").write_text("my notes on this batch")
    before = _files(out)
    assert _detect(model_dir, out, image, "--save-maps") == 2
    err = capsys.readouterr().err
    assert "out: the folder holds files that aaclip detect did not write (maps/notes.txt; 1 in all)" in err
    assert _files(out) == before  # the notes and the earlier output, as they were


def test_an_output_inside_the_input_folder_is_never_scored(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        _save(images / f"{i}.png", seed=i)
    out = images / "results"
    for _ in range(2):  # the second run sees the first run's overlays inside the input folder
        assert _detect(model_dir, out, images) == 0
        records = json.loads((out / "detections.json").read_text())
        assert [r["image"] for r in records] == ["0.png", "1.png"]
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("results/")]


def test_a_symlinked_output_is_written_through_and_the_link_stays(model_dir, tmp_path):
    target = tmp_path / "storage" / "detections"
    target.mkdir(parents=True)
    link = tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    for seed in (1, 2):
        assert _detect(model_dir, link, _save(tmp_path / f"{seed}.png", seed=seed)) == 0
        assert link.is_symlink() and Path(os.readlink(link)) == target
        assert [r["image"] for r in json.loads((target / "detections.json").read_text())] == [f"{seed}.png"]
    leftovers = [p.name for folder in (tmp_path, target.parent) for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == [] and sorted(p.name for p in target.parent.iterdir()) == ["detections"]


def test_detect_never_writes_onto_its_input_or_the_model(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _save(images / "a.png")
    before = _hashes(tmp_path)
    for out, role in ((images, "is an input"), (model_dir, "is the model"), (tmp_path, "holds an input")):
        assert _detect(model_dir, out, images) == 2
        assert role in capsys.readouterr().err
    assert _hashes(tmp_path) == before


def test_export_onnx_never_writes_onto_the_weights(model_dir, capsys):
    weights = model_dir / "model.safetensors"
    before = weights.read_bytes()
    assert main(["export-onnx", str(model_dir), str(weights)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: exists; an output file never replaces a file" in err and err.count("\n") == 1
    assert weights.read_bytes() == before


@pytest.fixture
def small_dataset(tmp_path):
    from aaclip_hf.data.readers import load_samples
    from aaclip_hf.data.sampling import write_jsonl
    from aaclip_hf.data.synthetic import generate_synthetic_dataset

    root = tmp_path / "data"
    generate_synthetic_dataset(
        root, classes=["stripes"], image_size=16, n_train_good=0, n_test_good=2, n_test_defect_per_kind=1,
        defect_kinds=["hole", "stain"], progress=False,
    )  # fmt: skip
    write_jsonl(load_samples(str(root)), root / "meta.jsonl")
    return root


def test_sample_shots_never_writes_onto_its_input_or_any_file(small_dataset, tmp_path, capsys):
    meta = small_dataset / "meta.jsonl"
    before = _hashes(small_dataset)
    assert main(["sample-shots", str(meta), "--shots", "2", "--output", str(meta)]) == 2
    assert f"--output {meta}: is an input" in capsys.readouterr().err
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my own list\n")
    assert main(["sample-shots", str(meta), "--shots", "2", "--output", str(mine)]) == 2
    assert "mine.jsonl: exists; an output file never replaces a file" in capsys.readouterr().err
    assert _hashes(small_dataset) == before and mine.read_text() == "my own list\n"
    assert main(["sample-shots", str(meta), "--shots", "2", "--output", str(tmp_path / "shots.jsonl")]) == 0


def test_make_synthetic_replaces_only_its_own_untouched_output(tmp_path, capsys):
    argv = ["--classes", "stripes", "--image-size", "16", "--n-train-good", "1", "--n-test-good", "1"]
    argv += ["--n-test-defect-per-kind", "1", "--defect-kinds", "hole"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["make-synthetic", str(mine), *argv]) == 2
    assert "mine: the folder holds files that aaclip make-synthetic did not write (thesis.tex" in (
        capsys.readouterr().err
    )
    assert _files(mine) == {"thesis.tex": b"years of work"}
    out = tmp_path / "synthetic"
    assert main(["make-synthetic", str(out), *argv, "--preview", str(out / "preview.png")]) == 0
    assert (out / "stripes" / "test" / "hole" / "000.png").is_file() and (out / "preview.png").is_file()
    assert main(["make-synthetic", str(out), *argv, "--seed", "1"]) == 0  # its own untouched output: replaced
    assert not (out / "preview.png").exists()
    (out / "stripes" / "test" / "good" / "my_photo.png").write_bytes(b"a real photo")
    assert main(["make-synthetic", str(out), *argv]) == 2
    assert "stripes/test/good/my_photo.png" in capsys.readouterr().err
    assert (out / "stripes" / "test" / "good" / "my_photo.png").read_bytes() == b"a real photo"


def test_train_never_writes_onto_its_base_model_or_its_data(model_dir, small_dataset, tmp_path, capsys):
    before = {"model": _hashes(model_dir), "data": _hashes(small_dataset)}
    for output, message in (
        (model_dir, f"--output {model_dir}: is the model"),
        (small_dataset, f"--output {small_dataset}: is an input"),
        (tmp_path, f"--output {tmp_path}: holds an input"),
    ):
        argv = ["train", "--model", str(model_dir), "--train-data", str(small_dataset), "--output", str(output)]
        assert main([*argv, "--num-workers", "0", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert {"model": _hashes(model_dir), "data": _hashes(small_dataset)} == before
    assert not list(tmp_path.glob("*.lock"))

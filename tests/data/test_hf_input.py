"""`datasets` as a first-class input: save_to_disk folders, Hub ids, export-dataset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from datasets import Dataset, DatasetDict, Features, Value, load_from_disk
from datasets import Image as HFImage
from PIL import Image

from aaclip_hf.cli import main
from aaclip_hf.data import hf_datasets
from aaclip_hf.data.hf_datasets import export_dataset
from aaclip_hf.data.image_io import BadInputError
from aaclip_hf.data.readers import detect_format, load_samples
from aaclip_hf.evaluation import evaluate
from aaclip_hf.training.arguments import AAClipTrainingArguments
from aaclip_hf.training.trainer import AAClipTrainer

from ..conftest import make_tiny_model


def _pixels(path):
    return np.asarray(Image.open(path))


def _same_samples(got, want):
    assert [(s.label, s.class_name, s.defect_type) for s in got] == [
        (s.label, s.class_name, s.defect_type) for s in want
    ]
    for a, b in zip(got, want):
        assert np.array_equal(_pixels(a.image_path), _pixels(b.image_path))
        if b.label == 1 and b.mask_path is not None:
            assert np.array_equal(_pixels(a.mask_path), _pixels(b.mask_path))
        else:
            assert a.mask_path is None


@pytest.fixture(scope="module")
def exported(training_root, tmp_path_factory):
    """The synthetic MVTec set written by `aaclip export-dataset`, and its source samples."""
    out = tmp_path_factory.mktemp("export") / "synthetic_hf"
    assert main(["export-dataset", str(training_root / "data"), "--output", str(out)]) == 0
    return out, load_samples(str(training_root / "data"), "test")


def test_export_dataset_writes_a_save_to_disk_folder_with_a_card(exported):
    out, samples = exported
    ds = load_from_disk(str(out))
    assert isinstance(ds, DatasetDict) and list(ds) == ["test"]
    test = ds["test"]
    assert test.column_names == ["image", "mask", "label", "class_name", "defect_type"]
    assert isinstance(test.features["image"], HFImage) and isinstance(test.features["mask"], HFImage)
    assert test.features["label"].names == ["normal", "anomaly"]
    assert len(test) == len(samples)
    row = test[next(i for i, s in enumerate(samples) if s.label == 1)]
    assert isinstance(row["image"], Image.Image) and isinstance(row["mask"], Image.Image)
    assert test[next(i for i, s in enumerate(samples) if s.label == 0)]["mask"] is None
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["task_categories"] == ["image-segmentation", "image-classification"]
    assert meta["dataset_info"]["splits"] == [{"name": "test", "num_examples": len(samples)}]
    assert "| stripes |" in card and str(out.parent) not in card  # counts, no local paths


def test_export_refuses_a_non_empty_folder(exported, training_root):
    out, samples = exported
    with pytest.raises(BadInputError, match="exists and is not empty"):
        export_dataset(samples, out)


def test_a_saved_dataset_is_read_like_any_layout(exported):
    out, samples = exported
    assert detect_format(out) == "hf"
    _same_samples(load_samples(str(out), "test"), samples)
    with pytest.raises(BadInputError, match=r"no split 'train'; it has \['test'\]"):
        load_samples(str(out), "train")


def test_evaluate_and_trainer_take_a_dataset_directly(exported, training_root, processor, tmp_path):
    out, samples = exported
    ds = load_from_disk(str(out))["test"]
    model = make_tiny_model()
    direct = evaluate(model, processor, ds, progress=False, dataset_name="d")
    via_files = evaluate(model, processor, samples, progress=False, dataset_name="d")
    assert direct.classes == via_files.classes and direct.mean == via_files.mean
    args = AAClipTrainingArguments(model="unused", train_data=[], output_dir=str(tmp_path / "run"), num_workers=0)
    trainer = AAClipTrainer(args, model=make_tiny_model(), processor=processor, samples=ds)
    _same_samples(trainer.samples, samples)


def test_other_column_names_map_with_spec_keys(training_root, tmp_path):
    samples = [s for s in load_samples(str(training_root / "data"), "test") if s.class_name == "disc"]
    ds = Dataset.from_dict(
        {"img": [s.image_path for s in samples], "y": [bool(s.label) for s in samples]},
        features=Features({"img": HFImage(), "y": Value("bool")}),
    )
    folder = tmp_path / "custom"
    ds.save_to_disk(str(folder))
    with pytest.raises(BadInputError, match="no column 'image'"):
        load_samples(str(folder))
    spec = f"{folder}::image_column=img::label_column=y::mask_column=none::defect_column=none::name=disc"
    got = load_samples(spec)
    want = [dataclasses.replace(s, mask_path=None, defect_type=None) for s in samples]
    _same_samples(got, want)
    with pytest.raises(BadInputError, match="label_column cannot be none"):
        load_samples(f"{folder}::label_column=none")


def test_a_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        BadInputError, match="dataset id someone/mvtec-ad: the Hub is offline; pass a local save_to_disk"
    ):
        load_samples("someone/mvtec-ad")


def test_a_hub_id_that_cannot_be_reached(monkeypatch):
    monkeypatch.setattr(hf_datasets, "_hub_offline", lambda: False)
    calls = []

    def unreachable(dataset_id, split):
        calls.append((dataset_id, split))
        raise ConnectionError("no route")

    monkeypatch.setattr(hf_datasets, "load_dataset", unreachable)
    with pytest.raises(BadInputError, match="the Hub cannot be reached \\(ConnectionError\\)"):
        load_samples("someone/mvtec-ad::split=validation")
    assert calls == [("someone/mvtec-ad", "validation")]


def test_missing_local_paths_stay_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_samples(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        load_samples("nope/meta.json")


def test_cli_evaluate_and_train_read_a_saved_dataset(exported, training_root, tmp_path):
    out, samples = exported
    model = str(training_root / "model")
    results = tmp_path / "results"
    assert main(["evaluate", "--model", model, "--data", str(out), "--output", str(results), "--no-progress"]) == 0
    table = json.loads((results / "results.json").read_text(encoding="utf-8"))
    counts = {name: (row["num_normal"], row["num_anomalous"]) for name, row in table["classes"].items()}
    assert counts == {
        name: (
            sum(s.label == 0 for s in samples if s.class_name == name),
            sum(s.label for s in samples if s.class_name == name),
        )
        for name in {s.class_name for s in samples}
    }
    run = tmp_path / "run"
    argv = ["train", "--model", model, "--train-data", str(out), "--output", str(run), "--stage", "text"]
    argv += ["--max-steps", "1", "--text-batch-size", "4", "--num-workers", "0", "--no-progress"]
    assert main(argv) == 0
    assert (run / "model.safetensors").is_file()

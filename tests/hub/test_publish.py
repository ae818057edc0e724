"""Hub publishing: the Hub-ready folder, the model card, offline loading by repo id, and a mocked upload."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.hub import publish as hub
from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline


FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"
EXPECTED_FILES = {
    "README.md",
    "config.json",
    "configuration_aaclip.py",
    "model.safetensors",
    "modeling_aaclip.py",
    "pipeline_aaclip.py",
    "processing_aaclip.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
EVAL_RESULTS = {
    "format": "aaclip-eval/1",
    "dataset": "mvtec",
    "protocol": "reference",
    "resolution": "model",
    "split": "test",
    "classes": {"bottle": {"num_normal": 2, "num_anomalous": 3, "image_auroc": 0.9}},
    "mean": {
        "image_auroc": 0.905,
        "image_ap": 0.95,
        "pixel_auroc": 0.919,
        "pixel_aupro": 0.846,
        "pixel_ap": float("nan"),
    },
    "notes": ["a note that must reach the card"],
}
SUMMARY = {
    "base_model": "openai/clip-vit-large-patch14-336",
    "train_data": "VisA (test split)",
    "shots": "full",
    "train_classes": ["candle", "pcb1"],
    "seed": 111,
}


@pytest.fixture
def saved_model(tiny_model, processor, tmp_path):
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_hub_folder_holds_everything_and_a_card(tiny_model, processor, tmp_path):
    folder = hub.save_for_hub(
        tiny_model,
        processor,
        tmp_path / "hub",
        repo_id="acme/aaclip-tiny",
        training_summary=SUMMARY,
        eval_results=EVAL_RESULTS,
    )
    assert EXPECTED_FILES | {hub.TRAINING_SUMMARY_FILE} == {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "zero-shot-anomaly-detection": {
            "impl": "pipeline_aaclip.AAClipAnomalyDetectionPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }
    assert config["auto_map"]["AutoModel"] == "modeling_aaclip.AAClipModel"
    assert (folder / "pipeline_aaclip.py").read_text() == Path(
        sys.modules[AAClipAnomalyDetectionPipeline.__module__].__file__
    ).read_text()
    # The pipeline file is Hub-portable: only the standard library, torch, transformers, numpy, PIL, siblings
    # (optional imports inside try/except, which transformers' remote-code check skips, are allowed).
    tree = ast.parse((folder / "pipeline_aaclip.py").read_text())
    guarded = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try) for inner in ast.walk(node)}
    imports = [
        node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded
    ]
    roots = {alias.name.split(".")[0] for node in imports if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in imports if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert roots <= {"__future__", "os", "collections", "types", "typing", "numpy", "torch", "PIL", "transformers"}, (
        roots
    )
    assert all(node.level <= 1 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))

    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert card.data.base_model == "openai/clip-vit-large-patch14-336"
    assert "zero-shot-anomaly-detection" in card.data.tags
    results = {(r.metric_type, r.metric_name.split(" (")[0]): r.metric_value for r in card.data.eval_results}
    assert results == {
        ("roc_auc", "image AUROC"): 90.5,
        ("average_precision", "image AP"): 95.0,
        ("roc_auc", "pixel AUROC"): 91.9,
        ("aupro", "pixel AUPRO@0.3"): 84.6,
    }  # NaN AP dropped
    assert {r.dataset_name for r in card.data.eval_results} == {"mvtec"}
    text = card.text
    assert 'pipeline("zero-shot-anomaly-detection", model="acme/aaclip-tiny", trust_remote_code=True)' in text
    assert 'AutoModel.from_pretrained("acme/aaclip-tiny", trust_remote_code=True)' in text
    assert "Ma_2025_CVPR" in text and "AA-CLIP: Enhancing Zero-Shot Anomaly Detection via Anomaly-Aware CLIP" in text
    assert "MIT" in text and "Mwxinnn/AA-CLIP" in text
    assert "VisA (test split)" in text and "candle, pcb1" in text and "a note that must reach the card" in text
    assert "`object`, `bottle`, `pcb1`" in text


def test_card_without_summary_or_results_says_so(tiny_model, processor, tmp_path):
    folder = hub.save_for_hub(tiny_model, processor, tmp_path / "hub")
    card_text = (folder / "README.md").read_text()
    assert "No training summary" in card_text and "No evaluation results" in card_text
    assert "randomly initialised CLIP" in card_text  # a tiny model is not claimed to be ViT-L


def test_trainer_arguments_file_feeds_the_card(saved_model):
    (saved_model / "training_args.json").write_text(
        json.dumps(
            {
                "model": "openai/clip-vit-large-patch14-336",
                "train_data": ["data/visa"],
                "shots": "16",
                "stage": "both",
                "text_epochs": 5,
                "vision_epochs": 20,
                "seed": 111,
                "output_dir": "x",
            }
        )
    )
    folder = hub.prepare_hub_folder(saved_model, repo_id="acme/x")
    text = (folder / "README.md").read_text()
    assert "data/visa" in text and "shots per class: 16" in text and "text: 5, vision: 20" in text


def test_incomplete_folders_are_refused_by_name(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "no_processor")
    with pytest.raises(FileNotFoundError, match="processor_config.json"):
        hub.prepare_hub_folder(tmp_path / "no_processor")
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.prepare_hub_folder(tmp_path)
    with pytest.raises(ValueError, match="aaclip evaluate"):
        hub.card_eval_results({"classes": {}})


def _fake_snapshot(hf_home: Path, repo_id: str, files_from: Path) -> Path:
    org, name = repo_id.split("/")
    repo = hf_home / "hub" / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / FAKE_SHA
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_SHA)
    for path in files_from.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    return snapshot


LOAD_BY_REPO_ID = """
import json, sys
try:
    import aaclip_hf
    package = "importable"
except ImportError:
    package = "missing"
import numpy as np
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline
repo = sys.argv[1]
model = AutoModel.from_pretrained(repo, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
detector = pipeline("zero-shot-anomaly-detection", model=repo, trust_remote_code=True, device="cpu")
image = Image.open(sys.argv[2])
results = detector([image, image], class_name=["bottle", "gear"], batch_size=2)
print(json.dumps({"package": package, "model_module": type(model).__module__,
                  "processor_module": type(processor).__module__, "pipeline_module": type(detector).__module__,
                  "stored": model.config.anchor_class_names, "scores": [r["score"] for r in results],
                  "shape": list(results[0]["anomaly_map"].shape), "labels": [r["label"] for r in results]}))
"""


def test_auto_classes_and_pipeline_load_by_repo_id_offline_without_the_package(tiny_model, processor, tmp_path):
    """A fresh interpreter that cannot import aaclip_hf loads model, processor and pipeline from a fake Hub cache."""
    folder = hub.save_for_hub(tiny_model, processor, tmp_path / "hub", repo_id="acme/aaclip-tiny")
    hf_home = tmp_path / "hf_home"
    _fake_snapshot(hf_home, "acme/aaclip-tiny", folder)
    image_path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(image_path)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    # `-S` skips site.py, hence the editable install's .pth; only the plain site-packages folder is added back.
    site_packages = sysconfig.get_paths()["purelib"]
    code = f"import sys; sys.path.append({site_packages!r}); exec(open({str(tmp_path / 'load.py')!r}).read())"
    (tmp_path / "load.py").write_text(LOAD_BY_REPO_ID)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code, "acme/aaclip-tiny", str(image_path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["package"] == "missing"
    for key in ("model_module", "processor_module", "pipeline_module"):
        assert out[key].startswith("transformers_modules.acme."), out[key]
    assert out["shape"] == [30, 50]
    direct = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")
    expected = direct([Image.open(image_path)] * 2, class_name=["bottle", "gear"], batch_size=2)
    np.testing.assert_allclose(out["scores"], [r["score"] for r in expected], atol=1e-5)
    assert "gear" not in out["stored"]  # the config is read before the pipeline adds anchors


class _RecordingApi:
    """Stands in for `huggingface_hub.HfApi`: records the repo creation and the uploaded folder's files."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, *, private=None, exist_ok=False, token=None, **_):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, token=None, **_):
        root = Path(folder_path)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", repo_id, files, commit_message))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{FAKE_SHA}")


@pytest.fixture
def recording_api(monkeypatch):
    import huggingface_hub

    _RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingApi)
    return _RecordingApi


def test_push_uploads_model_processor_code_pipeline_and_card(saved_model, recording_api, tmp_path):
    (saved_model / "checkpoints" / "checkpoint-10").mkdir(parents=True)  # training state stays local
    (saved_model / "checkpoints" / "checkpoint-10" / "optimizer.bin").write_bytes(b"x")
    before = sorted(p.name for p in saved_model.iterdir())
    (tmp_path / "results.json").write_text(json.dumps(EVAL_RESULTS))
    url = hub.push_folder_to_hub(saved_model, "acme/aaclip-tiny", private=True, eval_results=tmp_path / "results.json")
    assert url.endswith(FAKE_SHA)
    (create, repo, private, exist_ok), upload = recording_api.calls[0], recording_api.calls[1]
    assert (create, repo, private, exist_ok) == ("create_repo", "acme/aaclip-tiny", True, True)
    files = upload[2]
    assert set(files) == EXPECTED_FILES
    card = files["README.md"].decode()
    metadata = card.split("---")[1]
    assert "value: 90.5" in metadata and "name: mvtec" in metadata and "model-index" in metadata
    assert 'model="acme/aaclip-tiny"' in card
    assert json.loads(files["config.json"])["custom_pipelines"]
    assert sorted(p.name for p in saved_model.iterdir()) == before  # the source folder is left alone


def test_push_model_to_hub_for_train_and_convert(tiny_model, processor, recording_api):
    hub.push_model_to_hub(tiny_model, processor, "acme/trained", training_summary=SUMMARY)
    files = recording_api.calls[1][2]
    assert set(files) == EXPECTED_FILES | {hub.TRAINING_SUMMARY_FILE}
    assert "VisA (test split)" in files["README.md"].decode()


def test_push_cli(saved_model, recording_api, tmp_path, capsys):
    from aaclip_hf.cli import main

    (tmp_path / "results.json").write_text(json.dumps(EVAL_RESULTS))
    dry = tmp_path / "dry"
    assert (
        main(
            [
                "push",
                str(saved_model),
                "acme/x",
                "--dry-run",
                str(dry),
                "--eval-results",
                str(tmp_path / "results.json"),
            ]
        )
        == 0
    )
    assert EXPECTED_FILES == {p.name for p in dry.iterdir()} and not recording_api.calls
    assert main(["push", str(saved_model), "acme/x", "--private"]) == 0
    assert recording_api.calls[0][2] is True and "trust_remote_code=True" in capsys.readouterr().out

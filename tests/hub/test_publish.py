"""Hub publishing: the Hub-ready folder, the model card, offline loading by repo id, and a mocked upload."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import transformers
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
    "serialization_aaclip.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "weights_manifest.json",
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


def _card(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def test_hub_folder_holds_everything_and_a_card(tiny_model, processor, tmp_path):
    folder = hub.save_for_hub(
        tiny_model,
        processor,
        tmp_path / "hub",
        repo_id="acme/aaclip-tiny",
        training_summary=SUMMARY,
        eval_results=EVAL_RESULTS,
    )
    assert EXPECTED_FILES | {hub.TRAINING_SUMMARY_FILE, "eval_results"} == {p.name for p in folder.iterdir()}
    assert json.loads((folder / "eval_results" / "mvtec-reference.json").read_text())["mean"]["image_auroc"] == 0.905
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
    assert roots - set(sys.stdlib_module_names) <= {"numpy", "torch", "PIL", "transformers"}, roots
    assert all(node.level <= 1 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))

    card = _card(folder)
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert card.data.base_model == "openai/clip-vit-large-patch14-336"
    assert card.data.pipeline_tag == "other"  # the Hub's task list has no anomaly detection
    assert "zero-shot-anomaly-detection" in card.data.tags
    results = {(r.metric_type, r.metric_name.split(" (")[0]): r.metric_value for r in card.data.eval_results}
    assert results == {
        ("roc_auc", "image AUROC"): 90.5,
        ("average_precision", "image AP"): 95.0,
        ("roc_auc", "pixel AUROC"): 91.9,
        ("aupro", "pixel AUPRO"): 84.6,
    }  # NaN AP dropped
    assert {r.dataset_name for r in card.data.eval_results} == {"mvtec"}
    assert {r.metric_name.split(" (")[1] for r in card.data.eval_results} == {"reference protocol, class mean)"}
    text = card.text
    assert 'pipeline("zero-shot-anomaly-detection", model="acme/aaclip-tiny", trust_remote_code=True)' in text
    assert 'AutoModel.from_pretrained("acme/aaclip-tiny", trust_remote_code=True)' in text
    assert "Ma_2025_CVPR" in text and "AA-CLIP: Enhancing Zero-Shot Anomaly Detection via Anomaly-Aware CLIP" in text
    assert "MIT" in text and "Mwxinnn/AA-CLIP" in text
    assert "VisA (test split)" in text and "candle, pcb1" in text and "a note that must reach the card" in text
    assert "`object`, `bottle`, `pcb1`" in text
    # The evaluation section: the protocol in words, then the mean table (no per-class table in this JSON).
    assert "protocol `reference`: the paper's protocol" in text and "pixel metrics at the model resolution" in text
    assert "| **Mean** | 91.9 | 84.6 | 90.5 | 95.0 |" in text
    assert "| Class | pixel AUROC | pixel AUPRO | image AUROC | image AP |" in text
    assert "![" not in text  # no evaluation folder with overlays: no picture


def test_card_without_summary_or_results_says_so(tiny_model, processor, tmp_path):
    folder = hub.save_for_hub(tiny_model, processor, tmp_path / "hub")
    card = _card(folder)
    assert "No training summary" in card.text and "No evaluation results" in card.text
    assert "| base model | unknown |" in card.text  # never guessed from the architecture
    assert card.data.base_model is None and card.data.datasets is None


def test_card_names_the_real_base_model_and_data_never_a_local_path(tiny_model, processor, tmp_path):
    """The base model comes from config.base_model (recorded at conversion), data names from the summary; local
    paths appear by their folder name only, Hub ids as they are, in the text and the YAML."""
    tiny_model.config.base_model = "openai/clip-vit-base-patch16"
    summary = {"base_model": "/home/me/clip", "train_data": ["/home/me/data/visa::classes=candle", "acme/mvtec-ad"]}
    folder = hub.save_for_hub(tiny_model, processor, tmp_path / "hub", training_summary=summary)
    card = _card(folder)
    assert card.data.base_model == "openai/clip-vit-base-patch16"
    assert card.data.datasets == ["visa", "acme/mvtec-ad"]
    assert "| base model | `openai/clip-vit-base-patch16` |" in card.text
    assert "/home/me" not in (folder / "README.md").read_text()
    assert "/home/me" not in (folder / hub.TRAINING_SUMMARY_FILE).read_text()
    assert "- base model: `clip` (not a Hub id)" in card.text

    from aaclip_hf.hub.card import build_model_card, dataset_names, describe_base_model

    tiny_model.config.base_model = None
    card = build_model_card(tiny_model.config, "acme/x", base_model=str(tmp_path))
    assert card.data.base_model is None and f"`{tmp_path.name}` (a local folder, not a Hub id)" in card.text
    assert describe_base_model("openai/clip-vit-large-patch14-336") == (
        "`openai/clip-vit-large-patch14-336`",
        "openai/clip-vit-large-patch14-336",
    )
    assert describe_base_model(None) == ("unknown", None)
    assert describe_base_model("C:\\models\\clip") == ("`clip` (a local folder, not a Hub id)", None)
    assert dataset_names({"train_data": "aaclip_hf.data.synthetic (seed 0)"}) == []  # a description is text only
    assert dataset_names({"train_datasets": ["a/b"], "train_data": ["ignored"]}) == ["a/b"]


def test_trainer_arguments_file_feeds_the_card_without_local_paths(saved_model, tmp_path):
    args = {
        "model": "openai/clip-vit-large-patch14-336",
        "train_data": ["/srv/me/data/visa", "relative/mvtec"],
        "shots": "16",
        "stage": "both",
        "text_epochs": 5,
        "vision_epochs": 20,
        "seed": 111,
        "output_dir": "/srv/me/runs/out",
        "resume": "~/runs/out/checkpoints/checkpoint-4",
    }
    (saved_model / "training_args.json").write_text(json.dumps(args))
    staged = hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x")
    published = json.loads((staged.path / "training_args.json").read_text())
    assert published["train_data"] == ["visa", "relative/mvtec"]
    assert published["output_dir"] == "out" and published["resume"] == "checkpoint-4"
    assert published["model"] == "openai/clip-vit-large-patch14-336" and published["seed"] == 111
    text = (staged.path / "README.md").read_text()
    assert "/srv/me" not in text and "~/runs" not in text
    assert "visa, relative/mvtec" in text and "shots per class: 16" in text and "text: 5, vision: 20" in text
    assert _card(staged.path).data.datasets == ["visa", "relative/mvtec"]
    assert json.loads((saved_model / "training_args.json").read_text()) == args  # the source is left alone


def test_sanitise_paths_rewrites_absolute_paths_only():
    value = {
        "a": "/abs/dir/",
        "b": ["C:\\Users\\me\\data", "~/x/y", "file:///tmp/z", "rel/path", "org/model"],
        "c": {"d": "/data/visa::classes=a,b", "e": 3, "f": None},
    }
    assert hub.sanitise_paths(value) == {
        "a": "dir",
        "b": ["data", "y", "z", "rel/path", "org/model"],
        "c": {"d": "visa::classes=a,b", "e": 3, "f": None},
    }


def test_incomplete_folders_are_refused_by_name(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "no_processor")
    with pytest.raises(FileNotFoundError, match="processor_config.json"):
        hub.prepare_hub_folder(tmp_path / "no_processor")
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.prepare_hub_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.stage_hub_folder(tmp_path / "no_processor" / "..", tmp_path / "out", repo_id="a/b")
    from aaclip_hf.hub.card import card_eval_results

    with pytest.raises(ValueError, match="aaclip evaluate"):
        card_eval_results({"classes": {}})


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
import transformers
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

    def create_repo(self, repo_id, *, private=None, exist_ok=False, token=None, repo_type=None, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok, repo_type, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, token=None, repo_type=None, **_):
        root = Path(folder_path)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", repo_id, files, commit_message, repo_type))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{FAKE_SHA}")


@pytest.fixture
def recording_api(monkeypatch):
    _RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", _RecordingApi)
    return _RecordingApi


def test_push_uploads_model_processor_code_pipeline_and_card(saved_model, recording_api, tmp_path):
    before = sorted(p.name for p in saved_model.iterdir())
    (tmp_path / "results.json").write_text(json.dumps(EVAL_RESULTS))
    url = hub.push_folder_to_hub(saved_model, "acme/aaclip-tiny", private=True, eval_results=tmp_path / "results.json")
    assert url.endswith(FAKE_SHA)
    create, upload = recording_api.calls
    assert create[:5] == ("create_repo", "acme/aaclip-tiny", True, True, "model")
    files = upload[2]
    assert set(files) == EXPECTED_FILES | {"eval_results/mvtec-reference.json"}
    card = files["README.md"].decode()
    metadata = card.split("---")[1]
    assert "value: 90.5" in metadata and "name: mvtec" in metadata and "model-index" in metadata
    assert 'model="acme/aaclip-tiny"' in card
    assert json.loads(files["config.json"])["custom_pipelines"]
    assert files["model.safetensors"] == (saved_model / "model.safetensors").read_bytes()
    assert sorted(p.name for p in saved_model.iterdir()) == before  # the source folder is left alone


def test_push_model_to_hub_for_train_and_convert(tiny_model, processor, recording_api):
    hub.push_model_to_hub(tiny_model, processor, "acme/trained", training_summary=SUMMARY)
    files = recording_api.calls[1][2]
    assert set(files) == EXPECTED_FILES | {hub.TRAINING_SUMMARY_FILE}
    assert "VisA (test split)" in files["README.md"].decode()


# ---------------------------------------------------------------- the allowlist against a trained folder

LEFT_OUT = {
    "pytorch_model.bin",
    "optimizer.bin",
    "scheduler.pt",
    "rng_state.pth",
    "extra.pkl",
    "checkpoints/",
    ".env",
    ".git/",
    "train_log.jsonl",
    "secret_link.json",
    "vocab.json",
    "linked_dir",
}


@pytest.fixture
def trained_folder(saved_model, tmp_path):
    """A saved model with what a training run and a careless user leave next to it."""
    for name in ("pytorch_model.bin", "optimizer.bin", "scheduler.pt", "rng_state.pth", "extra.pkl"):
        (saved_model / name).write_bytes(b"pickle bytes")
    (saved_model / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (saved_model / "checkpoints" / "checkpoint-10" / "model.safetensors").write_bytes(b"x")
    (saved_model / ".env").write_text("HF_TOKEN=hf_secret\n")
    (saved_model / ".git").mkdir()
    (saved_model / ".git" / "config").write_text("[core]\n")
    (saved_model / "train_log.jsonl").write_text("{}\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET\n")
    os.symlink(outside / "secret.txt", saved_model / "secret_link.json")
    os.symlink(outside / "secret.txt", saved_model / "vocab.json")  # an allowlisted name behind a symlink
    os.symlink(outside, saved_model / "linked_dir")
    return saved_model


def _published_names(saved_model: Path) -> set[str]:
    return {p.name for p in saved_model.iterdir() if p.name in EXPECTED_FILES}


def test_dry_run_lists_only_the_allowlist_and_warns_once(trained_folder, recording_api, tmp_path, capsys, caplog):
    from aaclip_hf.cli import main

    caplog.set_level("WARNING", logger="aaclip_hf.hub.publish")
    assert main(["push", str(trained_folder), "acme/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not recording_api.calls
    listed = {line.split()[-1] for line in out.splitlines() if line.startswith("  ") and "(" not in line}
    assert listed == EXPECTED_FILES
    for name in EXPECTED_FILES - {"README.md"}:  # sizes as in the source (the card and pipeline are regenerated)
        size = (trained_folder / name).stat().st_size
        assert re.search(rf"^\s+{size} B\s+{re.escape(name)}$", out, re.M), name
    assert "TOP SECRET" not in out
    warnings = [r for r in caplog.records if r.name == "aaclip_hf.hub.publish"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"{len(LEFT_OUT)} item(s) not published" in message
    for name in LEFT_OUT:
        assert f"{name} (" in message, name
    assert "vocab.json (a symlink" in message and "optimizer.bin (optimizer/scheduler/RNG state" in message

    dry = tmp_path / "dry"
    assert main(["push", str(trained_folder), "acme/x", "--dry-run", str(dry)]) == 0
    assert {p.relative_to(dry).as_posix() for p in dry.rglob("*")} == EXPECTED_FILES
    assert not any("TOP SECRET" in p.read_text(errors="replace") for p in dry.iterdir())
    assert main(["push", str(trained_folder), "acme/x", "--dry-run", str(dry)]) == 2  # not empty: refused


def test_upload_of_a_trained_folder_is_exactly_the_allowlisted_set(trained_folder, recording_api):
    """What `--push-to-hub` of train/convert and `aaclip push` call: the uploaded files are the allowlisted ones."""
    hub.push_folder_to_hub(trained_folder, "acme/trained")
    files = recording_api.calls[1][2]
    assert set(files) == EXPECTED_FILES
    assert all(b"TOP SECRET" not in data and b"hf_secret" not in data for data in files.values())
    assert {name for name in files if hub.is_allowlisted(name)} == set(files)


def test_allowlist_constant():
    for name in ("model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                 "weights_manifest.json", "config.json", "preprocessor_config.json", "processor_config.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "configuration_aaclip.py", "modeling_aaclip.py", "processing_aaclip.py", "pipeline_aaclip.py",
                 "README.md", "training_args.json", "training_summary.json"):  # fmt: skip
        assert hub.is_allowlisted(name), name
    for name in ("pytorch_model.bin", "model.bin", "model.pt", "x.pth", "x.pkl", "optimizer.bin", ".env",
                 "evil.py", "app.py", "requirements.txt", "model.onnx", "model.safetensors.bak", "config.json.tmp",
                 "train_log.jsonl", "model-1-of-2.safetensors", "README.md/x"):  # fmt: skip
        assert not hub.is_allowlisted(name), name


# ---------------------------------------------------------------- weights checks before publishing


def test_push_refuses_weights_that_differ_from_the_manifest(saved_model, recording_api):
    from aaclip_hf.cli import main

    data = bytearray((saved_model / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one changed byte in the tensor data
    (saved_model / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: SHA-256 differs from the manifest"):
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert main(["push", str(saved_model), "acme/x"]) == 2
    assert not recording_api.calls
    (saved_model / "weights_manifest.json").unlink()
    with pytest.raises(ValueError, match=r"weights_manifest\.json: missing"):
        hub.push_folder_to_hub(saved_model, "acme/x")


def test_push_refuses_non_finite_weights_naming_the_tensor(saved_model, recording_api):
    from safetensors.torch import load_file, save_file

    from aaclip_hf.modeling.serialization_aaclip import NonFiniteWeightsError, write_weights_manifest

    state = load_file(saved_model / "model.safetensors")
    name = sorted(key for key, tensor in state.items() if tensor.is_floating_point())[3]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    save_file(state, saved_model / "model.safetensors", metadata={"format": "pt"})
    write_weights_manifest(saved_model)  # a consistent manifest: only the finite check can refuse it
    with pytest.raises(
        NonFiniteWeightsError, match=rf"model\.safetensors: refusing to publish non-finite.*{re.escape(name)}"
    ):
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert not recording_api.calls


def test_pickled_weights_only_are_refused(saved_model, tmp_path):
    (saved_model / "model.safetensors").rename(saved_model / "pytorch_model.bin")
    with pytest.raises(
        FileNotFoundError, match=r"no model weights \(model\.safetensors\) \(pytorch_model\.bin is a pickle"
    ):
        hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x")


def test_truncated_weights_are_refused_by_name(saved_model, tmp_path):
    data = (saved_model / "model.safetensors").read_bytes()
    (saved_model / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(saved_model / 'model.safetensors'))}: truncated or corrupt"
    ):
        hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x")


# ---------------------------------------------------------------- what is added when asked


def _overlay(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_eval_dir_puts_the_overlay_grid_and_the_table_in_the_card(saved_model, tmp_path, capsys):
    from aaclip_hf.cli import main

    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    run = dict(EVAL_RESULTS, settings={"aupro_variant": "mvtec", "fpr_limit": 0.3, "num_images": 5})
    run["table_markdown"] = (
        "| Class | #normal | #anomalous | I-AUROC |\n|---|---:|---:|---:|\n| bottle | 2 | 3 | 90.0 |"
    )
    (eval_dir / "results.json").write_text(json.dumps(run))
    _overlay(eval_dir / "overlays" / "b.png", (60, 20), (0, 255, 0))
    _overlay(eval_dir / "overlays" / "a.png", (30, 30), (255, 0, 0))
    _overlay(eval_dir / "overlays" / "c.png", (40, 10), (0, 0, 255))
    os.symlink(eval_dir / "overlays" / "a.png", eval_dir / "overlays" / "d.png")  # not followed
    dry = tmp_path / "dry"
    argv = ["push", str(saved_model), "acme/x", "--dry-run", str(dry), "--eval-dir", str(eval_dir)]
    assert main([*argv, "--card-columns", "2", "--card-tile-width", "20"]) == 0
    assert "eval_overlays.png" in capsys.readouterr().out
    grid = Image.open(dry / "eval_overlays.png").convert("RGB")
    # a (30x30 -> 20x20) | b (60x20 -> 20x7) on row 1 (height 20), c (40x10 -> 20x5) on row 2 (height 5).
    assert grid.size == (40, 25)
    assert grid.getpixel((10, 10)) == (255, 0, 0) and grid.getpixel((30, 3)) == (0, 255, 0)
    assert grid.getpixel((30, 15)) == (255, 255, 255) and grid.getpixel((10, 22)) == (0, 0, 255)
    assert grid.getpixel((30, 22)) == (255, 255, 255)
    card = _card(dry)
    assert "![Anomaly overlays from the evaluation" in card.text and "](eval_overlays.png)" in card.text
    assert "| bottle | 2 | 3 | 90.0 |" in card.text and "AUPRO: mvtec variant, FPR limit 0.3" in card.text
    assert "- 5 test images" in card.text
    assert {r.metric_name.split(" (")[0] for r in card.data.eval_results} >= {"pixel AUPRO@0.3"}
    assert json.loads((dry / "eval_results" / "mvtec-reference.json").read_text())["settings"]["fpr_limit"] == 0.3
    assert main([*argv[:4], str(tmp_path / "dry2"), "--eval-dir", str(eval_dir), "--card-images", "0"]) == 0
    assert not (tmp_path / "dry2" / "eval_overlays.png").exists() and "![" not in _card(tmp_path / "dry2").text
    assert main([*argv[:4], str(tmp_path / "dry3"), "--eval-dir", str(tmp_path / "nope")]) == 2


def test_onnx_is_published_only_when_asked(saved_model, tmp_path):
    (saved_model / "model.onnx").write_bytes(b"left next to the model")
    graph = tmp_path / "exported.onnx"
    graph.write_bytes(b"onnx graph bytes")
    staged = hub.stage_hub_folder(saved_model, tmp_path / "a", repo_id="acme/x")
    assert "model.onnx" not in staged.files and ("model.onnx", "not on the allowlist") in staged.skipped
    staged = hub.stage_hub_folder(saved_model, tmp_path / "b", repo_id="acme/x", onnx=graph)
    assert set(staged.files) == EXPECTED_FILES | {"onnx/model.onnx"}
    assert (staged.path / "onnx" / "model.onnx").read_bytes() == b"onnx graph bytes"
    with pytest.raises(FileNotFoundError, match="--onnx"):
        hub.stage_hub_folder(saved_model, tmp_path / "c", repo_id="acme/x", onnx=tmp_path / "missing.onnx")


def test_push_cli(saved_model, recording_api, tmp_path, capsys):
    from aaclip_hf.cli import main

    (tmp_path / "results.json").write_text(json.dumps(EVAL_RESULTS))
    dry = tmp_path / "dry"
    argv = [
        "push",
        str(saved_model),
        "acme/x",
        "--dry-run",
        str(dry),
        "--eval-results",
        str(tmp_path / "results.json"),
    ]
    assert main(argv) == 0
    assert EXPECTED_FILES | {"eval_results"} == {p.name for p in dry.iterdir()} and not recording_api.calls
    assert main(["push", str(saved_model), "acme/x", "--private"]) == 0
    assert recording_api.calls[0][2] is True and "trust_remote_code=True" in capsys.readouterr().out


def test_with_app_dry_run_lists_the_space_files_and_the_readme_has_the_space_yaml(saved_model, tmp_path, capsys):
    from aaclip_hf.cli import main

    dry = tmp_path / "space"
    assert main(["push", str(saved_model), "acme/aaclip-space", "--with-app", "--dry-run", str(dry)]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[-1] for line in out.splitlines() if line.startswith("  ") and "(" not in line}
    assert listed == EXPECTED_FILES | {"app.py", "requirements.txt"}
    assert "Space acme/aaclip-space" in out
    assert (dry / "app.py").read_bytes() == hub.space_app_source().read_bytes()
    requirements = (dry / "requirements.txt").read_text().split()
    assert requirements[0] == f"transformers=={transformers.__version__}" and "torch" in requirements
    card = _card(dry)
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.title == "aaclip-space"
    assert card.data.library_name == "transformers"  # still the model card
    assert "runs as a Gradio Space (`app.py`)" in card.text
    # Without --with-app an app.py lying in the model folder stays local.
    (saved_model / "app.py").write_text("print('old')\n")
    staged = hub.stage_hub_folder(saved_model, tmp_path / "model_only", repo_id="acme/x")
    assert "app.py" not in staged.files and staged.repo_type == "model"
    assert "sdk" not in (staged.path / "README.md").read_text().split("---")[1]


def test_with_app_uploads_to_a_gradio_space(saved_model, recording_api):
    hub.push_folder_to_hub(saved_model, "acme/aaclip-space", with_app=True)
    (_, repo, _, _, repo_type, options), upload = recording_api.calls
    assert (repo, repo_type, options.get("space_sdk")) == ("acme/aaclip-space", "space", "gradio")
    assert upload[4] == "space" and {"app.py", "requirements.txt"} <= set(upload[2])


def test_save_for_hub_replaces_a_previous_hub_folder_only(tiny_model, processor, tmp_path):
    folder = hub.save_for_hub(tiny_model, processor, tmp_path / "hub", eval_results=EVAL_RESULTS)
    assert (folder / "eval_results").is_dir()
    hub.save_for_hub(tiny_model, processor, folder)  # a rerun (e.g. the demo into the same output)
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES  # nothing stale is left
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not a Hub folder \(holds \['notes.txt'\]\)"):
        hub.save_for_hub(tiny_model, processor, folder)
    assert (folder / "notes.txt").read_text() == "mine"


def test_train_push_to_hub_goes_through_the_allowlist(trained_folder, recording_api, monkeypatch, tmp_path):
    """`aaclip train --push-to-hub` uploads the training output folder by allowlist (training itself stubbed)."""
    from aaclip_hf.cli import main
    from aaclip_hf.cli import train as train_cli

    (trained_folder / "training_args.json").write_text(json.dumps({"model": "/abs/base", "train_data": ["/d/visa"]}))
    monkeypatch.setattr(train_cli, "train", lambda args: args.output_dir)
    argv = [
        "train",
        "--model",
        str(trained_folder),
        "--train-data",
        str(tmp_path),
        "--output-dir",
        str(trained_folder),
    ]
    assert main([*argv, "--push-to-hub", "--hub-model-id", "acme/trained"]) == 0
    create, upload = recording_api.calls
    assert create[1] == "acme/trained" and set(upload[2]) == EXPECTED_FILES | {"training_args.json"}
    assert json.loads(upload[2]["training_args.json"]) == {"model": "base", "train_data": ["visa"]}


def test_a_folder_of_symlinks_such_as_a_hub_cache_snapshot_is_refused_with_a_hint(saved_model, tmp_path):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for path in saved_model.iterdir():
        os.symlink(path, snapshot / path.name)
    with pytest.raises(FileNotFoundError, match=r"config\.json is a symlink, never followed; copy the real files"):
        hub.stage_hub_folder(snapshot, tmp_path / "hub", repo_id="acme/x")
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").write_bytes((saved_model / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is a symlink, never followed; copy the real"):
        hub.stage_hub_folder(snapshot, tmp_path / "hub2", repo_id="acme/x")


SPACE_RUN = """
import json, sys
try:
    import aaclip_hf
    package = "importable"
except ImportError:
    package = "missing"
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
import app  # the Space's app.py, as `python app.py` would run it (without launching the server)
detector = app.load_detector(sys.argv[1], device="cpu")
blocks = app.build_app(detector, title="t")
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8))
result = detector(image, class_name="bottle")
overlay = app.overlay_image(image, result["anomaly_probability"], result["mask"])
print(json.dumps({"package": package, "score": result["score"], "overlay": list(overlay.size),
                  "blocks": type(blocks).__name__, "pipeline_module": type(detector).__module__}))
"""


def test_with_app_folder_runs_as_a_space_without_the_package(saved_model, tiny_model, processor, tmp_path):
    """The --with-app folder's app.py loads the model from its own folder in a process that cannot import aaclip_hf."""
    pytest.importorskip("gradio")
    space = hub.stage_hub_folder(saved_model, tmp_path / "space", repo_id="acme/space", with_app=True).path
    (tmp_path / "run.py").write_text(SPACE_RUN)
    site_packages = sysconfig.get_paths()["purelib"]
    code = f"import sys; sys.path.append({site_packages!r}); exec(open({str(tmp_path / 'run.py')!r}).read())"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code, str(space)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["package"] == "missing" and out["blocks"] == "Blocks" and out["overlay"] == [30, 24]
    assert out["pipeline_module"].startswith("transformers_modules.")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8))
    expected = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")(
        image, class_name="bottle"
    )
    assert out["score"] == pytest.approx(expected["score"], abs=1e-5)

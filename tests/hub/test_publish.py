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
from aaclip_hf.runtime.model_folder import MODELING_DIR, REMOTE_CODE_FILES, save_model_folder, write_manifest


FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"
# What the one writer (`save_model_folder`: transformers' `Pipeline.save_pretrained`) writes, and the card; the code
# files are those of the installed `aaclip_hf.modeling`.
EXPECTED_FILES = {
    "README.md",
    "config.json",
    "manifest.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    *REMOTE_CODE_FILES,
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
    """A model folder as every command saves it: the one writer, with its manifest."""
    return save_model_folder(tiny_model, processor, tmp_path / "model")


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
    pipeline_entry = config["custom_pipelines"]["zero-shot-anomaly-detection"]
    assert pipeline_entry["impl"] == "pipeline_aaclip.AAClipAnomalyDetectionPipeline"
    assert pipeline_entry["type"] == "multimodal"
    assert config["auto_map"]["AutoModel"] == "modeling_aaclip.AAClipModel"
    assert set(REMOTE_CODE_FILES) <= EXPECTED_FILES
    assert (folder / "pipeline_aaclip.py").read_text() == Path(
        sys.modules[AAClipAnomalyDetectionPipeline.__module__].__file__
    ).read_text()
    for name in REMOTE_CODE_FILES:
        # Every code file is Hub-portable: only the standard library, torch, transformers (and huggingface_hub, which
        # it requires), numpy, PIL, siblings (optional imports inside try/except, which transformers' remote-code
        # check skips, are allowed).
        tree = ast.parse((folder / name).read_text())
        guarded = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try) for inner in ast.walk(node)}
        imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded
        ]
        roots = {alias.name.split(".")[0] for node in imports if isinstance(node, ast.Import) for alias in node.names}
        roots |= {
            node.module.split(".")[0] for node in imports if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        assert roots - set(sys.stdlib_module_names) <= {"numpy", "torch", "PIL", "transformers", "huggingface_hub"}, (
            name,
            roots,
        )
        assert all(node.level <= 1 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)), name

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
    paths appear by their folder name only, Hub ids as they are, in the text; the YAML names Hub ids only."""
    tiny_model.config.base_model = "openai/clip-vit-base-patch16"
    summary = {"base_model": "/home/me/clip", "train_data": ["/home/me/data/visa::classes=candle", "acme/mvtec-ad"]}
    folder = hub.save_for_hub(tiny_model, processor, tmp_path / "hub", training_summary=summary)
    card = _card(folder)
    assert card.data.base_model == "openai/clip-vit-base-patch16"
    assert card.data.datasets == ["acme/mvtec-ad"]  # the local folder is named in the text only
    assert "- training data: visa::classes=candle, acme/mvtec-ad" in card.text
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
    local = tmp_path / "data" / "visa"
    local.mkdir(parents=True)
    relative = os.path.relpath(local)  # a relative path that exists is a folder, never a Hub id
    summary = {"train_data": [str(local), "~/data/mvtec", "C:\\data\\btad", "./visa", "a/b/c", relative, "acme/x"]}
    assert dataset_names(summary) == ["acme/x"]


def test_a_local_base_model_path_in_the_config_is_published_by_its_folder_name(tiny_model, processor, tmp_path):
    tiny_model.config.base_model = "/home/me/models/clip-vit-l"
    source = save_model_folder(tiny_model, processor, tmp_path / "model")
    staged = hub.stage_hub_folder(source, tmp_path / "hub", repo_id="acme/x")
    assert json.loads((staged.path / "config.json").read_text())["base_model"] == "clip-vit-l"
    assert "/home/me" not in "".join(p.read_text(errors="replace") for p in staged.path.iterdir())
    assert json.loads((source / "config.json").read_text())["base_model"] == "/home/me/models/clip-vit-l"


def test_trainer_arguments_file_feeds_the_card_without_local_paths_or_secrets(saved_model, tmp_path):
    token = "hf_" + "a1B2" * 9
    args = {
        "model": "openai/clip-vit-large-patch14-336",
        "train_data": ["/srv/me/data/visa", "data/relative/mvtec", "acme/btad"],
        "shots": "16",
        "stage": "both",
        "text_epochs": 5,
        "vision_epochs": 20,
        "seed": 111,
        "output_dir": "/srv/me/runs/out",
        "resume": "~/runs/out/checkpoints/checkpoint-4",
        "hub_token": token,
        "report_to": f"wandb?key={token}",
        "trackers": {"wandb_api_key": "k-123", "project": "aaclip"},
    }
    (saved_model / "training_args.json").write_text(json.dumps(args))  # added after saving: not in the manifest
    staged = hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x")
    published = json.loads((staged.path / "training_args.json").read_text())
    assert published["train_data"] == ["visa", "data/relative/mvtec", "acme/btad"]
    assert published["output_dir"] == "out" and published["resume"] == "checkpoint-4"
    assert published["model"] == "openai/clip-vit-large-patch14-336" and published["seed"] == 111
    assert "hub_token" not in published and published["trackers"] == {"project": "aaclip"}
    assert published["report_to"] == hub.REMOVED_TOKEN
    everything = "".join(p.read_text(errors="replace") for p in staged.path.rglob("*") if p.is_file())
    assert token not in everything and "k-123" not in everything
    text = (staged.path / "README.md").read_text()
    assert "/srv/me" not in text and "~/runs" not in text
    assert "visa, data/relative/mvtec, acme/btad" in text and "shots per class: 16" in text
    assert "text: 5, vision: 20" in text
    assert _card(staged.path).data.datasets == ["acme/btad"]
    assert json.loads((saved_model / "training_args.json").read_text()) == args  # the source is left alone
    # The published manifest covers the sanitised file as published.
    manifest = json.loads((staged.path / "manifest.json").read_text())
    assert manifest["training_args.json"]["bytes"] == (staged.path / "training_args.json").stat().st_size


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
    secrets = {"HF_TOKEN": "x", "password": 1, "db": {"Api-Key": "k", "passwd": "p", "host": "h"}, "n_tokens": 3}
    assert hub.sanitise_paths(secrets) == {"db": {"host": "h"}}  # any key that names a secret, at any depth
    assert hub.sanitise_paths(["hf_" + "x" * 34, "hf_short"]) == [hub.REMOVED_TOKEN, "hf_short"]


def test_incomplete_folders_are_refused_by_name(tiny_model, tmp_path):
    from aaclip_hf.errors import AAClipError

    with pytest.raises(FileNotFoundError, match="no such model folder"):
        hub.stage_hub_folder(tmp_path / "missing", tmp_path / "out", repo_id="a/b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        hub.stage_hub_folder(tmp_path / "empty", tmp_path / "out", repo_id="a/b")
    tiny_model.save_pretrained(tmp_path / "no_weights")
    (tmp_path / "no_weights" / "model.safetensors").unlink()
    with pytest.raises(AAClipError, match=r"no model\.safetensors"):
        hub.stage_hub_folder(tmp_path / "no_weights", tmp_path / "out", repo_id="a/b")
    assert not (tmp_path / "out").exists()  # nothing was written
    from aaclip_hf.hub.card import card_eval_results

    with pytest.raises(ValueError, match="aaclip evaluate"):
        card_eval_results({"classes": {}})


def test_a_folder_without_processor_or_manifest_publishes_with_a_warning(tiny_model, tmp_path, caplog):
    """transformers' own `save_pretrained` of the model alone: no processor, no manifest. Everything published is
    written again by the one writer (the processor at the model's size, the installed code), so it publishes."""
    tiny_model.save_pretrained(tmp_path / "native")
    caplog.set_level("WARNING", logger="aaclip_hf.hub.publish")
    staged = hub.stage_hub_folder(tmp_path / "native", tmp_path / "hub", repo_id="acme/x")
    assert set(staged.files) == EXPECTED_FILES
    assert any("no manifest.json, so its files cannot be checked" in r.getMessage() for r in caplog.records)
    for name in REMOTE_CODE_FILES:
        assert (staged.path / name).read_bytes() == (MODELING_DIR / name).read_bytes()


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
    "notes.json",
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
    os.symlink(outside, saved_model / "linked_dir")
    (saved_model / "notes.json").write_text('{"note": "TOP SECRET"}')  # not in the manifest, never loaded
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
    for name in {"model.safetensors", "tokenizer.json", *REMOTE_CODE_FILES}:  # written again, the same bytes
        size = (trained_folder / name).stat().st_size
        assert re.search(rf"^\s+{size} B\s+{re.escape(name)}$", out, re.M), name
    assert "TOP SECRET" not in out
    warnings = [r for r in caplog.records if r.name == "aaclip_hf.hub.publish"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"{len(LEFT_OUT)} item(s) not published" in message
    for name in LEFT_OUT:
        assert f"{name} (" in message, name
    assert "secret_link.json (a symlink" in message and "optimizer.bin (optimizer/scheduler/RNG state" in message
    assert "notes.json (not on the allowlist)" in message

    dry = tmp_path / "dry"
    assert main(["push", str(trained_folder), "acme/x", "--dry-run", str(dry)]) == 0
    out = capsys.readouterr().out
    assert {p.relative_to(dry).as_posix() for p in dry.rglob("*")} == EXPECTED_FILES
    for path in dry.iterdir():  # the listing gives the sizes of the files as written
        assert re.search(rf"^\s+{path.stat().st_size} B\s+{re.escape(path.name)}$", out, re.M), path.name
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
                 "manifest.json", "config.json", "preprocessor_config.json", "processor_config.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "configuration_aaclip.py", "modeling_aaclip.py", "processing_aaclip.py", "pipeline_aaclip.py",
                 "image_processing_aaclip.py", "README.md", "training_args.json", "training_summary.json"):  # fmt: skip
        assert hub.is_allowlisted(name), name
    for name in ("pytorch_model.bin", "model.bin", "model.pt", "x.pth", "x.pkl", "optimizer.bin", ".env",
                 "evil.py", "app.py", "requirements.txt", "model.onnx", "model.safetensors.bak", "config.json.tmp",
                 "train_log.jsonl", "model-1-of-2.safetensors", "README.md/x", "weights_manifest.json",
                 "serialization_aaclip.py"):  # fmt: skip
        assert not hub.is_allowlisted(name), name
    assert {name for name in REMOTE_CODE_FILES if hub.is_allowlisted(name)} == set(REMOTE_CODE_FILES)


# ---------------------------------------------------------------- weights checks before publishing


def test_push_refuses_weights_that_differ_from_the_manifest(saved_model, recording_api, capsys):
    from aaclip_hf.cli import main

    data = bytearray((saved_model / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one changed byte in the tensor data
    (saved_model / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: SHA-256 differs from the manifest"):
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert main(["push", str(saved_model), "acme/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors: SHA-256 differs" in err
    assert not recording_api.calls
    (saved_model / "config.json").write_text((saved_model / "config.json").read_text().replace("0.1", "0.2", 1))
    with pytest.raises(ValueError, match=r"config\.json: \d+ bytes, the manifest says|config\.json: SHA-256 differs"):
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert not recording_api.calls


def test_push_refuses_non_finite_weights_naming_the_tensor(saved_model, recording_api):
    from safetensors.torch import load_file, save_file

    from aaclip_hf.errors import NonFiniteWeightsError

    state = load_file(saved_model / "model.safetensors")
    name = sorted(key for key, tensor in state.items() if tensor.is_floating_point())[3]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    save_file(state, saved_model / "model.safetensors", metadata={"format": "pt"})
    write_manifest(saved_model)  # a consistent manifest: only the finite check can refuse it
    with pytest.raises(
        NonFiniteWeightsError, match=rf"non-finite \(NaN/inf\) values in 1 tensor\(s\): {re.escape(name)}"
    ):
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert not recording_api.calls


def test_pickled_weights_only_are_refused(saved_model, tmp_path):
    (saved_model / "model.safetensors").rename(saved_model / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"model\.safetensors: listed in manifest\.json but missing"):
        hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x")
    (saved_model / "manifest.json").unlink()  # a folder with no manifest: the loader refuses the pickle
    with pytest.raises(
        FileNotFoundError,
        match=r"no model\.safetensors .*refusing to load pytorch_model\.bin \(a pickle can run code\)",
    ):
        hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x")
    assert not (tmp_path / "hub").exists()


def test_truncated_weights_are_refused_by_name(saved_model, tmp_path):
    data = (saved_model / "model.safetensors").read_bytes()
    (saved_model / "model.safetensors").write_bytes(data[: len(data) // 2])
    path = re.escape(str(saved_model / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"{path}: \d+ bytes, the manifest says \d+ \(truncated or replaced\)"):
        hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x")
    (saved_model / "manifest.json").unlink()  # without a manifest the loader's header check names the file
    with pytest.raises(ValueError, match=rf"{path}: truncated or corrupt"):
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
    # Without --with-app the installed Space app lying in the model folder (a Space folder pushed again) stays
    # local; an edited one is code that is not the package's, refused like any other.
    (saved_model / "app.py").write_bytes(hub.space_app_source().read_bytes())
    staged = hub.stage_hub_folder(saved_model, tmp_path / "model_only", repo_id="acme/x")
    assert "app.py" not in staged.files and staged.repo_type == "model"
    assert ("app.py", "not on the allowlist") in staged.skipped
    assert "sdk" not in (staged.path / "README.md").read_text().split("---")[1]
    (saved_model / "app.py").write_text("print('old')\n")
    with pytest.raises(ValueError, match=r"app\.py: code that is not part of aaclip-hf's model files"):
        hub.stage_hub_folder(saved_model, tmp_path / "edited_app", repo_id="acme/x", with_app=True)


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


def test_train_push_to_hub_goes_through_the_allowlist(
    trained_folder, tiny_model, processor, recording_api, monkeypatch, tmp_path
):
    """`aaclip train --push-to-hub` uploads the training output folder by allowlist (training itself stubbed: the
    output folder is what a run left)."""
    from aaclip_hf.cli import main
    from aaclip_hf.training import trainer

    base = save_model_folder(tiny_model, processor, tmp_path / "base")
    (tmp_path / "data").mkdir()
    (trained_folder / "training_args.json").write_text(json.dumps({"model": "/abs/base", "train_data": ["/d/visa"]}))
    monkeypatch.setattr(trainer, "train", lambda args, lock=True: args.output_dir)
    argv = ["train", "--model", str(base), "--train-data", str(tmp_path / "data"), "--output-dir", str(trained_folder)]
    assert main([*argv, "--push-to-hub", "--hub-model-id", "acme/trained"]) == 0
    create, upload = recording_api.calls
    assert create[1] == "acme/trained" and set(upload[2]) == EXPECTED_FILES | {"training_args.json"}
    assert json.loads(upload[2]["training_args.json"]) == {"model": "base", "train_data": ["visa"]}


def test_a_folder_of_symlinks_such_as_a_hub_cache_snapshot_is_refused_with_a_hint(saved_model, tmp_path):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for path in saved_model.iterdir():
        os.symlink(path, snapshot / path.name)
    with pytest.raises(FileNotFoundError, match=r"config\.json, .*model\.safetensors, .*: symlinks .*never followed"):
        hub.stage_hub_folder(snapshot, tmp_path / "hub", repo_id="acme/x")
    for path in saved_model.iterdir():
        if path.name != "model.safetensors":
            (snapshot / path.name).unlink()
            (snapshot / path.name).write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"snapshot': model\.safetensors: symlinks or other non-reg"):
        hub.stage_hub_folder(snapshot, tmp_path / "hub2", repo_id="acme/x")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").mkdir()  # a folder under a published name is refused the same way
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: symlinks or other non-regular files"):
        hub.stage_hub_folder(snapshot, tmp_path / "hub3", repo_id="acme/x")
    assert not any((tmp_path / name).exists() for name in ("hub", "hub2", "hub3"))


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


# ---------------------------------------------------------------- published code is the installed package's


@pytest.mark.parametrize("dry_run", [False, True])
def test_push_refuses_edited_or_unknown_code_in_one_line_naming_the_file(
    saved_model, recording_api, tmp_path, capsys, dry_run
):
    from aaclip_hf.cli import main

    original = (saved_model / "modeling_aaclip.py").read_bytes()
    (saved_model / "modeling_aaclip.py").write_bytes(original + b"\nprint('edited')\n")
    dry = tmp_path / "dry"
    argv = ["push", str(saved_model), "acme/x", *(["--dry-run", str(dry)] if dry_run else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{saved_model / 'modeling_aaclip.py'}: differs from the installed aaclip-hf modeling_aaclip.py" in err
    (saved_model / "modeling_aaclip.py").write_bytes(original)
    (saved_model / "helpers.py").write_text("import os\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{saved_model / 'helpers.py'}: code that is not part of aaclip-hf" in err
    assert not recording_api.calls and not dry.exists()
    (saved_model / "helpers.py").unlink()
    assert main(argv) == 0  # restored: published


def test_published_code_is_the_installed_packages_and_the_manifest_covers_it(saved_model, tmp_path):
    from aaclip_hf.runtime.model_folder import verify_manifest

    staged = hub.stage_hub_folder(saved_model, tmp_path / "hub", repo_id="acme/x", with_app=True)
    for name in REMOTE_CODE_FILES:
        assert (staged.path / name).read_bytes() == (MODELING_DIR / name).read_bytes(), name
    manifest = json.loads((staged.path / "manifest.json").read_text())
    assert set(REMOTE_CODE_FILES) | {"app.py", "requirements.txt", "config.json", "model.safetensors"} <= set(manifest)
    assert verify_manifest(staged.path) == []  # the published folder holds exactly what its manifest lists


def test_a_symlink_under_a_published_name_is_refused_without_reading_it(saved_model, recording_api, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    os.symlink(secret, saved_model / "vocab.json")  # a tokenizer file name the loader may read
    with pytest.raises(FileNotFoundError, match=r"vocab\.json: symlinks or other non-regular files, never") as error:
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert "TOP SECRET" not in str(error.value) and not recording_api.calls


def test_hardlinked_secrets_under_published_names_never_reach_the_hub(saved_model, recording_api, tmp_path):
    """Hard links are regular files. What is published under an allowlisted name is what the checked loader parsed,
    written again by the one writer, so a secret hard-linked there is refused (it does not parse) or dropped."""
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_" + "s" * 34 + "\n")
    config = (saved_model / "config.json").read_text()
    (saved_model / "config.json").unlink()
    os.link(secret, saved_model / "config.json")
    with pytest.raises(ValueError, match=r"config\.json: \d+ bytes, the manifest says") as error:
        hub.push_folder_to_hub(saved_model, "acme/x")
    (saved_model / "manifest.json").unlink()  # without a manifest the loader refuses what does not parse
    with pytest.raises(ValueError, match=r"config\.json', field|config\.json': not valid JSON") as error:
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert "hf_sss" not in str(error.value)
    # A config that parses but carries a secret-looking key that AA-CLIP does not define: refused, naming the key.
    (saved_model / "config.json").unlink()
    (saved_model / "config.json").write_text(json.dumps({**json.loads(config), "hub_token": "hf_" + "s" * 34}))
    with pytest.raises(ValueError, match=r"config\.json': holds key\(s\) \['hub_token'\]") as error:
        hub.push_folder_to_hub(saved_model, "acme/x")
    assert "hf_sss" not in str(error.value)
    (saved_model / "config.json").write_text(config)
    # Card sources are rewritten: a hard-linked training_args.json keeps its settings, never its secrets.
    (tmp_path / "args.json").write_text(json.dumps({"seed": 3, "api_key": "k-123", "data": "/home/me/visa"}))
    os.link(tmp_path / "args.json", saved_model / "training_args.json")
    hub.push_folder_to_hub(saved_model, "acme/x")
    files = recording_api.calls[-1][2]
    assert json.loads(files["training_args.json"]) == {"seed": 3, "data": "visa"}
    assert not any(b"hf_sss" in data or b"k-123" in data or b"/home/me" in data for data in files.values())
    assert len([call for call in recording_api.calls if call[0] == "upload_folder"]) == 1


def test_a_failure_while_writing_leaves_no_hub_folder(saved_model, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub, "_write_card", fail)
    with pytest.raises(OSError, match="No space left"):
        hub.stage_hub_folder(saved_model, tmp_path / "new", repo_id="acme/x")
    assert not (tmp_path / "new").exists()  # a folder this call created is removed
    (tmp_path / "given").mkdir()
    with pytest.raises(OSError, match="No space left"):
        hub.stage_hub_folder(saved_model, tmp_path / "given", repo_id="acme/x", with_app=True)
    assert list((tmp_path / "given").iterdir()) == []  # an empty folder the caller gave is emptied again

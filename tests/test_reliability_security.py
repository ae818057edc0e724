"""Safe loading: weights are written as safetensors only, every pickle-based input is read
with `torch.load(weights_only=True)`, a pickle that would run code is refused before it runs, and with the
package installed nothing needs `trust_remote_code` (see docs/security.md).

Also here: the malicious converter inputs are in tests/test_conversion.py::test_malicious_pickle_is_refused and
the malicious training checkpoints in tests/test_reliability_training.py::test_resume_refuses_*."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aaclip_hf import AAClipModel, AAClipProcessor
from aaclip_hf.runtime.serialization import UnsafeCheckpointError, load_tensor_file

from .conftest import make_tiny_model


ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("aaclip_hf", "modeling", "conversion", "training")
# Copied to the Hub and run where the package is NOT installed (a Space's app.py): the model's own remote code is
# the only code there is. `aaclip app` runs the same file with a loader of installed classes instead.
STANDALONE_HUB_FILES = (ROOT / "aaclip_hf" / "hub" / "space_app.py",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle")


def _package_sources() -> list[Path]:
    files = [p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 20
    return files


def _calls(path: Path):
    """Every call in a source file as (dotted callee name, ast.Call)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_package_never_pickles_and_always_loads_weights_only():
    """The code itself: no torch.save / pickle.dump writer, no unsafe reader, no opt-out of safetensors."""
    offenders = []
    for path in _package_sources():
        for name, call in _calls(path):
            where = f"{path.relative_to(ROOT)}:{call.lineno} {ast.unparse(call)[:80]}"
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if name in ("torch.save", "pickle.dump", "pickle.dumps", "dill.dump", "joblib.dump"):
                offenders.append(where)
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                offenders.append(where)
            if name == "torch.load" and keywords.get("weights_only") != "True":
                offenders.append(where)
            if keywords.get("safe_serialization") == "False" or keywords.get("allow_pickle") == "True":
                offenders.append(where)
            if keywords.get("trust_remote_code") == "True" and path not in STANDALONE_HUB_FILES:
                offenders.append(where)
    assert not offenders, offenders


def test_saved_folders_hold_safetensors_weights_only(tmp_path, processor):
    from aaclip_hf.hub.publish import save_for_hub

    model = make_tiny_model()
    model.update_text_anchors(processor, ["object"])
    save_for_hub(model, processor, tmp_path / "hub")
    model.to_inference_only().save_pretrained(tmp_path / "inference_only")
    for folder in ("hub", "inference_only"):
        names = sorted(p.name for p in (tmp_path / folder).iterdir())
        assert "model.safetensors" in names
        assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)], names


class _Payload:
    """Unpickling this runs `os.mkdir(marker)`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pth_is_refused_and_never_runs(tmp_path, zipfile_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    torch.save(
        {"visual.proj": torch.zeros(2, 2), "extra": _Payload(marker)},
        path,
        _use_new_zipfile_serialization=zipfile_format,
    )
    with pytest.raises(UnsafeCheckpointError, match=r"weights\.pth: refusing to load"):
        load_tensor_file(path)
    assert not marker.exists()
    # Control: the same payload does run under a plain pickle load, so the test would catch a regression.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_tensor_pth_still_loads(tmp_path):
    state = {"a": torch.arange(3.0), "meta": {"epoch": 2, "names": ["x"]}}
    torch.save(state, tmp_path / "ok.pt")
    loaded, kind = load_tensor_file(tmp_path / "ok.pt")
    assert kind == "torch" and torch.equal(loaded["a"], state["a"]) and loaded["meta"] == state["meta"]


def test_from_pretrained_refuses_a_malicious_pytorch_model_bin(tmp_path):
    """A folder with a pickle `pytorch_model.bin` instead of safetensors: transformers reads it weights-only."""
    model = make_tiny_model()
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    marker = tmp_path / "pwned"
    state = dict(model.state_dict())
    state["logit_scale"] = _Payload(marker)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        AAClipModel.from_pretrained(tmp_path)
    assert not marker.exists()


def _dynamic_modules() -> list[str]:
    """Files transformers copied in to run remote code (HF_HOME is per test, see conftest)."""
    base = Path(os.environ["HF_HOME"]) / "modules"
    return [str(p) for p in base.rglob("*.py")] if base.exists() else []


def test_no_trust_remote_code_needed_with_the_package_installed(tmp_path, processor, monkeypatch):
    """Hub folders carry remote code (auto_map, custom_pipelines), but with the package imported the installed
    classes are used and no remote code is ever imported or asked about: Auto classes resolve through the
    registration, and `pipeline(TASK, model=folder)` takes the task `import aaclip_hf` registers, for a Hub folder
    with `custom_pipelines` as for any other."""
    import builtins

    from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline

    from aaclip_hf.hub.publish import save_for_hub
    from aaclip_hf.modeling.pipeline_aaclip import TASK, AAClipAnomalyDetectionPipeline

    model = make_tiny_model()
    model.update_text_anchors(processor, ["object"])
    hub = save_for_hub(model, processor, tmp_path / "hub")
    assert "custom_pipelines" in json.loads((Path(hub) / "config.json").read_text())  # the Hub copy's entry
    model.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    # save_pretrained declares custom_pipelines too; a folder without it (an older save) is the "plain" case.
    plain_config = json.loads((tmp_path / "plain" / "config.json").read_text())
    plain_config.pop("custom_pipelines", None)
    (tmp_path / "plain" / "config.json").write_text(json.dumps(plain_config))
    image = (np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        expected = model(processor(images=[image])["pixel_values"]).image_score.item()
    questions = []

    def answer(prompt=""):  # transformers asks on the terminal before it runs a folder's code
        questions.append(prompt)
        return "n"

    monkeypatch.setattr(builtins, "input", answer)

    assert type(AutoConfig.from_pretrained(hub)).__module__.startswith("aaclip_hf")
    assert isinstance(AutoModel.from_pretrained(hub), AAClipModel)
    assert isinstance(AutoProcessor.from_pretrained(hub), AAClipProcessor)
    for folder in (hub, tmp_path / "plain"):
        pipe = pipeline(TASK, model=str(folder))  # no trust_remote_code: the registered task's installed classes
        assert type(pipe) is AAClipAnomalyDetectionPipeline
        assert type(pipe.model).__module__.startswith("aaclip_hf") and isinstance(pipe.processor, AAClipProcessor)
        assert pipe(image)["score"] == pytest.approx(expected, abs=1e-6)
    assert questions == []  # never asked whether to run the folder's code
    assert _dynamic_modules() == []


def test_pickle_module_is_not_used_to_read_user_files():
    """Belt and braces for the AST scan: no `import pickle` outside the module that maps refusals to errors."""
    users = []
    for path in _package_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if "pickle" in names or module == "pickle" or "dill" in names:
                users.append(str(path.relative_to(ROOT)))
    assert users == [str(Path("aaclip_hf") / "runtime" / "serialization.py")], users
    # ... and there it calls nothing of it (it only catches `pickle.UnpicklingError`).
    assert [n for n, _ in _calls(ROOT / "aaclip_hf" / "runtime" / "serialization.py") if n.startswith("pickle.")] == []

"""`aaclip push-metric`: the `evaluate` metric module as a Hub Space folder (dry run and a mocked upload)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import RepoCard

from aaclip_hf.cli import main
from aaclip_hf.evaluation.anomaly_metrics import METRIC_DIR
from aaclip_hf.hub import metric as hub_metric


SPACE_FILES = {"anomaly_metrics.py", "exact_metrics.py", "README.md", "requirements.txt", "app.py"}


def test_dry_run_writes_the_metric_space_and_lists_it(tmp_path, capsys):
    target = tmp_path / "anomaly_metrics"
    assert main(["push-metric", "--dry-run", str(target)]) == 0
    out = capsys.readouterr().out
    assert "nothing uploaded to Space your-name/anomaly_metrics" in out
    listed = {line.split()[-1] for line in out.splitlines() if line.startswith("  ")}
    assert listed == SPACE_FILES == {p.name for p in target.iterdir()}
    for name in ("anomaly_metrics.py", "exact_metrics.py", "requirements.txt"):
        assert (target / name).read_bytes() == (METRIC_DIR / name).read_bytes()
        assert f" {(target / name).stat().st_size} B  {name}" in out
    card = RepoCard.load(target / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert "evaluate" in card.data.tags and "# Metric card: anomaly_metrics" in card.text  # H5's card is kept
    assert 'evaluate.load("your-name/anomaly_metrics")' in (target / "app.py").read_text()
    compile((target / "app.py").read_text(), "app.py", "exec")

    import evaluate  # the written folder is a loadable module (its name names the script)

    module = evaluate.load(str(target))
    result = module.compute(predictions=[np.array([[0.1, 0.9], [0.2, 0.8]], np.float32)], references=[np.eye(2)])
    assert result["pixel_auroc"] == 0.25  # positives 0.1, 0.8 vs negatives 0.9, 0.2: one of four pairs ordered


def test_repo_name_names_the_script_and_must_be_an_identifier(tmp_path, capsys):
    staged = hub_metric.stage_metric_folder(tmp_path / "out", "acme/my_metric")
    assert set(staged.files) == SPACE_FILES - {"anomaly_metrics.py"} | {"my_metric.py"}
    assert staged.repo_type == "space"
    assert main(["push-metric", "acme/my-metric", "--dry-run"]) == 2
    assert "Python identifier" in capsys.readouterr().err
    assert main(["push-metric"]) == 2  # no Space id and no dry run
    assert main(["push-metric", "--dry-run", str(tmp_path / "out")]) == 2  # not empty


def test_push_metric_creates_a_gradio_space_and_uploads_exactly_the_module(monkeypatch, capsys):
    calls = []

    class Api:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            files = {p.name for p in Path(folder_path).iterdir()}
            calls.append(("upload", repo_id, files, kwargs))
            return SimpleNamespace(commit_url=f"https://huggingface.co/spaces/{repo_id}/commit/1")

    monkeypatch.setattr(hub_metric, "HfApi", Api)
    assert main(["push-metric", "acme/anomaly_metrics", "--private"]) == 0
    (_, repo, create), (_, _, files, upload) = calls
    assert repo == "acme/anomaly_metrics"
    assert (create["repo_type"], create["space_sdk"], create["private"]) == ("space", "gradio", True)
    assert (
        files == SPACE_FILES and upload["repo_type"] == "space" and sorted(upload["allow_patterns"]) == sorted(files)
    )
    assert 'evaluate.load("acme/anomaly_metrics")' in capsys.readouterr().out


@pytest.mark.parametrize("repo_id", ["anomaly_metrics", "a/b/c", "acme/1metric"])
def test_bad_metric_repo_ids_are_refused(repo_id, tmp_path):
    with pytest.raises(ValueError, match="owner/name"):
        hub_metric.stage_metric_folder(tmp_path / "x", repo_id)

"""Publishing the `evaluate` metric module (`aaclip push-metric`): a Hub Space that `evaluate.load` reads.

`evaluate` hosts community metrics as Gradio Spaces: `evaluate.load("owner/name")` downloads `name.py` from the
Space `owner/name`. The folder is the bundled module (`write_metric_module`: the script under the repo's name,
its implementation, the metric card `README.md`, `requirements.txt`), the card's Space YAML and an `app.py`
that shows evaluate's standard metric widget. Nothing else is written or uploaded.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, RepoCard

from ..errors import InvalidInputError
from ..evaluation.anomaly_metrics import METRIC_NAME, write_metric_module
from .publish import HubFolder


__all__ = ["DEFAULT_METRIC_REPO", "METRIC_APP", "push_metric_to_hub", "stage_metric_folder"]

DEFAULT_METRIC_REPO = f"your-name/{METRIC_NAME}"
METRIC_APP_FILE = "app.py"
# The Space's app: evaluate's own widget for a metric module, loaded from this Space by its id.
METRIC_APP = '''"""Space app of the `{repo_id}` evaluate metric: evaluate's standard widget (written by `aaclip push-metric`)."""

import evaluate
from evaluate.utils import launch_gradio_widget


module = evaluate.load("{repo_id}")
launch_gradio_widget(module)
'''


def _check_repo_id(repo_id: str) -> str:
    name = repo_id.split("/")[-1]
    if repo_id.count("/") != 1 or not name.isidentifier():
        raise InvalidInputError(
            f"metric repo {repo_id!r}: expected owner/name with a Python identifier as name (evaluate loads the "
            f"script <name>.py), e.g. {DEFAULT_METRIC_REPO}"
        )
    return name


def stage_metric_folder(target: str | os.PathLike, repo_id: str = DEFAULT_METRIC_REPO) -> HubFolder:
    """Write the metric Space for `repo_id` into the empty (or new) folder `target`; returns its file list."""
    name = _check_repo_id(repo_id)
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise InvalidInputError(f"{target}: not empty; the metric folder is written into an empty (or new) folder")
    with tempfile.TemporaryDirectory(prefix="aaclip-metric-") as tmp:
        written = write_metric_module(Path(tmp) / name)  # the script is named after the folder: `<name>.py`
        target.mkdir(parents=True, exist_ok=True)
        for path in written:
            shutil.copyfile(path, target / path.name)
    card = RepoCard.load(target / "README.md")
    card.data.sdk = "gradio"
    card.data.app_file = METRIC_APP_FILE
    try:
        card.data.sdk_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        pass  # the Hub then runs its current gradio
    card.save(str(target / "README.md"))
    (target / METRIC_APP_FILE).write_text(METRIC_APP.format(repo_id=repo_id), encoding="utf-8")
    files = {p.name: p.stat().st_size for p in target.iterdir() if p.is_file()}
    return HubFolder(target, files, [], "space")


def push_metric_to_hub(
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create (if needed) the Gradio Space `repo_id` and upload the metric folder; returns the commit URL."""
    with tempfile.TemporaryDirectory(prefix="aaclip-metric-push-") as tmp:
        staged = stage_metric_folder(Path(tmp) / "metric", repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token, repo_type="space", space_sdk="gradio")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(staged.path),
            repo_type="space",
            allow_patterns=sorted(staged.files),
            commit_message=commit_message or f"Upload the {METRIC_NAME} evaluate metric (aaclip-hf)",
            token=token,
        )
    return str(getattr(info, "commit_url", info))

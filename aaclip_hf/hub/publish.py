"""Publishing AA-CLIP models: Hub folders written by allowlist, checked, then uploaded (`aaclip push`).

Every path that writes or uploads a Hub folder goes through `stage_hub_folder`: `aaclip push` (and its
`--dry-run`), `--push-to-hub` of `aaclip train` / `aaclip convert-*` (`push_folder_to_hub`,
`push_model_to_hub`) and `save_for_hub`. It copies only the top-level files `HUB_ALLOWLIST` names, never
follows a symlink, and lists everything it left behind in one warning. Before anything is written, the weights
are checked: they must be safetensors, match `weights_manifest.json` (written by `save_pretrained`) and be
finite. A published folder then works with transformers alone:

    pipeline("zero-shot-anomaly-detection", model="org/name", trust_remote_code=True)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from huggingface_hub import HfApi
from safetensors import SafetensorError, safe_open

from ..modeling.configuration_aaclip import AAClipConfig
from ..modeling.modeling_aaclip import AAClipModel
from ..modeling.pipeline_aaclip import TASK, AAClipAnomalyDetectionPipeline
from ..modeling.serialization_aaclip import (
    CUSTOM_PIPELINE_ENTRY,
    WEIGHTS_MANIFEST_NAME,
    CorruptWeightsError,
    NonFiniteWeightsError,
    WeightsError,
    check_safetensors_file,
    verify_manifest,
    weight_files,
)
from .card import (
    CARD_TAGS,
    TRAINING_ARGS_FILE,
    TRAINING_SUMMARY_FILE,
    build_model_card,
    load_json,
    overlay_grid,
    read_training_summary,
)


__all__ = [
    "CARD_TAGS",
    "HUB_ALLOWLIST",
    "PIPELINE_FILE",
    "TRAINING_SUMMARY_FILE",
    "HubFolder",
    "check_weights",
    "is_allowlisted",
    "prepare_hub_folder",
    "push_folder_to_hub",
    "push_model_to_hub",
    "sanitise_paths",
    "save_for_hub",
    "stage_hub_folder",
    "upload_hub_folder",
]

logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline_aaclip.py"
MODELING_DIR = Path(inspect.getsourcefile(AAClipModel)).parent
# The flat remote-code files of `aaclip_hf.modeling` (config, model, processor, pipeline): what `auto_map` and
# `custom_pipelines` point at. Derived from the installed package, so a new sibling is published with it.
REMOTE_CODE_FILES = tuple(sorted(path.name for path in MODELING_DIR.glob("*_aaclip.py")))

# THE allowlist: full-match patterns on the names of top-level regular files. Nothing else in a model folder
# is ever written to a Hub folder or uploaded; in particular never pickles (.bin .pt .pth .pkl), optimizer,
# scheduler or RNG state, `checkpoints/` or any other folder, dotfiles (.env, .git) and nothing behind a symlink.
HUB_ALLOWLIST = (
    # weights (single file or shards with their index) and their SHA-256 manifest
    r"model\.safetensors",
    r"model-\d{5}-of-\d{5}\.safetensors",
    r"model\.safetensors\.index\.json",
    re.escape(WEIGHTS_MANIFEST_NAME),
    # model config (with `auto_map` and `custom_pipelines`)
    r"config\.json",
    # processor and tokenizer
    r"preprocessor_config\.json",
    r"processor_config\.json",
    r"tokenizer\.json",
    r"tokenizer_config\.json",
    r"special_tokens_map\.json",
    r"added_tokens\.json",
    r"vocab\.json",
    r"merges\.txt",
    # remote code and pipeline code
    *(re.escape(name) for name in REMOTE_CODE_FILES),
    # model card and its sources (absolute paths rewritten, see `sanitise_paths`)
    r"README\.md",
    re.escape(TRAINING_SUMMARY_FILE),
    re.escape(TRAINING_ARGS_FILE),
)
_ALLOWED = re.compile("|".join(f"(?:{pattern})" for pattern in HUB_ALLOWLIST))
# Files added only when asked (`aaclip push` flags), under these names.
EVAL_RESULTS_DIR = "eval_results"  # --eval-results / --eval-dir: the `aaclip evaluate` JSON, one per run
ONNX_PATH = "onnx/model.onnx"  # --onnx: the `aaclip export-onnx` graph
PICTURE_FILE = "eval_overlays.png"  # --eval-dir with overlays: the grid shown in the card
APP_FILE = "app.py"  # --with-app: the Gradio Space app
REQUIREMENTS_FILE = "requirements.txt"  # --with-app: what the Space installs
# Besides transformers (pinned to the version the remote code was written for); gradio comes with the Space SDK.
SPACE_EXTRA_REQUIREMENTS = ("torch", "numpy", "pillow")
# JSON files whose absolute local paths are rewritten to their last component before publishing.
SANITISED_FILES = (TRAINING_ARGS_FILE, TRAINING_SUMMARY_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
TRAINING_STATE = re.compile(r"optimi[sz]er|scheduler|rng_state|random_states|scaler|trainer_state", re.IGNORECASE)
SYMLINK_HINT = "copy the real files first, e.g. `cp -rL` of a Hub cache snapshot"
CHECKPOINT_FOLDER = re.compile(r"checkpoints?(-\d+)?|\.tmp-.*")
TENSORS_NAMED = 8  # non-finite tensors an error names before it says how many more there are
DEFAULT_CARD_IMAGES = 6  # overlays in the card's picture grid
DEFAULT_CARD_COLUMNS = 2
DEFAULT_CARD_TILE_WIDTH = 640


@dataclass
class HubFolder:
    """A staged Hub folder: its files (path in the repo -> bytes) and what was left out (name, reason)."""

    path: Path
    files: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    repo_type: str = "model"

    def listing(self) -> str:
        """The exact file list with sizes in bytes, then what was not published (the `--dry-run` report)."""
        total = sum(self.files.values())
        lines = [f"{len(self.files)} files, {total} bytes ({total / 2**20:.1f} MiB):"]
        lines += [f"  {size:>12} B  {name}" for name, size in sorted(self.files.items())]
        if self.skipped:
            lines.append(f"not published ({len(self.skipped)}):")
            lines += [f"  {name}  ({reason})" for name, reason in self.skipped]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The allowlist and what it leaves out
# ----------------------------------------------------------------------------------------------


def is_allowlisted(name: str) -> bool:
    """Whether a top-level file name is on `HUB_ALLOWLIST`."""
    return bool(_ALLOWED.fullmatch(name))


def _skip_reason(entry: os.DirEntry) -> str | None:
    """Why a folder entry is not published, or None when it is."""
    name = entry.name
    if entry.is_symlink():
        return "a symlink; links are never followed"
    if name.startswith("."):
        return "a dotfile"
    if entry.is_dir(follow_symlinks=False):
        if CHECKPOINT_FOLDER.fullmatch(name):
            return "training checkpoints (optimizer, scheduler and RNG state) stay local"
        return "a folder; only top-level files are published"
    if not entry.is_file(follow_symlinks=False):
        return "not a regular file"
    if TRAINING_STATE.search(name):
        return "optimizer/scheduler/RNG state stays local"
    if name.lower().endswith(PICKLE_SUFFIXES):
        return "a pickle; weights are published only as safetensors"
    if not is_allowlisted(name):
        return "not on the allowlist"
    return None


def sanitise_paths(value):
    """`value` with every absolute local path string replaced by its last component (lists/dicts recursively).

    Training arguments record where the data, the base model and the output lived on the training machine;
    the folder names stay (they say what was used), the rest of the path does not leave the machine.
    """
    if isinstance(value, dict):
        return {key: sanitise_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [sanitise_paths(item) for item in value]
    if isinstance(value, str) and _is_absolute(value):
        spec = ""
        if "::" in value:  # `PATH::classes=a,b` data specs keep their options
            value, spec = value.split("::", 1)
            spec = "::" + spec
        stripped = value.replace("\\", "/").rstrip("/")
        return (stripped.rsplit("/", 1)[-1] or ".") + spec
    return value


def _is_absolute(value: str) -> bool:
    return value.startswith(("/", "~", "\\", "file:")) or bool(re.match(r"^[A-Za-z]:[\\/]", value))


def _copy_allowlisted(source: Path, target: Path) -> list[tuple[str, str]]:
    """Copy the allowlisted top-level files of `source` into `target`; return what was left out and why."""
    skipped = []
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            reason = _skip_reason(entry)
            if reason:
                slash = "/" if entry.is_dir(follow_symlinks=False) else ""
                skipped.append((entry.name + slash, reason))
            elif entry.name in SANITISED_FILES:
                data = sanitise_paths(load_json(entry.path, entry.name))
                (target / entry.name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            else:
                shutil.copyfile(entry.path, target / entry.name, follow_symlinks=False)
    return skipped


def _warn_skipped(source: Path, skipped: Sequence[tuple[str, str]]) -> None:
    if skipped:
        listed = "; ".join(f"{name} ({reason})" for name, reason in skipped)
        logger.warning(
            "%s: %d item(s) not published (see aaclip_hf.hub.publish.HUB_ALLOWLIST): %s", source, len(skipped), listed
        )


# ----------------------------------------------------------------------------------------------
# Checks: safetensors only, the manifest, finite values
# ----------------------------------------------------------------------------------------------


def _named(text: str, staging: Path, source: Path) -> str:
    return text.replace(str(staging), str(source))


def check_weights(folder: Path, source: Path | None = None) -> list[str]:
    """Refuse weights that must not be published; return the weight files (safetensors only).

    Raises, naming `source` files: no safetensors weights (pickles are never published), a corrupt file, a
    mismatch with `weights_manifest.json`, or a non-finite tensor.
    """
    source = source or folder
    files = weight_files(folder)
    if not files:
        pickles = sorted(p.name for p in source.glob("pytorch_model*.bin"))
        hint = f" ({', '.join(pickles)} is a pickle and is never published)" if pickles else ""
        if (source / "model.safetensors").is_symlink():
            hint = f" (model.safetensors is a symlink, never followed; {SYMLINK_HINT})"
        raise FileNotFoundError(
            f"{source}: no model weights (model.safetensors){hint}; save the model with save_pretrained"
        )
    for name in files:
        if not (folder / name).is_file():
            hint = f" (a symlink, never followed; {SYMLINK_HINT})" if (source / name).is_symlink() else ""
            raise FileNotFoundError(f"{source / name}: listed in the safetensors index but missing{hint}")
        try:
            check_safetensors_file(folder / name)
        except CorruptWeightsError as error:
            raise CorruptWeightsError(_named(str(error), folder, source)) from None
    problems = verify_manifest(folder)
    if problems:
        raise WeightsError(
            f"{source}: refusing to publish weights that do not match {WEIGHTS_MANIFEST_NAME}: "
            + "; ".join(_named(problem, folder, source) for problem in problems)
        )
    for name in files:
        bad = []
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        bad.append(key)
        except SafetensorError as error:
            raise CorruptWeightsError(f"{source / name}: unreadable safetensors file ({error})") from None
        if bad:
            more = f" (+{len(bad) - TENSORS_NAMED} more)" if len(bad) > TENSORS_NAMED else ""
            raise NonFiniteWeightsError(
                f"{source / name}: refusing to publish non-finite (NaN/inf) weights in {len(bad)} tensor(s): "
                f"{', '.join(bad[:TENSORS_NAMED])}{more}"
            )
    return files


# ----------------------------------------------------------------------------------------------
# Completing a folder: pipeline code, config, card
# ----------------------------------------------------------------------------------------------


def _add_pipeline_code(folder: Path) -> None:
    """Copy the pipeline file and declare it in `config.json` (what `Pipeline.save_pretrained` records)."""
    source = Path(inspect.getsourcefile(AAClipAnomalyDetectionPipeline))
    shutil.copyfile(source, folder / PIPELINE_FILE)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = {TASK: dict(CUSTOM_PIPELINE_ENTRY)}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


REQUIRED_FILES = (
    "config.json",
    "configuration_aaclip.py",
    "modeling_aaclip.py",
    "processor_config.json",
    "processing_aaclip.py",
    PIPELINE_FILE,
    "README.md",
)


def prepare_hub_folder(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    eval_results: dict | Sequence[dict] | str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str = "mit",
    picture: str | None = None,
    space: Mapping[str, str] | None = None,
) -> Path:
    """Complete an allowlisted folder in place: pipeline code, `custom_pipelines` and the `README.md` card.

    Raises naming the missing file when the folder lacks the model config or the processor.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a folder written by save_pretrained")
    if not weight_files(folder):
        raise FileNotFoundError(f"{folder}: no model weights (model.safetensors); expected a saved AA-CLIP model")
    if not (folder / "processor_config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no processor_config.json; save the processor too (processor.save_pretrained(folder))"
        )
    _add_pipeline_code(folder)
    if isinstance(eval_results, (str, os.PathLike)):
        eval_results = load_json(eval_results, "eval results")
    config = AAClipConfig.from_pretrained(folder)
    card = build_model_card(
        config,
        repo_id or f"your-name/{folder.resolve().name}",
        training_summary=read_training_summary(folder),
        eval_results=eval_results,
        base_model=base_model,
        license=license,
        picture=picture,
        space=space,
    )
    card.save(str(folder / "README.md"))
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: the Hub folder is incomplete, missing {missing}")
    return folder


# ----------------------------------------------------------------------------------------------
# Staging: the one way a Hub folder is written
# ----------------------------------------------------------------------------------------------


def _eval_file_name(run: dict, taken: set[str]) -> str:
    stem = re.sub(r"[^\w.-]+", "-", f"{run.get('dataset') or 'results'}-{run.get('protocol') or 'reference'}")
    name, index = f"{stem}.json", 2
    while name in taken:
        name, index = f"{stem}-{index}.json", index + 1
    taken.add(name)
    return f"{EVAL_RESULTS_DIR}/{name}"


def _overlay_files(eval_dir: Path) -> list[Path]:
    """PNG overlays of an evaluation folder (`overlays/*.png`, as `aaclip detect` writes, or top-level `*.png`).

    Symlinks are not followed."""
    found = []
    for folder in (eval_dir / "overlays", eval_dir):
        if folder.is_dir() and not folder.is_symlink():
            found += sorted(
                p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file() and not p.is_symlink()
            )
    return found


def _read_eval_dirs(eval_dirs: Sequence[str | os.PathLike]) -> tuple[list[dict], list[Path]]:
    runs, overlays = [], []
    for eval_dir in map(Path, eval_dirs):
        if not eval_dir.is_dir():
            raise FileNotFoundError(f"--eval-dir {eval_dir}: no such folder (expected an `aaclip evaluate` output)")
        found = _overlay_files(eval_dir)
        if (eval_dir / "results.json").is_file():
            runs.append(load_json(eval_dir / "results.json", "eval results"))
        elif not found:
            raise FileNotFoundError(f"--eval-dir {eval_dir}: neither results.json nor overlay PNGs in it")
        overlays += found
    return runs, overlays


def space_app_source() -> Path:
    """The standalone Gradio app published as the Space's `app.py` (it imports no aaclip_hf)."""
    return Path(__file__).with_name("space_app.py")


def space_requirements() -> str:
    """What the Space installs besides gradio (its SDK): the transformers this remote code is written for, torch."""
    return "\n".join([f"transformers=={transformers.__version__}", *SPACE_EXTRA_REQUIREMENTS]) + "\n"


def space_metadata(repo_id: str) -> dict[str, str]:
    """The Space YAML the card carries with `--with-app`: gradio SDK (the installed version, if any) and app file."""
    metadata = {"sdk": "gradio", "app_file": APP_FILE, "title": repo_id.split("/")[-1]}
    try:
        metadata["sdk_version"] = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        pass  # the Hub then runs its current gradio
    return metadata


@contextlib.contextmanager
def _removed_on_failure(target: Path):
    """A Hub folder is written whole or not at all: on any failure, what this call wrote is removed again."""
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:  # it was an empty folder the caller gave: empty it again
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def stage_hub_folder(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    repo_id: str,
    eval_results: dict | Sequence[dict] | str | os.PathLike | None = None,
    eval_dirs: Sequence[str | os.PathLike] = (),
    base_model: str | None = None,
    license: str = "mit",
    onnx: str | os.PathLike | None = None,
    with_app: bool = False,
    card_images: int = DEFAULT_CARD_IMAGES,
    card_columns: int = DEFAULT_CARD_COLUMNS,
    card_tile_width: int = DEFAULT_CARD_TILE_WIDTH,
) -> HubFolder:
    """Write the Hub folder for the saved model `source` into the empty folder `target`, by allowlist.

    Copies the allowlisted files (one warning lists the rest), checks the weights (`check_weights`), adds what
    was asked for (evaluation JSON and overlay picture, ONNX graph, Space app) and the card. `source` is not
    modified. Returns the exact file list.
    """
    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise FileNotFoundError(f"model folder {source} does not exist")
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"{target}: not empty; a Hub folder is written into an empty (or new) folder")
    if isinstance(eval_results, (str, os.PathLike)):
        eval_results = load_json(eval_results, "eval results")
    runs = [] if eval_results is None else [eval_results] if isinstance(eval_results, dict) else list(eval_results)
    dir_runs, overlays = _read_eval_dirs(eval_dirs)
    runs += dir_runs
    if onnx is not None and not (Path(onnx).is_file() and Path(onnx).suffix == ".onnx"):
        raise FileNotFoundError(f"--onnx {onnx}: no such .onnx file (write one with `aaclip export-onnx`)")
    app_source = space_app_source() if with_app else None
    if app_source is not None and not app_source.is_file():
        raise FileNotFoundError(f"{app_source}: the Space app is missing from this installation")

    with _removed_on_failure(target):
        skipped = _copy_allowlisted(source, target)
        _warn_skipped(source, skipped)
        if not (target / "config.json").is_file():
            hint = (
                f" (config.json is a symlink, never followed; {SYMLINK_HINT})"
                if (source / "config.json").is_symlink()
                else ""
            )
            raise FileNotFoundError(f"{source}: no config.json{hint}; expected a folder written by save_pretrained")
        check_weights(target, source)

        asked = []
        taken: set[str] = set()
        for run in runs:
            name = _eval_file_name(run, taken)
            (target / name).parent.mkdir(exist_ok=True)
            (target / name).write_text(json.dumps(sanitise_paths(run), indent=2) + "\n", encoding="utf-8")
            asked.append(name)
        picture = None
        if overlays and card_images > 0:
            overlay_grid(overlays[:card_images], columns=card_columns, tile_width=card_tile_width).save(
                target / PICTURE_FILE
            )
            picture = PICTURE_FILE
            asked.append(PICTURE_FILE)
        if onnx is not None:
            (target / ONNX_PATH).parent.mkdir(exist_ok=True)
            shutil.copyfile(onnx, target / ONNX_PATH)
            asked.append(ONNX_PATH)
        space = None
        if app_source is not None:
            shutil.copyfile(app_source, target / APP_FILE)
            (target / REQUIREMENTS_FILE).write_text(space_requirements(), encoding="utf-8")
            asked += [APP_FILE, REQUIREMENTS_FILE]
            space = space_metadata(repo_id)
        prepare_hub_folder(
            target,
            repo_id=repo_id,
            eval_results=runs or None,
            base_model=base_model,
            license=license,
            picture=picture,
            space=space,
        )
        files = {p.relative_to(target).as_posix(): p.stat().st_size for p in target.rglob("*") if p.is_file()}
        stray = sorted(name for name in files if not (("/" not in name and is_allowlisted(name)) or name in asked))
        if stray:  # defence in depth: the completion step wrote something the allowlist does not cover
            raise RuntimeError(f"{target}: files outside the allowlist would be published: {stray}")
        return HubFolder(target, files, skipped, "space" if with_app else "model")


def save_for_hub(
    model,
    processor,
    output_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    training_summary: dict | None = None,
    eval_results: dict | Sequence[dict] | None = None,
    base_model: str | None = None,
    license: str = "mit",
) -> Path:
    """Write a complete Hub-ready folder (allowlisted): weights, processor, remote and pipeline code, card.

    An existing `output_dir` is replaced only when it holds nothing but a Hub folder's files (a previous run).
    """
    folder = Path(output_dir)
    if folder.exists() and any(folder.iterdir()):
        foreign = sorted(entry.name for entry in os.scandir(folder) if not _is_hub_entry(entry))
        if foreign:
            raise ValueError(f"{folder}: not empty and not a Hub folder (holds {foreign}); choose a new folder")
    with tempfile.TemporaryDirectory(prefix="aaclip-save-") as tmp:
        saved = Path(tmp) / "model"
        model.save_pretrained(saved)
        processor.save_pretrained(saved)
        if training_summary is not None:
            (saved / TRAINING_SUMMARY_FILE).write_text(json.dumps(training_summary, indent=2) + "\n", encoding="utf-8")
        staged = stage_hub_folder(
            saved,
            Path(tmp) / "hub",
            repo_id=repo_id or f"your-name/{folder.resolve().name}",
            eval_results=eval_results,
            base_model=base_model,
            license=license,
        )
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged.path), str(folder))
    return folder


def _is_hub_entry(entry: os.DirEntry) -> bool:
    """Whether a folder entry is one `stage_hub_folder` writes (an allowlisted file or an asked-for addition)."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return entry.name in (EVAL_RESULTS_DIR, Path(ONNX_PATH).parent.name)
    return is_allowlisted(entry.name) or entry.name in (PICTURE_FILE, APP_FILE, REQUIREMENTS_FILE)


def upload_hub_folder(
    staged: HubFolder,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a staged folder (exactly its files) to `repo_id`, created if needed; returns the commit URL."""
    api = HfApi(token=token)
    create = {"space_sdk": "gradio"} if staged.repo_type == "space" else {}
    api.create_repo(repo_id, private=private, exist_ok=True, token=token, repo_type=staged.repo_type, **create)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(staged.path),
        repo_type=staged.repo_type,
        allow_patterns=sorted(staged.files),
        commit_message=commit_message or "Upload AA-CLIP model (aaclip-hf)",
        token=token,
    )
    return str(getattr(info, "commit_url", info))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    **stage_options,
) -> str:
    """Upload a saved model folder to `repo_id` through a staged, allowlisted, checked copy.

    `stage_options` are those of `stage_hub_folder` (eval results, ONNX, app, card). The source folder is not
    modified. Returns the commit URL.
    """
    with tempfile.TemporaryDirectory(prefix="aaclip-push-") as tmp:
        staged = stage_hub_folder(folder, Path(tmp) / "hub", repo_id=repo_id, **stage_options)
        return upload_hub_folder(staged, repo_id, private=private, token=token, commit_message=commit_message)


def push_model_to_hub(
    model,
    processor,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    training_summary: dict | None = None,
    eval_results: dict | Sequence[dict] | None = None,
    base_model: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Save a model and processor to a temporary folder, then `push_folder_to_hub` it."""
    with tempfile.TemporaryDirectory(prefix="aaclip-save-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if training_summary is not None:
            (folder / TRAINING_SUMMARY_FILE).write_text(
                json.dumps(training_summary, indent=2) + "\n", encoding="utf-8"
            )
        return push_folder_to_hub(
            folder,
            repo_id,
            private=private,
            token=token,
            eval_results=eval_results,
            base_model=base_model,
            commit_message=commit_message,
        )

"""Publishing AA-CLIP models: a Hub folder regenerated from the installed package, checked, then uploaded.

`stage_hub_folder` is the one way a Hub folder is written (`aaclip push` and its `--dry-run`, `--push-to-hub` of
`aaclip train` / `aaclip convert-*`, `save_for_hub`): the source folder's files must match its `manifest.json` and
its code must be this package's own; the model is loaded through the one checked loader and written again by the one
writer (`save_model_folder`: transformers' `Pipeline.save_pretrained`, the same files a native
`pipeline(...).push_to_hub(repo)` uploads), so no edited code, pickle, optimizer state, dotfile or symlink target
can reach the Hub. What was asked for (evaluation JSON and overlay picture, ONNX graph, Space app) and the card
are added; `upload_hub_folder` uploads exactly that file list in one commit. A published folder works with
transformers alone:

    pipeline("zero-shot-anomaly-detection", model="org/name", trust_remote_code=True)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from huggingface_hub import HfApi

from ..errors import BadInputError, MissingFileError, WeightsError
from ..runtime.loading import load_config, load_model_and_processor
from ..runtime.model_folder import (
    MANIFEST_NAME,
    REMOTE_CODE_FILES,
    remote_code_problems,
    save_model_folder,
    verify_manifest,
    write_manifest,
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
    "TRAINING_SUMMARY_FILE",
    "HubFolder",
    "is_allowlisted",
    "push_folder_to_hub",
    "push_model_to_hub",
    "sanitise_paths",
    "save_for_hub",
    "stage_hub_folder",
    "upload_hub_folder",
]

logger = logging.getLogger(__name__)

# THE allowlist: full-match patterns on the names of top-level files a Hub folder may hold besides what was asked
# for. Nothing else of a model folder is ever published; in particular never pickles (.bin .pt .pth .pkl),
# optimizer, scheduler or RNG state, `checkpoints/` or any other folder, dotfiles (.env, .git), symlink targets.
HUB_ALLOWLIST = (
    # weights (single file or shards with their index) and the manifest of every file
    r"model\.safetensors",
    r"model-\d{5}-of-\d{5}\.safetensors",
    r"model\.safetensors\.index\.json",
    re.escape(MANIFEST_NAME),
    # model config (with `auto_map` and `custom_pipelines`)
    r"config\.json",
    # processor and tokenizer
    r"preprocessor_config\.json",
    r"processor_config\.json",
    r"tokenizer\.json",
    r"tokenizer_config\.json",
    r"special_tokens_map\.json",
    r"vocab\.json",
    r"merges\.txt",
    # the model's code files, always the installed package's own
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
CHECKPOINT_FOLDER = re.compile(r"checkpoints?(-\d+)?|\.tmp-.*")
# Keys of training_args.json / training_summary.json that may hold secrets: never published.
SECRET_KEYS = re.compile(r"token|secret|password|passwd|api[_-]?key|credential", re.IGNORECASE)
# A Hugging Face access token (`hf_` and 34 letters or digits) inside any string value: replaced before publishing.
HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")
REMOVED_TOKEN = "[removed: looked like an access token]"
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
    """Why a folder entry is not published, or None when it is (as regenerated by the writer)."""
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
    """`value` with every absolute local path string replaced by its last component, secret-looking keys (tokens,
    passwords, API keys) dropped and strings holding a Hub access token replaced, in lists and dicts recursively.

    Training arguments record where the data, the base model and the output lived on the training machine; the
    folder names stay (they say what was used), the rest of the path does not leave the machine.
    """
    if isinstance(value, dict):
        return {key: sanitise_paths(item) for key, item in value.items() if not SECRET_KEYS.search(str(key))}
    if isinstance(value, list):
        return [sanitise_paths(item) for item in value]
    if isinstance(value, str) and HUB_TOKEN.search(value):
        return REMOVED_TOKEN
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


def _left_out(source: Path, published: set[str]) -> list[tuple[str, str]]:
    """Entries of `source` that are not published, with the reason (an allowlisted file the writer did not write
    again, such as a tokenizer file transformers no longer saves, is named too)."""
    skipped = []
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            reason = _skip_reason(entry)
            if reason is None and entry.name not in published:
                reason = "not written again: published files are regenerated from the loaded model"
            if reason:
                skipped.append((entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""), reason))
    return skipped


def _check_links(source: Path) -> None:
    """Every entry under an allowlisted name must be a regular file: the loader would read a symlink's target (or a
    folder's content) as part of the model, and what it reads is published."""
    with os.scandir(source) as entries:
        linked = sorted(
            entry.name
            for entry in entries
            if is_allowlisted(entry.name) and (entry.is_symlink() or not entry.is_file(follow_symlinks=False))
        )
    if linked:
        raise MissingFileError(
            f"{', '.join(linked)}: symlinks or other non-regular files, never followed; copy the real files into the "
            "folder (a Hub cache snapshot is made of links: `hf download REPO --local-dir DIR` writes real files)",
            source,
        )


def _manifest_problems(source: Path) -> list[str]:
    """`verify_manifest`'s lines that matter for publishing: a listed file that changed or is missing, or an unlisted
    file the loader reads. Unlisted files that are neither loaded nor published (notes, logs) are only left out."""
    return verify_manifest(
        source, unlisted_ok=lambda name: not is_allowlisted(name) or name in SANITISED_FILES or name == "README.md"
    )


def _check_source(source: Path) -> None:
    """Before anything is loaded: no links under published names, code that is the installed package's own, and
    files that match the folder's `manifest.json` (a folder without one publishes with a warning)."""
    _check_links(source)
    installed_app = space_app_source().read_bytes()
    code = remote_code_problems(  # the installed Space app is left out, an edited one refused like any code
        source, skip=lambda path: path.name == APP_FILE and path.read_bytes() == installed_app
    )
    if code:
        raise BadInputError(
            "refusing to publish code that is not the installed aaclip-hf's: "
            + "; ".join(code)
            + ". Published code always comes from the installed package; delete the file (or restore it) and push "
            "again"
        )
    if not (source / MANIFEST_NAME).is_file():
        logger.warning(
            "%s: no %s, so its files cannot be checked for changes since they were saved; publishing what the "
            "checked loader reads, written again with the installed aaclip-hf's code",
            source,
            MANIFEST_NAME,
        )
        return
    problems = _manifest_problems(source)
    if problems:
        raise WeightsError(
            f"refusing to publish files that differ from {source / MANIFEST_NAME}: " + "; ".join(problems) + ". "
            "Re-save the folder (aaclip_hf.runtime.save_model_folder) if the change is yours"
        )


def _config_secrets(config) -> list[str]:
    """Keys of the config (top level and sub-configs) that AA-CLIP does not define and whose names look like
    secrets: transformers keeps unknown keys of a config.json and would write them to the Hub again."""
    defaults = type(config)().to_dict()
    found = []

    def walk(values: dict, known: dict, prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(known.get(key), dict):
                walk(value, known[key], f"{prefix}{key}.")
            elif key not in known and SECRET_KEYS.search(str(key)):
                found.append(prefix + str(key))

    walk(config.to_dict(), defaults, "")
    return found


def _publishable(model, source: Path) -> None:
    """Refuse secret-looking config keys; reduce a local `base_model` path to its folder name (the card's rule)."""
    secrets = _config_secrets(model.config)
    if secrets:
        raise BadInputError(
            f"holds key(s) {secrets} that AA-CLIP does not define and that look like secrets; they would be "
            "published with the config. Remove them and push again",
            source / "config.json",
        )
    base_model = getattr(model.config, "base_model", None)
    if isinstance(base_model, str):
        model.config.base_model = sanitise_paths(base_model)


def _copy_sanitised(source: Path, target: Path) -> None:
    """Training summary and arguments, with local paths and secrets removed."""
    for name in SANITISED_FILES:
        path = source / name
        if path.is_file() and not path.is_symlink():
            data = sanitise_paths(load_json(path, name))
            (target / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_card(folder: Path, repo_id: str, runs: list[dict], base_model, license, picture, space) -> None:
    card = build_model_card(
        load_config(folder),
        repo_id,
        training_summary=read_training_summary(folder),
        eval_results=runs or None,
        base_model=base_model,
        license=license,
        picture=picture,
        space=space,
    )
    card.save(str(folder / "README.md"))


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
            raise MissingFileError("no such folder (expected an `aaclip evaluate` output)", eval_dir, "--eval-dir")
        found = _overlay_files(eval_dir)
        if (eval_dir / "results.json").is_file():
            runs.append(load_json(eval_dir / "results.json", "eval results"))
        elif not found:
            raise MissingFileError("neither results.json nor overlay PNGs in it", eval_dir, "--eval-dir")
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
    """Write the Hub folder for the saved model `source` into the empty folder `target` (module docstring).

    `source` is not modified. Returns the exact file list and what was left out (also logged as one warning).
    """
    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise MissingFileError("no such model folder", source, "model_dir")
    if target.exists() and any(target.iterdir()):
        raise BadInputError("not empty; a Hub folder is written into an empty (or new) folder", target)
    if card_columns < 1 or card_tile_width < 1:
        raise BadInputError(
            f"--card-columns and --card-tile-width must be >= 1, got {card_columns} and {card_tile_width}"
        )
    if isinstance(eval_results, (str, os.PathLike)):
        eval_results = load_json(eval_results, "eval results")
    runs = [] if eval_results is None else [eval_results] if isinstance(eval_results, dict) else list(eval_results)
    dir_runs, overlays = _read_eval_dirs(eval_dirs)
    runs += dir_runs
    if onnx is not None and not (Path(onnx).is_file() and Path(onnx).suffix == ".onnx"):
        raise MissingFileError("no such .onnx file (write one with `aaclip export-onnx`)", onnx, "--onnx")
    _check_source(source)
    model, processor = load_model_and_processor(source, device="cpu")
    _publishable(model, source)

    with _removed_on_failure(target):
        save_model_folder(model, processor, target)
        _copy_sanitised(source, target)
        asked = _write_eval_results(target, runs)
        picture = None
        if overlays and card_images > 0:
            grid = overlay_grid(overlays[:card_images], columns=card_columns, tile_width=card_tile_width)
            grid.save(target / PICTURE_FILE)
            picture = PICTURE_FILE
            asked.append(PICTURE_FILE)
        if onnx is not None:
            (target / ONNX_PATH).parent.mkdir(exist_ok=True)
            shutil.copyfile(onnx, target / ONNX_PATH)
            asked.append(ONNX_PATH)
        space = None
        if with_app:
            shutil.copyfile(space_app_source(), target / APP_FILE)
            (target / REQUIREMENTS_FILE).write_text(space_requirements(), encoding="utf-8")
            asked += [APP_FILE, REQUIREMENTS_FILE]
            space = space_metadata(repo_id)
        write_manifest(target)  # every published weight, config, code and tokenizer file, the app's too
        _write_card(target, repo_id, runs, base_model, license, picture, space)
        files = {p.relative_to(target).as_posix(): p.stat().st_size for p in target.rglob("*") if p.is_file()}
        stray = sorted(name for name in files if not (("/" not in name and is_allowlisted(name)) or name in asked))
        if stray:  # defence in depth: the writer wrote something the allowlist does not cover
            raise RuntimeError(f"{target}: files outside the allowlist would be published: {stray}")
    skipped = _left_out(source, set(files))
    if skipped:
        listed = "; ".join(f"{name} ({reason})" for name, reason in skipped)
        logger.warning("%s: %d item(s) not published: %s", source, len(skipped), listed)
    return HubFolder(target, files, skipped, "space" if with_app else "model")


def _write_eval_results(target: Path, runs: list[dict]) -> list[str]:
    """`eval_results/<dataset>-<protocol>.json` for each run, local paths removed; returns their names."""
    written, taken = [], set()
    for run in runs:
        name = _eval_file_name(run, taken)
        (target / name).parent.mkdir(exist_ok=True)
        (target / name).write_text(json.dumps(sanitise_paths(run), indent=2) + "\n", encoding="utf-8")
        written.append(name)
    return written


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
    """Write a complete Hub-ready folder (`stage_hub_folder` of the saved model) at `output_dir`.

    An existing `output_dir` is replaced only when it holds nothing but a Hub folder's files (a previous run).
    """
    folder = Path(output_dir)
    if folder.exists() and any(folder.iterdir()):
        foreign = sorted(entry.name for entry in os.scandir(folder) if not _is_hub_entry(entry))
        if foreign:
            raise BadInputError(f"not empty and not a Hub folder (holds {foreign}); choose a new folder", folder)
    with tempfile.TemporaryDirectory(prefix="aaclip-save-") as tmp:
        saved = _saved(model, processor, Path(tmp) / "model", training_summary)
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


def _saved(model, processor, folder: Path, training_summary: dict | None) -> Path:
    save_model_folder(model, processor, folder)
    if training_summary is not None:
        (folder / TRAINING_SUMMARY_FILE).write_text(json.dumps(training_summary, indent=2) + "\n", encoding="utf-8")
        write_manifest(folder)
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
        folder = _saved(model, processor, Path(tmp) / repo_id.split("/")[-1], training_summary)
        return push_folder_to_hub(
            folder,
            repo_id,
            private=private,
            token=token,
            eval_results=eval_results,
            base_model=base_model,
            commit_message=commit_message,
        )

"""A checked cache for what is derived from a model once and reused by later runs (exported, quantised towers).

Where: `cache_dir` when given, else `$AACLIP_CACHE/<kind>`, else `$XDG_CACHE_HOME/aaclip_hf/<kind>` (default
`~/.cache/aaclip_hf/<kind>`). Never inside a user's folders.

Each entry is a folder named by its key (a hash of the weights and of every setting that changes the artefact)
holding the artefact files and `manifest.json`: each file's size and SHA-256, and the settings. An entry is used
only when every listed file is present with the recorded size and digest; anything else (a truncated copy, a file
edited by hand, a manifest that does not match) is reported with a warning naming the entry and rebuilt, never used.
The manifest guards against corruption and accidental edits; whoever can write the cache can also rewrite a
manifest, so the cache is as trusted as the user's home folder.

Entries are built in a private sibling folder and renamed into place complete, so a concurrent run, a crash or a
full disk never leaves a half-written entry under the key; two runs building the same entry both succeed (the
second keeps the first's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm


logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "MANIFEST_FILE",
    "CacheRebuiltWarning",
    "build_steps",
    "cache_root",
    "cached_entry",
    "file_digest",
    "verify_entry",
]

CACHE_ENV = "AACLIP_CACHE"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
# Bytes read per hashing step (large reads let hashlib release the GIL and run at memory speed).
HASH_CHUNK_BYTES = 16 * 2**20


class CacheRebuiltWarning(UserWarning):
    """A cache entry failed its check (corrupted, edited, incomplete) and is rebuilt."""


def cache_root(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of one kind of cached artefact (module docstring)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / kind
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aaclip_hf" / kind


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _manifest(folder: Path, files: Sequence[str], settings: dict) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "settings": settings,
        "files": {
            name: {"bytes": (folder / name).stat().st_size, "sha256": file_digest(folder / name)} for name in files
        },
    }


def verify_entry(folder: Path, files: Sequence[str], settings: dict) -> str | None:
    """None when `folder` holds `files` exactly as its manifest records them (and the manifest has `settings`);
    else the reason it does not."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return f"no {MANIFEST_FILE}"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        listed = manifest["files"]
        recorded = manifest.get("settings")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST_FILE} is unreadable ({type(error).__name__})"
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(listed, dict) or set(listed) != set(files):
        return (
            f"{MANIFEST_FILE} lists {sorted(listed) if isinstance(listed, dict) else listed}, expected {list(files)}"
        )
    if recorded != json.loads(json.dumps(settings, default=str)):
        return f"{MANIFEST_FILE} records other settings"
    for name in files:
        target = folder / name
        if not target.is_file():
            return f"{name} is missing"
        entry = listed[name]
        if not isinstance(entry, dict) or target.stat().st_size != entry.get("bytes"):
            return f"{name} has {target.stat().st_size} bytes, the manifest records {entry.get('bytes')}"
        if file_digest(target) != entry.get("sha256"):
            return f"{name} does not match its recorded SHA-256 (corrupted or edited)"
    return None


def cached_entry(
    folder: Path,
    files: Sequence[str],
    settings: dict,
    build: Callable[[Path], None],
    what: str,
) -> tuple[Path, bool]:
    """`(folder, built)`: the checked entry `folder` holding `files`, built by `build(staging)` when it is missing or
    fails its check (module docstring). `build` writes `files` into the staging folder it is given."""
    if folder.exists():
        reason = verify_entry(folder, files, settings)
        if reason is None:
            logger.info("%s: using the cached %s", what, folder)
            return folder, False
        warnings.warn(
            f"{what}: the cache entry {folder} failed its check ({reason}); rebuilding it", CacheRebuiltWarning, 2
        )
        shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        build(staging)
        missing = [name for name in files if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(f"{what}: the build did not write {missing}")
        manifest = _manifest(staging, files, json.loads(json.dumps(settings, default=str)))
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        try:
            os.rename(staging, folder)
        except OSError:  # another run put the same entry in place first: keep theirs if it checks out
            if verify_entry(folder, files, settings) is not None:
                raise
            logger.info("%s: another run cached %s first; using it", what, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, True


@contextlib.contextmanager
def build_steps(steps: Sequence[str], what: str, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """A progress bar over the named steps of a one-off build: `with build_steps([...], what) as step: step(name)`
    before each. `enabled=None` follows transformers' progress-bar switch (`aaclip ... --no-progress` turns it off)."""
    if enabled is None:
        from transformers.utils import logging as hf_logging

        enabled = hf_logging.is_progress_bar_enabled()
    with tqdm(total=len(steps), desc=what, unit="step", disable=not enabled) as bar:
        started = [False]

        def step(name: str) -> None:
            if started[0]:
                bar.update(1)
            started[0] = True
            bar.set_postfix_str(name)

        yield step
        if started[0]:
            bar.update(1)

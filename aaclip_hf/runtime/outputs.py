"""Output folders that are never silently lost: one run at a time, written whole or not at all.

- ``output_lock(folder)``: a lock file ``<folder>.lock`` next to the folder holds the pid of the run using it. A
  second run into the same folder is refused with :class:`OutputInUseError` (naming the pid and the lock file).
  The lock is an OS file lock (``fcntl.flock``), so it dies with its process; a lock file left behind by a
  process that no longer runs is taken over with a warning.
- ``atomic_output_dir(folder)``: the run writes into a temporary sibling ``.<name>.tmp-<pid>-<token>``; only
  when it finishes is that folder put at the final name (an atomic exchange where the OS has one, else two
  renames). On failure the temporary folder is removed and nothing at the final name changes. Each finished output
  records what it holds (``.aaclip-output.json``: the command and every file, nested ones included); an existing
  folder is replaced only when it is empty or holds exactly what that record lists, so a folder of your own files,
  or an earlier output you added a file to, is refused instead of deleted. A symlinked output is written through
  (its target is replaced; the link stays).
- ``check_output_apart(output, inputs, model)``: an output is never an input or the model, nor a folder that holds
  one (writing it would overwrite or delete them); ``check_new_file`` refuses to overwrite an existing file.
- ``safe_text(s)``: file names that are not valid UTF-8 (on Linux, ``os.fsdecode`` keeps their bytes as
  lone surrogates) become text with each undecodable byte written as ``\\xNN`` (Python's
  ``backslashreplace``), so JSON, CSV and the terminal can always take them.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import json
import logging
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from ..errors import OutputConflictError, OutputInUseError


try:
    import fcntl
except ImportError:  # Windows: the lock falls back to O_EXCL creation plus a pid check
    fcntl = None


logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_RECORD",
    "OutputInUseError",
    "atomic_output_dir",
    "atomic_write_text",
    "check_new_file",
    "check_output_apart",
    "holds_only",
    "lock_path",
    "output_lock",
    "output_target",
    "safe_text",
]

# What a finished output folder records about itself: the command that wrote it and every file it holds.
OUTPUT_RECORD = ".aaclip-output.json"
# renameat2(2) flag: swap two paths atomically (Linux >= 3.15, glibc >= 2.28).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def safe_text(value: str | os.PathLike) -> str:
    """`value` as valid Unicode text: bytes that were not UTF-8 become `\\xNN` escapes, all else is unchanged."""
    text = os.fspath(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes os.fsdecode kept as U+DC80..U+DCFF
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")  # other lone surrogates: their \uXXXX escape
    return raw.decode("utf-8", "backslashreplace")


def output_target(folder: str | os.PathLike) -> Path:
    """Where an output folder is written: its absolute path, or, for a symbolic link, the folder it points to (the
    link stays; its target is replaced)."""
    folder = Path(folder)
    return Path(os.path.realpath(folder)) if folder.is_symlink() else folder.absolute()


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of an output folder: `<target>.lock`, next to the folder written (`output_target`), so a run
    through a symbolic link and a run on its target share one lock."""
    folder = output_target(folder)
    return folder.with_name(folder.name + ".lock")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _in_use(folder: Path, lock: Path, holder: dict) -> OutputInUseError:
    pid = holder.get("pid", "unknown")
    command = holder.get("command") or "aaclip"
    return OutputInUseError(
        f"{folder}: output folder in use by another run ({command}, pid {pid}, lock file {lock}); "
        "expected a folder no other run is writing: wait for that run or choose another --output"
    )


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str = "aaclip") -> Iterator[Path]:
    """Hold `<folder>.lock` (with this process's pid) for the block; refuse if another run holds it."""
    folder = output_target(folder)
    lock = lock_path(folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    handle = _acquire(folder, lock, payload)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(handle), os.stat(lock)):
                lock.unlink()
        os.close(handle)  # releases the flock


def _acquire(folder: Path, lock: Path, payload: dict) -> int:
    for _ in range(100):  # retries only when another process swapped the lock file under us
        if fcntl is None:
            return _acquire_exclusive(folder, lock, payload)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _in_use(folder, lock, _read_holder(lock)) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our flock: start again
            os.close(fd)
            continue
        previous = _read_holder(lock)
        if previous.get("pid") is not None:
            logger.warning(
                "%s: taking over the stale lock of pid %s (%s, no longer running)",
                lock,
                previous.get("pid"),
                previous.get("command", "aaclip"),
            )
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(payload) + "\n").encode("utf-8"))
        return fd
    raise _in_use(folder, lock, _read_holder(lock))


def _acquire_exclusive(folder: Path, lock: Path, payload: dict) -> int:
    """Without `fcntl`: create the file exclusively; a file whose pid no longer runs is stale."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(lock)
            pid = holder.get("pid")
            if not isinstance(pid, int) or _pid_running(pid):
                raise _in_use(folder, lock, holder) from None
            logger.warning("%s: taking over the stale lock of pid %s (no longer running)", lock, pid)
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, (json.dumps(payload) + "\n").encode("utf-8"))
        return fd
    raise _in_use(folder, lock, _read_holder(lock))


def holds_only(names: Collection[str]) -> Callable[[Path], bool]:
    """A `replaceable` rule: the folder holds no top-level entry other than `names` (what the command writes).

    `atomic_output_dir` applies it on top of the output record, which also covers nested files."""
    allowed = set(names) | {OUTPUT_RECORD}

    def check(folder: Path) -> bool:
        return all(entry.name in allowed for entry in folder.iterdir())

    return check


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _record(staging: Path, command: str) -> None:
    files = [name for name in _files(staging) if name != OUTPUT_RECORD]
    (staging / OUTPUT_RECORD).write_text(json.dumps({"command": command, "files": files}, indent=1) + "\n")


def _foreign_files(folder: Path, command: str) -> list[str]:
    """Files of `folder` that `command`'s record there does not list (all of them without such a record), nested ones
    included: what replacing the folder would delete although the command did not write it."""
    files = [name for name in _files(folder) if name != OUTPUT_RECORD]
    try:
        record = json.loads((folder / OUTPUT_RECORD).read_text(encoding="utf-8"))
        recorded = set(record["files"]) if record.get("command") == command else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = set()
    return [name for name in files if name not in recorded]


def check_output_apart(
    output: str | os.PathLike,
    inputs: Collection[str | os.PathLike] = (),
    model: str | os.PathLike | None = None,
    what: str = "--output",
) -> None:
    """Refuse an output that is an input or the model, or a folder holding one: writing it would overwrite or
    delete them. (An output inside an input folder is fine: inputs are collected without it.)"""
    target = Path(os.path.realpath(output))
    named = [(path, "an input") for path in inputs] + ([(model, "the model")] if model is not None else [])
    for path, role in named:
        if not os.path.exists(path):
            continue  # a Hub id, or a path the command itself will name as missing
        real = Path(os.path.realpath(path))
        if real == target or target in real.parents:
            holds = "is" if real == target else "holds"
            raise OutputConflictError(
                f"{what} {output}: {holds} {role} ({path}); writing there would overwrite or delete it. Choose "
                "another output"
            )


def check_new_file(path: str | os.PathLike, what: str = "--output") -> None:
    """Refuse to overwrite an existing file (an output file is always new; delete the old one or pick a new name)."""
    if os.path.lexists(path):
        raise OutputConflictError(
            f"{what} {path}: exists; an output file never replaces a file (delete it or choose another name)"
        )


@functools.cache
def _renameat2():
    """libc's renameat2 (already loaded into the process on Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where the OS offers no such call."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result != 0:
        errno = ctypes.get_errno()
        if errno in (22, 38, 95):  # EINVAL/ENOSYS/EOPNOTSUPP: file system or kernel without exchange
            return False
        raise OSError(errno, os.strerror(errno), str(b))
    return True


def _put_in_place(staging: Path, final: Path) -> None:
    if not final.exists():
        os.rename(staging, final)
        return
    if _exchange(staging, final):  # final now holds the new run; staging the previous output
        shutil.rmtree(staging, ignore_errors=True)
        return
    previous = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(final, previous)
    try:
        os.rename(staging, final)
    except OSError:
        os.rename(previous, final)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _clean_leftovers(final: Path) -> None:
    """Remove temporary siblings of dead runs; put back a previous output a crash left between two renames."""
    prefix = f".{final.name}."
    for entry in final.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        kind, _, rest = entry.name[len(prefix) :].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_running(int(pid)):
            continue
        if kind == "old" and not final.exists():
            logger.warning("%s: restoring the previous output that an interrupted run left in %s", final, entry)
            os.rename(entry, final)
        else:
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    folder: str | os.PathLike,
    command: str,
    replaceable: Callable[[Path], bool] | None = None,
    lock: bool = True,
) -> Iterator[Path]:
    """Yield a temporary sibling of `folder` to write into; on success it becomes `folder`, on failure it goes.

    `replaceable(existing)`: a further condition for replacing an earlier output (its record must match anyway). `lock=False`
    when the caller already holds `output_lock(folder)` for a longer span (e.g. the whole evaluation).
    """
    final = output_target(folder)
    with output_lock(final, command) if lock else contextlib.nullcontext():
        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(final)
        if final.exists() and not final.is_dir():
            raise OutputConflictError(f"{folder}: is a file; expected an output folder (new, or written by {command})")
        if final.is_dir() and any(final.iterdir()):
            _check_replaceable(folder, final, command, replaceable)
            logger.warning("%s: replacing the output of an earlier %s", folder, command)
        staging = final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        staging.mkdir()
        try:
            yield staging
            _record(staging, command)
            _put_in_place(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _check_replaceable(folder, final: Path, command: str, replaceable: Callable[[Path], bool] | None) -> None:
    """Refuse, naming them, an existing folder's files that `command` did not write (module docstring)."""
    foreign = _foreign_files(final, command)
    if not foreign and replaceable is not None and not replaceable(final):
        foreign = [name for name in _files(final) if name != OUTPUT_RECORD]
    if not foreign and not (final / OUTPUT_RECORD).is_file():
        foreign = sorted(entry.name for entry in final.iterdir())  # empty sub-folders only
    if foreign:
        shown = ", ".join(safe_text(name) for name in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputConflictError(
            f"{folder}: the folder holds files that {command} did not write ({shown}; {len(foreign)} in all); "
            f"expected a new or empty folder, or the untouched output of an earlier {command} (which is replaced). "
            "Move those files away or choose another output"
        )


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file through a temporary sibling and `os.replace`: readers see the old or the new file."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path

"""The CLI's one error boundary: which failures are expected, and the one line that reports them.

An expected failure is bad input or a bad environment, not a bug: a missing or unreadable file, a refused
pickle, a corrupt safetensors file, an invalid config.json, an output folder in use, a model path that is
neither a folder nor reachable on the Hub, a file that is not UTF-8, a non-finite training loss. `aaclip`
prints it as `aaclip <command>: error: <message>` on one line and exits with status 2. The message names the
file or field and what was expected; errors raised inside DataLoader workers arrive wrapped by torch and are
unwrapped to the original message. Anything else is a bug and keeps its traceback. `aaclip --debug ...` or
`AACLIP_DEBUG=1` shows the traceback of expected failures too.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import os
import sys
import traceback

from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from ..runtime.outputs import safe_text
from ..runtime.serialization import PickleRefusal


__all__ = ["EXPECTED_ERRORS", "MissingExtraError", "debug_requested", "expected_error_message"]


class MissingExtraError(ImportError):
    """An optional dependency (an extra such as `aaclip-hf[app]`) is not installed; the message says how to."""


# ValueError covers BadInputError, UnsafeCheckpointError, ConversionError, WeightsError, JSONDecodeError and
# UnicodeError; UnpicklingError is a pickle that torch.load(weights_only=True) refused; OSError covers missing
# files, permissions, OutputInUseError and transformers' loading errors.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    OSError,
    StrictDataclassError,
    SafetensorError,
    PickleRefusal,
    MissingExtraError,
)
# Expected errors of modules the CLI imports only when a subcommand needs them: (module, class name).
_LAZY_EXPECTED = (("aaclip_hf.training.arguments", "NonFiniteLossError"),)
# Local variable names that hold the file being read, searched innermost-first when an error does not name it.
_PATH_LOCALS = (
    "path",
    "filename",
    "file",
    "fname",
    "config",
    "config_file",
    "resolved_config_file",
    "json_file",
    "checkpoint_file",
    "resolved_archive_file",
    "archive_file",
    "shard_file",
)
_WORKER_MARK = "in DataLoader worker process"
_DEBUG_OFF = ("", "0", "false", "no", "off")


def debug_requested() -> bool:
    """`AACLIP_DEBUG` set to anything but empty/0/false/no/off."""
    return os.environ.get("AACLIP_DEBUG", "").strip().lower() not in _DEBUG_OFF


def _is_expected_type(kind: type | None) -> bool:
    if kind is None:
        return False
    if issubclass(kind, EXPECTED_ERRORS):
        return True
    for module_name, class_name in _LAZY_EXPECTED:
        lazy = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(lazy, type) and issubclass(kind, lazy):
            return True
    return False


def _text(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]  # str(KeyError) would quote it
    return str(error)


def _resolve_type(qualified: str) -> type | None:
    """The class a traceback's last line names (`pkg.module.Class` or a builtin), if it is imported."""
    module_name, _, name = qualified.rpartition(".")
    owner = sys.modules.get(module_name) if module_name else builtins
    kind = getattr(owner, name, None)
    return kind if isinstance(kind, type) and issubclass(kind, BaseException) else None


def _unwrap_worker(error: BaseException) -> tuple[type | None, str] | None:
    """`(original type, original message)` of an error torch re-raised from a DataLoader worker, else None.

    torch re-raises it as `type(msg)` (or RuntimeError) with `msg` = "Caught X in DataLoader worker process N.
    Original Traceback ...", the worker's formatted traceback, whose last block ends with `module.X: message`.
    """
    text = _text(error)
    first = text.split("\n", 1)[0]
    if not (first.startswith("Caught ") and _WORKER_MARK in first):
        return None
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 1
    while start < len(lines) and lines[start].startswith("    "):  # the frame's source line and carets
        start += 1
    tail = "\n".join(lines[start:]).strip()
    qualified, sep, message = tail.partition(": ")
    if not sep or " " in qualified:
        return _resolve_type(qualified.strip()), tail or first
    kind = _resolve_type(qualified)
    if kind is not None and issubclass(kind, KeyError) and message[:1] in "'\"":
        with contextlib.suppress(ValueError, SyntaxError):  # traceback shows a KeyError's message as its repr
            message = str(ast.literal_eval(message))
    return kind, message


def _file_in_traceback(error: BaseException) -> str | None:
    """The innermost frame's local that names an existing file (for errors that do not say which file)."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame in reversed(frames):
        for name in _PATH_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                return os.fspath(value)
    return None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def expected_error_message(error: BaseException) -> str | None:
    """The one-line message of an expected failure (module docstring), or None for a bug."""
    kind, message = type(error), _text(error)
    unwrapped = _unwrap_worker(error)
    if unwrapped is not None:
        original, message = unwrapped
        kind = original if original is not None else kind
    if not _is_expected_type(kind):
        return None
    where = _file_in_traceback(error) if issubclass(kind, (UnicodeError, SafetensorError)) else None
    prefix = f"{where}: " if where and where not in message else ""
    if issubclass(kind, UnicodeEncodeError):
        encoding = getattr(error, "encoding", "the output encoding")
        message = f"{prefix}{message}; expected text that {encoding} can hold (a terminal: PYTHONIOENCODING=utf-8)"
    elif issubclass(kind, UnicodeError):
        message = f"{prefix}{message}; expected UTF-8 text"
    elif issubclass(kind, SafetensorError):
        message = f"{prefix}not a readable safetensors file ({message}); expected a complete file: re-save it"
    elif issubclass(kind, PickleRefusal):  # torch.load(weights_only=True) refused it (transformers' .bin)
        where = _file_in_traceback(error) or "a checkpoint"
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        message = (
            f"{where}: refusing to load: it needs unpickling arbitrary Python objects ({reason}); expected "
            "safetensors weights (model.safetensors) or tensors-only pickles"
        )
    elif not message:
        message = kind.__name__
    return safe_text(_one_line(message))

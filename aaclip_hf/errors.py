"""The package's expected failures: one family under `AAClipError`, each naming what was wrong and what was expected.

An expected failure is bad input or a bad environment, never a bug: a file that cannot be read, a model folder that
cannot be trusted, an output that would touch a user's file, a resource limit. The CLI prints an `AAClipError` (and
an `OSError` that names a file) as one line and exits with status 2; anything else is a bug and keeps its traceback.

`AAClipError` and the method's own failures (`InvalidInputError`, `UnknownClassError`, `StaleStateError`) are defined
in `modeling/configuration_aaclip.py`, because the Hub copy of the model raises them too; everything here subclasses
them. Each class also derives from the built-in exception callers already catch (`ValueError`, `OSError`, ...).
"""

from __future__ import annotations

import os

from .modeling.configuration_aaclip import AAClipError, InvalidInputError, StaleStateError, UnknownClassError


__all__ = [
    "AAClipError",
    "BadInputError",
    "ConversionError",
    "CorruptWeightsError",
    "ImageFileError",
    "IncompleteWeightsError",
    "InvalidInputError",
    "MissingExtraError",
    "MissingFileError",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "OutputConflictError",
    "OutputInUseError",
    "ResourceLimitError",
    "StaleStateError",
    "UnknownClassError",
    "UnsafeCheckpointError",
    "WeightsError",
]


class BadInputError(InvalidInputError):
    """Bad input data or a bad file: `path` and `field` name where, `reason` says what was expected.

    `str()` always names the file, so the message stays useful far from where it was raised (a DataLoader worker).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, field: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.reason = message
        where = []
        if self.path is not None:
            where.append(f"file {self.path!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class MissingFileError(BadInputError, FileNotFoundError):
    """A file that does not exist (also a `FileNotFoundError`)."""


class ImageFileError(BadInputError):
    """An image or mask file that cannot be decoded: corrupt, truncated, not an image, too large, non-finite pixels."""


class WeightsError(AAClipError, ValueError):
    """Weights that cannot be trusted; the message names the file or the tensors."""


class IncompleteWeightsError(WeightsError):
    """Missing, unexpected or mis-shaped keys in a model folder."""


class NonFiniteWeightsError(WeightsError):
    """NaN or inf values in weights that are loaded, trained or about to be saved."""


class CorruptWeightsError(WeightsError):
    """A truncated or corrupt safetensors file, or an index that points outside its folder."""


class UnsafeCheckpointError(AAClipError, ValueError):
    """A checkpoint that needs unpickling arbitrary Python objects, which can run code: refused, never bypassed."""


class ConversionError(AAClipError, ValueError):
    """A checkpoint whose layout does not fit the target architecture (names the key and the shapes)."""


class NonFiniteLossError(AAClipError, RuntimeError):
    """A training loss or gradient that became NaN or inf (the message names the step and the term)."""


class OutputInUseError(AAClipError, FileExistsError):
    """An output folder that another run holds (its lock file exists)."""


class OutputConflictError(AAClipError, FileExistsError):
    """An output that would overwrite or delete something the user made: an input, the model, another user file."""


class ResourceLimitError(AAClipError, MemoryError):
    """Work that would need more memory than the machine has (estimated before anything is allocated)."""


class MissingExtraError(AAClipError, ImportError):
    """An optional dependency (an extra such as `aaclip-hf[app]`) is not installed; the message says how to."""

"""Read checkpoints without unpickling arbitrary Python objects.

Three kinds of file reach the converters:

- TorchScript archives (OpenAI's ``ViT-L-14-336px.pt``): read with ``torch.jit.load``, which runs
  only TorchScript and restores only tensors and TorchScript types;
- ``.safetensors``: tensors only;
- anything else (``.pt``, ``.pth``, ``.bin``): ``torch.load(weights_only=True)``, which accepts
  tensors, containers, numbers and strings (enough for state dicts and Adam state) and refuses
  every other global. A refusal is reported as :class:`UnsafeCheckpointError`, never bypassed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CorruptWeightsError, MissingFileError, UnsafeCheckpointError


def is_torchscript_archive(path: str | Path) -> bool:
    """TorchScript zips carry compiled code (``*/code/``) and ``*/constants.pkl``; ``torch.save`` zips do not."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def safe_torch_load(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` with a clear error naming the file when it is refused."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).strip().splitlines()
        reason = next(
            (line for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[0] if detail else ""
        )
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: it needs unpickling arbitrary Python objects ({reason.strip()}). "
            "Only tensors, numbers, strings and containers are accepted (torch.load weights_only=True); "
            "re-save the weights with torch.save(model.state_dict(), ...) or as .safetensors"
        ) from None


def load_tensor_file(path: str | Path) -> tuple[object, str]:
    """Load a checkpoint file: returns ``(object, kind)`` with kind ``torchscript|safetensors|torch``.

    For a TorchScript archive the object is the loaded ``ScriptModule`` (so it can also be run
    for verification); otherwise it is what the file holds (usually a dict).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu"), "safetensors"
        except SafetensorError as error:
            raise CorruptWeightsError(
                f"{path}: not a readable safetensors file ({error}); expected a complete file: re-download or "
                "re-save it"
            ) from None
    if is_torchscript_archive(path):
        return torch.jit.load(str(path), map_location="cpu").eval(), "torchscript"
    return safe_torch_load(path), "torch"


__all__ = [
    "UnsafeCheckpointError",
    "is_torchscript_archive",
    "load_tensor_file",
    "safe_torch_load",
]

"""What an AA-CLIP model folder holds, how it is written, and how it is checked before anything trusts it.

- `save_model_folder` is the one writer the package uses (train, convert, calibrate, add-references, add-class, the
  demo, push staging): it refuses non-finite weights, then saves through transformers' own machinery
  (`Pipeline.save_pretrained`: weights, config with `auto_map` and `custom_pipelines`, the model's flat code files,
  the processor), then records `manifest.json`: the SHA-256 of every file it wrote, code and configs included.
- `verify_manifest` names every file that differs from the manifest; `check_weight_files` refuses truncated or
  corrupt safetensors files, and an index that points outside its folder, from their headers alone.
- `remote_code_problems` compares a folder's code files with the installed package's, so no edited code is
  published under this package's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from ..errors import CorruptWeightsError, NonFiniteWeightsError
from ..modeling import AAClipAnomalyDetectionPipeline, configuration_aaclip


__all__ = [
    "MANIFEST_NAME",
    "REMOTE_CODE_FILES",
    "check_weight_files",
    "header_elements",
    "listed_names",
    "non_finite_tensors",
    "remote_code_problems",
    "save_model_folder",
    "update_manifest",
    "verify_manifest",
    "weight_files",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MODELING_DIR = Path(configuration_aaclip.__file__).parent
# The flat files of `aaclip_hf.modeling` that travel with a model (`auto_map`, `custom_pipelines`).
REMOTE_CODE_FILES = tuple(sorted(path.name for path in MODELING_DIR.glob("*_aaclip.py")))
# How many key or tensor names an error lists before it says how many more there are.
NAMES_SHOWN = 8
HASH_CHUNK_BYTES = 1 << 24
# Top-level files a manifest covers: what `save_model_folder` writes (weights, configs, code, tokenizer files).
MANIFEST_SUFFIXES = (".safetensors", ".json", ".py", ".txt")


def listed_names(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" (+{len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


# safetensors dtype names of the floating-point tensors a model may hold.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (tensors on the meta device are skipped)."""
    return sorted(
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())
    )


def weight_files(folder: str | os.PathLike, variant: str | None = None) -> list[str]:
    """The safetensors files `from_pretrained` reads from `folder`: the shards its index names, or the single file.

    An index that is not valid JSON, or that names a file outside the folder (`../x`, an absolute path, a
    subfolder), is refused without echoing the file's content.
    """
    folder = Path(folder)
    stem = f"model.{variant}" if variant else "model"
    index = folder / f"{stem}.safetensors.index.json"
    if not index.is_file():
        return [f"{stem}.safetensors"] if (folder / f"{stem}.safetensors").is_file() else []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptWeightsError(
            f"{index}: not a valid safetensors index (expected {{weight_map: {{key: file}}}})"
        ) from None
    outside = [name for name in names if not isinstance(name, str) or Path(name).name != name or name in ("", "..")]
    if outside:
        raise CorruptWeightsError(f"{index}: names weight files outside its folder ({len(outside)}); refusing it")
    return names


def _header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size (no tensor is read).

    The format is an 8-byte little-endian header length, a JSON header whose `data_offsets` describe the tensors,
    then exactly the bytes those offsets cover.
    """
    size = path.stat().st_size

    def corrupt(reason: str) -> CorruptWeightsError:
        return CorruptWeightsError(
            f"{path}: truncated or corrupt safetensors file ({reason}); re-download or re-save it"
        )

    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        (header_size,) = struct.unpack("<Q", prefix)
        if 8 + header_size > size:
            raise corrupt(f"the header claims {header_size} bytes but the file has {size}")
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            raise corrupt("the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        valid = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        if not valid or not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise corrupt(f"tensor {name!r} has no valid data_offsets/shape")
        end = max(end, offsets[1])
    if 8 + header_size + end != size:
        raise corrupt(f"the header describes {8 + header_size + end} bytes, the file has {size}")
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def check_weight_files(folder: str | os.PathLike, variant: str | None = None) -> dict[str, list[int]]:
    """Refuse corrupt weight files, and tensors that are not floating point, from their headers; returns
    `{tensor name: shape}` over all of them. Every AA-CLIP tensor is floating point: an int8 or bool tensor would be
    cast silently on load and give scores outside [0, 1]."""
    folder = Path(folder)
    shapes = {}
    for name in weight_files(folder, variant):
        path = folder / name
        if not path.is_file():
            raise CorruptWeightsError(f"{path}: named by the safetensors index but missing")
        header = _header(path)
        if other := sorted(
            f"{key} ({entry['dtype']})" for key, entry in header.items() if entry["dtype"] not in FLOAT_DTYPES
        ):
            raise CorruptWeightsError(
                f"{path}: tensors that are not floating point: {listed_names(other)}; AA-CLIP weights are "
                f"{', '.join(sorted(FLOAT_DTYPES))} (re-save or re-convert the model)"
            )
        shapes.update({key: entry["shape"] for key, entry in header.items()})
    return shapes


def header_elements(shapes: Mapping[str, list[int]]) -> int:
    """Total number of values the weight files hold."""
    total = 0
    for shape in shapes.values():
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return total


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _covered(folder: Path) -> list[str]:
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file() and not path.is_symlink() and path.suffix in MANIFEST_SUFFIXES and path.name != MANIFEST_NAME
    )


def write_manifest(folder: str | os.PathLike) -> Path:
    """Record `{file: {sha256, bytes}}` of the folder's weights, configs, code and tokenizer files."""
    folder = Path(folder)
    manifest = {
        name: {"sha256": _sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
        for name in _covered(folder)
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def update_manifest(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Record the new content of `names` (files this package just changed, e.g. config.json after calibration) in
    the folder's manifest, when it has one; the other entries are left as they are."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for name in names:
        manifest[name] = {"sha256": _sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def verify_manifest(folder: str | os.PathLike, unlisted_ok: Callable[[str], bool] | None = None) -> list[str]:
    """One line per file that differs from `manifest.json` (missing, another size or SHA-256, or not listed, unless
    `unlisted_ok(name)`); an empty list means the folder holds exactly what was written."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return [f"{path}: missing; re-save the model (aaclip_hf.runtime.save_model_folder) to record its files"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = {name: (str(entry["sha256"]), int(entry["bytes"])) for name, entry in manifest.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"{path}: not a valid manifest ({type(error).__name__}); expected {{file: {{sha256, bytes}}}}"]
    problems = []
    for name, (sha256, size) in sorted(entries.items()):
        file = folder / name
        if Path(name).name != name or not file.is_file():
            problems.append(f"{file}: listed in {MANIFEST_NAME} but missing")
        elif file.stat().st_size != size:
            problems.append(f"{file}: {file.stat().st_size} bytes, the manifest says {size} (truncated or replaced)")
        elif _sha256_file(file) != sha256:
            problems.append(f"{file}: SHA-256 differs from the manifest (changed or corrupt since it was saved)")
    unlisted = [name for name in _covered(folder) if name not in entries and not (unlisted_ok and unlisted_ok(name))]
    problems += [f"{folder / name}: not listed in {MANIFEST_NAME}" for name in unlisted]
    return problems


def remote_code_problems(folder: str | os.PathLike, skip: Callable[[Path], bool] | None = None) -> list[str]:
    """One line per code file of `folder` that is not the installed package's own (edited, or unknown `.py`), but for
    files `skip(path)` accepts."""
    folder = Path(folder)
    problems = []
    for path in sorted(folder.glob("*.py")):
        if skip is not None and skip(path):
            continue
        installed = MODELING_DIR / path.name
        if path.name not in REMOTE_CODE_FILES:
            problems.append(f"{path}: code that is not part of aaclip-hf's model files")
        elif path.read_bytes() != installed.read_bytes():
            problems.append(
                f"{path}: differs from the installed aaclip-hf {path.name} (edited or from another version)"
            )
    return problems


def save_model_folder(model, processor, folder: str | os.PathLike) -> Path:
    """Write a complete, pipeline-ready model folder (module docstring); refuses non-finite weights first."""
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise NonFiniteWeightsError(
            f"{folder}: refusing to save non-finite (NaN/inf) weights in {len(bad)} tensor(s): {listed_names(bad)}"
        )
    folder = Path(folder)
    pipe = AAClipAnomalyDetectionPipeline(model=model, processor=processor, device=model.device)
    pipe.save_pretrained(folder)
    write_manifest(folder)
    return folder

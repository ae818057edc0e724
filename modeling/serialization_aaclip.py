# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""What AA-CLIP's `save_pretrained`, `from_pretrained` and `push_to_hub` write and check (issue 10: trust).

Weight files are complete, finite and uncorrupted or refused; `save_pretrained` records their SHA-256 in
`weights_manifest.json` and `verify_manifest` names any file that differs; a saved folder is pipeline-ready
(`custom_pipelines`, the pipeline file, a model card) and uploads only Hub-safe files.

Kept apart from `modeling_aaclip.py` so that file reads as the method. Copied to the Hub with the model (a flat
sibling): it imports only torch, transformers, huggingface_hub, safetensors' file format and its siblings.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import CommitOperationAdd, HfApi

from .configuration_aaclip import AAClipConfig
from .pipeline_aaclip import TASK, AAClipAnomalyDetectionPipeline


WEIGHTS_MANIFEST_NAME = "weights_manifest.json"
MODEL_CARD_NAME = "README.md"
PIPELINE_FILE = "pipeline_aaclip.py"
# What `save_pretrained` may write and upload: weights and their index, JSON configs and the manifest, the
# remote code and the card. Never pickles, optimizer or RNG state, dotfiles or anything behind a symlink.
HUB_SAFE_SUFFIXES = (".safetensors", ".json", ".py", ".md")
MODEL_CARD_TAGS = ("anomaly-detection", "zero-shot-anomaly-detection", "anomaly-segmentation", "clip", "aa-clip")
# The Hub has no anomaly-detection task; "other" is its tag for models outside its task list.
MODEL_CARD_PIPELINE_TAG = "other"
CUSTOM_PIPELINE_ENTRY = {
    "impl": f"{Path(PIPELINE_FILE).stem}.{AAClipAnomalyDetectionPipeline.__name__}",
    "pt": ["AutoModel"],
    "type": "multimodal",
}
# How many key or tensor names an error lists before it says how many more there are.
NAMES_SHOWN = 8
HASH_CHUNK_BYTES = 1 << 24


class WeightsError(ValueError):
    """Weights that cannot be trusted (incomplete, non-finite or unreadable); the message is one line naming
    the file or the tensors. A `ValueError`, so the CLI shows it as one line."""


class IncompleteWeightsError(WeightsError):
    """Missing, unexpected or mis-shaped keys in a model folder."""


class NonFiniteWeightsError(WeightsError):
    """NaN or inf values in weights that are loaded or about to be saved."""


class CorruptWeightsError(WeightsError):
    """A truncated or corrupt safetensors file (or index)."""


def listed_names(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" (+{len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (tensors on the meta device are skipped)."""
    return sorted(
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())
    )


def weight_files(folder: str | os.PathLike, variant: str | None = None) -> list[str]:
    """The safetensors files `from_pretrained` reads from `folder`: the shards its index names, or the single file."""
    folder = Path(folder)
    stem = f"model.{variant}" if variant else "model"
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptWeightsError(
                f"{index}: not a valid safetensors index ({error!r}); re-save the model"
            ) from None
    return [f"{stem}.safetensors"] if (folder / f"{stem}.safetensors").is_file() else []


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Refuse a truncated or corrupt safetensors file from its header alone (no tensor is read).

    The format is an 8-byte little-endian header length, a JSON header whose `data_offsets` describe the tensors,
    then exactly the bytes those offsets cover.
    """
    path = Path(path)
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
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise corrupt(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    if 8 + header_size + end != size:
        raise corrupt(f"the header describes {8 + header_size + end} bytes, the file has {size}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_files(folder: Path, variant: str | None = None) -> list[str]:
    stem = f"model.{variant}" if variant else "model"
    index = f"{stem}.safetensors.index.json"
    return weight_files(folder, variant) + ([index] if (folder / index).is_file() else [])


def write_weights_manifest(folder: str | os.PathLike, variant: str | None = None) -> Path:
    """Record `{file: {sha256, bytes}}` of the weight files (and their index) in `weights_manifest.json`."""
    folder = Path(folder)
    manifest = {
        name: {"sha256": _sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
        for name in _manifest_files(folder, variant)
    }
    path = folder / WEIGHTS_MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def verify_manifest(folder: str | os.PathLike) -> list[str]:
    """Check a saved folder's weight files against its `weights_manifest.json`.

    Returns one line per problem, naming the file (an empty list means every weight file is exactly what
    `save_pretrained` wrote): a missing manifest, a listed file that is missing or differs in size or SHA-256,
    and a weight file the manifest does not list.
    """
    folder = Path(folder)
    path = folder / WEIGHTS_MANIFEST_NAME
    if not path.is_file():
        return [f"{path}: missing; re-save the model with save_pretrained to record the weights' SHA-256"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = {name: (str(entry["sha256"]), int(entry["bytes"])) for name, entry in manifest.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"{path}: not a valid manifest ({error!r}); expected {{file: {{sha256, bytes}}}}"]
    problems = []
    for name, (sha256, size) in sorted(entries.items()):
        file = folder / name
        if not file.is_file():
            problems.append(f"{file}: listed in {WEIGHTS_MANIFEST_NAME} but missing")
        elif file.stat().st_size != size:
            problems.append(f"{file}: {file.stat().st_size} bytes, the manifest says {size} (truncated or replaced)")
        elif _sha256_file(file) != sha256:
            problems.append(f"{file}: SHA-256 differs from the manifest (changed or corrupt since it was saved)")
    present = {p.name for p in folder.glob("*.safetensors")} | {
        p.name for p in folder.glob("*.safetensors.index.json")
    }
    problems += [
        f"{folder / name}: a weight file not listed in {WEIGHTS_MANIFEST_NAME}"
        for name in sorted(present - set(entries))
    ]
    return problems


def looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not os.path.exists(name)


def model_card_text(config: AAClipConfig, extra_tags: Sequence[str] = ()) -> str:
    """A minimal, correct model card for a saved folder that has none (the `aaclip push` card is richer)."""
    tags = list(dict.fromkeys([*MODEL_CARD_TAGS, *extra_tags]))
    front = ["---", "library_name: transformers", f"pipeline_tag: {MODEL_CARD_PIPELINE_TAG}", "tags:"]
    front += [f"- {json.dumps(tag)}" for tag in tags]
    if config.base_model:
        front.append(f"base_model: {json.dumps(config.base_model)}")
    front.append("---")
    vision = config.vision_config
    names = config.anchor_class_names
    shown = ", ".join(f"`{name}`" for name in names[: NAMES_SHOWN * 5]) + (
        " ..." if len(names) > NAMES_SHOWN * 5 else ""
    )
    threshold = (
        f"{config.decision_threshold:.4f} on the image score"
        if config.decision_threshold is not None
        else "not calibrated (0.5)"
    )
    body = f"""
# AA-CLIP zero-shot anomaly detection

AA-CLIP (Ma et al., CVPR 2025): a CLIP whose text and vision towers carry residual adapters, so that "normal" and
"anomalous" text anchors separate and patch features align with them. Given an image and an object class name it
returns a per-pixel anomaly map and a per-image anomaly score in [0, 1], also for classes never seen in training.

## Usage

```python
from transformers import pipeline

detector = pipeline("{TASK}", model="path/or/repo-id", trust_remote_code=True)
result = detector("image.png", class_name="bottle")
print(result["score"], result["is_anomaly"], result["anomaly_map"].shape)
```

| | |
|---|---|
| input | {vision.image_size} x {vision.image_size} RGB, bicubic resize, no crop, OpenAI CLIP mean/std |
| backbone | CLIP ViT, patch {vision.patch_size}, {vision.num_hidden_layers} vision layers |
| stored class anchors | {shown} |
| decision threshold | {threshold} |
"""
    return "\n".join(front) + "\n" + body


def _hub_safe(folder: Path, name: str) -> bool:
    path = folder / name
    return not name.startswith(".") and name.endswith(HUB_SAFE_SUFFIXES) and path.is_file() and not path.is_symlink()


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()}


def upload_files(
    folder: Path,
    names: Iterable[str],
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    revision: str | None = None,
):
    """One commit of exactly `names` (Hub-safe ones only); a card already in the repo is kept."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    names = sorted(name for name in set(names) if _hub_safe(folder, name))
    if MODEL_CARD_NAME in names and api.file_exists(repo_id, MODEL_CARD_NAME, revision=revision):
        names.remove(MODEL_CARD_NAME)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in names]
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or "Upload AA-CLIP model",
        commit_description=commit_description,
        create_pr=create_pr,
        revision=revision,
    )


__all__ = [
    "CUSTOM_PIPELINE_ENTRY",
    "MODEL_CARD_NAME",
    "MODEL_CARD_PIPELINE_TAG",
    "WEIGHTS_MANIFEST_NAME",
    "CorruptWeightsError",
    "IncompleteWeightsError",
    "NonFiniteWeightsError",
    "WeightsError",
    "check_safetensors_file",
    "model_card_text",
    "non_finite_tensors",
    "verify_manifest",
    "weight_files",
    "write_weights_manifest",
]

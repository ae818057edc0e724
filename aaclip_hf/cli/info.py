"""`aaclip info`: versions, devices, and what an AA-CLIP folder holds."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from ..version import __version__
from .parsing import add_command


def register(subparsers) -> None:
    add_command(
        subparsers, "info", "Show versions, devices and what a model folder holds.", run_info, add_info_arguments
    )


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="an AA-CLIP model folder to describe")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every file against manifest.json (SHA-256), load the weights (complete, finite) and check the "
        "stored anchors and references against the weights and their names; exit 2 naming what differs",
    )


def describe_environment() -> dict:
    import torch
    import transformers

    return {
        "aaclip_hf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def describe_model(path: str | Path) -> dict:
    """What a model folder holds, from its config (nothing is loaded, no code runs)."""
    from ..runtime.loading import load_config

    path = Path(path)
    config = load_config(path)
    vision, text = config.vision_config, config.text_config
    value_bytes = 4  # the stored references' float32 values
    return {
        "path": str(path),
        "vision": f"{vision.num_hidden_layers} layers x {vision.hidden_size}, {vision.image_size} px, patch {vision.patch_size}",
        "text": f"{text.num_hidden_layers} layers x {text.hidden_size}" if config.include_text_model else None,
        "hidden_act": vision.hidden_act,
        "adapters": {"text": config.text_adapter_layers, "vision": config.vision_adapter_layers},
        "feature_layers": list(config.feature_layers),
        "stored_anchor_classes": list(config.anchor_class_names),
        "anchor_fingerprint": config.anchor_fingerprint,
        "decision_thresholds": dict(config.decision_thresholds),
        "fallback_threshold": config.decision_threshold,
        "references": {
            name: {
                "images": record["images"],
                "patches_per_level": record["patches"],
                "bytes": record["patches"] * config.num_levels * config.projection_dim * value_bytes,
            }
            for name, record in config.reference_classes.items()
        },
        "files": sorted(p.name for p in path.iterdir()),
    }


def verify_model(path: str | Path) -> dict:
    """`--verify`: every file against the manifest, then the checked load (complete, finite, uncorrupted weights), then
    the stored anchors and references against the weights and their names. Raises naming the first problem."""
    from ..errors import StaleStateError, WeightsError
    from ..runtime.loading import load_model
    from ..runtime.model_folder import MANIFEST_NAME, verify_manifest

    if not (Path(path) / MANIFEST_NAME).is_file():
        files = f"not checked: no {MANIFEST_NAME} (a folder saved without the package's writer)"
    elif problems := verify_manifest(path):
        raise WeightsError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
    else:
        files = f"match {MANIFEST_NAME}"
    model, _ = load_model(path, device="cpu")
    status = model.anchor_status()
    if status["state"] in ("stale", "tampered"):
        raise StaleStateError(f"{path}: {status['reason']}")
    references = {name: len(model.references_for(name)[0]) for name in model.config.reference_classes}
    return {
        "files": files,
        "anchors": status["state"],
        "anchors_detail": status["reason"],
        "references": dict.fromkeys(references, "fresh"),
    }


def run_info(args: argparse.Namespace) -> int:
    if args.verify and not args.model:
        from ..errors import InvalidInputError

        raise InvalidInputError("--verify needs a model folder")
    info = {"environment": describe_environment()}
    if args.model:
        info["model"] = describe_model(args.model)
        if args.verify:
            info["verify"] = verify_model(args.model)
    print(json.dumps(info, indent=2))
    return 0

"""`aaclip info`: versions, devices, and what an AA-CLIP folder holds."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import transformers

from ..modeling.configuration_aaclip import AAClipConfig
from ..modeling.modeling_aaclip import AAClipModel
from ..runtime.model_folder import verify_manifest
from ..version import __version__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="an AA-CLIP model folder to describe")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the weight files against weights_manifest.json (SHA-256), load the weights (complete, finite) "
        "and check the stored anchors against the text branch; exit 2 naming what differs",
    )


def describe_environment() -> dict:

    return {
        "aaclip_hf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def describe_model(path: str | Path) -> dict:

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it an AA-CLIP model folder?")
    config = AAClipConfig.from_pretrained(str(path))
    vision, text = config.vision_config, config.text_config
    return {
        "path": str(path),
        "vision": f"{vision.num_hidden_layers} layers x {vision.hidden_size}, {vision.image_size} px, patch {vision.patch_size}",
        "text": f"{text.num_hidden_layers} layers x {text.hidden_size}",
        "hidden_act": vision.hidden_act,
        "adapters": {"text": config.text_adapter_layers, "vision": config.vision_adapter_layers},
        "feature_layers": list(config.feature_layers),
        "stored_anchor_classes": list(config.anchor_class_names),
        "anchor_fingerprint": config.anchor_fingerprint,
        "decision_threshold": config.decision_threshold,
        "files": sorted(p.name for p in path.iterdir()),
    }


def verify_model(path: str | Path) -> dict:
    """`--verify`: the manifest check, then a full load (refuses incomplete, non-finite or corrupt weights), then
    the anchor check. Raises `ValueError` naming every weight file that differs from its manifest."""
    problems = verify_manifest(path)
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
    status = AAClipModel.from_pretrained(str(path)).anchor_status()
    return {"weights": "match weights_manifest.json", "anchors": status["state"], "anchors_detail": status["reason"]}


def run(args: argparse.Namespace) -> int:
    if args.verify and not args.model:
        raise ValueError("--verify needs a model folder")
    info = {"environment": describe_environment()}
    if args.model:
        info["model"] = describe_model(args.model)
        if args.verify:
            info["verify"] = verify_model(args.model)
    print(json.dumps(info, indent=2))
    return 0

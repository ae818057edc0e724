"""Publishing: Hub folders by allowlist and uploads (`publish`), the model card (`card`), ONNX (`onnx_export`)."""

from .card import CARD_TAGS, TRAINING_SUMMARY_FILE, build_model_card, read_training_summary
from .onnx_export import AAClipOnnxWrapper, check_onnx, export_onnx
from .publish import (
    HUB_ALLOWLIST,
    PIPELINE_FILE,
    HubFolder,
    prepare_hub_folder,
    push_folder_to_hub,
    push_model_to_hub,
    save_for_hub,
    stage_hub_folder,
)


__all__ = [
    "AAClipOnnxWrapper",
    "CARD_TAGS",
    "HUB_ALLOWLIST",
    "PIPELINE_FILE",
    "TRAINING_SUMMARY_FILE",
    "HubFolder",
    "build_model_card",
    "check_onnx",
    "export_onnx",
    "prepare_hub_folder",
    "push_folder_to_hub",
    "push_model_to_hub",
    "read_training_summary",
    "save_for_hub",
    "stage_hub_folder",
]

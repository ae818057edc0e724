"""Publishing: Hub folders and uploads (`publish`) and the ONNX export (`onnx_export`)."""

from .onnx_export import AAClipOnnxWrapper, check_onnx, export_onnx
from .publish import (
    CARD_TAGS,
    PIPELINE_FILE,
    TRAINING_SUMMARY_FILE,
    build_model_card,
    prepare_hub_folder,
    push_folder_to_hub,
    push_model_to_hub,
    read_training_summary,
    save_for_hub,
)


__all__ = [
    "AAClipOnnxWrapper",
    "CARD_TAGS",
    "PIPELINE_FILE",
    "TRAINING_SUMMARY_FILE",
    "build_model_card",
    "check_onnx",
    "export_onnx",
    "prepare_hub_folder",
    "push_folder_to_hub",
    "push_model_to_hub",
    "read_training_summary",
    "save_for_hub",
]

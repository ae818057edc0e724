"""Publishing: Hub folders and uploads (`publish`), the model card (`card`), ONNX (`onnx_export`), the Space app and
the Hub metric module. Names load on first use."""

from .._lazy import lazy_exports


__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "CARD_TAGS": ".card",
        "TRAINING_SUMMARY_FILE": ".card",
        "build_model_card": ".card",
        "read_training_summary": ".card",
        "check_onnx": ".onnx_export",
        "export_onnx": ".onnx_export",
        "HUB_ALLOWLIST": ".publish",
        "HubFolder": ".publish",
        "push_folder_to_hub": ".publish",
        "push_model_to_hub": ".publish",
        "save_for_hub": ".publish",
        "stage_hub_folder": ".publish",
    },
)

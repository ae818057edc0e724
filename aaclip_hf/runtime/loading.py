"""The one loader: an AA-CLIP folder or Hub id -> `(model, processor)` that fit each other.

Every entry point (evaluate, detect, calibrate, train, the app, the demo) loads through here, so the
checks a user relies on (an AA-CLIP config, a processor at the model's input size) are made once.
"""

from __future__ import annotations

import json
import logging
import os

import torch

from ..modeling.configuration_aaclip import AAClipConfig
from ..modeling.modeling_aaclip import AAClipModel
from ..modeling.processing_aaclip import AAClipProcessor
from .devices import resolve_device, resolve_dtype


logger = logging.getLogger(__name__)

__all__ = ["is_aaclip_folder", "load_model_and_processor", "processor_for"]


def is_aaclip_folder(path: str | os.PathLike) -> bool:
    """True for a local folder whose config.json says `model_type: aaclip`."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("model_type") == AAClipConfig.model_type


def processor_for(model: AAClipModel, source: str | os.PathLike | None = None) -> AAClipProcessor:
    """The processor saved in `source`, or the default one at the model's input size; it must fit the model."""
    processor = None
    if source is not None:
        try:
            processor = AAClipProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            logger.warning("no processor in %s (%s); using the default preprocessing", source, error)
    if processor is None:
        processor = AAClipProcessor.for_model(model.config)
    size = model.config.vision_config.image_size
    if tuple(processor.image_size) != (size, size):
        raise ValueError(
            f"{source}: the processor resizes to {processor.image_size} but the model expects {size}x{size}; "
            "fix preprocessor_config.json / processor_config.json"
        )
    return processor


def load_model_and_processor(
    model: str | os.PathLike, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[AAClipModel, AAClipProcessor]:
    """An AA-CLIP folder or Hub id -> `(model, processor)` in eval mode on `device` (default: best available).

    `dtype`: a `--dtype` value (`auto`, `float32`, `bf16`, ...) or a torch dtype; `None` keeps fp32.
    """
    model = os.fspath(model)
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise FileNotFoundError(f"{model}: no config.json; expected a folder written by save_pretrained")
    config = AAClipConfig.from_pretrained(model)
    if config.model_type != AAClipConfig.model_type:
        raise ValueError(f"{model}: model_type {config.model_type!r}, expected an AA-CLIP model ('aaclip')")
    device = resolve_device(device)
    torch_dtype = torch.float32 if dtype is None else resolve_dtype(dtype, device)
    aaclip = AAClipModel.from_pretrained(model, dtype=torch_dtype)
    aaclip.to(device).eval()
    return aaclip, processor_for(aaclip, model)

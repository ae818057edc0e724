"""The one loader: an AA-CLIP folder or Hub id -> `(model, processor)` that fit each other.

Every entry point (evaluate, detect, calibrate, train, the app, the demo) loads through here, so the
checks a user relies on (an AA-CLIP config, a processor at the model's input size) are made once.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.utils import CONFIG_NAME

from ..modeling.configuration_aaclip import AAClipConfig
from ..modeling.modeling_aaclip import AAClipModel
from ..modeling.processing_aaclip import AAClipProcessor
from .devices import resolve_device, resolve_dtype


logger = logging.getLogger(__name__)

__all__ = ["check_model_source", "is_aaclip_folder", "load_model_and_processor", "processor_for"]


def is_aaclip_folder(path: str | os.PathLike) -> bool:
    """True for a local folder whose config.json says `model_type: aaclip`."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config}: not valid JSON ({error}); expected the config.json of save_pretrained") from None
    return isinstance(data, dict) and data.get("model_type") == AAClipConfig.model_type


def check_model_source(model: str | os.PathLike, what: str = "--model", kind: str = "folder") -> None:
    """Refuse, naming `model`, a path that is neither a local folder nor a Hub id that can be loaded.

    Offline (`HF_HUB_OFFLINE`), a Hub id loads only from the local cache, so an uncached one is refused here
    with "the Hub is offline" instead of a long traceback about the network. Online ids pass (the loader
    turns a failed connection into "the Hub is unreachable").
    """
    model = os.fspath(model)
    if os.path.isdir(model) or (kind != "folder" and os.path.isfile(model)):
        return
    expected = f"expected a model {kind} written by save_pretrained, or a Hub model id"
    if os.path.exists(model):
        raise FileNotFoundError(f"{what} {model}: is a file, not a folder; {expected}")
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise FileNotFoundError(f"{what} {model}: no such {kind} (and not a valid Hub id); {expected}") from None
    if hub_constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(model, CONFIG_NAME), str):
        raise FileNotFoundError(
            f"{what} {model}: no such {kind}, and the Hub is offline (HF_HUB_OFFLINE is set, and the id is not "
            f"in the local cache); {expected}"
        )


def _unreachable(model: str, what: str, error: OSError) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} {model}: no such folder, and the Hub is unreachable ({' '.join(str(error).split())}); "
        "expected a model folder written by save_pretrained, or a Hub model id with the network up"
    )


def _is_connection_error(error: BaseException) -> bool:
    """transformers reports a Hub it cannot reach as an OSError saying so; the cause may be any network error."""
    text = str(error).lower()
    return "couldn't connect" in text or "connection" in text or isinstance(error, ConnectionError)


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
    check_model_source(model)
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise FileNotFoundError(f"{model}: no config.json; expected a folder written by save_pretrained")
    try:
        config = AAClipConfig.from_pretrained(model)
    except OSError as error:
        if not os.path.isdir(model) and _is_connection_error(error):
            raise _unreachable(model, "--model", error) from error
        raise
    if config.model_type != AAClipConfig.model_type:
        raise ValueError(f"{model}: model_type {config.model_type!r}, expected an AA-CLIP model ('aaclip')")
    device = resolve_device(device)
    torch_dtype = torch.float32 if dtype is None else resolve_dtype(dtype, device)
    aaclip = AAClipModel.from_pretrained(model, dtype=torch_dtype)
    aaclip.to(device).eval()
    return aaclip, processor_for(aaclip, model)

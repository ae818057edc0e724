"""The one loader: an AA-CLIP folder or Hub id -> `(model, processor)`, checked before anything is trusted or built.

Every entry point (evaluate, detect, calibrate, train, add-references, the app, the demo) loads through here:

1. `config.json` is read as data and built into the installed `AAClipConfig` only: no code from the folder ever
   runs (every transformers call passes `trust_remote_code=False`, so nothing prompts either), and a file that is not
   an AA-CLIP config (another architecture, a JSON array, a hostile field) is one line naming the file.
2. The weight files are checked from their headers: complete, inside the folder, and holding the values the config
   describes (`state_elements`), so a config that promises a huge model is refused before anything is allocated;
   the model must also fit in the free memory with one image's activations.
3. Names and shapes are compared with a model built on the meta device: missing, unexpected or mis-shaped weights
   are refused (never re-initialised at random).
4. The weights load, and any NaN/inf is refused; the processor must fit the model's input size.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.utils import CONFIG_NAME

from ..errors import AAClipError, BadInputError, IncompleteWeightsError, MissingFileError, NonFiniteWeightsError
from ..modeling import AAClipConfig, AAClipModel, AAClipProcessor
from .devices import resolve_device, resolve_dtype
from .model_folder import check_weight_files, header_elements, listed_names, non_finite_tensors
from .resources import check_fits_in_memory, inference_activation_bytes, state_elements


logger = logging.getLogger(__name__)

__all__ = [
    "check_model_source",
    "is_aaclip_folder",
    "is_hub_id",
    "load_config",
    "load_model",
    "load_model_and_processor",
    "model_type_of",
    "processor_for",
]

# Files a Hub snapshot needs for loading: never the repository's code (it is not run).
SNAPSHOT_PATTERNS = ("*.json", "*.safetensors", "*.txt")
# How far the values a config describes may be from what its weight files hold before the load is refused
# unbuilt; the exact comparison of names and shapes follows on a meta-device model.
STATE_SIZE_TOLERANCE = 1.5


def is_hub_id(name: str) -> bool:
    """The one Hub-id check: a repository id by huggingface_hub's rules (`name` or `org/name`) that is not a local
    path."""
    if os.path.exists(name) or name.startswith((".", "/", "~", "\\")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_aaclip_folder(path: str | os.PathLike) -> bool:
    """True for a local folder whose config.json is an AA-CLIP config (`model_type: aaclip`)."""
    try:
        return _read_config(Path(path)).get("model_type") == AAClipConfig.model_type
    except BadInputError:
        return False


def model_type_of(folder: str | os.PathLike):
    """The `model_type` a local folder's config.json declares (a bad config.json is a `BadInputError` naming it)."""
    return _read_config(Path(folder)).get("model_type")


def check_model_source(model: str | os.PathLike, what: str = "--model", kind: str = "folder") -> None:
    """Refuse, naming `model`, a path that is neither a local folder (or, for `kind="checkpoint"`, a file) nor a Hub
    id that can be loaded (offline: one in the local cache)."""
    model = os.fspath(model)
    if os.path.isdir(model) or (kind != "folder" and os.path.isfile(model)):
        return
    expected = "expected a model folder written by save_pretrained, or a Hub model id"
    if os.path.exists(model):
        raise MissingFileError(f"is a file, not a folder; {expected}", model, what)
    if not is_hub_id(model):
        raise MissingFileError(f"no such folder (and not a valid Hub id); {expected}", model, what)
    if hub_constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(model, CONFIG_NAME), str):
        raise MissingFileError(
            f"no such folder, and the Hub is offline (HF_HUB_OFFLINE, not cached); {expected}", model, what
        )


def _local_folder(model: str, what: str = "--model") -> Path:
    check_model_source(model, what)
    if os.path.isdir(model):
        return Path(model)
    try:
        return Path(snapshot_download(model, allow_patterns=list(SNAPSHOT_PATTERNS)))
    except Exception as error:  # the HTTP client's own errors too (no route, DNS, timeout): name the id
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise MissingFileError(f"no such folder, and the Hub is unreachable ({reason})", model, what) from None


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise MissingFileError("no config.json; expected a model folder written by save_pretrained", folder, "--model")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BadInputError(f"not valid JSON ({type(error).__name__}: {str(error)[:120]})", path) from None
    if not isinstance(data, dict):
        raise BadInputError(f"holds a JSON {type(data).__name__}, expected an object", path)
    return data


def load_config(folder: str | os.PathLike) -> AAClipConfig:
    """The folder's `config.json` as the installed `AAClipConfig`, or one `BadInputError` naming the file."""
    path = Path(folder) / CONFIG_NAME
    data = _read_config(Path(folder))
    found = data.get("model_type")
    if found != AAClipConfig.model_type:
        hint = " Build AA-CLIP on it with `aaclip convert-clip`." if found == "clip" else ""
        raise BadInputError(
            f"model_type is {found!r}, expected {AAClipConfig.model_type!r} (a folder written by save_pretrained).{hint}",
            path,
            "model_type",
        )
    try:
        return AAClipConfig.from_dict(data)
    except Exception as error:  # any field of the file; the message names it
        while not isinstance(error, AAClipError) and isinstance(error.__cause__, AAClipError):
            error = error.__cause__  # huggingface_hub's strict dataclasses wrap the config's own checks
        message = " ".join(str(error).split())[:300] or type(error).__name__
        raise BadInputError(f"not a valid AA-CLIP config: {message}", path) from None


def _check_weights_fit(config: AAClipConfig, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
    """Steps 2 and 3 of the module docstring."""
    shapes = check_weight_files(folder)
    if not shapes:
        pickles = sorted(path.name for path in folder.glob("*.bin")) + sorted(
            path.name for path in folder.glob("*.pt*")
        )
        refused = f"; refusing to load {', '.join(pickles)} (a pickle can run code)" if pickles else ""
        raise MissingFileError(
            f"no model.safetensors (weights are read from safetensors only){refused}", folder, "--model"
        )
    described, held = state_elements(config), header_elements(shapes)
    if not held / STATE_SIZE_TOLERANCE <= described <= held * STATE_SIZE_TOLERANCE:
        raise IncompleteWeightsError(
            f"{folder / CONFIG_NAME}: describes a model of {described:,} values but its weights hold {held:,}; the "
            "config does not belong to these weights"
        )
    dtype_bytes = torch.finfo(dtype).bits // 8
    needed = described * dtype_bytes + inference_activation_bytes(config, 1, dtype_bytes)
    check_fits_in_memory(needed, f"{folder}: the model and one image's activations", device)
    with torch.device("meta"):
        expected = {name: list(tensor.shape) for name, tensor in AAClipModel(config).state_dict().items()}
    problems = []
    if missing := set(expected) - set(shapes):
        problems.append(f"missing {listed_names(missing)}")
    if unexpected := set(shapes) - set(expected):
        problems.append(f"unexpected {listed_names(unexpected)}")
    if wrong := [
        f"{k} (file {shapes[k]}, model {expected[k]})" for k in set(expected) & set(shapes) if shapes[k] != expected[k]
    ]:
        problems.append(f"mis-shaped {listed_names(wrong)}")
    if problems:
        raise IncompleteWeightsError(
            f"{folder}: the weights do not match its config.json: {'; '.join(problems)}. A folder written by "
            "save_pretrained holds exactly the keys its config describes; re-save or re-convert it"
        )


def load_model(
    model: str | os.PathLike, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[AAClipModel, Path]:
    """A checked AA-CLIP model in eval mode on `device` (default: the best available), and its local folder.

    `dtype`: a `--dtype` value (`auto`, `float32`, `bf16`, ...) or a torch dtype; `None` keeps fp32.
    """
    folder = _local_folder(os.fspath(model))
    config = load_config(folder)
    device = resolve_device(device)
    torch_dtype = torch.float32 if dtype is None else resolve_dtype(dtype, device)
    # stored references are checked in the dtype they were made in, then cast (`to_checked_dtype`)
    load_dtype = torch.float32 if config.reference_classes else torch_dtype
    _check_weights_fit(config, folder, device, load_dtype)
    aaclip = AAClipModel.from_pretrained(folder, config=config, dtype=load_dtype, trust_remote_code=False)
    bad = non_finite_tensors(aaclip.state_dict())
    if bad:
        raise NonFiniteWeightsError(
            f"{folder}: non-finite (NaN/inf) values in {len(bad)} tensor(s): {listed_names(bad)}"
        )
    if load_dtype != torch_dtype:
        aaclip = aaclip.to_checked_dtype(torch_dtype)
    return aaclip.to(device).eval(), folder


def processor_for(model: AAClipModel, source: str | os.PathLike | None = None) -> AAClipProcessor:
    """The processor saved in `source`, or the default one at the model's input size; it must fit the model."""
    processor = None
    if source is not None and (Path(source) / "processor_config.json").is_file():
        try:
            processor = AAClipProcessor.from_pretrained(source, trust_remote_code=False)
        except Exception as error:  # any field of the file; the message names it
            message = " ".join(str(error).split())[:300] or type(error).__name__
            raise BadInputError(
                f"not a valid AA-CLIP processor: {message}", Path(source) / "processor_config.json"
            ) from None
    if processor is None:
        logger.info("no processor in %s; using the reference preprocessing at the model's size", source)
        processor = AAClipProcessor.for_model(model.config)
    size = model.config.vision_config.image_size
    if tuple(processor.image_size) != (size, size):
        raise BadInputError(
            f"the processor resizes to {processor.image_size} but the model expects {size}x{size}",
            Path(source or ".") / "processor_config.json",
            "image_processor.size",
        )
    return processor


def load_model_and_processor(
    model: str | os.PathLike, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[AAClipModel, AAClipProcessor]:
    """`load_model` and the processor that fits it."""
    aaclip, folder = load_model(model, device, dtype)
    return aaclip, processor_for(aaclip, folder)

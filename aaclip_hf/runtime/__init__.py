"""Runtime: devices and dtypes, the one model loader, safe checkpoint reading, FLOP and memory floors."""

from .devices import (
    DTYPE_CHOICES,
    add_dtype_argument,
    cast_for_inference,
    dtype_supported,
    resolve_device,
    resolve_dtype,
)
from .flops import (
    FlopReport,
    memory_traffic_floor,
    model_forward_flops,
    parameter_bytes,
    text_anchor_flops,
    vision_forward_flops,
    vision_side_parameters,
)
from .loading import is_aaclip_folder, load_model_and_processor, processor_for
from .serialization import UnsafeCheckpointError, is_torchscript_archive, load_tensor_file, safe_torch_load


__all__ = [
    "DTYPE_CHOICES",
    "FlopReport",
    "UnsafeCheckpointError",
    "add_dtype_argument",
    "cast_for_inference",
    "dtype_supported",
    "is_aaclip_folder",
    "is_torchscript_archive",
    "load_model_and_processor",
    "load_tensor_file",
    "memory_traffic_floor",
    "model_forward_flops",
    "parameter_bytes",
    "processor_for",
    "resolve_device",
    "resolve_dtype",
    "safe_torch_load",
    "text_anchor_flops",
    "vision_forward_flops",
    "vision_side_parameters",
]

"""Checkpoint conversion into Hugging Face folders (installed as ``aaclip_hf.conversion``).

- :mod:`.clip_weights`: pure OpenAI/OpenCLIP ``CLIP`` -> HF ``CLIPModel`` key mapping, config inference
  from tensor shapes, and the position-table resize.
- checkpoint reading that never unpickles arbitrary objects lives in :mod:`aaclip_hf.runtime.serialization`.
- :mod:`.convert_clip`: ``aaclip convert-clip`` (any CLIP -> ``AAClipModel`` or ``CLIPModel`` folder) and
  the embedding check against ``open_clip`` or the TorchScript archive.
- :mod:`.original`: ``aaclip convert-original`` (reference AA-CLIP adapter checkpoints).
- :mod:`.tokenizer`: ``aaclip convert-tokenizer`` (HF tokenizer files from OpenAI's BPE merges).
"""

from ..modeling.modeling_aaclip import resize_position_embedding
from ..runtime.serialization import UnsafeCheckpointError, load_tensor_file, safe_torch_load
from .clip_weights import (
    DROPPED_KEYS,
    ConversionError,
    MappingReport,
    convert_clip_state_dict,
    infer_clip_config,
    resize_clip_state_dict,
    unwrap_state_dict,
)


__all__ = [
    "DROPPED_KEYS",
    "ConversionError",
    "MappingReport",
    "UnsafeCheckpointError",
    "convert_clip_state_dict",
    "infer_clip_config",
    "load_tensor_file",
    "resize_clip_state_dict",
    "resize_position_embedding",
    "safe_torch_load",
    "unwrap_state_dict",
]

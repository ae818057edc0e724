"""Checkpoint conversion into Hugging Face folders (installed as ``aaclip_hf.conversion``).

- :mod:`.clip_weights`: pure OpenAI/OpenCLIP ``CLIP`` -> HF ``CLIPModel`` key mapping, config inference
  from tensor shapes, and the position-table resize.
- checkpoint reading that never unpickles arbitrary objects lives in :mod:`aaclip_hf.runtime.serialization`, and
  `ConversionError` in :mod:`aaclip_hf.errors`.
- :mod:`.convert_clip`: ``aaclip convert-clip`` (any CLIP -> ``AAClipModel`` or ``CLIPModel`` folder) and
  the embedding check against ``open_clip`` or the TorchScript archive.
- :mod:`.original`: ``aaclip convert-original`` (reference AA-CLIP adapter checkpoints).
- :mod:`.tokenizer`: ``aaclip convert-tokenizer`` (HF tokenizer files from OpenAI's BPE merges). Names load on first use."""

from .._lazy import lazy_exports


__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "DROPPED_KEYS": ".clip_weights",
        "MappingReport": ".clip_weights",
        "convert_clip_state_dict": ".clip_weights",
        "infer_clip_config": ".clip_weights",
        "resize_clip_state_dict": ".clip_weights",
        "unwrap_state_dict": ".clip_weights",
    },
)

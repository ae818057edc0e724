"""The Hub-portable model files (flat; copied next to the weights by `save_pretrained`)."""

from .configuration_aaclip import AAClipConfig, StaleAnchorsWarning, UnknownClassNameWarning
from .modeling_aaclip import AAClipModel, AAClipOutput
from .processing_aaclip import AAClipProcessor
from .serialization_aaclip import WeightsError, verify_manifest


__all__ = [
    "AAClipConfig",
    "AAClipModel",
    "AAClipOutput",
    "AAClipProcessor",
    "StaleAnchorsWarning",
    "UnknownClassNameWarning",
    "WeightsError",
    "verify_manifest",
]

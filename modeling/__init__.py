"""The Hub-portable model files (flat; copied next to the weights by `save_pretrained`)."""

from .configuration_aaclip import AAClipConfig
from .modeling_aaclip import AAClipModel, AAClipOutput
from .processing_aaclip import AAClipProcessor


__all__ = ["AAClipConfig", "AAClipModel", "AAClipOutput", "AAClipProcessor"]

"""aaclip-hf: AA-CLIP zero-shot anomaly detection and segmentation as a Hugging Face transformers model.

Importing the package registers the model with the Auto classes, so `AutoModel.from_pretrained` of an
AA-CLIP folder uses this installed code and never needs `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .modeling import AAClipConfig, AAClipModel, AAClipOutput, AAClipProcessor
from .version import __version__

AutoConfig.register(AAClipConfig.model_type, AAClipConfig, exist_ok=True)
AutoModel.register(AAClipConfig, AAClipModel, exist_ok=True)
AutoProcessor.register(AAClipConfig, AAClipProcessor, exist_ok=True)

__all__ = ["AAClipConfig", "AAClipModel", "AAClipOutput", "AAClipProcessor", "__version__"]

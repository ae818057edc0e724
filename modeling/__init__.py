"""The method and its transformers contract: flat files that `save_pretrained` copies next to the weights.

`configuration_aaclip` (the config and the method's errors), `modeling_aaclip` (the model), `image_processing_aaclip`
(images and masks), `processing_aaclip` (prompts and post-processing) and `pipeline_aaclip` (the task). They import
only torch, transformers, numpy, PIL and each other, so the Hub copy of a model runs them without this package.
"""

from .configuration_aaclip import (
    GENERIC_CLASS,
    TASK,
    AAClipConfig,
    AAClipError,
    InvalidInputError,
    StaleAnchorsWarning,
    StaleStateError,
    UnknownClassError,
    UnknownClassNameWarning,
)
from .image_processing_aaclip import AAClipImageProcessor
from .modeling_aaclip import AAClipModel, AAClipOutput
from .pipeline_aaclip import AAClipAnomalyDetectionPipeline
from .processing_aaclip import AAClipProcessor


__all__ = [
    "GENERIC_CLASS",
    "TASK",
    "AAClipAnomalyDetectionPipeline",
    "AAClipConfig",
    "AAClipError",
    "AAClipImageProcessor",
    "AAClipModel",
    "AAClipOutput",
    "AAClipProcessor",
    "InvalidInputError",
    "StaleAnchorsWarning",
    "StaleStateError",
    "UnknownClassError",
    "UnknownClassNameWarning",
]

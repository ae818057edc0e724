"""aaclip-hf: AA-CLIP zero-shot anomaly detection and segmentation as a Hugging Face transformers model.

Importing the package registers the model with the Auto classes, so `AutoModel.from_pretrained` of an
AA-CLIP folder uses this installed code and never needs `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from . import _deprecated
from .evaluation.anomaly_metrics import load_metric
from .modeling.configuration_aaclip import AAClipConfig
from .modeling.modeling_aaclip import AAClipModel, AAClipOutput
from .modeling.pipeline_aaclip import NO_DEFAULT_MODEL, TASK, AAClipAnomalyDetectionPipeline
from .modeling.processing_aaclip import AAClipProcessor
from .runtime.cpu import tune_cpu_runtime
from .version import __version__


_deprecated.install()
AutoConfig.register(AAClipConfig.model_type, AAClipConfig, exist_ok=True)
AutoModel.register(AAClipConfig, AAClipModel, exist_ok=True)
AutoProcessor.register(AAClipConfig, AAClipProcessor, exist_ok=True)
# In-process task; Hub folders ship the same class as remote code (`config.custom_pipelines`). No default
# checkpoint: `pipeline(TASK)` without a model raises a ValueError saying to pass one.
PIPELINE_REGISTRY.register_pipeline(
    TASK,
    pipeline_class=AAClipAnomalyDetectionPipeline,
    pt_model=AutoModel,
    default={"model": NO_DEFAULT_MODEL},
    type="multimodal",
)

__all__ = [
    "AAClipAnomalyDetectionPipeline",
    "AAClipConfig",
    "AAClipModel",
    "AAClipOutput",
    "AAClipProcessor",
    "TASK",
    "__version__",
    "load_metric",
    "tune_cpu_runtime",
]

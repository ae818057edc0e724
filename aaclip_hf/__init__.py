"""aaclip-hf: AA-CLIP zero- and few-shot anomaly detection and segmentation as a Hugging Face transformers model.

Importing the package registers AA-CLIP with transformers (`AutoConfig`, `AutoModel`, `AutoImageProcessor`,
`AutoProcessor` and the `zero-shot-anomaly-detection` pipeline task), so a saved folder loads with the installed
classes and never needs `trust_remote_code`. The registration happens when transformers is in use: at once if it is
already imported, else right after its first import. `import aaclip_hf` itself stays light (the `aaclip` command
starts without torch), and the rest of the package loads on first use of a name (`aaclip_hf.AAClipModel`, ...).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from .version import __version__


# Public name -> the module that defines it, imported on first access (transformers' lazy-module pattern).
_LAZY_NAMES = {
    "AAClipAnomalyDetectionPipeline": "modeling.pipeline_aaclip",
    "AAClipConfig": "modeling.configuration_aaclip",
    "AAClipError": "modeling.configuration_aaclip",
    "AAClipImageProcessor": "modeling.image_processing_aaclip",
    "AAClipModel": "modeling.modeling_aaclip",
    "AAClipOutput": "modeling.modeling_aaclip",
    "AAClipProcessor": "modeling.processing_aaclip",
    "TASK": "modeling.configuration_aaclip",
    "load_metric": "evaluation.anomaly_metrics",
    "tune_cpu_runtime": "runtime.cpu",
}

__all__ = [*sorted(_LAZY_NAMES), "__version__", "register"]


def __getattr__(name: str):
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


def register() -> None:
    """Register AA-CLIP with transformers' Auto classes and its pipeline registry (idempotent)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from .modeling import (
        TASK,
        AAClipAnomalyDetectionPipeline,
        AAClipConfig,
        AAClipImageProcessor,
        AAClipModel,
        AAClipProcessor,
    )
    from .modeling.pipeline_aaclip import NO_DEFAULT_MODEL

    AutoConfig.register(AAClipConfig.model_type, AAClipConfig, exist_ok=True)
    AutoModel.register(AAClipConfig, AAClipModel, exist_ok=True)
    # One class for both backends: the reference numerics are PIL bicubic, whatever torchvision's presence.
    backends = {"pil": AAClipImageProcessor, "torchvision": AAClipImageProcessor}
    AutoImageProcessor.register(AAClipConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(AAClipConfig, AAClipProcessor, exist_ok=True)
    # No default checkpoint: `pipeline(TASK)` without a model says to pass one.
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=AAClipAnomalyDetectionPipeline,
        pt_model=AutoModel,
        default={"model": NO_DEFAULT_MODEL},
        type="multimodal",
    )


# Registration needs transformers and this package's model files, both fully imported. Whichever finishes last
# (or `import aaclip_hf`, when transformers is already there) registers; `_Watcher` sees the two imports finish.
_WATCHED = ("transformers", f"{__name__}.modeling")
_loading: set[str] = set()
_registered = False


def _register_when_ready() -> None:
    global _registered
    if _registered or _loading or "transformers" not in sys.modules:
        return
    _registered = True  # first: `register` imports the model files, whose completion calls back here
    try:
        register()
    except BaseException:
        _registered = False
        raise


class _Watcher(importlib.abc.MetaPathFinder):
    """Wraps the loaders of the watched modules so that `_register_when_ready` runs once each has executed."""

    def __init__(self):
        self.seen: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _WATCHED or fullname in self.seen:
            return None
        self.seen.add(fullname)  # also ends the recursion through `find_spec` below
        if self.seen.issuperset(_WATCHED):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(fullname, spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """A loader that executes the module with its own loader, then registers AA-CLIP when it can."""

    def __init__(self, name: str, loader):
        self._name, self._loader = name, loader

    def __getattr__(self, name):  # resource readers and the like come from the real loader
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        _loading.add(self._name)
        try:
            self._loader.exec_module(module)
        finally:
            _loading.discard(self._name)
        _register_when_ready()


if not any(isinstance(finder, _Watcher) for finder in sys.meta_path) and not set(_WATCHED) <= set(sys.modules):
    sys.meta_path.insert(0, _Watcher())
_register_when_ready()

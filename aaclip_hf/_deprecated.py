"""Old module paths of the flat 0.1 layout, kept importable for one release with a `FutureWarning`.

`import aaclip_hf.metrics` (say) still works and returns `aaclip_hf.evaluation.metrics`; the warning names the
new path. Remove after the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings


MOVED_MODULES = {
    "aaclip_hf.bench": "aaclip_hf.cli.bench",
    "aaclip_hf.calibrate": "aaclip_hf.inference.calibrate",
    "aaclip_hf.demo": "aaclip_hf.cli.demo",
    "aaclip_hf.detect": "aaclip_hf.inference.detect",
    "aaclip_hf.flops": "aaclip_hf.runtime.flops",
    "aaclip_hf.image_io": "aaclip_hf.data.image_io",
    "aaclip_hf.info": "aaclip_hf.cli.info",
    "aaclip_hf.metrics": "aaclip_hf.evaluation.metrics",
    "aaclip_hf.onnx_export": "aaclip_hf.hub.onnx_export",
    "aaclip_hf.precision": "aaclip_hf.runtime.devices",
    "aaclip_hf.sampling": "aaclip_hf.data.sampling",
    "aaclip_hf.synthetic": "aaclip_hf.data.synthetic",
    "aaclip_hf.visualize": "aaclip_hf.inference.visualize",
    "aaclip_hf.conversion.loading": "aaclip_hf.runtime.serialization",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        return importlib.import_module(self.new_name)

    def exec_module(self, module) -> None:
        """The new module is already executed; nothing to run."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves an old path to the module that now holds it, warning once per import."""

    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED_MODULES.get(fullname)
        if new_name is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new_name}; the old path is removed in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())

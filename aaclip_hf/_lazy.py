"""Lazy package namespaces (PEP 562), as transformers' `_LazyModule`: a package lists its public names with the module
that defines each, and a name's module is imported on first use. `import aaclip_hf.data` then costs nothing until a
name is used, and `from aaclip_hf.data import load_samples` imports only what it needs."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable, list[str]]:
    """`(__getattr__, __dir__, __all__)` for `package`, whose public names live in `exports` (name -> `.module`)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)

"""`aaclip calibrate`: set a model's decision threshold from a few normal (and anomalous) images.

The rules and the implementation live in `aaclip_hf.detect` (`calibrate_threshold`, `save_threshold`).
"""

from __future__ import annotations

from .detect import add_calibrate_arguments as add_arguments
from .detect import run_calibrate as run


__all__ = ["add_arguments", "run"]

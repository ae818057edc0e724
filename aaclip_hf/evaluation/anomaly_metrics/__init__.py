"""The `evaluate` metric module folder, and how to load or copy it.

The folder holds the module `anomaly_metrics.py`, its numpy/scipy implementation `exact_metrics.py` (also
the package's own metrics), a metric card `README.md` and
`requirements.txt`. Those four files (`METRIC_FILES`) are the Hub metric; this `__init__` is not part of it.

- `load_metric()`: the module as an `evaluate.EvaluationModule`, loaded offline from `METRIC_DIR`.
- `write_metric_module(dir)`: copy the Hub files to `dir` (what `aaclip push-metric` uploads).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


__all__ = ["METRIC_DIR", "METRIC_FILES", "METRIC_NAME", "load_metric", "write_metric_module"]

METRIC_NAME = "anomaly_metrics"
METRIC_DIR = Path(__file__).resolve().parent
METRIC_FILES = (f"{METRIC_NAME}.py", "exact_metrics.py", "README.md", "requirements.txt")


def load_metric(**kwargs: Any):
    """The bundled `anomaly_metrics` module, through `evaluate.load(METRIC_DIR)` (no network needed).

    `kwargs` go to `evaluate.load` (e.g. `experiment_id`, `keep_in_memory`, `num_process`/`process_id`).
    """
    # evaluate pulls in datasets/pandas/pyarrow (seconds); `import aaclip_hf` must not pay for it.
    import evaluate

    return evaluate.load(str(METRIC_DIR), **kwargs)


def write_metric_module(directory: str | os.PathLike) -> list[Path]:
    """Copy the metric's Hub files (`METRIC_FILES`) into `directory` (created); returns the written paths.

    `evaluate.load(folder)` and the Hub look for the script `<folder name>.py`, so the module script is
    written under the folder's name (use a valid Python identifier, e.g. `anomaly_metrics`); the copy then
    loads with `evaluate.load(directory)` and can be pushed as a Hub metric as it is.
    """
    target = Path(directory)
    if not target.name.isidentifier():
        raise ValueError(f"{target}: the metric folder name must be a Python identifier (it names the script)")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in METRIC_FILES:
        out = target / (f"{target.name}.py" if name == f"{METRIC_NAME}.py" else name)
        written.append(Path(shutil.copy2(METRIC_DIR / name, out)))
    return written

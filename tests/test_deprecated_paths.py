"""The flat 0.1 module paths still import for one release, with a FutureWarning that names the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import aaclip_hf  # noqa: F401  (installs the alias finder)
from aaclip_hf._deprecated import MOVED_MODULES


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_path_warns_and_is_the_new_module(old):
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=MOVED_MODULES[old]):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED_MODULES[old])


FRESH_PROCESS = """
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("error", FutureWarning)
    import aaclip_hf.evaluation.metrics  # a new path: no warning
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from aaclip_hf.metrics import auroc  # an old path, in a process that never imported the new one by it
print(auroc([0.1, 0.9], [0, 1]), [str(w.message) for w in caught if w.category is FutureWarning])
"""


def test_old_from_import_works_and_new_paths_stay_silent_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    value, messages = proc.stdout.strip().split(" ", 1)
    assert value == "1.0" and "aaclip_hf.evaluation.metrics" in messages

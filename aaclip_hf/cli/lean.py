"""Start-up of the scoring commands: leave out an import they never use.

transformers' image utilities import `torchvision.transforms` whenever torchvision is installed, which imports all of
torchvision (its detection models and ops, and through them `torch._dynamo`): 1.5-2.5 s of every `aaclip detect`
start on a 2-core CPU (`python -X importtime`; docs/performance.md). AA-CLIP's image processor is PIL-based for both
of transformers' image backends (`aaclip_hf.register`), and nothing these commands run needs torchvision, so before
anything imports transformers they mark it absent for this process (`sys.modules["torchvision"] = None`, which
`importlib.util.find_spec` reports as not installed). Commands that may need torchvision (converting open_clip
checkpoints, training, the app) and library users are unaffected.
"""

from __future__ import annotations

import sys


__all__ = ["LEAN_COMMANDS", "skip_unused_imports"]

# The subcommands that score images with a loaded model and never use torchvision.
LEAN_COMMANDS = ("detect", "calibrate", "evaluate")


def skip_unused_imports(command: str | None) -> bool:
    """Mark torchvision absent for a `LEAN_COMMANDS` command, if neither it nor transformers is imported yet; returns
    whether it did."""
    if command not in LEAN_COMMANDS or "torchvision" in sys.modules or "transformers" in sys.modules:
        return False
    sys.modules["torchvision"] = None
    return True

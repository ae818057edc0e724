"""The CLI's one error boundary: expected failures are one line, anything else is a bug with its traceback.

Expected failures are an `AAClipError` (bad input or a bad environment, raised where the failure is understood, naming
the file or field and what was expected) and an `OSError` that names a file (a missing path, a permission, a full
disk). `aaclip` prints them as `aaclip <command>: error: <message>` on one line and exits with status 2. Anything else
is a bug: its traceback is printed, then a line saying so, and the exit status is 1. `aaclip --debug ...` or
`AACLIP_DEBUG=1` show the traceback of expected failures too.
"""

from __future__ import annotations

import os
import sys
import traceback


__all__ = ["debug_requested", "expected_error_message", "report_failure"]

_DEBUG_OFF = ("", "0", "false", "no", "off")


def debug_requested() -> bool:
    """`AACLIP_DEBUG` set to anything but empty/0/false/no/off."""
    return os.environ.get("AACLIP_DEBUG", "").strip().lower() not in _DEBUG_OFF


def _one_line(text: str) -> str:
    from ..runtime.outputs import safe_text

    return safe_text(" ".join(line.strip() for line in str(text).splitlines() if line.strip()))


def expected_error_message(error: BaseException) -> str | None:
    """The one-line message of an expected failure (module docstring), or `None` for a bug."""
    from ..errors import AAClipError  # here, not at the top: the errors module imports transformers

    if isinstance(error, AAClipError):
        return _one_line(str(error) or type(error).__name__)
    if isinstance(error, OSError) and error.filename is not None:
        reason = error.strerror or str(error)
        return _one_line(f"{os.fsdecode(error.filename)}: {reason}")
    return None


def report_failure(error: Exception, prog: str, debug: bool = False) -> int:
    """Print `error` as the boundary does and return the exit status (2 expected, 1 a bug); re-raise when debugging."""
    message = expected_error_message(error)
    if message is not None and not (debug or debug_requested()):
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    if message is not None:
        raise error
    traceback.print_exception(error)
    print(
        f"{prog}: internal error ({type(error).__name__}): this is a bug in aaclip-hf; please report it with the "
        "traceback above",
        file=sys.stderr,
    )
    return 1

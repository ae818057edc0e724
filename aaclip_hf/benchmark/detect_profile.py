"""Where the time of one `aaclip detect` process goes: imports, loading, preprocessing, forward, maps, overlays, writing.

    python -m aaclip_hf.benchmark.detect_profile RESULT.json -- detect IMAGES --model M --output O [flags]

Runs `aaclip` in this process with timers around the functions of each phase (nothing in the library is changed for
it: the timers wrap module attributes before the command starts) and writes their spans to `RESULT.json`:
`{"started": ..., "spans": [[phase, start, end, thread], ...], "imports_seconds": ..., "exit_code": ...}`, times
from `time.time()`, so the caller, which knows when it started the process, can add the interpreter's own start-up.

Phases: `imports` (the modules `aaclip detect` needs), `load` (checked loading of the folder), `backend` (backend
set-up: export and quantisation, or the cache), `decode` (image files, in the prefetch thread), `preprocess`
(resize and normalise), `forward` (the model), `maps` (post-processing to image-sized maps and masks), `overlays`
(drawing the pictures), `png` (encoding and writing them), `tables` (detections.json/csv). Spans of other threads
overlap the main thread's; `detect_phases.summarise` counts them.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from pathlib import Path


__all__ = ["profile_detect"]


def _timer(spans: list, phase: str, function):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        start = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            spans.append([phase, start, time.time(), threading.current_thread().name])

    return timed


def _wrap(spans: list, owner, name: str, phase: str) -> None:
    setattr(owner, name, _timer(spans, phase, getattr(owner, name)))


def profile_detect(argv: list[str]) -> dict:
    """Run `aaclip ARGV` here with the phase timers; returns the spans and the exit code."""
    started = time.time()
    from aaclip_hf.cli.lean import skip_unused_imports

    skip_unused_imports(argv[0] if argv else None)  # as `aaclip` does, before anything imports transformers
    import aaclip_hf.cli.detect  # noqa: F401  (the CLI's own imports, then the library's below)
    from aaclip_hf.inference import detect as detect_module
    from aaclip_hf.runtime import backends, loading

    imports = time.time()
    from PIL import Image

    from aaclip_hf.cli import main
    from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline

    spans: list = [["imports", started, imports, threading.current_thread().name]]
    _wrap(spans, loading, "load_model_and_processor", "load")
    _wrap(spans, backends, "apply_backend", "backend")
    _wrap(spans, detect_module, "load_image", "decode")
    _wrap(spans, AAClipAnomalyDetectionPipeline, "preprocess", "preprocess")
    _wrap(spans, AAClipAnomalyDetectionPipeline, "_forward", "forward")
    _wrap(spans, AAClipAnomalyDetectionPipeline, "postprocess", "maps")
    _wrap(spans, detect_module, "detection_figure", "overlays")
    _wrap(spans, Image.Image, "save", "png")
    _wrap(spans, detect_module, "_write_tables", "tables")
    code = main(argv)
    return {"started": started, "imports_seconds": imports - started, "spans": spans, "exit_code": code}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    result = profile_detect(argv[2:])
    Path(argv[0]).write_text(json.dumps(result))
    return int(result["exit_code"])


if __name__ == "__main__":
    sys.exit(main())

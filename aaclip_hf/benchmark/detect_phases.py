"""The phases of one `aaclip detect` process and their summary, from the spans `detect_profile` records.

Kept apart from the profiler (an entry point that runs the CLI) so the benchmark workers that read its results never
import the CLI.
"""

from __future__ import annotations

import threading


__all__ = ["PHASES", "summarise"]

PHASES = ("imports", "load", "backend", "decode", "preprocess", "forward", "maps", "overlays", "png", "tables")


def summarise(profile: dict, process_start: float, process_end: float) -> dict:
    """Seconds per phase (all threads) and on the main thread, the process's own start-up before our first line
    (`interpreter`), and what no phase covers on the main thread (`other`: argument parsing, output folder, exit)."""
    main_thread = threading.main_thread().name
    total = process_end - process_start
    per_phase = dict.fromkeys(PHASES, 0.0)
    on_main = dict.fromkeys(PHASES, 0.0)
    covered = []
    for phase, start, end, thread in profile["spans"]:
        per_phase[phase] += end - start
        if thread == main_thread:
            on_main[phase] += end - start
            covered.append((start, end))
    covered.sort()
    union, last = 0.0, float("-inf")  # nested spans (a forward inside a pipeline call) count once
    for start, end in covered:
        if end > last:
            union += end - max(start, last)
            last = end
    interpreter = max(profile["started"] - process_start, 0.0)
    return {
        "total_seconds": total,
        "interpreter_seconds": interpreter,
        "phase_seconds": per_phase,
        "main_thread_seconds": on_main,
        "other_seconds": max(total - interpreter - union, 0.0),
        "exit_code": profile["exit_code"],
    }

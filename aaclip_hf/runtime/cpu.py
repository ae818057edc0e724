"""CPU runtime tuning: keep freed activation memory in the process, and one intra-op thread per physical core.

Why: glibc serves every allocation above its mmap threshold with fresh `mmap` pages and unmaps them on free, and
trims the heap top above its trim threshold. A ViT-L/14 forward at 518 px allocates and frees about 5 GB of
activations, so by default every call page-faults and zeroes them again: a fresh process runs batch-1 forwards
at 13-24 s instead of 7-8 s on 2 cores (docs/performance.md, "CPU allocator"). Raising both thresholds (and
capping the number of malloc arenas, so that each thread's retained memory is not multiplied by the arena
count) makes the first call as fast as the steady state.

Nothing here runs on `import aaclip_hf`: a library must not change a host process's allocator behind its back.
The `aaclip` CLI, the demo and the benchmarks call `tune_cpu_runtime()` at start-up; pipeline users call it
themselves (`aaclip_hf.tune_cpu_runtime()`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MMAP_THRESHOLD",
    "DEFAULT_TRIM_THRESHOLD",
    "CpuTuning",
    "SIMD_FLAGS",
    "cpu_flags",
    "physical_core_count",
    "tune_cpu_runtime",
]

# glibc mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# mallopt takes a C int: the largest threshold it can express (2 GiB - 1). Every activation tensor of a ViT-L/14
# forward at 518 px and batch <= 32 is far below it, so all of them come from the reusable heap.
DEFAULT_MMAP_THRESHOLD = 2**31 - 1
# Keep up to 2 GiB - 1 of free memory at the heap top instead of returning it to the kernel after each call.
DEFAULT_TRIM_THRESHOLD = 2**31 - 1


# The CPU features that decide which kernels are fast here (fp32 FMA width, int8 dot products, native bf16), as
# /proc/cpuinfo names them; reports list the ones present.
SIMD_FLAGS = (
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "bf16",
    "i8mm",
)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (x86 `flags`, Arm `Features` of /proc/cpuinfo); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@dataclass
class CpuTuning:
    """What `tune_cpu_runtime` did: the mallopt calls that succeeded and the resulting thread count."""

    allocator: str
    mallopt: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    num_threads: int = 0
    previous_num_threads: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def physical_core_count() -> int:
    """Physical cores this process may run on (SMT siblings counted once); falls back to the logical count.

    Intra-op threads beyond the physical cores share one core's FMA units and only add synchronisation.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            siblings = (topology / "thread_siblings_list").read_text().strip()
            package = (topology / "physical_package_id").read_text().strip()
        except OSError:
            return max(len(allowed), 1)
        cores.add((package, siblings))
    return max(len(cores), 1)


def _default_threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return physical_core_count()


def _glibc():
    """The process's glibc, or None (musl, macOS, Windows): mallopt is a glibc extension."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError, TypeError):
        return None
    version.restype = ctypes.c_char_p
    return libc


def tune_cpu_runtime(
    num_threads: int | None = None,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
    arena_max: int | None = None,
) -> CpuTuning:
    """Configure glibc's allocator (mallopt through ctypes) and torch's intra-op threads for fast CPU inference.

    Args:
        num_threads: intra-op threads; default: `OMP_NUM_THREADS` when the environment sets it (the user's
            choice wins), else the physical cores available to this process.
        mmap_threshold / trim_threshold: glibc `M_MMAP_THRESHOLD` / `M_TRIM_THRESHOLD` in bytes (C int range).
        arena_max: glibc `M_ARENA_MAX`; default: the thread count (one arena per compute thread).

    Where glibc is absent this only sets the threads (and logs at debug level). Safe to call more than once.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not 0 <= value <= 2**31 - 1:
            raise ValueError(f"{name} must be in [0, 2**31 - 1] bytes (a C int for mallopt), got {value}")
    previous = torch.get_num_threads()
    threads = _default_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if arena_max is not None and arena_max < 1:
        raise ValueError(f"arena_max must be >= 1, got {arena_max}")
    libc = _glibc()
    tuning = CpuTuning(allocator="glibc" if libc is not None else "other", previous_num_threads=previous)
    if libc is None:
        logger.debug("no glibc in this process: allocator left as it is (use jemalloc/tcmalloc via LD_PRELOAD)")
    else:
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        settings = {
            "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, mmap_threshold),
            "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, trim_threshold),
            "M_ARENA_MAX": (M_ARENA_MAX, arena_max if arena_max is not None else threads),
        }
        for name, (parameter, value) in settings.items():
            if libc.mallopt(parameter, value) == 1:
                tuning.mallopt[name] = value
            else:
                tuning.failed.append(name)
                logger.debug("mallopt(%s, %d) was refused by this glibc", name, value)
    if threads != previous:
        torch.set_num_threads(threads)
    tuning.num_threads = torch.get_num_threads()
    logger.debug("CPU runtime tuned: %s", tuning)
    return tuning

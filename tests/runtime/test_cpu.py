"""`tune_cpu_runtime`: glibc keeps freed memory after it (checked on the process's resident set), threads, no-op paths."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from aaclip_hf.runtime import cpu
from aaclip_hf.runtime.cpu import physical_core_count, tune_cpu_runtime


# A fresh process mallocs 256 MiB, touches every page, frees it and reports how much of it is still resident.
# glibc's default serves it with mmap and unmaps it on free; after tuning it must stay in the heap.
PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    {setup}
    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 256 << 20
    before = rss()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    touched = rss()
    libc.free(block)
    print(json.dumps({{"touched": touched - before, "kept_after_free": rss() - before}}))
    """
)


def _probe(setup: str) -> dict:
    if not os.path.exists("/proc/self/status") or cpu._glibc() is None:
        pytest.skip("needs Linux with glibc")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_stays_resident_after_tuning_and_not_on_import():
    size = 256 << 20
    default = _probe("import aaclip_hf")  # importing the package must not tune anything
    tuned = _probe("import aaclip_hf; aaclip_hf.tune_cpu_runtime(num_threads=1)")
    assert default["touched"] >= 0.9 * size and tuned["touched"] >= 0.9 * size
    assert default["kept_after_free"] < 0.1 * size  # returned to the kernel (mmap'd, then unmapped)
    assert tuned["kept_after_free"] >= 0.9 * size  # kept in the heap for the next call


def test_tuning_reports_what_it_set():
    previous = torch.get_num_threads()
    try:
        tuning = tune_cpu_runtime(num_threads=1, arena_max=3)
        assert tuning.num_threads == torch.get_num_threads() == 1
        if tuning.allocator == "glibc":
            assert tuning.mallopt == {
                "M_MMAP_THRESHOLD": cpu.DEFAULT_MMAP_THRESHOLD,
                "M_TRIM_THRESHOLD": cpu.DEFAULT_TRIM_THRESHOLD,
                "M_ARENA_MAX": 3,
            }
            assert tuning.failed == []
    finally:
        torch.set_num_threads(previous)


def test_without_glibc_only_threads_change(monkeypatch, caplog):
    monkeypatch.setattr(cpu, "_glibc", lambda: None)
    previous = torch.get_num_threads()
    try:
        with caplog.at_level(logging.DEBUG, logger=cpu.__name__):
            tuning = tune_cpu_runtime(num_threads=1)
        assert tuning.allocator == "other" and tuning.mallopt == {} and tuning.num_threads == 1
        assert "no glibc" in caplog.text
    finally:
        torch.set_num_threads(previous)


def test_default_threads_follow_omp_num_threads_else_physical_cores(monkeypatch):
    previous = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert tune_cpu_runtime().num_threads == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert tune_cpu_runtime().num_threads == physical_core_count()
    finally:
        torch.set_num_threads(previous)
    assert 1 <= physical_core_count() <= (os.cpu_count() or 1)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_threads": 0}, "num_threads"),
        ({"mmap_threshold": 2**31}, "mmap_threshold"),
        ({"arena_max": 0}, "arena_max"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        tune_cpu_runtime(**kwargs)

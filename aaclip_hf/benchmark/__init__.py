"""AA-CLIP performance benchmarks: one command, one report (markdown + JSON), everything side by side.

    aaclip bench [--quick] [--output benchmarks/results] [--only vision,stage2] [--threads N]
    python -m aaclip_hf.benchmark ...                 (the same subcommand)
    aaclip bench --gpu ...                            (CUDA section only; see benchmarks/gpu.sh)

The app, split by concern:

- `presets`: the model sizes and iteration counts (`full`, `quick`, `smoke`) and the report's sections;
- `common`: what every worker shares: the peak memory of a region, the preset's random-weight model, timing;
- `workers_model`, `workers_training`, `workers_runtime`, `workers_int8`, `workers_gpu`, `metrics`: the
  measurements, grouped by what they measure; `worker` runs one of them in its own process (`python -m
  aaclip_hf.benchmark.worker`); `detect_profile` times the phases of one `aaclip detect` process;
- `runner`: the jobs of a run, one subprocess each, the machine description, merging with an earlier report;
- `goals` (`goals_runtime`) and `report` (`report_runtime`): the goals checked against the numbers, and the
  markdown report.

Every measurement runs in its own subprocess, so each starts from a clean allocator and its peak memory is its
own: the peak resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs` right before the measured
region; `ru_maxrss` elsewhere) minus the resident set just before it. Python-level tracing (tracemalloc) does
not see torch's buffers.

Timings are reported, never asserted; the goals are checked in the report with the reason and the remedy for
each one missed.
"""

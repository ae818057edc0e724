"""The performance goals, checked against a report's numbers: each with its measured value and, when missed,
why and what would close it. Timings are never asserted; a missed goal is a row of the report."""

from __future__ import annotations

from typing import Any


# Goal: the first call within 15 % of the steady state (batch 1, tune_cpu_runtime applied).
FIRST_CALL_GOAL = 1.15
# Goal: the per-image wall time of `aaclip detect` over 8 images, process start included, <= 1.4x the fp32 floor.
DETECT_FLOOR_GOAL = 1.4
# Goal: int8 >= 1.8x fp32 at batch 4, its maps correlated >= 0.99 with fp32's, AUROC within 0.5 points.
INT8_SPEEDUP_GOAL, INT8_CORRELATION_GOAL, INT8_AUROC_GOAL_POINTS = 1.8, 0.99, 0.5


def lookup(report: dict, *keys, default=None):
    """`report[k1][k2]...`, or `default` where a key is missing or a level is not a dict."""
    value: Any = report
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def attainable_peak(report: dict) -> float | None:
    """The best matmul throughput measured in the run (start or end): on a shared machine the lower one was
    measured under more contention, and a forward pass must not look faster than the machine can go."""
    values = [v for v in (lookup(report, "peak", "gflops"), lookup(report, "peak_end", "gflops")) if v]
    return max(values) if values else None


def _goal(goal: str, value: str, met: bool, reason: str = "", remedy: str = "") -> dict:
    return {"goal": goal, "value": value, "met": met, "reason": reason, "remedy": remedy}


# ----------------------------------------------------------------------------------------------
# model, metrics and training goals
# ----------------------------------------------------------------------------------------------


def _vision_goal(report: dict) -> dict | None:
    peak = attainable_peak(report)
    best = None
    for key in ("vision_sdpa", "vision_eager"):
        for batch, row in (lookup(report, key, "batches", default={}) or {}).items():
            if best is None or row["gflops_per_second"] > best[2]:
                best = (key.split("_")[1], batch, row["gflops_per_second"])
    if not (peak and best):
        return None
    fraction = best[2] / peak
    return _goal(
        "vision forward >= 85 % of the measured fp32 matmul peak",
        f"{100 * fraction:.0f} % ({best[2]:.1f} of {peak:.1f} GFLOP/s, {best[0]}, batch {best[1]})",
        fraction >= 0.85,
        "18 % of the FLOPs (ViT-L at 518 px) are attention matmuls over 64-wide heads, less efficient "
        "than the square peak matmul; softmax over heads x tokens^2 scores per layer, GELU, 2 layer "
        "norms and the adapters' norm rescale are memory-bound work the FLOP count does not credit; "
        "glibc's allocator page-faults the activations afresh on every call (docs/performance.md); "
        "other processes shared the 2 cores (load average above)",
        "the allocator setting, now applied by tune_cpu_runtime() in the CLI and the benchmarks (this "
        "row's run predates it; see the first-call row), torch.compile to fuse the elementwise chains, bf16 matmuls "
        "on AMX/AVX512-BF16 CPUs or a GPU (benchmarks/gpu.sh), an otherwise idle machine",
    )


def _parameters_goal(report: dict) -> dict:
    reduction = lookup(report, "save", "parameter_reduction") or (
        1 - report["parameters"]["inference_only_parameters"] / report["parameters"]["full_parameters"]
    )
    return _goal(
        "inference-only model >= 25 % fewer parameters",
        f"{100 * reduction:.1f} % fewer",
        reduction >= 0.25,
        "" if reduction >= 0.25 else "the text tower is small next to the vision tower of this preset",
    )


def _metrics_goal(report: dict) -> dict | None:
    metrics = report.get("metrics")
    if not (metrics and "speedup" in metrics):
        return None
    met = metrics["speedup"] >= 5 and metrics["max_abs_diff_vs_sklearn"] <= 1e-6
    return _goal(
        "pixel metrics >= 5x faster than sklearn AUROC+AP, equal to 1e-6",
        f"{metrics['speedup']:.1f}x, max diff {metrics['max_abs_diff_vs_sklearn']:.1e}",
        met,
        "" if met else "see the pixel metrics section (`python -m aaclip_hf.benchmark.metrics`)",
    )


def _stage1_goal(report: dict) -> dict | None:
    stage1 = report.get("stage1")
    if not (stage1 and "speedup" in stage1):
        return None
    met = stage1["speedup"] >= 4
    return _goal(
        "stage 1 (5 epochs) with cached frozen features >= 4x faster",
        f"{stage1['speedup']:.2f}x at {stage1['image_size']} px, N={stage1['num_images']}, batch "
        f"{stage1['batch_size']} (predicted {stage1['predicted_speedup_at_default_size']:.2f}x at the "
        "preset's full size)",
        met,
        ""
        if met
        else "the speed-up is bounded by E*(V+T)/(V+E*T) (E epochs, V = DPAM time per "
        "epoch, T = text time per epoch): T is a large share at small images or few images per class",
        ""
        if met
        else "larger images (V grows with the token count squared) or more images per class and "
        "step: the bound approaches E = 5",
    )


def _stage2_goal(report: dict) -> dict | None:
    plain, ckpt = report.get("stage2_plain"), report.get("stage2_checkpointing")
    if not (plain and ckpt and "seconds" in plain and "seconds" in ckpt):
        return None
    return _goal(
        "stage-2 step measured with and without activation checkpointing (no numeric goal)",
        f"memory {ckpt['memory']['peak_delta'] / plain['memory']['peak_delta']:.2f}x, time "
        f"{ckpt['seconds'] / plain['seconds']:.2f}x with checkpointing",
        True,
    )


def evaluate_goals(report: dict) -> list[dict]:
    """Every goal the report has the numbers for, in the report's order; the runtime goals last."""
    goals = [
        _vision_goal(report),
        _parameters_goal(report),
        _metrics_goal(report),
        _stage1_goal(report),
        _stage2_goal(report),
    ]
    return [goal for goal in goals if goal is not None] + runtime_goals(report)


# ----------------------------------------------------------------------------------------------
# runtime goals: first call, detect against the floor, int8, backends
# ----------------------------------------------------------------------------------------------


def best_int8(report: dict) -> tuple[str, dict] | None:
    """The int8 path `--quantize int8` uses on CPU (`DEFAULT_BACKEND`), else the faster one: its accuracy from the
    int8 row, its speed from the int8_speed row (the preset's full image size) where that was measured."""
    from aaclip_hf.runtime.backends import DEFAULT_BACKEND

    variants = lookup(report, "int8", "variants") or {}
    speed = lookup(report, "int8_speed", "variants") or {}
    rows = {name: row for name, row in variants.items() if name.endswith("int8")}
    if not rows:
        return None
    kept = f"{DEFAULT_BACKEND.get(('cpu', 'int8'), 'torch')}_int8"
    timing = speed if any(name in speed for name in rows) else rows
    name = (
        kept
        if kept in rows and kept in timing
        else min((n for n in rows if n in timing), key=lambda n: timing[n]["seconds_per_image"])
    )
    row = dict(rows[name])
    if timing is speed:
        row.update(
            speedup_vs_fp32=speed[name]["speedup_vs_fp32"],
            cpu_speedup_vs_fp32=speed[name]["cpu_speedup_vs_fp32"],
            speed_image_size=report["int8_speed"]["image_size"],
        )
    return name, row


def _first_call_goal(report: dict) -> dict | None:
    tuned, default = report.get("first_call_tuned") or {}, report.get("first_call_default") or {}
    if "first" not in tuned:
        return None
    ratio = tuned["first_over_steady"]
    contrast = (
        f"; default allocator {default['first']:.1f} s vs {default['steady']:.1f} s ({default['first_over_steady']:.2f}x)"
        if "first" in default
        else ""
    )
    if "first_over_steady_cpu" in tuned:
        contrast += f"; CPU time (robust to other processes) {tuned['first_over_steady_cpu']:.2f}x tuned"
        if "first_over_steady_cpu" in default:
            contrast += f", {default['first_over_steady_cpu']:.2f}x default"
    met = ratio <= FIRST_CALL_GOAL
    return _goal(
        "first call within 15 % of the steady state (tune_cpu_runtime, batch 1)",
        f"first {tuned['first']:.1f} s vs steady {tuned['steady']:.1f} s ({ratio:.2f}x){contrast}",
        met,
        ""
        if met
        else "the first call still grows the heap to the forward's peak (first-touch page faults, kept for "
        "later calls) and sets up oneDNN/sdpa kernels; other processes shared the 2 cores, so single "
        "calls vary by more than the goal's 15 %",
        ""
        if met
        else "one untimed warm-up call at start-up (the app and long-running services), an otherwise idle machine",
    )


def _detect_goal(report: dict) -> dict | None:
    detect = report.get("detect") or {}
    if "ratio_to_floor" not in detect:
        return None
    ratio = detect["ratio_to_floor"]
    met = ratio <= DETECT_FLOOR_GOAL
    return _goal(
        f"aaclip detect over {detect['num_images']} images, process start included, <= 1.4x the fp32 floor per image",
        f"{detect['seconds_per_image']:.2f} s/image vs floor {detect['floor_seconds_per_image']:.2f} s "
        f"({ratio:.2f}x; auto batch {detect['batch_size_auto']})",
        met,
        ""
        if met
        else "outside the FLOP count: the process start (importing torch and transformers), loading "
        "the weights, decoding and writing overlays; inside it the forward runs at 72-78 % of the matmul "
        "peak at best (attention over 64-wide heads, memory-bound norms/softmax/GELU); other "
        "processes shared the 2 cores",
        "" if met else "more images per process (start-up amortised), the int8 path (--quantize int8), a GPU",
    )


def _int8_misses(report: dict, row: dict) -> tuple[list[str], list[str], bool]:
    """Why the int8 goal was missed and what would close it, one entry per missed part; and whether it was met."""
    worst_auroc = max(abs(row["image_auroc_change_points"]), abs(row["pixel_auroc_change_points"]))
    speed_ok = row["speedup_vs_fp32"] >= INT8_SPEEDUP_GOAL
    corr_ok = row["map_correlation"] >= INT8_CORRELATION_GOAL
    auroc_ok = worst_auroc <= INT8_AUROC_GOAL_POINTS
    reasons, remedies = [], []
    if not speed_ok:
        reasons.append(
            f"speed {row['speedup_vs_fp32']:.2f}x is {INT8_SPEEDUP_GOAL - row['speedup_vs_fp32']:.2f}x short: only "
            "the linear layers (81 % of the FLOPs at 518 px) run int8; the attention matmuls (18 %) and the "
            "memory-bound softmax, GELU and norms stay fp32 and bound the gain (Amdahl), and every linear input is "
            "quantised per call (an extra pass over the activations); on a shared machine the wall-time ratio "
            "also carries the other processes' load (see the CPU-time ratio)"
        )
        remedies.append(
            "int8 attention (static quantisation with calibration images), fused int8 kernels (oneDNN/IPEX "
            "graph mode), an otherwise idle machine, or bf16 on AMX CPUs / a GPU"
        )
    if not corr_ok:
        reasons.append(f"map correlation {row['map_correlation']:.4f} below 0.99")
        remedies.append("keep the adapters and the last layers in fp32, or per-channel weight scales")
    if not auroc_ok:
        reasons.append(
            f"AUROC change {worst_auroc:.2f} points above 0.5 (image AUROC over {report['int8']['num_images']} "
            "images moves in steps of several points)"
        )
        remedies.append("a larger evaluation set to resolve sub-point changes; per-channel weight scales")
    return reasons, remedies, speed_ok and corr_ok and auroc_ok


def _int8_goal(report: dict) -> dict | None:
    best = best_int8(report)
    if not best:
        return None
    name, row = best
    reasons, remedies, met = _int8_misses(report, row)
    cpu_note = f" (CPU time {row['cpu_speedup_vs_fp32']:.2f}x)" if "cpu_speedup_vs_fp32" in row else ""
    size_note = f" at {report['int8']['image_size']} px" if "image_size" in report["int8"] else ""
    if "speed_image_size" in row:
        size_note = f" (speed at {row['speed_image_size']} px, accuracy{size_note})"
    return _goal(
        "int8 >= 1.8x fp32 at batch 4, map correlation >= 0.99, AUROC change <= 0.5 points",
        f"{name}{size_note}: {row['speedup_vs_fp32']:.2f}x{cpu_note}, correlation {row['map_correlation']:.4f}, image "
        f"AUROC {row['image_auroc_change_points']:+.2f} / pixel AUROC {row['pixel_auroc_change_points']:+.2f} "
        "points",
        met,
        "; ".join(reasons),
        "; ".join(remedies),
    )


def _backends_goal(report: dict) -> dict | None:
    backends = lookup(report, "backends", "backends") or {}
    if not backends:
        return None
    from aaclip_hf.runtime.backends import DEFAULT_BACKEND

    default = DEFAULT_BACKEND.get(("cpu", "none"), "torch")
    winners, names = [], set()
    for batch in lookup(report, "backends", "batches") or []:
        cells = [
            (name, row["batches"][str(batch)]["seconds_per_image"])
            for name, row in backends.items()
            if "seconds_per_image" in (row.get("batches", {}).get(str(batch)) or {})
        ]
        if cells:
            winner = min(cells, key=lambda cell: cell[1])
            names.add(winner[0])
            winners.append(f"batch {batch}: {winner[0]} ({winner[1]:.2f} s/image)")
    met = names <= {default}
    return _goal(
        "torch.compile and ONNX Runtime measured against eager fp32; the winner is the CPU default",
        "; ".join(winners) + f"; CPU fp32 default (`--backend auto`): {default}",
        met,
        ""
        if met
        else "kept eager torch: onnx's lead is 1.1-1.4x in CPU time at batch 4 and was not reproducible at "
        "batch 1 across runs (docs/performance.md, section 6), while the first run of every model pays the "
        "export (tens of seconds at 224 px, about 40 s and 1.2 GB of cache at 518 px) and the onnx tower "
        "lacks output_attentions, all hidden states and position interpolation",
        ""
        if met
        else "`--backend onnx` on long-running stations (the export is cached); make it the CPU default once "
        "an idle-machine run confirms the batch-1 gain",
    )


def runtime_goals(report: dict) -> list[dict]:
    """The runtime goals (first call, detect, int8, backends) the report has the numbers for."""
    goals = [_first_call_goal(report), _detect_goal(report), _int8_goal(report), _backends_goal(report)]
    return [goal for goal in goals if goal is not None]

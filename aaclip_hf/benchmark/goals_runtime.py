"""The runtime goals: start-up, the first call, `aaclip detect` from process start to exit against the fp32 floor,
overlays and writing, int8 (speed at the full image size, accuracy on the synthetic benchmark), `--dtype auto` and the fp32
backends. Each says what was measured and, when missed, by how much, why (from the report's own numbers) and what
would close it. Timings are never asserted; a missed goal is a row of the report."""

from __future__ import annotations

from typing import Any


# Goal: `aaclip --help`/`--version` no slower than a bare `import transformers`, and `import aaclip_hf` no slower
# than importing the transformers CLIP classes it registers (median wall seconds of the same run).
STARTUP_PAIRS = (
    ("aaclip --help", "import transformers"),
    ("aaclip --version", "import transformers"),
    ("import aaclip_hf", "import CLIP classes"),
)
# Goal: the first call within 15 % of the steady state (batch 1, tune_cpu_runtime applied).
FIRST_CALL_GOAL = 1.15
# Goal: `aaclip detect` over the preset's images (6), default flags, process start to exit, <= 1.25x the same run's
# fp32 floor (images x FLOPs / measured matmul peak).
DETECT_FLOOR_GOAL = 1.25
# Goal: drawing the overlays and writing every output cost under 5 % of the run (or overlap the next batch).
OVERLAY_SHARE_GOAL = 0.05
# Goal: int8 >= 1.8x the fp32 forward, its maps correlated >= 0.99 with fp32's, AUROC within 0.5 points.
INT8_SPEEDUP_GOAL, INT8_CORRELATION_GOAL, INT8_AUROC_GOAL_POINTS = 1.8, 0.99, 0.5
# The batch size the int8 speed goal is judged at (the CPU's automatic batch cap).
INT8_GOAL_BATCH = "4"


def lookup(report: dict, *keys, default=None):
    """`report[k1][k2]...`, or `default` where a key is missing or a level is not a dict."""
    value: Any = report
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def _goal(goal: str, value: str, met: bool, reason: str = "", remedy: str = "") -> dict:
    return {"goal": goal, "value": value, "met": met, "reason": reason, "remedy": remedy}


def _flags(report: dict) -> str:
    simd = lookup(report, "machine", "simd") or []
    return ", ".join(simd) or "no SIMD flags read"


def _startup_goal(report: dict) -> dict | None:
    medians = lookup(report, "startup", "median_seconds") or {}
    pairs = [(ours, theirs) for ours, theirs in STARTUP_PAIRS if ours in medians and theirs in medians]
    if not pairs:
        return None
    slower = [(ours, theirs) for ours, theirs in pairs if medians[ours] > medians[theirs]]
    return _goal(
        "aaclip --help and --version no slower than `import transformers`; `import aaclip_hf` no slower than "
        "importing the CLIP classes it registers",
        "; ".join(f"{ours} {medians[ours]:.2f} s vs {theirs} {medians[theirs]:.2f} s" for ours, theirs in pairs)
        + f" (medians of {lookup(report, 'startup', 'rounds')} alternating rounds; empty interpreter "
        f"{medians.get('python', float('nan')):.2f} s)",
        not slower,
        "; ".join(
            f"{ours} is {medians[ours] - medians[theirs]:.2f} s slower than {theirs}" for ours, theirs in slower
        ),
        "" if not slower else "see which modules load with `python -X importtime`",
    )


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
    best = lookup(detect, "runs", "fp32", "best")
    if not best:
        return None
    floor = detect["floor_seconds"]
    ratio = best["total_seconds"] / floor
    met = ratio <= DETECT_FLOOR_GOAL
    main = best["main_thread_seconds"]
    forward = main["forward"]
    outside = best["total_seconds"] - forward
    peak = max(detect["peak_gflops_before"], detect["peak_gflops_after"])
    efficiency = detect["num_images"] * detect["flops_per_image"] / forward / 1e9 / peak
    reason = (
        f"{ratio - DETECT_FLOOR_GOAL:.2f}x over: the forward alone takes {forward:.1f} s = {forward / floor:.2f}x the "
        f"floor (it runs at {100 * efficiency:.0f} % of the {peak:.0f} GFLOP/s matmul peak: attention over 64-wide "
        "heads, memory-bound softmax, GELU and norms), and the rest of the process "
        f"{outside:.1f} s = {outside / floor:.2f}x (imports {main['imports']:.1f} s, loading {main['load']:.1f} s, "
        f"preprocessing {main['preprocess']:.1f} s, maps {main['maps']:.1f} s, overlays and writing "
        f"{main['overlays'] + main['png'] + main['tables']:.1f} s, interpreter start and exit, output folder and "
        f"the rest {best['interpreter_seconds'] + best['other_seconds']:.1f} s); with the forward at "
        f"{100 * efficiency:.0f} % of the peak, 1.25x would leave "
        f"{max(DETECT_FLOOR_GOAL * floor - forward, 0):.1f} s for everything else"
    )
    return _goal(
        f"aaclip detect over {detect['num_images']} images, default flags, process start to exit, <= "
        f"{DETECT_FLOOR_GOAL}x the same run's fp32 floor",
        f"{best['total_seconds']:.1f} s vs floor {floor:.1f} s ({ratio:.2f}x; best of {detect['rounds']}, "
        f"auto batch {detect['batch_size_auto']}; CPU: {_flags(report)})",
        met,
        "" if met else reason,
        ""
        if met
        else "--quantize int8 (the int8 row below) or --dtype auto (bf16 where the CPU has it) go below the fp32 "
        "floor itself; in fp32, more images per process (start-up amortised) and an idle machine",
    )


def _overlay_goal(report: dict) -> dict | None:
    detect = report.get("detect") or {}
    best = lookup(detect, "runs", "fp32", "best")
    if not best or "overlay_and_writing_share" not in detect:
        return None
    share = detect["overlay_and_writing_share"]
    main = best["main_thread_seconds"]
    met = share <= OVERLAY_SHARE_GOAL
    return _goal(
        "overlays and writing overlap the next batch or cost < 5 % of the run",
        f"{100 * share:.1f} % (drawing {main['overlays']:.2f} s, PNG encoding and writing {main['png']:.2f} s, "
        f"tables {main['tables']:.3f} s of {best['total_seconds']:.1f} s)",
        met,
        "" if met else "the overlays are drawn and written on the main thread between batches",
        "" if met else "draw and write in a background thread while the next batch runs",
    )


def best_int8(report: dict) -> tuple[str, dict] | None:
    """The int8 path `--quantize int8` uses on CPU without calibration images (`DEFAULT_BACKEND`), else the
    fastest: its accuracy from the int8 row, its speed from the int8_speed row at `INT8_GOAL_BATCH` (the preset's
    full image size) where measured."""
    from aaclip_hf.runtime.backends import DEFAULT_BACKEND

    variants = lookup(report, "int8", "variants") or {}
    speed = lookup(report, "int8_speed", "batches", INT8_GOAL_BATCH) or lookup(report, "int8_speed", "variants") or {}
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


def judged_accuracy(row: dict) -> dict:
    """What the accuracy bounds are judged on for one path's row of the `int8` section: the lowest map correlation
    of its settings, and the largest AUROC change of the few-shot setting where it was measured (random weights
    leave the zero-shot scores near-tied, at chance, so their AUROC changes count swaps among ties), else of the
    zero-shot one."""
    settings = {"zero-shot": row, **({"few-shot": row["few_shot"]} if "few_shot" in row else {})}
    setting = "few-shot" if "few_shot" in row else "zero-shot"
    changes = {metric: settings[setting][f"{metric}_auroc_change_points"] for metric in ("image", "pixel")}
    metric = max(changes, key=lambda name: abs(changes[name]))
    return {
        "map_correlation": min(values["map_correlation"] for values in settings.values()),
        "auroc_change_points": changes[metric],
        "metric": metric,
        "setting": setting,
    }


def _changes(values: dict) -> str:
    return (
        f"image AUROC {values['image_auroc_change_points']:+.2f} / pixel AUROC "
        f"{values['pixel_auroc_change_points']:+.2f} points"
    )


def _int8_misses(report: dict, name: str, row: dict) -> tuple[list[str], list[str], bool]:
    """Why the int8 goal was missed and what would close it, one entry per missed part; and whether it was met."""
    accuracy = judged_accuracy(row)
    worst_auroc = abs(accuracy["auroc_change_points"])
    speed_ok = row["speedup_vs_fp32"] >= INT8_SPEEDUP_GOAL
    corr_ok = accuracy["map_correlation"] >= INT8_CORRELATION_GOAL
    auroc_ok = worst_auroc <= INT8_AUROC_GOAL_POINTS
    static = name.startswith("openvino") or "static" in name
    reasons, remedies = [], []
    if not speed_ok:
        what = (
            "the linear layers and Q K^T run int8; A V, softmax, GELU and the norms stay in floating point"
            if static
            else "only the linear layers (81 % of the FLOPs at 518 px) run int8, each input quantised per call; the "
            "attention matmuls (18 %) and the memory-bound softmax, GELU and norms stay fp32 (Amdahl)"
        )
        reasons.append(
            f"speed {row['speedup_vs_fp32']:.2f}x is {INT8_SPEEDUP_GOAL - row['speedup_vs_fp32']:.2f}x short on this "
            f"CPU ({_flags(report)}): {what}; on a shared machine the wall-time ratio also carries other processes' "
            "load (see the CPU-time ratio)"
        )
        remedies.append("a CPU with AMX or AVX512-VNNI int8, an otherwise idle machine, or a GPU")
    if not corr_ok:
        reasons.append(f"map correlation {accuracy['map_correlation']:.4f} below {INT8_CORRELATION_GOAL}")
        remedies.append("--calibration-images of your own normal parts (OpenVINO's static int8 calibrated on them)")
    if not auroc_ok:
        images = lookup(report, "int8", "num_images")
        anomalous = lookup(report, "int8", "num_anomalous")
        step = ""
        if accuracy["metric"] == "image" and images and anomalous and images > anomalous:
            step = (
                f" (image AUROC over {images} images moves in steps of "
                f"{100 / (anomalous * (images - anomalous)):.2f} points: one swapped pair)"
            )
        reasons.append(
            f"{accuracy['setting']} {accuracy['metric']} AUROC change {worst_auroc:.2f} points above "
            f"{INT8_AUROC_GOAL_POINTS}{step}"
        )
        remedies.append(
            "--calibration-images of your own normal parts (the openvino_int8_normals row); a larger evaluation set"
        )
    return reasons, remedies, speed_ok and corr_ok and auroc_ok


def _settings_note(row: dict) -> str:
    """The AUROC changes of each measured setting, the judged one first."""
    if "few_shot" not in row:
        return _changes(row)
    return f"few-shot {_changes(row['few_shot'])} (judged); zero-shot {_changes(row)}"


def _calibrated_note(report: dict) -> str:
    """What `--quantize int8 --calibration-images` gives: the calibrated path's speed and its accuracy when calibrated
    on the benchmark classes' own normal images (the `_normals` row)."""
    from aaclip_hf.runtime.backends import DEFAULT_BACKEND

    name = f"{DEFAULT_BACKEND.get(('cpu', 'int8+calibration'), 'torch')}_int8"
    row = lookup(report, "int8", "variants", f"{name}_normals")
    speed = lookup(report, "int8_speed", "batches", INT8_GOAL_BATCH, name)
    if not row or not speed:
        return ""
    return (
        f"; with your own normal images (--calibration-images): {name} {speed['speedup_vs_fp32']:.2f}x, map "
        f"correlation {judged_accuracy(row)['map_correlation']:.4f}, {_settings_note(row)}"
    )


def _int8_goal(report: dict) -> dict | None:
    best = best_int8(report)
    if not best:
        return None
    name, row = best
    reasons, remedies, met = _int8_misses(report, name, row)
    cpu_note = f" (CPU time {row['cpu_speedup_vs_fp32']:.2f}x)" if "cpu_speedup_vs_fp32" in row else ""
    size_note = f" at {report['int8']['image_size']} px" if "image_size" in report["int8"] else ""
    if "speed_image_size" in row:
        size_note = f" (speed at {row['speed_image_size']} px batch {INT8_GOAL_BATCH}, accuracy{size_note})"
    return _goal(
        f"int8 >= {INT8_SPEEDUP_GOAL}x the fp32 forward, map correlation >= {INT8_CORRELATION_GOAL}, AUROC change <= "
        f"{INT8_AUROC_GOAL_POINTS} points",
        f"{name}{size_note}: {row['speedup_vs_fp32']:.2f}x{cpu_note}, map correlation "
        f"{judged_accuracy(row)['map_correlation']:.4f}, {_settings_note(row)}{_calibrated_note(report)}; CPU: "
        f"{_flags(report)}",
        met,
        "; ".join(reasons),
        "; ".join(remedies),
    )


def _dtype_goal(report: dict) -> dict | None:
    """`--dtype auto`: what the run-time probe picked against what this run's forward timings and bf16 accuracy say."""
    from aaclip_hf.runtime.devices import choose_cpu_dtype

    speed = lookup(report, "int8_speed") or {}
    picked = speed.get("dtype_auto")
    cells = lookup(speed, "batches", INT8_GOAL_BATCH) or {}
    accuracy = lookup(report, "int8", "variants", "bf16")
    if not picked or "bf16" not in cells or "fp32" not in cells:
        return None
    seconds = {"float32": cells["fp32"]["seconds_per_image"], "bfloat16": cells["bf16"]["seconds_per_image"]}
    measured = None
    if accuracy:
        judged = judged_accuracy(accuracy)
        measured = {key: judged[key] for key in ("map_correlation", "auroc_change_points")}
    expected = choose_cpu_dtype(flags=speed.get("cpu_flags", []), seconds=seconds, accuracy=measured)
    wanted = str(expected.dtype).removeprefix("torch.")
    met = picked["dtype"] == wanted
    accuracy_note = (
        f", bf16 map correlation {measured['map_correlation']:.5f}, {judged_accuracy(accuracy)['setting']} AUROC "
        f"change {measured['auroc_change_points']:+.2f}"
        if measured
        else ""
    )
    return _goal(
        "--dtype auto: bf16 on CPUs with native bf16 when measured faster and within the accuracy bounds, else fp32",
        f"picked {picked['dtype']} ({picked['reason']}); this run's forward: bf16 "
        f"{seconds['float32'] / seconds['bfloat16']:.2f}x fp32 at batch {INT8_GOAL_BATCH}{accuracy_note}, so "
        f"{wanted} is right; flags seen: {', '.join(picked.get('flags') or []) or 'none'}",
        met,
        "" if met else f"the probe product's speed-up disagrees with the forward's ({expected.reason})",
        "" if met else "a larger probe, or a per-machine record of the measured forward",
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
        "torch.compile, ONNX Runtime and OpenVINO measured against eager fp32; the winner is the CPU default",
        "; ".join(winners) + f"; CPU fp32 default (`--backend auto`): {default}",
        met,
        ""
        if met
        else "kept eager torch for fp32: the exported backends' leads are within the run-to-run spread of a shared "
        "machine, while the first run of every model pays the export (tens of seconds, and 1.2 GB of cache at "
        "518 px) and every later run hashes the weights and checks the cached file (about a second at 518 px), and "
        "the exported towers lack output_attentions, all hidden states and position interpolation",
        ""
        if met
        else "`--backend openvino` (or onnx) on long-running stations, where the export is paid once; make it the "
        "CPU default once an idle-machine run shows a lead beyond the spread",
    )


def runtime_goals(report: dict) -> list[dict]:
    """The runtime goals the report has the numbers for."""
    goals = [
        _startup_goal(report),
        _first_call_goal(report),
        _detect_goal(report),
        _overlay_goal(report),
        _int8_goal(report),
        _dtype_goal(report),
        _backends_goal(report),
    ]
    return [goal for goal in goals if goal is not None]

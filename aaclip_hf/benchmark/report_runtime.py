"""The runtime sections of the markdown report: first call, `aaclip detect` phase by phase against the floor, int8
and bf16 accuracy and speed with the first run's set-up cost, `--dtype auto`, and the fp32 backends."""

from __future__ import annotations

import json

from .detect_phases import PHASES
from .goals_runtime import lookup


__all__ = ["runtime_markdown"]

# The phases of a detect run in the order they happen, less `decode` (it runs in the prefetch thread, overlapped).
DETECT_COLUMNS = tuple(phase for phase in PHASES if phase != "decode")


def _startup_section(report: dict) -> list[str]:
    startup = report.get("startup") or {}
    if "median_seconds" not in startup:
        return []
    lines = [
        "",
        f"## Start-up (a fresh interpreter per command, {startup['rounds']} rounds alternating)",
        "",
        "| command | median s | best s | all runs |",
        "|---|---|---|---|",
    ]
    for name, median in startup["median_seconds"].items():
        runs = ", ".join(f"{value:.2f}" for value in startup["seconds"][name])
        lines.append(f"| {name} | {median:.2f} | {startup['best_seconds'][name]:.2f} | {runs} |")
    lines += [
        "",
        "`aaclip` is the installed console script; `import CLIP classes` imports transformers' CLIPConfig, "
        "CLIPImageProcessor, CLIPModel, CLIPProcessor and CLIPTokenizer.",
    ]
    return lines


def _first_call_section(report: dict) -> list[str]:
    tuned, default = report.get("first_call_tuned") or {}, report.get("first_call_default") or {}
    if not ("first" in tuned or "first" in default):
        return []
    lines = [
        "",
        "## First call vs steady state (batch 1, a fresh process each)",
        "",
        "| allocator | wall s per call | first / steady (wall) | CPU s per call | first / steady (CPU) | "
        "minor page faults per call |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in (("glibc default", default), ("tune_cpu_runtime()", tuned)):
        if "first" in row:
            calls = ", ".join(f"{value:.2f}" for value in row["seconds"])
            cpu = ", ".join(f"{value:.1f}" for value in row.get("cpu_seconds", []))
            faults = ", ".join(f"{value:,}" for value in row.get("minor_page_faults", []))
            cpu_ratio = f"{row['first_over_steady_cpu']:.2f}x" if "first_over_steady_cpu" in row else "-"
            lines.append(
                f"| {label} | {calls} | {row['first_over_steady']:.2f}x | {cpu or '-'} | {cpu_ratio} | {faults or '-'} |"
            )
        elif row:
            lines.append(f"| {label} | {row.get('error')} | | | | |")
    lines += [
        "",
        "CPU time is user + sys of all the process's threads: it hardly changes when other processes share "
        "the cores, wall time does. Each minor page fault maps (and the kernel zeroes) a fresh 4 KiB page.",
    ]
    if tuned.get("tuning"):
        lines += [
            "",
            f"Tuning applied: `{json.dumps(tuned['tuning']['mallopt'])}`, {tuned['tuning']['num_threads']} threads.",
        ]
    return lines


def _detect_row(label: str, run: dict, floor: float) -> str:
    main = run["main_thread_seconds"]
    phases = " | ".join(f"{main[name]:.2f}" for name in DETECT_COLUMNS)
    return (
        f"| {label} | {run['total_seconds']:.1f} | {run['total_seconds'] / floor:.2f}x | "
        f"{run.get('cpu_seconds', float('nan')):.1f} | {run['interpreter_seconds']:.2f} | {phases} | "
        f"{run['other_seconds']:.2f} |"
    )


def _detect_section(report: dict) -> list[str]:
    detect = report.get("detect") or {}
    if not lookup(detect, "runs", "fp32", "best"):
        return []
    peak = max(detect["peak_gflops_before"], detect["peak_gflops_after"])
    floor = detect["floor_seconds"]
    lines = [
        "",
        f"## `aaclip detect` over {detect['num_images']} images ({detect['width']}x{detect['height']} PNG), each run "
        "a fresh process from start to exit",
        "",
        f"fp32 floor: {detect['num_images']} x {detect['flops_per_image'] / 1e9:.1f} GFLOP / {peak:.1f} GFLOP/s (the "
        f"matmul peak measured in the same worker, before and after the runs) = **{floor:.1f} s**. Auto batch "
        f"{detect['batch_size_auto']}. Best of {detect['rounds']} round(s), the runs alternating; the first run of "
        "a variant starts from an empty cache (export and quantisation included).",
        "",
        "| run | wall s | / floor | CPU s | interpreter | " + " | ".join(DETECT_COLUMNS) + " | other |",
        "|---|---|---|---|---|" + "---|" * len(DETECT_COLUMNS) + "---|",
    ]
    for label, row in detect["runs"].items():
        name = "fp32, default flags" if label == "fp32" else f"{label} ({' '.join(row['best'].get('flags', []))})"
        walls = ", ".join(f"{value:.1f}" for value in row["wall_seconds"])
        lines.append(_detect_row(f"{name}; all runs {walls} s", row["best"], floor))
    for label, run in (detect.get("first_runs") or {}).items():
        lines.append(_detect_row(f"{label}, first run (empty cache)", run, floor))
    lines += [
        "",
        "Phases on the main thread, in seconds: imports = the modules the command needs; load = the checked "
        "loader; backend = export/quantisation or the cache; preprocess = resize and normalise; forward = the model; "
        "maps = post-processing; overlays = drawing; png = encoding and writing the pictures; tables = JSON/CSV; "
        "other = argument parsing, output folder, interpreter exit. Decoding runs in a prefetch thread, overlapped.",
    ]
    return lines


def _setup(table: dict, name: str) -> str:
    cold, warm = lookup(table, "setup_seconds", name), lookup(table, "warm_setup_seconds", name)
    if cold is None:
        return "-"
    return f"{cold:.1f} s" + (f" / {warm:.1f} s" if warm is not None else "")


def _int8_section(report: dict) -> list[str]:
    int8 = report.get("int8") or {}
    if "variants" not in int8:
        return []
    lines = [
        "",
        f"## int8 and bf16 vs fp32: accuracy (same weights, {int8['num_images']} synthetic test images at "
        f"{int8.get('image_size', '?')} px, {int8.get('num_anomalous', '?')} anomalous, batch {int8['batch_size']}, "
        "interleaved)",
        "",
        "| path | s/image | speed-up (wall / CPU time) | max / mean abs map diff | map correlation | "
        "image AUROC (change) | pixel AUROC (change) | set-up: first run / from cache |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in int8["variants"].items():
        lines.append(
            f"| {name} | {row['seconds_per_image']:.3g} | {row['speedup_vs_fp32']:.2f}x / "
            f"{row.get('cpu_speedup_vs_fp32', float('nan')):.2f}x | "
            f"{row['max_abs_map_diff']:.3g} / {row['mean_abs_map_diff']:.3g} | {row['map_correlation']:.5f} | "
            f"{100 * row['image_auroc']:.2f} ({row['image_auroc_change_points']:+.2f}) | "
            f"{100 * row['pixel_auroc']:.2f} ({row['pixel_auroc_change_points']:+.2f}) | {_setup(int8, name)} |"
        )
    for name, error in (int8.get("errors") or {}).items():
        lines.append(f"| {name} | {error} | | | | | | |")
    lines += [
        "",
        f"Maps are the summed anomaly maps at the model's input size (fp32 range "
        f"{int8['variants']['fp32']['map_range_fp32']:.3g}); {int8['num_pixels']:,} pixels, "
        f"{int8['anomalous_pixels']:,} anomalous. Random weights leave the zero-shot scores uninformative (image "
        "AUROC near chance, pixel AUROC inverted) and near-tied, so their changes count swaps among ties. Static int8 "
        "paths are calibrated on the default pictures (runtime/calibration.py); "
        f"openvino_int8_normals on {int8.get('calibration_normals', '?')} normal training images of the benchmark's "
        "classes (what passing your own good images gives).",
    ]
    few_shot = {name: row["few_shot"] for name, row in int8["variants"].items() if "few_shot" in row}
    if few_shot:
        lines += [
            "",
            f"Few-shot, from the same forward calls: each class's bank of {int8.get('references_per_class', '?')} "
            "normal training images, built once by the fp32 model (as `aaclip add-references` stores it); maps are "
            "the anomaly probability at the model's input size. The bank's nearest-neighbour distance separates "
            "images even with random weights, so these AUROCs carry signal and their changes are what the int8 "
            "goal is judged on.",
            "",
            "| path | max / mean abs map diff | map correlation | image AUROC (change) | pixel AUROC (change) |",
            "|---|---|---|---|---|",
        ]
        for name, row in few_shot.items():
            lines.append(
                f"| {name} | {row['max_abs_map_diff']:.3g} / {row['mean_abs_map_diff']:.3g} | "
                f"{row['map_correlation']:.5f} | {100 * row['image_auroc']:.2f} ({row['image_auroc_change_points']:+.2f})"
                f" | {100 * row['pixel_auroc']:.2f} ({row['pixel_auroc_change_points']:+.2f}) |"
            )
    return lines


def _int8_speed_section(report: dict) -> list[str]:
    speed = report.get("int8_speed") or {}
    batches = speed.get("batches") or {}
    if not batches:
        return []
    sizes = list(batches)
    names = list(batches[sizes[0]])
    header = " | ".join(f"batch {b}: s/image (wall / CPU speed-up)" for b in sizes)
    lines = [
        "",
        f"### Speed at {speed['image_size']} px (same weights, best of {speed['rounds']} interleaved round(s) per "
        "batch size)",
        "",
        f"| path | {header} | set-up: first run / from cache |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    for name in names:
        cells = []
        for batch in sizes:
            cell = batches[batch].get(name)
            cells.append(
                "-"
                if cell is None
                else f"{cell['seconds_per_image']:.2f} ({cell['speedup_vs_fp32']:.2f}x / "
                f"{cell['cpu_speedup_vs_fp32']:.2f}x)"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_setup(speed, name)} |")
    for name, error in (speed.get("errors") or {}).items():
        lines.append(f"| {name} | {error} |" + " |" * len(sizes))
    if speed.get("calibration_images"):
        counts = ", ".join(f"{name} {count}" for name, count in speed["calibration_images"].items())
        lines += ["", f"Calibration pictures where not the default: {counts} (memory; speed does not depend on them)."]
    choice = speed.get("dtype_auto")
    if choice:
        lines += [
            "",
            f"`--dtype auto` on this machine picked **{choice['dtype']}**: {choice['reason']} (CPU flags seen: "
            f"{', '.join(choice.get('flags') or []) or 'none'}).",
        ]
    return lines


def _backend_cell(cell: dict) -> str:
    if "seconds_per_image" not in cell:
        return cell.get("error", "-")
    cpu = cell.get("cpu_speedup_vs_eager")
    return (
        f"{cell['first_call_seconds']:.1f} s / {cell['seconds_per_image']:.3g} "
        f"({cell.get('speedup_vs_eager', float('nan')):.2f}x" + (f"; CPU {cpu:.2f}x)" if cpu is not None else ")")
    )


def _backends_section(report: dict) -> list[str]:
    backends = lookup(report, "backends", "backends") or {}
    if not backends:
        return []
    batches = report["backends"]["batches"]
    header = " | ".join(f"batch {b}: first call / steady s/image (vs eager)" for b in batches)
    lines = [
        "",
        f"## Backends (fp32, {report['backends'].get('image_size', '?')} px)",
        "",
        f"| backend | set-up | {header} |",
        "|---|---|" + "---|" * len(batches),
    ]
    for name, row in backends.items():
        if "error" in row:
            lines.append(f"| {name} | {row['error']} |" + " |" * len(batches))
            continue
        cells = [_backend_cell(row["batches"].get(str(b)) or {}) for b in batches]
        lines.append(f"| {name} | {row['setup_seconds']:.1f} s | " + " | ".join(cells) + " |")
    lines += [
        "",
        "set-up: torch = none; onnx and openvino = export or conversion once (cached by weights hash) + session; "
        "compile = wrapping, its compile cost is in each batch's first call (one compilation per batch shape).",
    ]
    return lines


def runtime_markdown(report: dict) -> list[str]:
    """The runtime sections of the report: start-up, first call, detect, int8 (accuracy and speed), backends."""
    return (
        _startup_section(report)
        + _first_call_section(report)
        + _detect_section(report)
        + _int8_section(report)
        + _int8_speed_section(report)
        + _backends_section(report)
    )

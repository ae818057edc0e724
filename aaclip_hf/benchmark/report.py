"""The markdown report: `report.md` from the numbers of `report.json` (goals included), and `report_gpu.md`'s
tables. Each section renders only when its numbers are there, so a partial report (written after every job)
reads as one."""

from __future__ import annotations

from .goals import attainable_peak, lookup
from .metrics import to_markdown as metrics_markdown
from .report_runtime import runtime_markdown


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


# ----------------------------------------------------------------------------------------------
# header, merge note, goals, FLOPs
# ----------------------------------------------------------------------------------------------


def _header(report: dict) -> list[str]:
    m = report["machine"]
    return [
        f"# AA-CLIP benchmark report ({report['preset']} preset)",
        "",
        f"Model: {report['model']}, fp32, random weights. Machine: {m['cpu']} ({', '.join(m['simd'])}), "
        f"{m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} threads"
        f"{', CUDA: ' + m['cuda'] if m['cuda'] else ', no GPU'}. Started {report['started']}, total "
        f"{report['total_seconds'] / 60:.1f} min; load average {report['load_average_start'][0]:.1f} at start, "
        f"{report['load_average_end'][0]:.1f} at end (above the core count means other processes shared the CPU "
        "and every time below is inflated).",
        "",
        "Memory = peak resident set during the measured region minus the resident set just before it "
        "(`VmHWM` reset per region; each job is its own process).",
    ]


def _merged_note(report: dict) -> list[str]:
    """Which sections a `--merge` run kept from earlier runs, with those runs' load averages where known."""
    merged = report.get("merged_from")
    if not merged:
        return []
    runs: dict[str, list[str]] = {}
    for key in merged["sections"]:
        runs.setdefault((report.get("section_runs") or {}).get(key, merged["started"]), []).append(key)
    loads = merged.get("runs") or {}

    def load_note(started: str) -> str:
        info = loads.get(started) or {}
        if not info.get("load_average_start"):
            return ""
        return (
            f" (load average {info['load_average_start'][0]:.1f} at its start, "
            f"{info['load_average_end'][0]:.1f} at its end)"
        )

    earlier = "; ".join(
        f"{', '.join(keys)} from the run started {started}{load_note(started)}" for started, keys in runs.items()
    )
    return [
        "",
        f"Merged (`--merge`): {earlier}; every other section is from this run. Each ratio is measured side by "
        "side inside one run (one worker process).",
    ]


def _goals_table(report: dict) -> list[str]:
    lines = [
        "",
        "## Goals",
        "",
        "| goal | measured | met | reason if missed | what would close it |",
        "|---|---|---|---|---|",
    ]
    for goal in report["goals"]:
        lines.append(
            f"| {goal['goal']} | {goal['value']} | {'yes' if goal['met'] else '**no**'} | {goal['reason']} | "
            f"{goal['remedy']} |"
        )
    return lines


def _flops_section(report: dict) -> list[str]:
    flops = report["flops"]["vision_forward_per_image"]
    lines = ["", "## FLOPs per image (analytic, matches `FlopCounterMode`)", "", "| term | GFLOP |", "|---|---|"]
    lines += [f"| {k} | {v / 1e9:.4g} |" for k, v in flops["terms"].items()]
    lines += [
        f"| **total** | **{flops['total'] / 1e9:.1f}** |",
        f"| (not counted: norms, softmax, GELU, residuals; estimate) | {flops['elementwise_estimate'] / 1e9:.1f} |",
    ]
    text = report["flops"]["text_anchors_per_class_77_tokens"]
    lines += [
        "",
        f"Recomputing one class's anchors (16 prompts x 77 tokens, the reference's padding): "
        f"{text['total'] / 1e9:.1f} GFLOP.",
    ]
    return lines


# ----------------------------------------------------------------------------------------------
# vision forward, anchors, inference-only model
# ----------------------------------------------------------------------------------------------


def _vision_section(report: dict) -> list[str]:
    lines: list[str] = []
    peak = attainable_peak(report)
    if peak:
        lines += [
            "",
            "## Vision forward (inference, stored anchors)",
            "",
            f"fp32 matmul peak: **{peak:.1f} GFLOP/s** ({report['peak']['matrix_size']}^2 matrices, best of "
            f"{report['settings']['matmul_repeats']}; the higher of {report['peak']['gflops']:.1f} GFLOP/s "
            "before the forward passes"
            + (
                f" and {report['peak_end']['gflops']:.1f} GFLOP/s at the end of the run"
                if "gflops" in (report.get("peak_end") or {})
                else ""
            )
            + ").",
            "",
        ]
    if report.get("vision_sdpa") or report.get("vision_eager"):
        lines += [
            "| attention | batch | s/image | GFLOP/s | % of matmul peak | peak memory (delta) |",
            "|---|---|---|---|---|---|",
        ]
    for key in ("vision_sdpa", "vision_eager"):
        part = report.get(key) or {}
        if "error" in part:
            lines.append(f"| {key} | - | {part['error']} | | | |")
        for batch, row in (part.get("batches") or {}).items():
            pct = f"{100 * row['gflops_per_second'] / peak:.0f} %" if peak else "-"
            lines.append(
                f"| {part['attn']} | {batch} | {row['seconds_per_image']:.2f} | {row['gflops_per_second']:.1f} | "
                f"{pct} | {_gib(row['memory']['peak_delta'])} |"
            )
    if report.get("vision_eager"):
        lines += [
            "",
            f"Eager attention runs at batch {', '.join(map(str, report['settings']['eager_batches']))} only "
            "(time budget); warm-up iterations: "
            f"{report['settings']['warmup']}, timed iterations: {report['settings']['iterations']}.",
        ]
    return lines


def _anchors_section(report: dict) -> list[str]:
    anchors = lookup(report, "vision_sdpa", "anchors")
    if not anchors:
        return []
    return [
        "",
        "## Full model: anchors cached vs recomputed per call (batch 1, sdpa)",
        "",
        "| anchors | s/call | GFLOP/call |",
        "|---|---|---|",
        f"| stored (cached) | {anchors['seconds_cached']:.2f} | {anchors['flops_cached'] / 1e9:.0f} |",
        f"| recomputed ({anchors['prompt_tokens']} tokens/prompt) | {anchors['seconds_recomputed']:.2f} | "
        f"{anchors['flops_recomputed'] / 1e9:.0f} |",
        f"| recomputed, reference padding to 77 tokens (FLOPs only) | - | "
        f"{anchors['flops_recomputed_reference_77_tokens'] / 1e9:.0f} |",
        "",
        f"Ratio recomputed / cached: **{anchors['ratio']:.2f}x**; max |map difference| {anchors['max_abs_diff']:.1e}.",
    ]


def _references_section(report: dict) -> list[str]:
    refs = lookup(report, "vision_sdpa", "references")
    if not refs:
        return []
    return [
        "",
        f"## Few-shot references: the bank and its search (batch 1, {refs['shots']}-shot, sdpa)",
        "",
        "| bank rows / level | bank size | build once (s) | zero-shot forward (s) | few-shot forward (s) | "
        "search (s) | search / forward |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {refs['bank_rows_per_level']} | {refs['bank_bytes'] / 2**20:.1f} MiB | {refs['seconds_bank']:.2f} | "
        f"{refs['seconds_zero_shot']:.2f} | {refs['seconds_few_shot']:.2f} | {refs['seconds_search']:.3f} | "
        f"{100 * refs['search_share']:.1f} % |",
        "",
        f"The search compares every patch with every bank row per level ({refs['flops_search'] / 1e9:.1f} GFLOP), "
        f"{refs['chunk_size']} rows at a time (`reference_chunk_size`), so its extra memory stays below "
        "batch x patches x chunk floats whatever the bank's size.",
    ]


def _inference_only_section(report: dict) -> list[str]:
    save = report.get("save")
    if not (save and "full" in save):
        return []
    full, lean = report.get("load_full") or {}, report.get("load_inference_only") or {}
    lines = [
        "",
        "## Inference-only model (text tower dropped, anchors kept)",
        "",
        "| model | parameters | folder size | from_pretrained | + touching every weight | memory (delta) |",
        "|---|---|---|---|---|---|",
    ]
    for name, load in (("full", full), ("inference_only", lean)):
        lines.append(
            f"| {name} | {save[name]['parameters'] / 1e6:.1f} M | {_gib(save[name]['folder_bytes'])} | "
            f"{load.get('load_seconds', float('nan')):.2f} s | "
            f"{load.get('load_and_touch_seconds', float('nan')):.2f} s | "
            f"{_gib(lookup(load, 'memory', 'peak_delta'))} |"
        )
    lines += [
        "",
        "`from_pretrained` memory-maps the safetensors file, so it returns before the weights are read; "
        "the memory column is measured after every weight has been read once (paged in).",
        "",
        f"{100 * save['parameter_reduction']:.1f} % fewer parameters. The inference-only folder loaded "
        f"and ran through the {lean.get('ran_through', '?')} in {lean.get('run_seconds', float('nan')):.2f} s "
        f"(anomaly map {lean.get('anomaly_map_shape')} for a 400x300 image, score {lean.get('score', float('nan')):.3f}).",
    ]
    return lines


# ----------------------------------------------------------------------------------------------
# pixel metrics and training
# ----------------------------------------------------------------------------------------------


def _metrics_section(report: dict) -> list[str]:
    metrics = report.get("metrics")
    if not metrics:
        return []
    lines = ["", "## Pixel metrics, one MVTec-sized class", ""]
    lines.append(metrics["error"] if "error" in metrics else metrics_markdown(metrics))
    return lines


def _stage1_section(report: dict) -> list[str]:
    stage1 = report.get("stage1")
    if not (stage1 and "speedup" in stage1):
        return []
    return [
        "",
        f"## Stage 1: {stage1['epochs']} epochs, {stage1['num_images']} images at {stage1['image_size']} px, "
        f"batch {stage1['batch_size']}",
        "",
        "| frozen DPAM features | total s | peak memory (delta) |",
        "|---|---|---|",
        f"| recomputed every step | {stage1['seconds_recomputed']:.1f} | {_gib(stage1['memory_recomputed']['peak_delta'])} |",
        f"| cached after epoch 1 | {stage1['seconds_cached']:.1f} | {_gib(stage1['memory_cached']['peak_delta'])} |",
        "",
        f"Speed-up **{stage1['speedup']:.2f}x**; the two runs' losses differ by at most "
        f"{stage1['max_abs_loss_diff']:.1e} (the cache is exact). DPAM features cost "
        f"{stage1['dpam_seconds_per_image']:.2f} s/image, a text step {stage1['text_seconds_per_step']:.2f} s; "
        f"scaled by FLOPs ({stage1['flop_scale_to_default_size']:.1f}x) to the preset's full image size the "
        f"same loop would gain {stage1['predicted_speedup_at_default_size']:.2f}x (prediction, not measured).",
    ]


def _stage2_section(report: dict) -> list[str]:
    plain, ckpt = report.get("stage2_plain"), report.get("stage2_checkpointing")
    if not (plain or ckpt):
        return []
    lines = [
        "",
        "## Stage 2: one training step (adapters + heads trainable, backbone frozen)",
        "",
        "| activation checkpointing | batch | s/step | peak memory (delta) | loss | grad norm |",
        "|---|---|---|---|---|---|",
    ]
    for part in (plain, ckpt):
        if part and "seconds" in part:
            lines.append(
                f"| {'on' if part['checkpointing'] else 'off'} | {part['batch_size']} | {part['seconds']:.1f} | "
                f"{_gib(part['memory']['peak_delta'])} | {part['loss']:.6f} | {part['grad_norm']:.6e} |"
            )
        elif part:
            lines.append(f"| ? | - | {part.get('error')} | | | |")
    return lines


# ----------------------------------------------------------------------------------------------
# the whole report, and the GPU section
# ----------------------------------------------------------------------------------------------


def to_markdown(report: dict) -> str:
    """`report.md`: header, goals, FLOPs, then one section per measured part, the raw-numbers pointer last."""
    lines = _header(report) + _merged_note(report) + _goals_table(report) + _flops_section(report)
    lines += _vision_section(report) + _anchors_section(report) + _references_section(report)
    lines += _inference_only_section(report)
    lines += _metrics_section(report) + _stage1_section(report) + _stage2_section(report)
    lines += runtime_markdown(report)
    gpu = report.get("gpu")
    if gpu:
        lines += ["", gpu_markdown(gpu)]
    lines += ["", "Raw numbers: `report.json`; worker logs: `bench.log`."]
    return "\n".join(lines) + "\n"


def gpu_markdown(gpu: dict) -> str:
    """The GPU report (`benchmarks/gpu.sh`): forward throughput table, stage-2 run with its loss curve."""
    if "error" in gpu:
        return f"## GPU\n\n{gpu['error']}\n"
    lines = [
        f"## GPU: {gpu['device']} (torch {gpu.get('torch', '?')})",
        "",
        "| dtype | batch | ms/image | images/s | TFLOP/s | peak allocated |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in gpu["forward"].items():
        dtype, _, batch = key.partition("/")
        if "error" in row:
            lines.append(f"| {dtype} | {batch or '-'} | {row['error']} | | | |")
        else:
            lines.append(
                f"| {dtype} | {batch} | {row['seconds_per_image'] * 1e3:.2f} | {row['images_per_second']:.1f} | "
                f"{row['tflops']:.3g} | {_gib(row['peak_allocated'])} |"
            )
    stage2 = gpu.get("stage2") or {}
    if "loss_curve" in stage2:
        curve = ", ".join(f"{value:.4f}" for value in stage2["loss_curve"])
        lines += [
            "",
            f"### Stage 2: {stage2['steps']} steps, batch {stage2['batch_size']}, {stage2['precision']}",
            "",
            f"- images/s (after the warm-up steps): **{stage2['images_per_second']:.1f}**",
            f"- peak allocated: {_gib(stage2['peak_allocated'])}",
            f"- step seconds: first {stage2['step_seconds'][0]:.3f}, last {stage2['step_seconds'][-1]:.3f}",
            f"- loss curve: {curve}",
        ]
    return "\n".join(lines) + "\n"

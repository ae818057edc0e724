"""Benchmark: the exact metrics on an MVTec-sized class vs scikit-learn (also the `metrics` worker).

Builds ``num_maps`` float32 score maps of ``size`` x ``size`` (≈1.07e8 pixels at the defaults,
like a large MVTec AD class at 518 px), blob-shaped defect masks on about half of them and
smooth, correlated scores (a coarse patch-grid field upsampled bilinearly plus a blurred
defect response). Times our AUROC + AP + F1-max + AUPRO (one call) against sklearn's
``roc_auc_score`` + ``average_precision_score`` alone, checks they agree, and reports peak
traced memory (tracemalloc; numpy reports its buffers to it).

    python -m aaclip_hf.benchmark.metrics [--num-maps 400] [--size 518] [--seed 0] [--no-f1-check]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from aaclip_hf.evaluation.anomaly_metrics import exact_metrics as M

from .common import PeakMemory


def make_class(
    num_maps: int = 400,
    size: int = 518,
    seed: int = 0,
    anomalous_fraction: float = 0.5,
    grid: int = 37,
    max_blobs: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic class: (maps float32 (N, size, size), masks bool (N, size, size))."""
    rng = np.random.default_rng(seed)
    maps = np.empty((num_maps, size, size), dtype=np.float32)
    masks = np.zeros((num_maps, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in tqdm(range(num_maps), desc="synthetic class", leave=False):
        if rng.random() < anomalous_fraction:
            # Irregular blobs: rotated ellipses whose boundary is warped by low-frequency noise.
            warp = ndimage.zoom(rng.normal(size=(8, 8)).astype(np.float32), size / 8, order=1)[:size, :size]
            for _ in range(int(rng.integers(1, max_blobs + 1))):
                cy, cx = rng.uniform(0.15, 0.85, 2)
                ay, ax = rng.uniform(0.02, 0.15, 2)
                th = rng.uniform(0, np.pi)
                u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / ax
                v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / ay
                masks[i] |= u * u + v * v + 0.3 * warp < 1.0
        coarse = rng.normal(size=(grid, grid)).astype(np.float32)
        field = ndimage.zoom(coarse, size / grid, order=1)[:size, :size]
        response = ndimage.gaussian_filter(masks[i].astype(np.float32), sigma=size / 64)
        maps[i] = 0.5 * field + 2.0 * response + 0.2 * rng.standard_normal((size, size), dtype=np.float32)
    return maps, masks


def _timed(fn, *args, **kwargs) -> tuple[Any, float, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def _sklearn_roc_ap(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s)}


def _sklearn_f1(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * p * r / (p + r)
    return float(np.nanmax(f))


def run(num_maps: int = 400, size: int = 518, seed: int = 0, check_f1: bool = True) -> dict[str, Any]:
    """Measure and return timings (s), peak traced memory (bytes) and max |ours - sklearn|."""
    maps, masks = make_class(num_maps, size, seed)
    n = maps.size
    ours, t_ours, mem_ours = _timed(M.pixel_metrics, maps, masks)
    cflow, t_cflow, mem_cflow = _timed(M.pixel_metrics, maps, masks, aupro_variant="cflow")
    y, s = masks.ravel(), maps.ravel()
    ref, t_sk, mem_sk = _timed(_sklearn_roc_ap, y, s)
    diffs = {
        "auroc": abs(ours["pixel_auroc"] - ref["auroc"]),
        "ap": abs(ours["pixel_ap"] - ref["ap"]),
    }
    t_sk_f1 = None
    if check_f1:
        f1_ref, t_sk_f1, _ = _timed(_sklearn_f1, y, s)
        diffs["f1_max"] = abs(ours["pixel_f1_max"] - f1_ref)
    return {
        "num_pixels": n,
        "anomalous_maps": int(masks.any(axis=(1, 2)).sum()),
        "anomalous_pixel_fraction": float(masks.mean()),
        "seconds_ours_mvtec": t_ours,
        "seconds_ours_cflow": t_cflow,
        "seconds_sklearn_auroc_ap": t_sk,
        "seconds_sklearn_pr_curve_f1": t_sk_f1,
        "speedup": t_sk / t_ours,
        "peak_bytes_ours_mvtec": mem_ours,
        "peak_bytes_ours_cflow": mem_cflow,
        "peak_bytes_sklearn_auroc_ap": mem_sk,
        "max_abs_diff_vs_sklearn": max(diffs.values()),
        "abs_diff": diffs,
        "ours": ours,
        "ours_cflow_aupro": cflow["pixel_aupro"],
    }


def worker_metrics(preset: dict) -> dict:
    """Pixel metrics of one MVTec-sized class: ours (AUROC+AP+F1-max+AUPRO) vs sklearn (AUROC+AP)."""
    with PeakMemory() as memory:
        out = run(**preset["metrics"])
    out["memory"] = memory.to_dict()
    return out


def to_markdown(r: dict[str, Any]) -> str:
    gib = 1024**3
    rows = [
        (
            "pixels",
            f"{r['num_pixels']:,} ({r['anomalous_maps']} defective maps, "
            f"{100 * r['anomalous_pixel_fraction']:.2f}% anomalous pixels)",
        ),
        (
            "ours: AUROC+AP+F1-max+AUPRO (mvtec)",
            f"{r['seconds_ours_mvtec']:.2f} s, peak {r['peak_bytes_ours_mvtec'] / gib:.2f} GiB",
        ),
        (
            "ours: same, AUPRO cflow",
            f"{r['seconds_ours_cflow']:.2f} s, peak {r['peak_bytes_ours_cflow'] / gib:.2f} GiB",
        ),
        (
            "sklearn: roc_auc_score+average_precision_score",
            f"{r['seconds_sklearn_auroc_ap']:.2f} s, peak {r['peak_bytes_sklearn_auroc_ap'] / gib:.2f} GiB",
        ),
        ("speed-up vs sklearn", f"{r['speedup']:.1f}x"),
        (
            "max abs diff vs sklearn",
            f"{r['max_abs_diff_vs_sklearn']:.2e} ({', '.join(f'{k} {v:.1e}' for k, v in r['abs_diff'].items())})",
        ),
        (
            "values",
            ", ".join(f"{k.removeprefix('pixel_')} {v:.6f}" for k, v in r["ours"].items())
            + f", aupro(cflow) {r['ours_cflow_aupro']:.6f}",
        ),
    ]
    if r["seconds_sklearn_pr_curve_f1"] is not None:
        rows.insert(
            4,
            (
                "sklearn: precision_recall_curve (F1 check, untimed in ratio)",
                f"{r['seconds_sklearn_pr_curve_f1']:.2f} s",
            ),
        )
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-maps", type=int, default=400)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-f1-check", action="store_true", help="skip sklearn's precision_recall_curve")
    args = ap.parse_args()
    print(to_markdown(run(args.num_maps, args.size, args.seed, check_f1=not args.no_f1_check)))


if __name__ == "__main__":
    main()

"""Exact anomaly-detection metrics: image/pixel AUROC, AP, F1-max and AUPRO, and the protocol rules.

Standalone on purpose (numpy and scipy only, no package import): this one file is both the package's
metrics and part of the `evaluate` module folder that is
loaded by `evaluate.load` and pushed as a Hub metric, so the two can never disagree.

Everything is computed from **one sort** of all scores followed by a single chunked pass over
the sorted order (cumulative counts at every distinct score), so the results are exact (no
threshold binning) and match scikit-learn's definitions, while being much faster than calling
``roc_auc_score`` and ``average_precision_score`` separately (each of which does its own stable
argsort of every pixel).

Definitions (``P`` positives, ``N`` negatives, points taken at every distinct score ``t``,
predicted positive iff ``score >= t``; equal scores form one point, exactly like sklearn):

* **AUROC** -- trapezoidal area under (FPR, TPR) starting at (0, 0); equals
  ``sklearn.metrics.roc_auc_score``. The area is accumulated in exact integer arithmetic.
* **AP** -- ``sum_k (R_k - R_{k-1}) * P_k`` (step-wise, no interpolation); equals
  ``sklearn.metrics.average_precision_score``.
* **F1-max** -- ``max_k 2 TP_k / (TP_k + FP_k + P)`` (= 2PR/(P+R)) over the points of
  ``sklearn.metrics.precision_recall_curve``, with the threshold that reaches it (the lowest
  threshold among exact ties, i.e. ``np.argmax`` over sklearn's increasing thresholds).
* **AUPRO**, two documented variants (``variant=`` / ``aupro_variant=``):

  ``"mvtec"`` (default, the MVTec AD reference evaluation, Bergmann et al. IJCV 2021):
    ground-truth regions are the connected components of each mask (``scipy.ndimage.label``,
    per image, 8-connectivity by default). At every distinct score ``t`` the PRO is the mean over
    *all regions of all images* of ``|region ∩ {score >= t}| / |region|`` and the FPR is the
    fraction of all normal pixels (of all images) with ``score >= t``. The curve starts at (0, 0)
    and ends at (1, 1); it is integrated with the trapezoidal rule up to ``fpr_limit``, linearly
    interpolating the PRO at the limit, and the area is divided by ``fpr_limit``.

  ``"cflow"`` (cflow-ad ``train.py`` as copied into APRIL-GAN / AnomalyCLIP ``cal_pro_score``):
    ``num_thresholds`` (200) thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` in
    the maps' dtype, a pixel is positive iff ``score > th`` (strict); PRO = mean over all regions
    (same connected components) of the overlap; FPR over all normal pixels. Points with
    ``fpr < fpr_limit`` are kept, their FPRs are min-max rescaled to [0, 1] and the trapezoidal
    area is returned (no interpolation at the limit, no division by the limit). Returns NaN when
    fewer than two distinct FPRs are kept (the reference would divide 0 by 0 or raise).

Memory (``n`` = number of pixels; float32 maps, the fast path): one ``uint64`` sort key per pixel
(the float32 score bits in the high word, the region id / label in the low word), sorted in
place, plus ``O(chunk_size)`` temporaries: **peak ≈ 8 bytes per pixel + ~12 * 8 * chunk_size
bytes** on top of the caller's maps and masks (measured with tracemalloc: 1.0-1.1 GiB for 400 maps
of 518x518 = 1.07e8 pixels, 0.80 GiB of it the keys; sklearn's roc_auc_score alone: 5.2 GiB).
float16 maps are widened to float32, integer/bool scores to float64. Scores that are not exactly
representable as float32 (float64 image scores, for example) take an exact stable-``argsort``
path that needs ≈ 32 bytes per score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage


__all__ = [
    "AUPRO_VARIANTS",
    "IMAGE_KEYS",
    "MEDICAL_CLASSES",
    "PIXEL_KEYS",
    "PROTOCOLS",
    "PixelMetricAccumulator",
    "aupro",
    "auroc",
    "average_precision",
    "binary_metrics",
    "class_mean",
    "class_row",
    "domain_for_class",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
    "reference_image_scores",
]

AUPRO_VARIANTS = ("mvtec", "cflow")
DEFAULT_CHUNK_SIZE = 1 << 21
DEFAULT_FPR_LIMIT = 0.3
DEFAULT_CFLOW_THRESHOLDS = 200
DEFAULT_CONNECTIVITY = 2

# Image-score protocols (see `reference_image_scores` and `class_mean`).
PROTOCOLS = ("reference", "per-image")
# The reference's medical test sets (its DOMAINS table); every other class is industrial.
MEDICAL_CLASSES = frozenset({"Brain", "Liver", "Retina", "CVC-300", "Kvasir", "Colon_clinicDB", "Colon_colonDB"})
MEDICAL_PREFIXES = ("Colon_", "CVC-")
DEFAULT_MAP_WEIGHT = 0.5
IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_KEYS = ("pixel_auroc", "pixel_aupro", "pixel_ap", "pixel_f1_max")

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_SIGN32 = np.uint32(0x80000000)


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------


def _score_array(x: Any, name: str) -> np.ndarray:
    """A score array as float32 / float64 (float16 and ints are widened), finite-checked."""
    arr = np.asarray(x)
    if arr.dtype.kind == "b" or arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected real-valued scores, got dtype {arr.dtype}")
    elif arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    elif arr.dtype.itemsize > 8:
        arr = arr.astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf; scores must be finite")
    return arr


def _binary_array(x: Any, name: str) -> np.ndarray:
    """A {0, 1} / bool label array as bool, with a clear error for anything else."""
    arr = np.asarray(x)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected binary labels (bool or 0/1), got dtype {arr.dtype}")
    is_bin = (arr == 0) | (arr == 1)
    if not is_bin.all():
        bad = arr[~is_bin].flat[0].item()
        raise ValueError(
            f"{name}: expected binary values {{0, 1}} (or bool), found {bad!r}; "
            "binarise first, e.g. `mask > 0.5` or `mask != 0`"
        )
    return arr != 0


def _as_image_list(x: Any, name: str) -> list[np.ndarray]:
    """(N, H, W) array, a single (H, W) map, or a sequence of 2-D arrays -> list of 2-D arrays."""
    if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not isinstance(x, (list, tuple))):
        arr = np.asarray(x)
        if arr.ndim == 2:
            return [arr]
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3:
            raise ValueError(f"{name}: expected shape (N, H, W) or (H, W), got {tuple(arr.shape)}")
        return list(arr)
    if not isinstance(x, Sequence):
        raise TypeError(f"{name}: expected an array or a sequence of 2-D arrays, got {type(x).__name__}")
    out = []
    for i, item in enumerate(x):
        arr = np.asarray(item)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected a 2-D map, got shape {tuple(arr.shape)}")
        out.append(arr)
    return out


def _check_1d_pair(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _score_array(_to_numpy(scores), "scores").ravel()
    y = _binary_array(_to_numpy(labels), "labels").ravel()
    if s.size == 0:
        raise ValueError("scores: empty input, at least one score is needed")
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} values but labels has {y.size}")
    return s, y


# ----------------------------------------------------------------------------------------------
# One sorted view of all scores with their region ids (0 = negative / normal)
# ----------------------------------------------------------------------------------------------


def _encode_f32(s: np.ndarray) -> np.ndarray:
    """Order-preserving float32 -> uint32 map (-0.0 and +0.0 share one code, like ==)."""
    u = (s.astype(np.float32, copy=False) + np.float32(0.0)).view(np.uint32)
    return np.where(u >= _SIGN32, ~u, u | _SIGN32)


def _decode_f32(code: np.ndarray) -> np.ndarray:
    code = np.asarray(code, dtype=np.uint32)
    u = np.where(code >= _SIGN32, code & ~_SIGN32, ~code)
    return u.view(np.float32)


def _f32_exact(s: np.ndarray) -> bool:
    if s.dtype == np.float32:
        return True
    return bool(np.array_equal(s.astype(np.float32).astype(s.dtype), s))


class _SortedScores:
    """All scores in descending order together with their region id.

    Fast path: a uint64 key ``(float32 code << 32) | region`` sorted in place (one SIMD sort, no
    index array). Exact fallback for scores float32 cannot hold: a stable argsort.
    """

    def __init__(
        self,
        parts: Sequence[np.ndarray],
        region_of: Callable[[int], np.ndarray],
        dtype: np.dtype,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.n = int(sum(p.size for p in parts))
        self.fast = all(_f32_exact(p) for p in parts)
        if self.fast:
            key = np.empty(self.n, dtype=np.uint64)
            off = 0
            for i, p in enumerate(parts):
                m = p.size
                reg = region_of(i).ravel()
                np.left_shift(_encode_f32(p.ravel()).astype(np.uint64), _SHIFT32, out=key[off : off + m])
                key[off : off + m] |= reg.astype(np.uint64)
                off += m
            key.sort()
            self._key = key
            self._desc = key[::-1]
        else:
            scores = np.empty(self.n, dtype=np.float64)
            regions = np.empty(self.n, dtype=np.int64)
            off = 0
            for i, p in enumerate(parts):
                m = p.size
                scores[off : off + m] = p.ravel()
                regions[off : off + m] = region_of(i).ravel()
                off += m
            order = np.argsort(scores, kind="stable")
            self._scores = scores[order]
            del scores
            self._regions = regions[order]
            del regions, order
            self._scores_desc = self._scores[::-1]
            self._regions_desc = self._regions[::-1]

    def chunk(self, lo: int, hi: int, need_tie: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """(tie key, region id) of descending positions [lo, hi)."""
        if self.fast:
            k = self._desc[lo:hi]
            return (k >> _SHIFT32 if need_tie else None), (k & _LOW32).view(np.int64)
        return (self._scores_desc[lo:hi] if need_tie else None), self._regions_desc[lo:hi]

    def score_at(self, i: int) -> float:
        """Score at descending position ``i``."""
        if self.fast:
            return float(_decode_f32(np.uint32(int(self._desc[i]) >> 32)))
        return float(self._scores_desc[i])

    def extremes(self) -> tuple[np.generic, np.generic]:
        """(min, max) in the scores' dtype."""
        lo, hi = self.score_at(self.n - 1), self.score_at(0)
        return self.dtype.type(lo), self.dtype.type(hi)

    def count_above(self, th: np.generic) -> int:
        """Number of scores strictly greater than ``th``."""
        if self.fast:
            t32 = np.float32(th)
            code = np.uint64(int(_encode_f32(np.asarray([t32]))[0]))
            if float(t32) > float(th):  # every score >= t32 is > th
                idx = np.searchsorted(self._key, code << _SHIFT32, side="left")
            else:  # t32 <= th: scores > th are exactly scores > t32
                idx = np.searchsorted(self._key, (code << _SHIFT32) | _LOW32, side="right")
            return self.n - int(idx)
        return self.n - int(np.searchsorted(self._scores, th, side="right"))


# ----------------------------------------------------------------------------------------------
# The single pass: ROC / PR points at every distinct score, optional MVTec PRO curve
# ----------------------------------------------------------------------------------------------


def _sweep(
    data: _SortedScores,
    num_pos: int,
    region_weight: np.ndarray | None = None,
    num_regions: int = 0,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """AUROC, AP, F1-max (+ threshold) and, with ``region_weight``, the MVTec AUPRO.

    ``region_weight[r] = 1 / |region r|`` (0 for r = 0); the PRO at a point is the running sum of
    the weights of the positives seen so far divided by ``num_regions``.
    """
    n = data.n
    num_neg = n - num_pos
    tp_carry = 0
    pro_carry = 0.0
    last_tp, last_cnt = 0, 0  # TP and TP + FP at the previous group end
    # Exact integer 2 * P * N * AUROC = sum over tie groups g of pos_g * (2 * #negatives scored
    # below g + neg_g) (Mann-Whitney U with ties counted half); only groups with positives move
    # U, AP and F1, so those sums run over them alone.
    auc_twice = 0
    ap_sum = 0.0
    best_f1, best_idx = -1.0, -1
    do_pro = region_weight is not None
    pro_area, px, py = 0.0, 0.0, 0.0
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        tie, reg = data.chunk(lo, hi)
        is_end = np.empty(hi - lo, dtype=bool)
        np.not_equal(tie[1:], tie[:-1], out=is_end[:-1])
        if hi < n:
            nxt, _ = data.chunk(hi, hi + 1)
            is_end[-1] = bool(tie[-1] != nxt[0])
        else:
            is_end[-1] = True
        del tie
        tp = np.cumsum(reg != 0, dtype=np.int64)
        tp += tp_carry
        ends = np.flatnonzero(is_end)
        del is_end
        if do_pro:
            pro = np.cumsum(region_weight[reg])
            pro += pro_carry
            pro_carry = float(pro[-1])
        tp_carry = int(tp[-1])
        if ends.size == 0:
            continue
        tp_e = tp[ends]
        cnt_e = ends + (lo + 1)  # TP + FP at each group end
        dtp = np.diff(tp_e, prepend=last_tp)
        sel = np.flatnonzero(dtp)
        if sel.size:
            tp_s, cnt_s, pos_g = tp_e[sel], cnt_e[sel], dtp[sel]
            fp_s = cnt_s - tp_s
            prev = sel - 1
            fp_prev = np.where(sel > 0, cnt_e[prev] - tp_e[prev], last_cnt - last_tp)
            auc_twice += int(np.sum(pos_g * (2 * (num_neg - fp_s) + (fp_s - fp_prev))))
            ap_sum += float(np.sum(pos_g * (tp_s / cnt_s)))
            f1 = (2.0 * tp_s) / (cnt_s + num_pos)
            j = f1.size - 1 - int(np.argmax(f1[::-1]))  # lowest threshold among ties
            if f1[j] >= best_f1:
                best_f1, best_idx = float(f1[j]), lo + int(ends[sel[j]])
        if do_pro:
            xs = np.concatenate(([px], (cnt_e - tp_e) / num_neg))
            ys = np.concatenate(([py], np.minimum(pro[ends] / num_regions, 1.0)))
            over = np.flatnonzero(xs[1:] > fpr_limit)
            k = int(over[0]) if over.size else xs.size - 1
            pro_area += float(np.sum(0.5 * (ys[1 : k + 1] + ys[:k]) * (xs[1 : k + 1] - xs[:k])))
            if over.size:
                xa, ya, xb, yb = xs[k], ys[k], xs[k + 1], ys[k + 1]
                y_lim = ya + (yb - ya) * (fpr_limit - xa) / (xb - xa)
                pro_area += 0.5 * (y_lim + ya) * (fpr_limit - xa)
                do_pro = False
            else:
                px, py = float(xs[-1]), float(ys[-1])
        last_tp, last_cnt = int(tp_e[-1]), int(cnt_e[-1])
    out = {
        "auroc": auc_twice / (2.0 * num_pos * num_neg),
        "ap": ap_sum / num_pos,
        "f1_max": best_f1,
        "f1_threshold": data.score_at(best_idx),
    }
    if region_weight is not None:
        # The curve ends at (1, 1), so the limit is always reached for fpr_limit < 1; for
        # fpr_limit == 1 the whole curve was integrated.
        out["aupro"] = pro_area / fpr_limit
    return out


def _cflow_aupro(
    data: _SortedScores,
    region_size: np.ndarray,
    num_thresholds: int,
    fpr_limit: float,
    chunk_size: int,
) -> float:
    """cflow-ad / APRIL-GAN style AUPRO (see the module docstring) from the sorted scores."""
    num_neg = int(region_size[0])
    lo_s, hi_s = data.extremes()
    delta = (hi_s - lo_s) / num_thresholds
    if not delta > 0:
        raise ValueError("maps: all scores are equal, the cflow AUPRO thresholds are undefined")
    ths = np.arange(lo_s, hi_s, delta)
    counts_above = [data.count_above(t) for t in ths]  # non-increasing
    # Pixels positive at threshold j are the first counts_above[j] in descending order.
    per_region = np.zeros((len(ths), region_size.size), dtype=np.int64)
    running = np.zeros(region_size.size, dtype=np.int64)
    start = 0
    for j in range(len(ths) - 1, -1, -1):
        stop = counts_above[j]
        for lo in range(start, stop, chunk_size):
            _, reg = data.chunk(lo, min(stop, lo + chunk_size), need_tie=False)
            running += np.bincount(reg.astype(np.intp), minlength=region_size.size)
        start = max(start, stop)
        per_region[j] = running
    fprs = per_region[:, 0] / num_neg
    pros = (per_region[:, 1:] / region_size[1:]).mean(axis=1)
    keep = fprs < fpr_limit
    fprs, pros = fprs[keep], pros[keep]
    if fprs.size < 2 or fprs.max() == fprs.min():
        return math.nan
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    # fprs decrease with the threshold index: integrate right-to-left (sklearn.metrics.auc).
    return float(np.sum(0.5 * (pros[1:] + pros[:-1]) * (fprs[:-1] - fprs[1:])))


# ----------------------------------------------------------------------------------------------
# Public API: scores + labels
# ----------------------------------------------------------------------------------------------


def binary_metrics(scores: Any, labels: Any, chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """AUROC, AP, F1-max and its threshold of ``scores`` vs binary ``labels`` in one sort.

    Returns ``{"auroc", "ap", "f1_max", "f1_threshold"}`` as fractions (threshold in score units).
    Raises ``ValueError`` when only one class is present (all are undefined then).
    """
    s, y = _check_1d_pair(scores, labels)
    num_pos = int(np.count_nonzero(y))
    if num_pos == 0 or num_pos == y.size:
        which = "positive (1)" if num_pos == y.size else "negative (0)"
        raise ValueError(f"labels: only {which} labels among {y.size}; AUROC/AP/F1 need both classes")
    data = _SortedScores([s], lambda _: y.astype(np.uint8), s.dtype)
    return _sweep(data, num_pos, chunk_size=_check_chunk(chunk_size))


def auroc(scores: Any, labels: Any) -> float:
    """Exact area under the ROC curve (== ``sklearn.metrics.roc_auc_score``)."""
    return binary_metrics(scores, labels)["auroc"]


def average_precision(scores: Any, labels: Any) -> float:
    """Step-wise average precision (== ``sklearn.metrics.average_precision_score``)."""
    return binary_metrics(scores, labels)["ap"]


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """(max F1 over all thresholds, the threshold reaching it; predict 1 iff score >= it)."""
    m = binary_metrics(scores, labels)
    return m["f1_max"], m["f1_threshold"]


def image_metrics(scores: Any, labels: Any, chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, Any]:
    """Per-image detection metrics of one class.

    Returns ``image_auroc``, ``image_ap``, ``image_f1_max``, ``image_f1_threshold``. When all
    images carry one label the metrics are undefined: they are NaN and ``image_skip_reason`` says
    why (the evaluator decides how such a class enters the mean).
    """
    s, y = _check_1d_pair(scores, labels)
    num_pos = int(np.count_nonzero(y))
    if num_pos == 0 or num_pos == y.size:
        which = "anomalous" if num_pos else "normal"
        return {
            "image_auroc": math.nan,
            "image_ap": math.nan,
            "image_f1_max": math.nan,
            "image_f1_threshold": math.nan,
            "image_skip_reason": f"all {y.size} images are {which}; image metrics need both labels",
        }
    m = binary_metrics(s, y, chunk_size=chunk_size)
    return {f"image_{k}": v for k, v in m.items()}


# ----------------------------------------------------------------------------------------------
# Public API: maps + masks
# ----------------------------------------------------------------------------------------------


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 2:
        raise ValueError(f"chunk_size: expected an integer >= 2, got {chunk_size}")
    return int(chunk_size)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity: expected 1 (4-neighbour) or 2 (8-neighbour), got {connectivity}")
    return ndimage.generate_binary_structure(2, connectivity)


def _prepare_pixels(maps: Any, masks: Any, connectivity: int) -> tuple[_SortedScores, np.ndarray, int]:
    """Validate, label the ground-truth regions and sort. Returns (data, region sizes, #regions)."""
    map_list = _as_image_list(_to_numpy(maps), "maps")
    mask_list = _as_image_list(_to_numpy(masks), "masks")
    if not map_list:
        raise ValueError("maps: empty input, at least one anomaly map is needed")
    if len(map_list) != len(mask_list):
        raise ValueError(f"maps has {len(map_list)} images but masks has {len(mask_list)}")
    parts = []
    for i, (m, g) in enumerate(zip(map_list, mask_list)):
        if m.shape != g.shape:
            raise ValueError(f"maps[{i}] has shape {tuple(m.shape)} but masks[{i}] has shape {tuple(g.shape)}")
        if m.size == 0:
            raise ValueError(f"maps[{i}]: empty map of shape {tuple(m.shape)}")
        parts.append(_score_array(m, f"maps[{i}]"))
    dtype = np.result_type(*[p.dtype for p in parts])
    structure = _structure(connectivity)
    sizes: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
    state = {"offset": 0}

    def region_of(i: int) -> np.ndarray:
        gt = _binary_array(mask_list[i], f"masks[{i}]")
        lab, k = ndimage.label(gt, structure=structure)
        lab = lab.astype(np.uint32, copy=False)
        counts = np.bincount(lab.ravel(), minlength=k + 1)
        sizes[0][0] += counts[0]
        if k:
            sizes.append(counts[1:].astype(np.int64))
            lab[lab > 0] += np.uint32(state["offset"])
            state["offset"] += k
        return lab

    data = _SortedScores(parts, region_of, dtype)
    region_size = np.concatenate(sizes)
    if state["offset"] >= 2**32 - 1:
        raise ValueError("masks: more than 2**32 - 2 ground-truth regions")
    return data, region_size, int(state["offset"])


def _nan_pixel(reason: str) -> dict[str, Any]:
    return {
        "pixel_auroc": math.nan,
        "pixel_ap": math.nan,
        "pixel_f1_max": math.nan,
        "pixel_f1_threshold": math.nan,
        "pixel_aupro": math.nan,
        "pixel_skip_reason": reason,
    }


def pixel_metrics(
    maps: Any,
    masks: Any,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    aupro_variant: str = "mvtec",
    num_thresholds: int = DEFAULT_CFLOW_THRESHOLDS,
    connectivity: int = DEFAULT_CONNECTIVITY,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, Any]:
    """Pixel-level metrics of one class over all pixels of all its images.

    Args:
        maps: anomaly maps, ``(N, H, W)`` (float32 keeps the fast path), or a list of 2-D maps of
            different sizes (per-original-resolution protocol).
        masks: ground-truth masks of the same shapes, bool or {0, 1}; ``None`` skips the pixel
            metrics (mask-less data) and returns only ``pixel_skip_reason``.
        fpr_limit: AUPRO integration limit (0, 1].
        aupro_variant: ``"mvtec"`` (reference definition) or ``"cflow"`` (APRIL-GAN/AnomalyCLIP).
        num_thresholds: thresholds of the ``"cflow"`` variant.
        connectivity: ground-truth region connectivity, 2 = 8-neighbour (both references), 1 = 4.
        chunk_size: pixels per step of the sorted pass (memory/speed trade-off, exact either way).

    Returns ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``, ``pixel_f1_threshold``,
    ``pixel_aupro`` (fractions). If no pixel (or every pixel) is anomalous they are NaN and
    ``pixel_skip_reason`` says why.
    """
    if aupro_variant not in AUPRO_VARIANTS:
        raise ValueError(f"aupro_variant: expected one of {AUPRO_VARIANTS}, got {aupro_variant!r}")
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    if int(num_thresholds) < 1:
        raise ValueError(f"num_thresholds: expected a positive integer, got {num_thresholds}")
    chunk_size = _check_chunk(chunk_size)
    if masks is None:
        return {"pixel_skip_reason": "no ground-truth masks; pixel metrics skipped"}
    data, region_size, num_regions = _prepare_pixels(maps, masks, connectivity)
    num_neg = int(region_size[0])
    num_pos = data.n - num_neg
    if num_pos == 0:
        return _nan_pixel(f"no anomalous pixel in {data.n} pixels; pixel metrics need both classes")
    if num_neg == 0:
        return _nan_pixel(f"all {data.n} pixels are anomalous; pixel metrics need both classes")
    weight = None
    if aupro_variant == "mvtec":
        weight = np.zeros(region_size.size, dtype=np.float64)
        weight[1:] = 1.0 / region_size[1:]
    m = _sweep(data, num_pos, weight, num_regions, float(fpr_limit), chunk_size)
    if aupro_variant == "cflow":
        m["aupro"] = _cflow_aupro(data, region_size, int(num_thresholds), float(fpr_limit), chunk_size)
    return {
        "pixel_auroc": m["auroc"],
        "pixel_ap": m["ap"],
        "pixel_f1_max": m["f1_max"],
        "pixel_f1_threshold": m["f1_threshold"],
        "pixel_aupro": m["aupro"],
    }


def aupro(
    maps: Any,
    masks: Any,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    variant: str = "mvtec",
    num_thresholds: int = DEFAULT_CFLOW_THRESHOLDS,
    connectivity: int = DEFAULT_CONNECTIVITY,
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit`` (see the module docstring).

    Raises ``ValueError`` when the masks hold no anomalous pixel or no normal pixel.
    """
    m = pixel_metrics(maps, masks, fpr_limit, variant, num_thresholds, connectivity)
    if "pixel_skip_reason" in m:
        raise ValueError(f"masks: {m['pixel_skip_reason']}")
    return m["pixel_aupro"]


class PixelMetricAccumulator:
    """Collects per-image maps and masks (e.g. batch by batch, or gathered from several
    processes) and computes :func:`pixel_metrics` once at the end.

    Maps are stored as ``dtype`` (float32: 4 bytes/pixel) and masks as bool (1 byte/pixel);
    images may have different sizes.
    """

    def __init__(self, dtype: np.dtype | type = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def num_pixels(self) -> int:
        return int(sum(m.size for m in self.maps))

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch: ``(B, H, W)`` arrays/tensors or lists of 2-D maps and masks."""
        map_list = _as_image_list(_to_numpy(maps), "maps")
        mask_list = _as_image_list(_to_numpy(masks), "masks")
        if len(map_list) != len(mask_list):
            raise ValueError(f"maps has {len(map_list)} images but masks has {len(mask_list)}")
        start = len(self.maps)
        for i, (m, g) in enumerate(zip(map_list, mask_list)):
            if m.shape != g.shape:
                raise ValueError(f"maps[{i}] has shape {tuple(m.shape)} but masks[{i}] has shape {tuple(g.shape)}")
            self.maps.append(np.array(_score_array(m, f"maps[{start + i}]"), dtype=self.dtype, copy=True))
            self.masks.append(np.array(_binary_array(g, f"masks[{start + i}]"), dtype=bool, copy=True))

    def merge(self, other: PixelMetricAccumulator) -> None:
        """Append another accumulator's images (e.g. after a distributed gather)."""
        self.maps.extend(other.maps)
        self.masks.extend(other.masks)

    def reset(self) -> None:
        self.maps.clear()
        self.masks.clear()

    def compute(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`pixel_metrics` over everything collected (same keyword arguments)."""
        if not self.maps:
            raise ValueError("PixelMetricAccumulator: no images were added")
        return pixel_metrics(self.maps, self.masks, **kwargs)


# ----------------------------------------------------------------------------------------------
# Protocol rules: domains, the reference image score, the mean over classes
# ----------------------------------------------------------------------------------------------


def domain_for_class(class_name: str, default: str = "industrial") -> str:
    """`"medical"` for the reference's medical sets (by class name, `dataset/class` keys too), else `default`."""
    short = class_name.rsplit("/", 1)[-1]
    if short in MEDICAL_CLASSES or short.startswith(MEDICAL_PREFIXES):
        return "medical"
    return default


def reference_image_scores(
    map_max: Any, map_min: Any, raw_scores: Any, domain: str, map_weight: float = DEFAULT_MAP_WEIGHT
) -> np.ndarray:
    """The reference's per-class image score from per-image map extremes and raw image scores.

    `max(map_norm)` of image i is `(map_max[i] - min_all) / (max_all - min_all)`, with the extremes over all
    pixels of all the class's maps; `r_norm` min-max normalises `raw_scores` over the class. Industrial:
    `map_weight * max(map_norm) + (1 - map_weight) * r_norm`; medical: `max(map_norm)`. A constant input (zero
    range, where the reference divides by zero) normalises to 0.
    """
    map_max = np.asarray(map_max, dtype=np.float64)
    low, high = float(np.min(map_min)), float(np.max(map_max))
    map_norm = (map_max - low) / (high - low) if high > low else np.zeros_like(map_max)
    if domain == "medical":
        return map_norm
    raw = np.asarray(raw_scores, dtype=np.float64)
    r_low, r_high = float(raw.min()), float(raw.max())
    raw_norm = (raw - r_low) / (r_high - r_low) if r_high > r_low else np.zeros_like(raw)
    return map_weight * map_norm + (1.0 - map_weight) * raw_norm


def class_row(
    labels: Any,
    scores: Any,
    pixels: PixelMetricAccumulator,
    *,
    masked_anomalies: int,
    without_mask: int = 0,
    domain: str | None = None,
    **pixel_kwargs: Any,
) -> dict[str, Any]:
    """One class's row: image counts, image metrics of `scores`, pixel metrics of `pixels`, notes.

    `pixels` holds the maps and masks of the images whose pixel truth is known (normal images count with
    an empty mask); `masked_anomalies` is how many anomalous images among them have a mask (none: no pixel
    metrics) and `without_mask` how many anomalous images were left out for lack of one. `pixel_kwargs`
    go to :func:`pixel_metrics`.
    """
    labels = np.asarray(labels)
    row: dict[str, Any] = {
        "num_normal": int((labels == 0).sum()),
        "num_anomalous": int((labels == 1).sum()),
        "domain": domain,
        "notes": [],
    }
    image = image_metrics(scores, labels)
    if "image_skip_reason" in image:
        row["notes"].append(image.pop("image_skip_reason"))
    row.update(image)
    if without_mask:
        row["notes"].append(f"{without_mask} anomalous image(s) without a mask left out of the pixel metrics")
    if masked_anomalies:
        pixel = pixels.compute(**pixel_kwargs)
        if "pixel_skip_reason" in pixel:
            row["notes"].append(pixel.pop("pixel_skip_reason"))
        row.update(pixel)
    else:
        row["notes"].append("no anomalous image with a mask: pixel metrics skipped")
    row["num_pixel_images"] = len(pixels) if masked_anomalies else 0
    return row


def class_mean(
    rows: dict[str, dict[str, Any]], protocol: str, keys: Sequence[str] = PIXEL_KEYS + IMAGE_KEYS
) -> tuple[dict[str, float], list[str]]:
    """Unweighted mean of `keys` over the class rows, with the protocol's rule for single-label classes.

    Under `reference` a class without image metrics (all its images one label) counts as 0 in the image
    means, as the reference does; under `per-image` it is left out. Pixel NaNs are always left out.
    Returns (mean, plain-language notes).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    notes = []
    mean: dict[str, float] = {}
    for key in keys:
        values = [row.get(key, math.nan) for row in rows.values()]
        if key in IMAGE_KEYS and protocol == "reference":
            values = [0.0 if math.isnan(v) else v for v in values]
        values = [v for v in values if not math.isnan(v)]
        mean[key] = float(np.mean(values)) if values else math.nan
    single_label = [name for name, row in rows.items() if math.isnan(row.get("image_auroc", math.nan))]
    if single_label:
        if protocol == "reference":
            notes.append(
                f"class(es) {single_label} have one image label only: image metrics undefined, counted as 0 in the "
                "mean as the reference does (use the per-image protocol to leave them out)"
            )
        else:
            notes.append(f"class(es) {single_label} have one image label only: left out of the image-metric means")
    no_pixel = [name for name, row in rows.items() if math.isnan(row.get("pixel_auroc", math.nan))]
    if no_pixel and len(no_pixel) < len(rows):
        notes.append(f"class(es) {no_pixel} have no pixel metrics and are left out of the pixel-metric means")
    return mean, notes


def _to_numpy(x: Any) -> Any:
    """Torch tensors (any device) -> numpy; everything else unchanged."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # bf16 has no numpy dtype
            x = x.float()
        return x.numpy()
    if isinstance(x, (list, tuple)):
        return [_to_numpy(v) for v in x]
    return x

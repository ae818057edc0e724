"""Metrics against independent oracles: sklearn for ROC/PR, brute-force loops for AUPRO."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from aaclip_hf.evaluation.anomaly_metrics import exact_metrics as M


TOL = 1e-6


# ------------------------------------------------------------------------------- oracles


def sk_f1_max(y, s):
    """F1-max the way APRIL-GAN/AdaCLIP compute it: argmax over precision_recall_curve.

    Also returns the lowest threshold among (rounding-level) ties: sklearn's float F1 may
    break an exact tie either way, we define the lowest threshold as the answer."""
    p, r, t = precision_recall_curve(y, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * p * r / (p + r)
    f = np.where(np.isfinite(f), f, -1.0)[:-1]
    i = int(np.argmax(f))
    return f[i], t[i], t[np.flatnonzero(f >= f[i] - 1e-12)].min()


def _labels(mask, connectivity=2):
    lab, k = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, connectivity))
    return [lab == r for r in range(1, k + 1)]


def brute_pro_curve(maps, masks, connectivity=2):
    """MVTec PRO curve by looping over every distinct threshold (predict iff score >= t)."""
    regions = [_labels(g, connectivity) for g in masks]
    num_neg = sum(int((~g.astype(bool)).sum()) for g in masks)
    thresholds = np.unique(np.concatenate([np.ravel(m) for m in maps]))[::-1]
    xs, ys = [0.0], [0.0]
    for t in thresholds:
        overlaps, fp = [], 0
        for m, g, regs in zip(maps, masks, regions):
            pred = m >= t
            fp += int((pred & ~g.astype(bool)).sum())
            overlaps += [pred[r].sum() / r.sum() for r in regs]
        xs.append(fp / num_neg)
        ys.append(float(np.mean(overlaps)))
    xs.append(1.0)
    ys.append(1.0)
    return np.array(xs), np.array(ys)


def brute_integrate(xs, ys, limit):
    """Trapezoid up to `limit`, interpolating between the last point <= limit and the next."""
    area = 0.0
    for i in range(1, len(xs)):
        if xs[i] <= limit:
            area += 0.5 * (ys[i] + ys[i - 1]) * (xs[i] - xs[i - 1])
        else:
            y_lim = ys[i - 1] + (ys[i] - ys[i - 1]) * (limit - xs[i - 1]) / (xs[i] - xs[i - 1])
            area += 0.5 * (y_lim + ys[i - 1]) * (limit - xs[i - 1])
            break
    return area / limit


def brute_aupro_mvtec(maps, masks, limit=0.3, connectivity=2):
    return brute_integrate(*brute_pro_curve(maps, masks, connectivity), limit)


def brute_aupro_cflow(amaps, masks, max_step=200, expect_fpr=0.3):
    """The cflow/APRIL-GAN loop, written out per image (so sizes may differ): 200 thresholds,
    positive iff score > th, mean PRO over regions, FPR < limit kept, min-max FPR, sklearn auc."""
    amaps, masks = list(amaps), [np.asarray(g).astype(bool) for g in masks]
    flat = np.concatenate([np.ravel(a) for a in amaps])
    min_th, max_th = flat.min(), flat.max()
    delta = (max_th - min_th) / max_step
    regions = [_labels(g) for g in masks]
    num_neg = sum(int((~g).sum()) for g in masks)
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary = [a > th for a in amaps]
        pro = [b[r].sum() / r.sum() for b, regs in zip(binary, regions) for r in regs]
        fprs.append(sum(int((b & ~g).sum()) for b, g in zip(binary, masks)) / num_neg)
        pros.append(np.mean(pro))
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return sk_auc(fprs, pros[keep])


def random_case(rng, n_img=4, h=7, w=9, levels=None, dtype=np.float32):
    """Blobby masks on some images, scores correlated with them, optional ties via rounding."""
    masks = np.zeros((n_img, h, w), dtype=bool)
    for i in range(n_img):
        if rng.random() < 0.7:
            seed = rng.random((h, w)) < 0.12
            masks[i] = ndimage.binary_dilation(seed) if rng.random() < 0.5 else seed
    if not masks.any():
        masks[0, 1:3, 2:4] = True
    maps = rng.random((n_img, h, w)) + rng.uniform(0, 1.5) * masks
    if levels:
        maps = np.round(maps * levels) / levels
    return maps.astype(dtype), masks


# ------------------------------------------------------------------------- scores vs sklearn


def test_binary_metrics_match_sklearn_randomised():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(150):
        n = int(rng.integers(2, 400))
        y = rng.random(n) < rng.uniform(0.01, 0.99)  # includes heavy imbalance
        if y.all() or not y.any():
            continue
        s = rng.normal(size=n) + rng.uniform(0, 2) * y
        if trial % 3 == 0:
            s = np.round(s * int(rng.integers(1, 8)))  # many ties
        s = s.astype(np.float32 if trial % 2 else np.float64)
        chunk = [2, 3, 17, M.DEFAULT_CHUNK_SIZE][trial % 4]
        m = M.binary_metrics(s, y, chunk_size=chunk)
        f1, _, thr = sk_f1_max(y, s)
        assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
        assert m["ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
        assert m["f1_max"] == pytest.approx(f1, abs=TOL)
        assert m["f1_threshold"] == pytest.approx(float(thr), abs=0, rel=1e-12)
        checked += 1
    assert checked > 100


def test_extreme_imbalance_and_tiny_inputs():
    rng = np.random.default_rng(1)
    y = np.zeros(5000, dtype=bool)
    y[rng.choice(5000, 3, replace=False)] = True
    s = rng.random(5000).astype(np.float32)
    assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert M.auroc([0.2, 0.7], [0, 1]) == 1.0
    assert M.auroc([0.7, 0.2], [0, 1]) == 0.0
    assert M.auroc([0.5, 0.5], [1, 0]) == 0.5
    assert M.auroc(np.array([-0.0, 0.0]), [1, 0]) == 0.5  # -0.0 == 0.0 is one tie group


def test_f1_max_threshold_reproduces_f1():
    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.5 * y, 2)
    f1, thr = M.f1_max(s, y)
    pred = s >= thr
    tp = (pred & y).sum()
    assert f1 == pytest.approx(2 * tp / (pred.sum() + y.sum()), abs=1e-12)


def test_float64_scores_not_float32_representable_use_exact_path():
    # These differ only beyond float32 precision; a float32 shortcut would tie them.
    s = np.array([1.0, 1.0 + 1e-12, 1.0 + 2e-12, 1.0 + 3e-12])
    y = np.array([0, 1, 0, 1])
    assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12) == 0.75
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_image_metrics_keys_and_single_label():
    m = M.image_metrics([0.1, 0.9, 0.4], [0, 1, 0])
    assert set(m) == {"image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"}
    assert m["image_auroc"] == 1.0 and m["image_f1_threshold"] == pytest.approx(0.9)
    one = M.image_metrics([0.1, 0.9, 0.4], [1, 1, 1])
    assert math.isnan(one["image_auroc"]) and "anomalous" in one["image_skip_reason"]
    with pytest.raises(ValueError, match="only negative"):
        M.auroc([0.1, 0.2], [0, 0])


def test_score_input_errors():
    with pytest.raises(ValueError, match="empty"):
        M.auroc([], [])
    with pytest.raises(ValueError, match="3 values but labels has 2"):
        M.auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="binary values"):
        M.auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        M.auroc([0.1, np.nan], [0, 1])


# ----------------------------------------------------------------------------- pixel metrics


def test_pixel_roc_pr_match_sklearn_and_aupro_matches_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(12):
        maps, masks = random_case(rng, n_img=int(rng.integers(1, 5)), levels=[None, 5, 20][trial % 3])
        chunk = [2, 7, M.DEFAULT_CHUNK_SIZE][trial % 3]
        m = M.pixel_metrics(maps, masks, chunk_size=chunk)
        y, s = masks.ravel(), maps.ravel()
        f1, _, _ = sk_f1_max(y, s)
        assert m["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
        assert m["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
        assert m["pixel_f1_max"] == pytest.approx(f1, abs=TOL)
        for limit in (0.3, 0.05, 1.0):
            got = M.aupro(maps, masks, fpr_limit=limit) if limit != 0.3 else m["pixel_aupro"]
            assert got == pytest.approx(brute_aupro_mvtec(list(maps), list(masks), limit), abs=TOL)


def test_aupro_hand_computed_two_regions():
    # Image A (1x4): region A1 = 2 pixels scored 0.9, 0.6; normals 0.7, 0.1.
    # Image B (1x4): region B1 = 1 pixel scored 0.8; normals 0.3, 0.6, 0.2.  N = 5, R = 2.
    # Descending thresholds -> (FPR, PRO):
    #   0.9: A1 half -> (0, 0.25);  0.8: B1 -> (0, 0.75);  0.7: a normal -> (0.2, 0.75)
    #   0.6: a normal and A1's 2nd pixel tie -> (0.4, 1.0);  then FPR grows at PRO 1.
    # Up to 0.3: 0.75 * 0.2 + (0.75 + 0.875) / 2 * 0.1 = 0.23125 (PRO(0.3) interpolated =
    # 0.875), / 0.3 -> 0.770833...   Up to 0.5: 0.15 + (0.75 + 1) / 2 * 0.2 + 1 * 0.1 = 0.425,
    # / 0.5 -> 0.85.
    # AUROC: positive-vs-negative pairs won: 0.9 -> 5, 0.8 -> 5, 0.6 -> 3 + 0.5 (tie) = 13.5 / 15.
    # AP: (1/3) * 1 + (1/3) * 1 + (1/3) * 3/5 = 13/15.  F1: 0.8 at t=0.8 (tp 2, fp 0: 4/5).
    maps = [np.array([[0.9, 0.6, 0.7, 0.1]]), np.array([[0.3, 0.6, 0.2, 0.8]])]
    masks = [np.array([[1, 1, 0, 0]]), np.array([[0, 0, 0, 1]])]
    m = M.pixel_metrics(maps, masks)
    assert m["pixel_aupro"] == pytest.approx(0.23125 / 0.3, abs=1e-12)
    assert M.aupro(maps, masks, fpr_limit=0.5) == pytest.approx(0.85, abs=1e-12)
    assert m["pixel_auroc"] == pytest.approx(0.9, abs=1e-12)
    assert m["pixel_ap"] == pytest.approx(13 / 15, abs=1e-12)
    assert m["pixel_f1_max"] == pytest.approx(0.8) and m["pixel_f1_threshold"] == pytest.approx(0.8)
    assert m["pixel_aupro"] == pytest.approx(brute_aupro_mvtec(maps, masks), abs=1e-12)


def test_aupro_analytic_cases():
    masks = np.zeros((3, 6, 6), dtype=bool)
    masks[0, 1:3, 1:4] = True
    masks[2, 4:, 4:] = True
    perfect = np.where(masks, 2.0, 1.0).astype(np.float32) + np.linspace(0, 0.5, 36).reshape(6, 6)
    m = M.pixel_metrics(perfect, masks)
    assert m["pixel_auroc"] == m["pixel_ap"] == m["pixel_f1_max"] == m["pixel_aupro"] == 1.0
    # Inverted constants: every normal pixel first -> PRO stays 0 up to FPR 1.
    assert M.aupro(np.where(masks, 0.0, 1.0), masks) == 0.0
    # One constant score: the curve is the diagonal (0,0)-(1,1) -> area limit^2/2 / limit.
    const = np.full(masks.shape, 0.5, dtype=np.float32)
    c = M.pixel_metrics(const, masks, fpr_limit=0.3)
    p, n = masks.sum(), masks.size
    assert c["pixel_aupro"] == pytest.approx(0.15, abs=1e-12)
    assert c["pixel_auroc"] == 0.5
    assert c["pixel_ap"] == pytest.approx(p / n) and c["pixel_f1_max"] == pytest.approx(2 * p / (p + n))


def test_aupro_is_region_mean_not_pixel_mean_and_connectivity():
    # A 10-pixel region found first, a 1-pixel region scored below every normal pixel:
    # PRO = 0.5 from FPR 0 to 1 -> AUPRO 0.5 (a pixel-weighted overlap would give 10/11).
    g = np.zeros((6, 6), dtype=bool)
    g[0, :5] = g[1, :5] = True
    g[5, 5] = True
    s = np.where(g, 0.9, 0.5)
    s[5, 5] = 0.1
    assert M.aupro(s, g) == pytest.approx(0.5, abs=1e-12)
    # a at (0,0); b at (1,1) diagonal to a; c at (2,1) under b. 8-neighbour: one region {a,b,c}
    # with only a found -> PRO 1/3; 4-neighbour: {a} found, {b,c} not -> PRO 1/2.
    g = np.zeros((4, 4), dtype=bool)
    g[0, 0] = g[1, 1] = g[2, 1] = True
    s = np.full((4, 4), 0.5)
    s[0, 0], s[1, 1], s[2, 1] = 0.9, 0.1, 0.1
    assert M.aupro(s, g, connectivity=2) == pytest.approx(1 / 3, abs=1e-12)
    assert M.aupro(s, g, connectivity=1) == pytest.approx(0.5, abs=1e-12)
    for conn in (1, 2):
        assert M.aupro(s, g, connectivity=conn) == pytest.approx(
            brute_aupro_mvtec([s], [g], connectivity=conn), abs=1e-12
        )


def test_list_of_different_sizes_and_float64_exact_path():
    rng = np.random.default_rng(4)
    maps, masks = [], []
    for h, w in [(5, 8), (9, 4), (6, 6)]:
        mm, gg = random_case(rng, 1, h, w, dtype=np.float64)
        maps.append(mm[0] + rng.normal(scale=1e-13, size=(h, w)))  # not float32-representable
        masks.append(gg[0])
    m = M.pixel_metrics(maps, masks, chunk_size=3)
    y = np.concatenate([g.ravel() for g in masks])
    s = np.concatenate([x.ravel() for x in maps])
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert m["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert m["pixel_aupro"] == pytest.approx(brute_aupro_mvtec(maps, masks), abs=TOL)
    c = M.pixel_metrics(maps, masks, aupro_variant="cflow")
    assert c["pixel_aupro"] == pytest.approx(brute_aupro_cflow(maps, masks), abs=TOL)


def test_cflow_variant_matches_its_brute_force():
    rng = np.random.default_rng(5)
    for trial in range(6):
        dtype = np.float32 if trial % 2 else np.float64
        maps, masks = random_case(rng, n_img=4, h=12, w=12, levels=[None, 10][trial % 2], dtype=dtype)
        if dtype == np.float64:
            maps = maps.astype(np.float32).astype(np.float64)  # float64 thresholds on the fast path
        got = M.pixel_metrics(maps, masks, aupro_variant="cflow", chunk_size=[5, 64][trial % 2])
        ref = brute_aupro_cflow(maps, masks)
        assert got["pixel_aupro"] == pytest.approx(ref, abs=TOL)
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL)
    # truly float64 maps (exact argsort path) too
    maps, masks = random_case(rng, n_img=3, h=10, w=10, dtype=np.float64)
    maps = maps + 1e-12 * rng.random(maps.shape)
    assert M.aupro(maps, masks, variant="cflow") == pytest.approx(brute_aupro_cflow(maps, masks), abs=TOL)
    # differs from the MVTec definition in general (noisy detector)
    noisy = rng.random(masks.shape) + 0.3 * masks
    assert abs(M.aupro(noisy, masks, variant="cflow") - M.aupro(noisy, masks)) > 1e-3


def test_accumulator_matches_one_shot_and_takes_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    maps, masks = random_case(rng, n_img=6, levels=10)
    acc = M.PixelMetricAccumulator()
    acc.update(torch.from_numpy(maps[:2]), torch.from_numpy(masks[:2]).float())
    other = M.PixelMetricAccumulator()
    other.update(list(maps[2:]), list(masks[2:]))
    acc.merge(other)
    assert len(acc) == 6 and acc.num_pixels == maps.size
    assert acc.compute() == M.pixel_metrics(maps, masks)
    bf = M.PixelMetricAccumulator()
    bf.update(torch.from_numpy(maps).bfloat16(), torch.from_numpy(masks))
    assert bf.compute()["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.ravel(), torch.from_numpy(maps).bfloat16().float().numpy().ravel()), abs=TOL
    )
    assert M.image_metrics(torch.tensor([0.2, 0.8]), torch.tensor([False, True]))["image_auroc"] == 1.0
    acc.reset()
    with pytest.raises(ValueError, match="no images"):
        acc.compute()


def test_pixel_input_errors_and_skips():
    maps = np.random.default_rng(7).random((2, 4, 4)).astype(np.float32)
    good = np.zeros((2, 4, 4))
    good[0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"maps has shape \(2, 4, 4\)|maps\[0\] has shape"):
        M.pixel_metrics(maps, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="maps has 2 images but masks has 1"):
        M.pixel_metrics(maps, good[:1])
    with pytest.raises(ValueError, match=r"masks\[0\]: expected binary values .* 255"):
        M.pixel_metrics(maps, good * 255)
    with pytest.raises(ValueError, match="empty"):
        M.pixel_metrics([], [])
    with pytest.raises(ValueError, match="aupro_variant"):
        M.pixel_metrics(maps, good, aupro_variant="anomalib")
    with pytest.raises(ValueError, match="fpr_limit"):
        M.pixel_metrics(maps, good, fpr_limit=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        M.pixel_metrics(np.full((1, 2, 2), np.inf), np.eye(2)[None])
    assert M.pixel_metrics(maps, None) == {"pixel_skip_reason": "no ground-truth masks; pixel metrics skipped"}
    empty = M.pixel_metrics(maps, np.zeros_like(maps))
    assert math.isnan(empty["pixel_aupro"]) and "no anomalous pixel" in empty["pixel_skip_reason"]
    with pytest.raises(ValueError, match="no anomalous pixel"):
        M.aupro(maps, np.zeros_like(maps))

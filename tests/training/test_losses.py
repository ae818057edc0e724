"""Losses against hand-computed numbers, and the multi-process batch semantics of the reducer."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from aaclip_hf.training.losses import (
    BatchReducer,
    dice_loss,
    disentangle_loss_paper,
    disentangle_loss_reference,
    focal_loss,
    image_bce_loss,
    image_ce_loss,
    segmentation_loss,
    stage1_loss,
    stage2_loss,
)


def _maps(p_anomaly):
    """(B, H, W) anomaly probabilities -> (B, 2, H, W) softmax-like map."""
    a = torch.tensor(p_anomaly, dtype=torch.float64)
    return torch.stack([1 - a, a], dim=1)


def test_focal_hand_computed():
    maps = _maps([[[0.2, 0.7]]])  # one image, 1x2 pixels
    mask = torch.tensor([[[0, 1]]])
    s = 1e-5
    # pixel 1: target normal, one-hot (1-s, s): pt = 0.8(1-s) + 0.2 s + s
    pt1 = 0.8 * (1 - s) + 0.2 * s + s
    pt2 = 0.3 * s + 0.7 * (1 - s) + s
    expected = (-((1 - pt1) ** 2) * math.log(pt1) - ((1 - pt2) ** 2) * math.log(pt2)) / 2
    assert focal_loss(maps, mask).item() == pytest.approx(expected, rel=1e-12)
    # gamma 0 is plain (smoothed) NLL; per-sample reduction averages pixels within a sample
    assert focal_loss(maps, mask, gamma=0).item() == pytest.approx(-(math.log(pt1) + math.log(pt2)) / 2, rel=1e-12)
    two = _maps([[[0.2, 0.7]], [[0.5, 0.5]]])
    per = focal_loss(two, torch.tensor([[[0, 1]], [[1, 1]]]), reduction="none")
    pt3 = 0.5 * s + 0.5 * (1 - s) + s
    assert per[0].item() == pytest.approx(expected, rel=1e-12)
    assert per[1].item() == pytest.approx(-((1 - pt3) ** 2) * math.log(pt3), rel=1e-12)
    # (B, 1, H, W) masks are accepted
    assert focal_loss(maps, mask[:, None]).item() == pytest.approx(expected, rel=1e-12)


def test_dice_hand_computed():
    p = torch.tensor([[0.5, 1.0, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    d0 = (2 * (0.5 + 1.0) + 1) / ((0.5 + 1 + 0.25) + 2 + 1)  # 4 / 4.75
    d1 = (0 + 1) / (0 + 0 + 1)
    assert dice_loss(p, t).item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-12)
    assert dice_loss(p, t, reduction="none").tolist() == pytest.approx([1 - d0, 1 - d1], rel=1e-12)


def test_segmentation_loss_is_focal_plus_two_dice():
    a = np.array([[[0.2, 0.7], [0.9, 0.4]]])
    m = np.array([[[0, 1], [1, 0]]])
    s = 1e-5
    onehot = np.stack([1 - m, m], 1).clip(s, 1 - s)
    p = np.stack([1 - a, a], 1)
    pt = (onehot * p).sum(1) + s
    focal = np.mean(-((1 - pt) ** 2) * np.log(pt))
    dice_n = 1 - (2 * ((1 - a) * (1 - m)).sum() + 1) / ((1 - a).sum() + (1 - m).sum() + 1)
    dice_a = 1 - (2 * (a * m).sum() + 1) / (a.sum() + m.sum() + 1)
    got = segmentation_loss(_maps(a.tolist()), torch.tensor(m)).item()
    assert got == pytest.approx(focal + dice_n + dice_a, rel=1e-12)


def _anchor(dot: float, e: int = 3) -> torch.Tensor:
    """(E, 2) unit anchors with <T_N, T_A> = dot."""
    tn = torch.zeros(e, dtype=torch.float64)
    tn[0] = 1
    ta = torch.zeros(e, dtype=torch.float64)
    ta[0], ta[1] = dot, math.sqrt(1 - dot**2)
    return torch.stack([tn, ta], -1)


def test_disentangle_reference_is_square_of_mean_and_paper_mean_of_squares():
    anchors = torch.stack([_anchor(0.5), _anchor(0.5), _anchor(-0.1)])
    assert disentangle_loss_reference(anchors).item() == pytest.approx(((0.5 + 0.5 - 0.1) / 3) ** 2, rel=1e-12)
    classes = torch.stack([_anchor(0.5), _anchor(-0.1)])
    assert disentangle_loss_paper(classes).item() == pytest.approx((0.25 + 0.01) / 2, rel=1e-12)


def test_image_losses_hand_computed():
    anchors = torch.stack([_anchor(0.0), _anchor(0.0)])  # T_N = e0, T_A = e1
    x = torch.tensor([[0.6, 0.8, 0.0], [0.8, 0.0, 0.6]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    # CE on raw dots: logits (0.6, 0.8) and (0.8, 0.0)
    ce = (
        -math.log(math.exp(0.8) / (math.exp(0.6) + math.exp(0.8))) - math.log(math.exp(0.8) / (math.exp(0.8) + 1))
    ) / 2
    assert image_ce_loss(x, anchors, y).item() == pytest.approx(ce, rel=1e-12)
    # BCE on P(anomaly) = sigmoid(t * (x.T_A - x.T_N)) with t = 10
    p0 = 1 / (1 + math.exp(-10 * (0.8 - 0.6)))
    p1 = 1 / (1 + math.exp(-10 * (0.0 - 0.8)))
    bce = (-math.log(p0) - math.log(1 - p1)) / 2
    assert image_bce_loss(x, anchors, y, temperature=10.0).item() == pytest.approx(bce, rel=1e-10)


def _random_case(b=4, levels=3, hw=3, e=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.rand(b, 2, hw, hw, generator=g, dtype=torch.float64).softmax(1) for _ in range(levels)]
    masks = (torch.rand(b, hw, hw, generator=g) > 0.6).long()
    anchors = torch.nn.functional.normalize(torch.randn(b, e, 2, generator=g, dtype=torch.float64), dim=1)
    image = torch.nn.functional.normalize(torch.randn(b, e, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 1, 1, 0])[:b]
    return maps, masks, anchors, image, labels


def test_stage1_reference_uses_last_level_only():
    maps, masks, anchors, image, labels = _random_case()
    out = stage1_loss(maps, masks, None, anchors, variant="reference", disentangle_weight=0.1)
    dots = (anchors[..., 0] * anchors[..., 1]).sum(-1)
    expected = segmentation_loss(maps[-1], masks).item() + 0.1 * dots.mean().item() ** 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-12)
    maps2 = [torch.full_like(maps[0], 0.5)] + maps[1:]
    assert stage1_loss(maps2, masks, None, anchors)["loss"].item() == pytest.approx(expected, rel=1e-12)
    assert "image" not in out


def test_stage1_paper_sums_levels_and_adds_bce():
    maps, masks, anchors, image, labels = _random_case()
    class_anchors = anchors[:2]
    out = stage1_loss(
        maps,
        masks,
        None,
        anchors,
        variant="paper",
        disentangle_weight=0.1,
        image_embeds=image,
        labels=labels,
        class_anchors=class_anchors,
        class_keys=["a", "b"],
    )
    seg = sum(segmentation_loss(m, masks).item() for m in maps)
    bce = image_bce_loss(image, anchors, labels).item()
    dis = 0.1 * disentangle_loss_paper(class_anchors).item()
    assert out["loss"].item() == pytest.approx(seg + bce + dis, rel=1e-12)


def test_stage1_without_masks_falls_back_to_image_term():
    maps, masks, anchors, image, labels = _random_case()
    out = stage1_loss(maps, None, None, anchors, image_embeds=image, labels=labels)
    assert set(out) == {"image", "disentangle", "loss"}
    assert out["image"].item() == pytest.approx(image_bce_loss(image, anchors, labels).item(), rel=1e-12)
    # masks given but none valid is the same batch: no pixel truth anywhere
    none_valid = stage1_loss(maps, masks, torch.zeros(4, dtype=torch.bool), anchors, image_embeds=image, labels=labels)
    assert {k: v.item() for k, v in none_valid.items()} == {k: v.item() for k, v in out.items()}
    with pytest.raises(ValueError, match="image_embeds and labels"):
        stage1_loss(maps, None, None, anchors)


def _mixed_terms(variant, maps, masks, has_mask, anchors, image, labels):
    """The loss terms of `variant` on leaves made from `maps` (returned, with their gradients after backward)."""
    leaves = [m.clone().requires_grad_(True) for m in maps]
    if variant == "stage2":
        terms = stage2_loss(leaves, masks, has_mask, image, anchors, labels)
    else:
        extra = {"class_anchors": anchors[:2], "class_keys": ["a", "b"]} if variant == "paper" else {}
        terms = stage1_loss(leaves, masks, has_mask, anchors, variant, image_embeds=image, labels=labels, **extra)
    terms["loss"].backward()
    return {k: v.detach() for k, v in terms.items()}, leaves


@pytest.mark.parametrize("variant", ["reference", "paper", "stage2"])
def test_samples_without_a_mask_never_reach_the_pixel_terms(variant):
    """A mixed batch: the seg term is the masked samples' alone (value and gradient), whatever the unmasked
    samples' maps or placeholder masks hold; they get the image term instead."""
    maps, masks, anchors, image, labels = _random_case()
    has_mask = torch.tensor([True, False, True, False])
    clean, clean_leaves = _mixed_terms(variant, maps, masks, has_mask, anchors, image, labels)
    poisoned_maps = [m.clone() for m in maps]
    for m in poisoned_maps:
        m[~has_mask] = float("nan")  # were a row without a mask read, the loss and its gradient would be NaN
    poisoned_masks = masks.clone()
    poisoned_masks[~has_mask] = 1
    dirty, dirty_leaves = _mixed_terms(variant, poisoned_maps, poisoned_masks, has_mask, anchors, image, labels)
    assert set(dirty) == set(clean) and all(torch.equal(dirty[k], clean[k]) for k in clean)
    assert all(torch.isfinite(v) for v in dirty.values())
    levels = [maps[-1]] if variant == "reference" else maps
    seg = sum(segmentation_loss(m[has_mask], masks[has_mask]).item() for m in levels)
    assert clean["seg"].item() == pytest.approx(seg, rel=1e-12)
    for clean_leaf, dirty_leaf in zip(clean_leaves, dirty_leaves):
        if clean_leaf.grad is None:  # "reference" reads the last level only
            assert dirty_leaf.grad is None
            continue
        assert torch.equal(dirty_leaf.grad[~has_mask], torch.zeros_like(dirty_leaf.grad[~has_mask]))
        assert torch.equal(dirty_leaf.grad, clean_leaf.grad)
    if variant == "reference":  # the paper's BCE term, over the samples without a mask only
        image_term = image_bce_loss(image[~has_mask], anchors[~has_mask], labels[~has_mask])
    elif variant == "paper":
        image_term = image_bce_loss(image, anchors, labels)
    else:
        image_term = image_ce_loss(image, anchors, labels)
    assert clean["image"].item() == pytest.approx(image_term.item(), rel=1e-12)


def test_stage2_loss_and_mask_validity():
    maps, masks, anchors, image, labels = _random_case()
    out = stage2_loss(maps, masks, None, image, anchors, labels)
    expected = image_ce_loss(image, anchors, labels).item() + sum(segmentation_loss(m, masks).item() for m in maps)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-12)
    valid = torch.tensor([True, False, True, True])
    out = stage2_loss(maps, masks, valid, image, anchors, labels)
    expected = image_ce_loss(image, anchors, labels).item() + sum(
        segmentation_loss(m[valid], masks[valid]).item() for m in maps
    )
    assert out["loss"].item() == pytest.approx(expected, rel=1e-12)


class _ThreadGroup:
    """A two-'process' all-reduce made of threads, to check the reducer without a launcher."""

    def __init__(self, n):
        self.n, self.slots, self.barrier = n, [None] * n, threading.Barrier(n)

    def reducer(self, rank):
        def all_reduce_sum(t):
            self.barrier.wait()
            self.slots[rank] = t
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            return total

        return BatchReducer(world_size=self.n, all_reduce_sum=all_reduce_sum)


@pytest.mark.parametrize("variant", ["reference", "paper", "stage2"])
def test_split_batch_matches_global_batch(variant):
    """Average over 2 shards of (loss value, gradient) equals the full-batch loss and gradient."""
    maps0, masks, anchors0, image0, labels = _random_case(b=4, seed=3)
    valid = torch.tensor([True, False, True, True])  # uneven valid counts per shard
    keys = ["a", "b", "a", "c"]

    def leaves():
        return (
            [m.clone().requires_grad_(True) for m in maps0],
            anchors0.clone().requires_grad_(True),
            image0.clone().requires_grad_(True),
        )

    table_index = {"a": 0, "b": 1, "c": 3}  # one anchor per class, as in training

    def compute(maps, table, image, idx, reducer, owners=None):
        anchors = table[[table_index[k] for k in keys]]

        def sel(t):
            return t[idx]

        if variant == "stage2":
            return stage2_loss(
                [sel(m) for m in maps], sel(masks), sel(valid), sel(image), sel(anchors), sel(labels), reducer=reducer
            )["loss"]
        local_keys = list(dict.fromkeys(keys[i] for i in idx))
        return stage1_loss(
            [sel(m) for m in maps],
            sel(masks),
            sel(valid),
            sel(anchors),
            variant=variant,
            image_embeds=sel(image),
            labels=sel(labels),
            class_anchors=table[[table_index[k] for k in local_keys]],
            class_keys=local_keys,
            key_owners=owners,
            reducer=reducer,
        )["loss"]

    ml, al, il = leaves()
    full = compute(ml, al, il, [0, 1, 2, 3], None)
    full.backward()
    ref_grads = [m.grad for m in ml] + [al.grad, il.grad]

    shards = [[0, 1], [2, 3]]
    owners = {"a": 2, "b": 1, "c": 1}
    group = _ThreadGroup(2)
    results = [None, None]

    def worker(rank):
        m, a, i = leaves()
        loss = compute(m, a, i, shards[rank], group.reducer(rank), owners)
        loss.backward()
        results[rank] = (loss.detach(), [x.grad for x in m] + [a.grad, i.grad])

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    mean_value = (results[0][0] + results[1][0]) / 2
    assert mean_value.item() == pytest.approx(full.item(), rel=1e-10)
    for k, g in enumerate(ref_grads):
        g0, g1 = results[0][1][k], results[1][1][k]
        if g is None:
            assert g0 is None and g1 is None
            continue
        assert torch.allclose((g0 + g1) / 2, g, atol=1e-12), k

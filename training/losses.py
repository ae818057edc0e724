"""AA-CLIP training losses (the method: docs/training.md, "The method").

Every loss comes in two forms:

* a plain function on local tensors (``focal_loss``, ``dice_loss``, ...), the formula of the
  reference implementation, tested against hand-computed numbers;
* a *per-sample* form (``reduction="none"``) that the stage losses combine with a
  :class:`BatchReducer`, so that a batch split over several processes gives exactly the loss
  (value averaged over processes, and gradient after averaging over processes) of the same
  batch on one process. Means over the batch become ``sum_local / global_count * world_size``,
  and the non-linear terms (the square of a batch mean, the mean over the classes present in
  the batch) are linearised around their global value, which is exact for the gradient.
  On one process the reducer is the identity and the formulas are the plain ones.

**Samples without a mask** (image-level labels only: ``masks`` is None, or ``mask_valid`` is False for the
sample) never enter a pixel term: the focal and dice terms are computed on the rows that have a mask only
(the others are not even read) and averaged over the samples of the global batch that have one. Such samples
contribute image-level terms only:

* stage 2: ``CE(det @ T, y)``, over every sample as always;
* stage 1 ``"paper"``: its BCE image term, over every sample as always;
* stage 1 ``"reference"`` (whose own loss is pixel-only): the ``"paper"`` BCE image term, averaged over the
  samples *without* a mask. A batch where every sample has a mask is exactly the reference loss; one where
  none has is BCE + the orthogonality term.

A term whose samples are absent from the whole global batch is left out (it is not a zero term).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


__all__ = [
    "BatchReducer",
    "focal_loss",
    "dice_loss",
    "segmentation_loss",
    "disentangle_loss_reference",
    "disentangle_loss_paper",
    "image_bce_loss",
    "image_ce_loss",
    "stage1_loss",
    "stage2_loss",
]


# --------------------------------------------------------------------------------------------
# cross-process batch semantics
# --------------------------------------------------------------------------------------------


@dataclass
class BatchReducer:
    """Turns local per-sample terms into the loss of the *global* batch.

    ``all_reduce_sum`` sums a (detached) tensor over processes; ``world_size`` is the number of
    processes whose gradients are later *averaged*. The default is a single process.
    """

    world_size: int = 1
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)

    def global_sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(value.detach().clone())

    def mean(self, per_sample: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor | None:
        """Mean over the valid samples of the global batch; ``None`` when there are none anywhere."""
        if valid is None:
            valid = torch.ones(per_sample.shape[0], dtype=torch.bool, device=per_sample.device)
        count = self.global_sum(valid.sum().to(torch.float32))
        if float(count) == 0.0:
            return None
        local = per_sample[valid].sum()  # invalid rows never enter, even NaN ones; no valid row: 0 with a graph
        return local * (self.world_size / count.to(local.dtype))

    def square_of_mean(self, per_sample: torch.Tensor) -> torch.Tensor:
        """``(mean_global x)^2``, linearised so averaged gradients are exact: ``2 m s - m^2``."""
        s = self.mean(per_sample)
        assert s is not None
        m = self.global_sum(s) / self.world_size
        return 2.0 * m * s - m * m

    def mean_over_keys(self, values: torch.Tensor, keys: Sequence[str], key_owners: dict[str, int]) -> torch.Tensor:
        """Mean over the distinct keys of the global batch of a per-key value.

        ``key_owners[k]`` is the number of processes holding key ``k`` (each computes it);
        each copy is weighted so the averaged gradient counts every key once.
        """
        n_keys = len(key_owners)
        weights = torch.tensor([1.0 / key_owners[k] for k in keys], dtype=values.dtype, device=values.device)
        return (values * weights).sum() * (self.world_size / n_keys)


# --------------------------------------------------------------------------------------------
# primitive losses
# --------------------------------------------------------------------------------------------


def _as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) binary mask -> (B, H, W) float."""
    if mask.dim() == like.dim():  # (B, 1, H, W)
        mask = mask[:, 0]
    if mask.shape != like.shape[:1] + like.shape[2:]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match maps of shape {tuple(like.shape)}")
    return mask.to(like.dtype)


def focal_loss(
    probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5, reduction: str = "mean"
) -> torch.Tensor:
    """Focal loss on softmax probabilities, as the reference's ``FocalLoss(alpha=None)``.

    ``probs`` (B, C, H, W) are probabilities (not logits); ``mask`` (B, H, W) holds class indices.
    The one-hot target is clamped to ``[smooth/(C-1), 1-smooth]``, ``pt = sum(onehot*p) + smooth``,
    loss ``-(1-pt)^gamma * log(pt)`` averaged over pixels (``"mean"``) or per sample (``"none"``).
    """
    num_classes = probs.shape[1]
    target = _as_mask(mask, probs).long()
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype)
    if smooth:
        one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    pt = (one_hot * probs).sum(1) + smooth
    loss = -torch.pow(1.0 - pt, gamma) * torch.log(pt)
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss.flatten(1).mean(1)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Binary dice: per sample ``(2 sum(p t) + s) / (sum p + sum t + s)``, loss ``1 - mean``."""
    p = pred.flatten(1)
    t = target.to(pred.dtype).flatten(1)
    if p.shape != t.shape:
        raise ValueError(f"dice: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    per_sample = 1.0 - dice
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def segmentation_loss(
    maps: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 2.0,
    focal_smooth: float = 1e-5,
    dice_smooth: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """``focal(M, m) + dice(M[:, 0], 1 - m) + dice(M[:, 1], m)`` for a (B, 2, H, W) softmax map."""
    m = _as_mask(mask, maps)
    return (
        focal_loss(maps, m, gamma=gamma, smooth=focal_smooth, reduction=reduction)
        + dice_loss(maps[:, 0], 1.0 - m, smooth=dice_smooth, reduction=reduction)
        + dice_loss(maps[:, 1], m, smooth=dice_smooth, reduction=reduction)
    )


def _anchor_dots(anchors: torch.Tensor) -> torch.Tensor:
    """<T_N, T_A> per row of (K, E, 2) anchors."""
    return (anchors[..., 0] * anchors[..., 1]).sum(-1)


def disentangle_loss_reference(anchors: torch.Tensor) -> torch.Tensor:
    """Reference: ``(mean_b <T_N^b, T_A^b>)^2`` over the per-sample gathered (B, E, 2) anchors."""
    return _anchor_dots(anchors).mean() ** 2


def disentangle_loss_paper(class_anchors: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 5: ``|<T_N, T_A>|^2`` averaged over the distinct classes, (C, E, 2)."""
    return (_anchor_dots(class_anchors) ** 2).mean()


def image_ce_loss(image_embeds: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"):
    """Stage-2 image loss: cross-entropy on the raw dot products ``det @ T`` (no temperature)."""
    logits = torch.einsum("be,bek->bk", image_embeds, anchors)
    return F.cross_entropy(logits, labels.long(), reduction=reduction)


def image_bce_loss(
    image_embeds: torch.Tensor,
    anchors: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 100.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Paper stage-1 image term (our reading of Eq. 4): BCE of ``P(anomaly)``.

    The image is represented by its plain CLIP image embedding (L2-normalised), and
    ``P(anomaly) = softmax(temperature * [x.T_N, x.T_A])[1] = sigmoid(temperature * (x.T_A - x.T_N))``,
    the usual CLIP zero-shot probability; the BCE is computed stably from that logit.
    """
    sims = torch.einsum("be,bek->bk", image_embeds, anchors)
    logit = temperature * (sims[:, 1] - sims[:, 0])
    return F.binary_cross_entropy_with_logits(logit, labels.to(logit.dtype), reduction=reduction)


# --------------------------------------------------------------------------------------------
# stage losses
# --------------------------------------------------------------------------------------------


def _seg_per_sample(maps: torch.Tensor, masks: torch.Tensor, gamma: float) -> torch.Tensor:
    return segmentation_loss(maps, masks, gamma=gamma, reduction="none")


def _mask_rows(masks: torch.Tensor | None, mask_valid: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
    """(B,) bool: which samples have a pixel truth. None of them without ``masks``; all of them when ``masks`` is
    given without ``mask_valid``; else ``mask_valid`` (the batch's ``has_mask``)."""
    if masks is None:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    if mask_valid is None:
        return torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device)
    return mask_valid.to(device=masks.device, dtype=torch.bool)


def _pixel_term(
    levels: Sequence[torch.Tensor], masks: torch.Tensor, rows: torch.Tensor, gamma: float, reducer: BatchReducer
) -> torch.Tensor | None:
    """``sum_levels mean_{samples with a mask} seg(M_l, m)`` over the global batch; None when no sample has one.

    Only the ``rows`` (samples with a mask) of the maps and masks are read, so a sample without a mask cannot
    reach a focal or dice term, nor their gradients, whatever its map or placeholder mask holds.
    """
    total = None
    for maps in levels:
        term = reducer.mean(_seg_per_sample(maps[rows], masks[rows], gamma))
        if term is None:
            return None
        total = term if total is None else total + term
    return total


def stage1_loss(
    maps: Sequence[torch.Tensor],
    masks: torch.Tensor | None,
    mask_valid: torch.Tensor | None,
    sample_anchors: torch.Tensor,
    variant: str = "reference",
    disentangle_weight: float = 0.1,
    focal_gamma: float = 2.0,
    image_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    class_anchors: torch.Tensor | None = None,
    class_keys: Sequence[str] | None = None,
    key_owners: dict[str, int] | None = None,
    temperature: float = 100.0,
    reducer: BatchReducer | None = None,
) -> dict[str, torch.Tensor]:
    """Stage-1 (text) loss; returns ``{"loss", ...terms}``.

    ``"reference"``: seg loss of the **last** level only + ``w * (mean_b <T_N^b, T_A^b>)^2``.
    ``"paper"``: BCE image loss + seg loss summed over levels + ``w * mean_c |<T_N^c, T_A^c>|^2``
    over the distinct classes (``class_anchors`` (C, E, 2) with their ``class_keys``).

    Samples without a mask (``masks`` None, or ``mask_valid`` False) get no seg term (module docstring). In
    ``"reference"`` they get the ``"paper"`` BCE image term instead, averaged over the samples without a mask
    (``"image"``): a fully masked batch is the reference loss, a batch without masks BCE + disentangle, a mixed
    one seg over the masked samples + BCE over the others + disentangle. ``image_embeds`` and ``labels`` are
    needed whenever an image term is (``"paper"``, or any sample without a mask).
    """
    red = reducer or BatchReducer()
    terms: dict[str, torch.Tensor] = {}
    if variant not in ("reference", "paper"):
        raise ValueError(f"stage1_loss variant must be 'reference' or 'paper', got {variant!r}")
    rows = _mask_rows(masks, mask_valid, sample_anchors.shape[0], sample_anchors.device)
    if masks is not None:
        seg = _pixel_term([maps[-1]] if variant == "reference" else list(maps), masks, rows, focal_gamma, red)
        if seg is not None:
            terms["seg"] = seg
    if image_embeds is not None and labels is not None:
        per_sample = image_bce_loss(image_embeds, sample_anchors, labels, temperature, reduction="none")
        image = red.mean(per_sample, None if variant == "paper" else ~rows)
        if image is not None:
            terms["image"] = image
    elif variant == "paper" or not bool(rows.all()):
        raise ValueError("the stage-1 image term needs image_embeds and labels")
    if variant == "reference":
        terms["disentangle"] = disentangle_weight * red.square_of_mean(_anchor_dots(sample_anchors))
    else:
        if class_anchors is None or class_keys is None:
            raise ValueError("the paper disentangle term needs class_anchors and class_keys")
        owners = key_owners or dict.fromkeys(class_keys, 1)
        terms["disentangle"] = disentangle_weight * red.mean_over_keys(
            _anchor_dots(class_anchors) ** 2, class_keys, owners
        )
    terms["loss"] = sum(terms.values())
    return terms


def stage2_loss(
    maps: Sequence[torch.Tensor],
    masks: torch.Tensor | None,
    mask_valid: torch.Tensor | None,
    image_embeds: torch.Tensor,
    sample_anchors: torch.Tensor,
    labels: torch.Tensor,
    focal_gamma: float = 2.0,
    reducer: BatchReducer | None = None,
) -> dict[str, torch.Tensor]:
    """Stage-2 (vision) loss: ``CE(det @ T, y)`` over every sample + ``sum_levels seg(M_l, m)`` over the samples
    with a mask (``masks`` given and ``mask_valid`` True; module docstring). Without any, the seg term is absent."""
    red = reducer or BatchReducer()
    terms: dict[str, torch.Tensor] = {}
    terms["image"] = red.mean(image_ce_loss(image_embeds, sample_anchors, labels, reduction="none"))
    if masks is not None:
        seg = _pixel_term(maps, masks, _mask_rows(masks, mask_valid, labels.shape[0], labels.device), focal_gamma, red)
        if seg is not None:
            terms["seg"] = seg
    terms["loss"] = sum(terms.values())
    return terms

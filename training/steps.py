"""The pieces of one optimizer step (docs/training.md): per-stage loss terms on this process's shard, the
global-batch reduction and gradient averaging that make N processes equal one, and the checks around a step.

Stage 1 scores frozen DPAM features against anchors from the text branch being trained; stage 2 scores the
vision branch being trained against the anchors stored once at the start of the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .arguments import STAGES, AAClipTrainingArguments
from .augment import augment_batch, sample_seed
from .dpam import Stage1FeatureCache, dpam_features
from .losses import BatchReducer, stage1_loss, stage2_loss
from .models import stage_parameters


def make_optimizers(model, args: AAClipTrainingArguments, use_masks: bool, accelerator) -> tuple[dict, dict]:
    """``({stage: Adam}, {stage: MultiStepLR})`` over each stage's trainable parameters."""
    optimizers: dict[str, Any] = {}
    schedulers: dict[str, Any] = {}
    for stage in args.stages:
        params = stage_parameters(model, stage, use_masks)
        lr = args.text_lr if stage == "text" else args.vision_lr
        opt = torch.optim.Adam(params, lr=lr, betas=tuple(args.adam_betas), eps=args.adam_eps)
        milestones = args.text_milestones if stage == "text" else args.vision_milestones
        optimizers[stage] = accelerator.prepare_optimizer(opt)
        schedulers[stage] = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=args.lr_gamma)
    return optimizers, schedulers


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def make_reducer(world: int) -> BatchReducer:
    """The global-batch reducer of the losses: a plain one in one process, an all-reduce over ``world``."""
    if world == 1:
        return BatchReducer()
    return BatchReducer(world_size=world, all_reduce_sum=_all_reduce_sum)


def augment_inputs(args: AAClipTrainingArguments, stage: str, epoch: int, batch: dict, pixel_values, masks, mean, std):
    """Seeded per (seed, stage, epoch, dataset index): the same image gets the same draw in any process."""
    stage_no = STAGES.index(stage)
    seeds = [sample_seed(args.seed, stage_no * 100_000 + epoch, i) for i in batch["index"]]
    return augment_batch(pixel_values, masks, seeds, args.augment_config(stage), mean, std)


def _class_owners(local_classes: list[str], world: int) -> dict[str, int]:
    """How many processes hold each class of the global batch (the paper loss counts each class once)."""
    gathered = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(gathered, local_classes)
    else:
        gathered = [local_classes]
    owners: dict[str, int] = {}
    for classes in gathered:
        for c in classes:
            owners[c] = owners.get(c, 0) + 1
    return owners


class StageLosses:
    """The loss terms of each stage for one shard, reduced over the global batch (``losses.BatchReducer``)."""

    def __init__(
        self,
        model,
        processor,
        args: AAClipTrainingArguments,
        accelerator,
        reducer: BatchReducer,
        cache: Stage1FeatureCache | None,
    ):
        self.model, self.processor, self.args = model, processor, args
        self.accelerator, self.reducer, self.cache = accelerator, reducer, cache

    def _stage1_features(self, batch: dict, pixel_values: torch.Tensor):
        """DPAM features of the shard, from the cache once an image has been seen (``--cache-stage1-features``)."""
        if self.cache is not None and self.cache.has_all(batch["index"]):
            return self.cache.get(batch["index"], pixel_values.device, torch.float32)
        with self.accelerator.autocast():
            feats = dpam_features(self.model, pixel_values, self.args.dpam_start_layer, self.args.dpam_mode)
        if self.cache is not None:
            self.cache.put(batch["index"], feats)
        return feats

    def stage1(self, batch: dict, pixel_values: torch.Tensor, masks: torch.Tensor | None) -> dict:
        args, model = self.args, self.model
        names = batch["class_name"]
        feats = self._stage1_features(batch, pixel_values)
        local_classes = list(dict.fromkeys(names))
        owners = _class_owners(local_classes, self.reducer.world_size) if args.stage1_loss == "paper" else None
        with self.accelerator.autocast():
            class_anchors = model.compute_text_anchors(local_classes, self.processor).float()
        index = torch.tensor([local_classes.index(n) for n in names], device=class_anchors.device)
        sample_anchors = class_anchors[index]
        levels = feats.patch_embeds[-1:] if args.stage1_loss == "reference" else feats.patch_embeds
        maps = ()
        if masks is not None:
            maps = model.training_maps([f.float() for f in levels], sample_anchors, tuple(masks.shape[-2:]))
        return stage1_loss(
            maps,
            masks,
            batch["has_mask"].to(pixel_values.device) if masks is not None else None,
            sample_anchors,
            variant=args.stage1_loss,
            disentangle_weight=args.disentangle_weight,
            focal_gamma=args.focal_gamma,
            image_embeds=feats.image_embeds.float(),
            labels=batch["label"].to(pixel_values.device),
            class_anchors=class_anchors,
            class_keys=local_classes,
            key_owners=owners,
            temperature=model.config.similarity_temperature,
            reducer=self.reducer,
        )

    def stage2(self, batch: dict, pixel_values: torch.Tensor, masks: torch.Tensor | None) -> dict:
        model = self.model
        with self.accelerator.autocast():
            patch_embeds, image_embeds = model.get_vision_features(pixel_values)
        anchors = model.text_anchors_for(batch["class_name"]).float()
        maps = ()
        if masks is not None:
            maps = model.training_maps([f.float() for f in patch_embeds], anchors, tuple(masks.shape[-2:]))
        return stage2_loss(
            maps,
            masks,
            batch["has_mask"].to(pixel_values.device) if masks is not None else None,
            image_embeds.float(),
            anchors,
            batch["label"].to(pixel_values.device),
            focal_gamma=self.args.focal_gamma,
            reducer=self.reducer,
        )


def global_values(terms: dict, reducer: BatchReducer, world: int) -> dict[str, float]:
    """The loss terms of the global batch as numbers (each process holds its share of the sum)."""
    values = torch.stack([terms[k].detach().float() for k in sorted(terms)])
    values = reducer.global_sum(values) / world
    return {k: float(v) for k, v in zip(sorted(terms), values)}


def average_gradients(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Average the trainable gradients over processes (one flat all-reduce)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def nonfinite_parameter(model, params: Sequence[torch.nn.Parameter]) -> str | None:
    """``"<name> non-finite (k of n values NaN/inf)"`` for the first non-finite parameter, None if all are finite."""
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in params])
    if bool(finite.all()):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    bad = [p for p, ok in zip(params, finite.tolist()) if not ok]
    first = bad[0]
    count = int((~torch.isfinite(first.detach())).sum())
    more = f" (and {len(bad) - 1} more parameter(s))" if len(bad) > 1 else ""
    return f"{names.get(id(first), '?')} non-finite ({count} of {first.numel()} values NaN/inf){more}"

"""Two-stage AA-CLIP training with Accelerate (SPEC section 6; docs/training.md).

Stage 1 ("text") trains the text adapters and the text head against frozen DPAM visual features;
stage 2 ("vision") trains the vision adapters, the per-level ``seg_projections`` and the
``det_projection`` against text anchors computed once with the stage-1 text branch. Every
backbone weight has ``requires_grad=False``.

Design choices that make the run exact and reproducible:

* **Global batch.** ``--text-batch-size`` / ``--vision-batch-size`` are *global* batch sizes. Each
  epoch's order is a permutation drawn from (seed, stage, epoch); consecutive global batches are
  split in contiguous per-process shards. The losses reduce over the global batch (see
  ``losses.BatchReducer``) and the gradients of the trainable parameters are averaged over
  processes, so N processes equal one process with the same global batch (up to float rounding).
  The model is not wrapped in DDP: only the small trainable set is all-reduced, and the model's
  own methods (anchors, DPAM features, vision features) are called directly.
* **Augmentation** is seeded per (seed, stage, epoch, dataset index): independent of the number
  of processes, workers and of resuming mid-epoch.
* **Checkpoints** (``accelerator.save_state``: optimizer, scheduler, RNG states, plus the trainable
  weights, stored anchors and the position in the run) are written to a temporary folder and
  renamed atomically; the previous one is deleted only afterwards. ``--resume`` continues from
  the newest complete one at the exact batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import set_seed
from datasets import Dataset
from tqdm.auto import tqdm

from ..data.dataset import AnomalyDataset
from ..data.hf_datasets import dataset_samples
from ..data.image_io import BadInputError
from ..data.readers import load_samples
from ..data.samples import summarize_samples, verify_samples
from ..data.sampling import sample_shots
from ..modeling.modeling_aaclip import AAClipModel
from ..runtime.loading import is_aaclip_folder, processor_for
from .arguments import STAGES, NonFiniteLossError, NonFiniteWeightsError, TrainingArguments
from .augment import augment_batch, sample_seed
from .checkpointing import (
    CHECKPOINT_PREFIX,
    STATE_FILE,
    TrainableWeights,
    TrainState,
    changed_arguments,
    checkpoint_is_finite,
    list_checkpoints,
    load_state_weights_only,
    repair_log,
    write_run_arguments,
)
from .dpam import Stage1FeatureCache, dpam_features
from .losses import BatchReducer, stage1_loss, stage2_loss
from .trackers import PROJECT_NAME, accelerator_kwargs, grad_norm, run_config, step_values


logger = logging.getLogger("aaclip_hf.training")


# ----------------------------------------------------------------------------------------------
# checkpointed state
# ----------------------------------------------------------------------------------------------


def stage_parameters(model, stage: str, use_masks: bool = True) -> list[torch.nn.Parameter]:
    """What a stage trains: text adapters + text head, or vision adapters + seg/det projections.

    Without masks the seg projections get no gradient and are left out of stage 2.
    """
    if stage == "text":
        modules = [layer.adapter for layer in model.text_model.encoder.layers if hasattr(layer, "adapter")]
        if model.config.text_head == "adapter":
            modules.append(model.text_projector)
    elif stage == "vision":
        modules = [layer.adapter for layer in model.vision_model.encoder.layers if hasattr(layer, "adapter")]
        if use_masks:
            modules += list(model.seg_projections)
        modules.append(model.det_projection)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return [p for m in modules for p in m.parameters()]


def set_trainable(model, params: Sequence[torch.nn.Parameter]) -> None:
    """``requires_grad`` True exactly on ``params`` (everything else, backbone included, frozen)."""
    wanted = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def epoch_batches(
    num_samples: int, global_batch: int, seed: int, stage: int, epoch: int, rank: int, world: int
) -> list[list[int]]:
    """This process's shard of each global batch of one epoch (a seeded permutation, no drop_last).

    A global batch is split into ``world`` contiguous shards (the first ones one larger when it
    does not divide); a final batch smaller than ``world`` is dropped (it cannot be sharded).
    """
    g = torch.Generator().manual_seed(sample_seed(seed, 1_000_000 + stage, epoch))
    order = torch.randperm(num_samples, generator=g).tolist()
    out = []
    for start in range(0, num_samples, global_batch):
        chunk = order[start : start + global_batch]
        if len(chunk) < world:
            continue
        out.append([int(i) for i in np.array_split(np.asarray(chunk), world)[rank]])
    return out


def _collate(items: list[dict]) -> dict:
    batch = {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "label": torch.tensor([int(it["label"]) for it in items]),
        "class_name": [it["class_name"] for it in items],
        "index": [int(it["index"]) for it in items],
        "has_mask": torch.tensor([bool(it["has_mask"]) for it in items]),
    }
    if "mask" in items[0]:
        batch["mask"] = torch.stack([it["mask"] for it in items])
    return batch


def _fingerprint(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.image_path}|{s.label}|{s.class_name}|{s.mask_path}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# model loading
# ----------------------------------------------------------------------------------------------


def load_model_and_processor(args: TrainingArguments):
    """An AA-CLIP model folder as it is, or a fresh AA-CLIP on a plain CLIP (adapters xavier, seeded)."""
    if os.path.isdir(args.model) and is_aaclip_folder(args.model):
        if args.image_size is not None or args.hidden_act is not None:
            raise ValueError("--image-size / --hidden-act only apply when building from a plain CLIP model")
        model = AAClipModel.from_pretrained(args.model)
        return model, processor_for(model, args.model)
    overrides = {}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.hidden_act is not None:
        overrides["hidden_act"] = args.hidden_act
    model = AAClipModel.from_clip_pretrained(args.model, seed=args.seed, **overrides)
    processor = processor_for(model)
    model.refresh_text_anchors(processor)  # the generic anchor of the fresh model
    return model, processor


def _is_text_adapter_key(name: str) -> bool:
    return name.startswith("text_projector.") or (name.startswith("text_model.") and ".adapter." in name)


def plain_clip_text_branch(model, processor):
    """The same model with its untrained text adapters and text head dropped (``text_adapter_layers=0``,
    ``text_head="clip"``): its text branch is then exactly CLIP's text tower with ``text_projection``.

    Stage 2 without stage 1 needs this: the reference takes its anchors from plain CLIP (``encode_text``) when
    there is no trained text adapter, in training and at test time; xavier-random adapters and head would make
    meaningless anchors. Every stored anchor is recomputed with the plain branch (and fingerprinted).
    """
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.text_adapter_layers = 0
    config.text_head = "clip"
    config.untrained_text_adapters = False
    state = {k: v for k, v in model.state_dict().items() if not _is_text_adapter_key(k)}
    plain = model.__class__(config).to(device=model.device, dtype=model.dtype)
    plain.load_state_dict(state, strict=True)
    plain.train(model.training)
    plain.refresh_text_anchors(processor)
    return plain


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------


def _make_accelerator(accelerator_cls, args: TrainingArguments):
    """An ``Accelerator``; in a single process that already made one with other settings (a notebook, a
    test session), the process-wide state is reset first instead of failing."""
    tracking = accelerator_kwargs(args.report_to, args.output_dir)
    try:
        return accelerator_cls(mixed_precision=args.mixed_precision, cpu=args.cpu, **tracking)
    except ValueError as err:
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return accelerator_cls(mixed_precision=args.mixed_precision, cpu=args.cpu, **tracking)


class Trainer:
    """Runs the requested stages; see the module docstring. ``Trainer(args).train()``."""

    def __init__(self, args: TrainingArguments, model=None, processor=None, samples=None):

        args.validate()
        self.args = args
        self.accelerator = _make_accelerator(Accelerator, args)
        acc = self.accelerator
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        logger.setLevel(logging.INFO if acc.is_main_process else logging.WARNING)
        logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
        set_seed(args.seed)
        self.world = acc.num_processes
        self.rank = acc.process_index
        for name in ("text_batch_size", "vision_batch_size"):
            if getattr(args, name) % self.world:
                raise ValueError(
                    f"--{name.replace('_', '-')} {getattr(args, name)} (a global batch) is not divisible "
                    f"by the {self.world} processes"
                )
        if model is None:
            model, processor = load_model_and_processor(args)
        self.model = model.to(acc.device)
        self.processor = processor
        self.model = self._text_branch_for_run(self.model)
        self._stray_warned: set[str] = set()
        if isinstance(samples, Dataset):  # a `datasets.Dataset` in the hf_datasets schema
            samples = dataset_samples(samples)
        self.samples = samples if samples is not None else self._load_samples()
        self.use_masks = any(s.label == 1 and s.mask_path is not None for s in self.samples)
        self._describe_data()
        self.reducer = self._make_reducer()
        self.state = TrainState(stages=args.stages, data_fingerprint=_fingerprint(self.samples))
        self.weights = TrainableWeights(self.model)
        set_trainable(self.model, [])
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        for stage in args.stages:
            params = stage_parameters(self.model, stage, self.use_masks)
            lr = args.text_lr if stage == "text" else args.vision_lr
            opt = torch.optim.Adam(params, lr=lr, betas=tuple(args.adam_betas), eps=args.adam_eps)
            milestones = args.text_milestones if stage == "text" else args.vision_milestones
            self.optimizers[stage] = acc.prepare_optimizer(opt)
            self.schedulers[stage] = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=list(milestones), gamma=args.lr_gamma
            )
        acc.register_for_checkpointing(self.state, self.weights, *self.schedulers.values())
        self.checkpoint_root = os.path.join(args.output_dir, "checkpoints")
        self.log_path = os.path.join(args.output_dir, "train_log.jsonl")
        self.cache = Stage1FeatureCache() if args.cache_stage1_features else None
        self.image_mean = list(processor.image_processor.image_mean)
        self.image_std = list(processor.image_processor.image_std)
        self.last_grad_norm = math.nan  # L2 norm of the last step's gradients (train log, trackers)

    # ------------------------------------------------------------------ setup helpers

    def _load_samples(self):

        args = self.args
        samples = load_samples(
            args.train_data,
            args.split,
            skip_bad_files=args.skip_bad_files,
            allow_outside_root=args.allow_outside_root,
        )
        # Pre-flight scan: decode every image and mask once now, so a bad file stops the run (or, with
        # --skip-bad-files, is dropped, logged and counted) before training starts, never hours in. Skipping
        # happens before the shots are drawn, so a k-shot set keeps its 1:1 ratio.
        show = args.progress and self.accelerator.is_main_process
        if args.skip_bad_files:
            samples = verify_samples(samples, skip_bad_files=True, progress=show)
        samples = sample_shots(samples, args.shots, seed=args.seed)
        return samples if args.skip_bad_files else verify_samples(samples, progress=show)

    def _describe_data(self) -> None:

        counts = summarize_samples(self.samples)
        n_anom = sum(r["anomaly"] for r in counts.values())
        n_masked = sum(r["with_mask"] for r in counts.values())
        if n_anom == 0:
            raise BadInputError(
                f"the training data ({len(self.samples)} images) has no anomalous image (label 1); AA-CLIP "
                "learns from normal and anomalous examples",
                None,
                "label",
            )
        only_normal = [c for c, r in counts.items() if r["anomaly"] == 0]
        if only_normal:
            logger.warning("class(es) %s have no anomalous image: they take part as normal examples only", only_normal)
        logger.info(
            "training data: %d images, %d classes (%s), %d anomalous, %d with masks",
            len(self.samples),
            len(counts),
            ", ".join(counts),
            n_anom,
            n_masked,
        )
        if not self.use_masks:
            logger.warning(
                "no anomaly has a mask: training with the image-level loss only (no segmentation loss; "
                "stage 2 leaves the seg projections untouched)"
            )
        elif n_masked < n_anom:
            logger.warning("%d anomalous images have no mask: they get the image loss only", n_anom - n_masked)

    def _make_reducer(self) -> BatchReducer:
        if self.world == 1:
            return BatchReducer()

        def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
            return t

        return BatchReducer(world_size=self.world, all_reduce_sum=all_reduce_sum)

    def _dataset(self):

        return AnomalyDataset(self.samples, self.processor, with_masks=self.use_masks)

    # ------------------------------------------------------------------ checkpoints

    def _text_branch_for_run(self, model):
        """Stage 2 without stage 1 on untrained text adapters: switch to the plain CLIP text branch (see
        `plain_clip_text_branch`). A run with stage 1 marks the adapters as trained (saved in config.json)."""
        config = model.config
        if not config.include_text_model:
            return model
        if "text" in self.args.stages:
            config.untrained_text_adapters = False
            return model
        if not config.untrained_text_adapters:
            return model
        logger.info(
            "no stage 1 and the model's text adapters are untrained (built from a plain CLIP): stage 2 takes its "
            "anchors from plain CLIP (text tower + text_projection), as the reference does; the saved model keeps "
            "that text branch (text_adapter_layers=0, text_head='clip')"
        )
        return plain_clip_text_branch(model, self.processor)

    def _checkpoints(self) -> list[str]:
        """Complete checkpoints, oldest first; anything else under checkpoints/ is named once and left alone."""
        found, stray = list_checkpoints(self.checkpoint_root)
        new = [n for n in stray if n not in self._stray_warned]
        if new and self.accelerator.is_main_process:
            logger.warning(
                "ignoring %s under %s: not a complete %sN checkpoint (an interrupted save, or not written by "
                "aaclip train)",
                ", ".join(new),
                self.checkpoint_root,
                CHECKPOINT_PREFIX,
            )
        self._stray_warned.update(new)
        return found

    def _last_good_checkpoint(self) -> str:
        """The newest checkpoint whose trainable weights are all finite, for error messages."""
        for path in reversed(self._checkpoints()):
            if checkpoint_is_finite(path):
                return path
        return "(none yet)"

    def save_checkpoint(self) -> str:
        """``save_state`` into a temporary folder, atomic rename, then drop older checkpoints."""
        acc = self.accelerator
        final = os.path.join(self.checkpoint_root, f"{CHECKPOINT_PREFIX}{self.state.global_step}")
        tmp = os.path.join(self.checkpoint_root, f".tmp-{CHECKPOINT_PREFIX}{self.state.global_step}")
        self._stray_warned.add(os.path.basename(tmp))  # our own save in progress, not a stray folder
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        acc.wait_for_everyone()
        acc.save_state(tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_run_arguments(tmp, self.args)
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:  # last: marks it complete
                json.dump(self.state.state_dict(), f, indent=2)
            old = [p for p in self._checkpoints() if p != final]
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _resume(self) -> None:
        args, acc = self.args, self.accelerator
        if args.resume is None:
            if self._checkpoints() and not args.overwrite_output_dir:
                raise FileExistsError(
                    f"{self.checkpoint_root} holds checkpoints; pass --resume to continue or "
                    "--overwrite-output-dir to start again"
                )
            return
        path = self._checkpoints()[-1] if args.resume == "latest" and self._checkpoints() else None
        if args.resume != "latest":
            path = args.resume
        if path is None:
            logger.info("--resume: no checkpoint in %s yet, starting from the beginning", self.checkpoint_root)
            return
        stages, fingerprint = list(self.state.stages), self.state.data_fingerprint
        load_state_weights_only(acc, path)  # first: a tampered checkpoint is refused before anything else
        changed = changed_arguments(path, args)
        if changed is None:
            logger.warning("%s records no run arguments (an older version): changed arguments cannot be checked", path)
        elif changed and not args.resume_changed_args:
            raise ValueError(
                f"--resume: {len(changed)} argument(s) that change the result differ from the run that wrote {path}: "
                f"{'; '.join(changed)}. Resume with the same values, start again with --overwrite-output-dir, or "
                "pass --resume-changed-args to continue anyway"
            )
        elif changed:
            logger.warning("--resume-changed-args: continuing %s with changed arguments: %s", path, "; ".join(changed))
        if list(self.state.stages) != stages:
            raise ValueError(f"checkpoint {path} is from a run with stages {self.state.stages}, this run has {stages}")
        if self.state.data_fingerprint != fingerprint:
            raise ValueError(
                f"checkpoint {path} was trained on other data (fingerprint {self.state.data_fingerprint} "
                f"vs {fingerprint}); same --train-data/--shots/--seed are needed to resume"
            )
        logger.info(
            "resumed from %s: stage %s, epoch %d, batch %d, step %d",
            path,
            self.state.stages[self.state.stage_index] if self.state.stage_index < len(stages) else "done",
            self.state.epoch,
            self.state.step_in_epoch,
            self.state.global_step,
        )

    # ------------------------------------------------------------------ steps

    def _stage1_terms(self, batch: dict, pixel_values: torch.Tensor, masks: torch.Tensor | None) -> dict:
        args, model = self.args, self.model
        names = batch["class_name"]
        if self.cache is not None and self.cache.has_all(batch["index"]):
            feats = self.cache.get(batch["index"], pixel_values.device, torch.float32)
        else:
            with self.accelerator.autocast():
                feats = dpam_features(model, pixel_values, args.dpam_start_layer, args.dpam_mode)
            if self.cache is not None:
                self.cache.put(batch["index"], feats)
        local_classes = list(dict.fromkeys(names))
        owners = None
        if args.stage1_loss == "paper":
            gathered = [None] * self.world
            if self.world > 1:
                torch.distributed.all_gather_object(gathered, local_classes)
            else:
                gathered = [local_classes]
            owners: dict[str, int] = {}
            for classes in gathered:
                for c in classes:
                    owners[c] = owners.get(c, 0) + 1
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

    def _stage2_terms(self, batch: dict, pixel_values: torch.Tensor, masks: torch.Tensor | None) -> dict:
        model = self.model
        with self.accelerator.autocast():
            patch_embeds, image_embeds = model.get_vision_features(pixel_values)
        anchors = model.anchors_for(batch["class_name"]).float()
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

    def _reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the trainable gradients over processes (one flat all-reduce)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def train_step(self, stage: str, batch: dict, epoch: int) -> dict[str, float] | None:
        """One optimizer step on this process's shard; returns the global-batch loss terms (None if skipped)."""
        args, acc = self.args, self.accelerator
        device = acc.device
        pixel_values = batch["pixel_values"].to(device)
        masks = batch["mask"].to(device) if self.use_masks else None
        if args.augment:
            stage_no = STAGES.index(stage)
            seeds = [sample_seed(args.seed, stage_no * 100_000 + epoch, i) for i in batch["index"]]
            pixel_values, masks = augment_batch(
                pixel_values, masks, seeds, args.augment_config(stage), self.image_mean, self.image_std
            )
        terms = (
            self._stage1_terms(batch, pixel_values, masks)
            if stage == "text"
            else self._stage2_terms(batch, pixel_values, masks)
        )
        values = torch.stack([terms[k].detach().float() for k in sorted(terms)])
        values = self.reducer.global_sum(values) / self.world
        logged = {k: float(v) for k, v in zip(sorted(terms), values)}
        optimizer = self.optimizers[stage]
        if not math.isfinite(logged["loss"]):
            where = f"stage {stage}, epoch {epoch}, step {self.state.global_step + 1}"
            if args.skip_nonfinite:
                logger.warning("non-finite loss (%s) at %s: step skipped (--skip-nonfinite)", logged["loss"], where)
                optimizer.zero_grad(set_to_none=True)
                return None
            raise NonFiniteLossError(
                f"the loss became {logged['loss']} at {where}; stopped. The last good checkpoint is "
                f"{self._last_good_checkpoint()}; continue with --resume (consider a lower learning rate or "
                "--mixed-precision no), or pass --skip-nonfinite to skip such steps"
            )
        acc.backward(terms["loss"])
        self._reduce_grads(optimizer.optimizer.param_groups[0]["params"])
        self.last_grad_norm = grad_norm(optimizer.optimizer.param_groups[0]["params"])  # for the log and trackers
        optimizer.step()
        self._check_finite_weights(stage, epoch, optimizer)
        self.schedulers[stage].step()
        optimizer.zero_grad(set_to_none=True)
        return logged

    def _check_finite_weights(self, stage: str, epoch: int, optimizer) -> None:
        """Stop at the first optimizer step that leaves a trainable parameter NaN/inf: such weights are never
        saved (the checkpoints and the final model come after this check)."""
        params = [p for group in optimizer.optimizer.param_groups for p in group["params"]]
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in params])
        if bool(finite.all()):
            return
        names = {id(p): n for n, p in self.model.named_parameters()}
        bad = [p for p, ok in zip(params, finite.tolist()) if not ok]
        first = bad[0]
        count = int((~torch.isfinite(first.detach())).sum())
        more = f" (and {len(bad) - 1} more parameter(s))" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(
            f"the optimizer step at stage {stage}, epoch {epoch}, step {self.state.global_step + 1} made parameter "
            f"{names.get(id(first), '?')} non-finite ({count} of {first.numel()} values NaN/inf){more}; stopped "
            f"without saving it. The last good checkpoint is {self._last_good_checkpoint()}; continue with --resume "
            "and a lower learning rate"
        )

    # ------------------------------------------------------------------ stages

    def _start_stage(self, stage: str) -> None:
        model = self.model
        set_trainable(model, stage_parameters(model, stage, self.use_masks))
        if stage == "vision" and not self.state.anchors_ready:
            classes = sorted({s.class_name for s in self.samples})
            with torch.no_grad():
                anchors = model.compute_text_anchors(classes, self.processor)
            model.store_text_anchors(classes, anchors)
            self.state.anchors_ready = True
            if "text" in self.args.stages:
                source = "the stage-1 text branch"
            elif model.config.text_head == "clip" and model.config.text_adapter_layers == 0:
                source = "the plain CLIP text branch (text tower + text_projection; no trained text adapters)"
            else:
                source = "the model's trained text branch (no stage 1 in this run)"
            logger.info("stage 2 anchors computed once with %s for %d classes", source, len(classes))
        model.train()

    def save_epoch_model(self, epoch: int) -> str:
        """``OUTPUT/epoch_models/epoch_{epoch}``: a complete model (``save_pretrained``) after a stage-2 epoch, as
        the reference keeps ``image_adapter_{epoch}`` for its per-epoch evaluation. Every stored anchor is
        recomputed for the saved copy only; the run's own anchors are left exactly as they are."""
        acc, model = self.accelerator, self.model
        final = os.path.join(self.args.output_dir, "epoch_models", f"epoch_{epoch}")
        if acc.is_main_process:
            saved = (model.text_anchors, list(model.config.anchor_class_names), model.config.anchor_fingerprint)
            tmp = os.path.join(os.path.dirname(final), f".tmp-epoch_{epoch}")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                if model.config.include_text_model:
                    model.refresh_text_anchors(self.processor)
                model.save_pretrained(tmp)
                self.processor.save_pretrained(tmp)
            finally:
                model.text_anchors, model.config.anchor_class_names, model.config.anchor_fingerprint = saved
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            logger.info("saved the epoch-%d model to %s", epoch, final)
        acc.wait_for_everyone()
        return final

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def train(self) -> str:

        args, acc, state = self.args, self.accelerator, self.state
        if acc.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
            if args.resume is None and args.overwrite_output_dir:
                shutil.rmtree(self.checkpoint_root, ignore_errors=True)
                if os.path.exists(self.log_path):
                    os.remove(self.log_path)
        acc.wait_for_everyone()
        self._resume()
        if acc.is_main_process:  # torn lines (a crash mid-write) and records of steps that will be redone go
            repair_log(self.log_path, self.state.global_step)
        if acc.is_main_process:
            with open(os.path.join(args.output_dir, "training_args.json"), "w", encoding="utf-8") as f:
                json.dump({**dataclasses.asdict(args), "num_processes": self.world}, f, indent=2)
            for path in os.listdir(self.checkpoint_root) if os.path.isdir(self.checkpoint_root) else []:
                if path.startswith(".tmp-"):  # an interrupted save
                    shutil.rmtree(os.path.join(self.checkpoint_root, path), ignore_errors=True)
        if args.report_to != "none":
            acc.init_trackers(
                PROJECT_NAME, config=run_config({**dataclasses.asdict(args), "num_processes": self.world})
            )
        dataset = self._dataset()
        for stage_index, stage in enumerate(args.stages):
            if stage_index < state.stage_index:
                continue
            epochs = args.text_epochs if stage == "text" else args.vision_epochs
            global_batch = args.text_batch_size if stage == "text" else args.vision_batch_size
            per_epoch = len(epoch_batches(len(dataset), global_batch, args.seed, stage_index, 0, 0, self.world))
            total = epochs * per_epoch if args.max_steps is None else min(epochs * per_epoch, args.max_steps)
            self._start_stage(stage)
            logger.info(
                "stage %d/%d (%s): %d epochs x %d steps, global batch %d (%d per process), lr %g",
                stage_index + 1,
                len(args.stages),
                stage,
                epochs,
                per_epoch,
                global_batch,
                global_batch // self.world,
                self.schedulers[stage].get_last_lr()[0],
            )
            bar = tqdm(
                total=total,
                initial=state.stage_step,
                desc=f"stage {stage_index + 1} ({stage})",
                disable=not (acc.is_main_process and args.progress),
                dynamic_ncols=True,
            )
            stop = state.stage_step >= total
            while state.epoch < epochs and not stop:
                batches = epoch_batches(
                    len(dataset), global_batch, args.seed, stage_index, state.epoch, self.rank, self.world
                )
                loader = torch.utils.data.DataLoader(
                    dataset,
                    batch_sampler=batches[state.step_in_epoch :],
                    num_workers=args.num_workers,
                    collate_fn=_collate,
                    persistent_workers=False,
                )
                started = time.time()
                for batch in loader:
                    logged = self.train_step(stage, batch, state.epoch)
                    state.step_in_epoch += 1
                    state.stage_step += 1
                    state.global_step += 1
                    bar.update(1)
                    if logged is not None:
                        bar.set_postfix(loss=f"{logged['loss']:.4f}")
                        if state.stage_step % max(1, args.log_every) == 0 or state.stage_step == 1:
                            record = {
                                "stage": stage,
                                "epoch": state.epoch,
                                "step": state.global_step,
                                "lr": self.schedulers[stage].get_last_lr()[0],
                                **logged,
                                "grad_norm": self.last_grad_norm,
                            }
                            self._log(record)
                            acc.log(step_values(record), step=state.global_step)
                            logger.info(json.dumps(record))
                    if state.stage_step >= total:
                        stop = True
                        break
                    # Not on an epoch's last batch: the epoch-end checkpoint follows at once, and saving one step
                    # twice would delete the only complete checkpoint before its replacement is in place.
                    last_batch = state.step_in_epoch >= len(batches)
                    if (
                        args.checkpointing_steps
                        and state.global_step % args.checkpointing_steps == 0
                        and not last_batch
                    ):
                        self.save_checkpoint()
                epoch_done = state.step_in_epoch >= len(batches)
                if epoch_done:
                    seconds = time.time() - started
                    logger.info("stage %s epoch %d done in %.1fs", stage, state.epoch, seconds)
                    acc.log({f"{stage}/epoch_seconds": seconds, f"{stage}/epoch": state.epoch}, step=state.global_step)
                    state.epoch += 1
                    state.step_in_epoch = 0
                    if args.save_epoch_models and stage == "vision":
                        self.save_epoch_model(state.epoch)
                finished = stop or state.epoch >= epochs
                if finished:
                    state.stage_index = stage_index + 1
                    state.epoch = state.step_in_epoch = state.stage_step = 0
                self.save_checkpoint()
                if finished:
                    break
            bar.close()
        return self._finish()

    def _finish(self) -> str:
        args, acc, model = self.args, self.accelerator, self.model
        acc.wait_for_everyone()
        # Anchors are derived state: every stored class (not only the training ones) follows the trained text branch.
        model.refresh_text_anchors(self.processor, sorted({s.class_name for s in self.samples}))
        classes = model.stored_class_names
        set_trainable(model, [])
        model.eval()
        if acc.is_main_process:
            model.save_pretrained(args.output_dir)
            self.processor.save_pretrained(args.output_dir)
            logger.info(
                "saved the trained model and processor (anchors for %d classes) to %s", len(classes), args.output_dir
            )
        acc.wait_for_everyone()
        acc.end_training()
        return args.output_dir


def train(args: TrainingArguments, **kwargs) -> str:
    """Run the stages of ``args``; returns the output folder. ``kwargs`` go to :class:`Trainer`."""
    return Trainer(args, **kwargs).train()

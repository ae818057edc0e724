"""Two-stage AA-CLIP training with Accelerate (docs/training.md).

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
* **One run per output folder.** The main process holds ``<output>.lock`` (`aaclip_hf.runtime.outputs.output_lock`,
  as `aaclip detect` does) for the whole run: a second run into the same folder is refused with
  `OutputInUseError` before it touches anything (it would otherwise delete the first run's checkpoint in progress).

This module is the orchestration only, readable as run > stage > epoch > step (`AAClipTrainer.train`). The rest lives
in its own room: ``models`` (which model, what each stage trains), ``batches`` (samples, epoch order, shards),
``steps`` (loss terms, reductions, finite checks), ``checkpointing`` (save, rotate, resume guard, log repair),
``trackers``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time

from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data.dataset import AnomalyDataset, raise_carried
from ..errors import NonFiniteLossError, NonFiniteWeightsError
from ..runtime.model_folder import save_model_folder
from ..runtime.outputs import output_lock
from .arguments import AAClipTrainingArguments
from .batches import (
    StagePlan,
    check_global_batches,
    data_fingerprint,
    describe_samples,
    epoch_batches,
    epoch_loader,
    stage_plan,
    training_samples,
)
from .checkpointing import (
    CheckpointManager,
    TrainableWeights,
    TrainState,
    repair_log,
    save_epoch_model,
    write_training_arguments,
)
from .dpam import Stage1FeatureCache
from .models import (
    model_for_run,
    set_trainable,
    stage_parameters,
    store_stage2_anchors,
    text_branch_for_run,
)
from .steps import (
    StageLosses,
    augment_inputs,
    average_gradients,
    global_values,
    make_optimizers,
    make_reducer,
    nonfinite_parameter,
)
from .trackers import PROJECT_NAME, accelerator_kwargs, grad_norm, run_config, step_values


__all__ = ["AAClipTrainer", "model_for_run", "set_trainable", "stage_parameters", "train"]

logger = logging.getLogger("aaclip_hf.training")


def _make_accelerator(args: AAClipTrainingArguments) -> Accelerator:
    """An ``Accelerator``; in a single process that already made one with other settings (a notebook, a
    test session), the process-wide state is reset first instead of failing."""
    tracking = accelerator_kwargs(args.report_to, args.output_dir)
    try:
        return Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu, **tracking)
    except ValueError as err:
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu, **tracking)


def _configure_logging(is_main_process: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO if is_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise


class AAClipTrainer:
    """Runs the requested stages; see the module docstring. ``AAClipTrainer(args).train()``."""

    def __init__(self, args: AAClipTrainingArguments, model=None, processor=None, samples=None):
        args.validate()
        self.args = args
        self.accelerator = acc = _make_accelerator(args)
        _configure_logging(acc.is_main_process)
        set_seed(args.seed)
        self.world, self.rank = acc.num_processes, acc.process_index
        check_global_batches(args, self.world)
        if model is None:
            model, processor = model_for_run(args)
        self.processor = processor
        self.model = text_branch_for_run(model.to(acc.device), processor, args.stages)
        self.samples = training_samples(args, samples, progress=args.progress and acc.is_main_process)
        self.use_masks = any(s.label == 1 and s.mask_path is not None for s in self.samples)
        describe_samples(self.samples, self.use_masks)
        self.reducer = make_reducer(self.world)
        self.state = TrainState(stages=args.stages, data_fingerprint=data_fingerprint(self.samples))
        self.weights = TrainableWeights(self.model)
        set_trainable(self.model, [])
        self.optimizers, self.schedulers = make_optimizers(self.model, args, self.use_masks, acc)
        acc.register_for_checkpointing(self.state, self.weights, *self.schedulers.values())
        self.checkpoints = CheckpointManager(acc, args)
        self.log_path = os.path.join(args.output_dir, "train_log.jsonl")
        self.cache = Stage1FeatureCache() if args.cache_stage1_features else None
        self.losses = StageLosses(self.model, processor, args, acc, self.reducer, self.cache)
        self.image_mean = list(processor.image_processor.image_mean)
        self.image_std = list(processor.image_processor.image_std)
        self.last_grad_norm = math.nan  # L2 norm of the last step's gradients (train log, trackers)

    def _dataset(self) -> AnomalyDataset:
        return AnomalyDataset(self.samples, self.processor, with_masks=self.use_masks)

    # ------------------------------------------------------------------ the loop: run > stage > epoch > step

    def train(self, lock: bool = True) -> str:
        """Open (or resume) the run, train each stage not done yet, save the final model; returns the folder.

        The main process holds the output folder's lock throughout (`OutputInUseError` if another run holds it);
        ``lock=False`` when the caller already holds it (`aaclip train` takes it before loading anything).
        """
        holds = lock and self.accelerator.is_main_process
        with output_lock(self.args.output_dir, "aaclip train") if holds else contextlib.nullcontext():
            self._open_run()
            dataset = self._dataset()
            for stage_index, stage in enumerate(self.args.stages):
                if stage_index >= self.state.stage_index:
                    self._train_stage(stage_index, stage, dataset)
            return self._finish()

    def _train_stage(self, stage_index: int, stage: str, dataset) -> None:
        args, state = self.args, self.state
        plan = stage_plan(args, stage_index, stage, len(dataset), self.world)
        self._start_stage(stage)
        lr = self.schedulers[stage].get_last_lr()[0]
        logger.info("stage %d/%d (%s): %s, lr %g", stage_index + 1, len(args.stages), stage, plan, lr)
        bar = tqdm(
            total=plan.total,
            initial=state.stage_step,
            desc=f"stage {stage_index + 1} ({stage})",
            disable=not (self.accelerator.is_main_process and args.progress),
            dynamic_ncols=True,
        )
        stop = state.stage_step >= plan.total
        while state.epoch < plan.epochs and not stop:
            stop = self._train_epoch(stage_index, stage, dataset, plan, bar)
            finished = stop or state.epoch >= plan.epochs
            if finished:
                state.stage_index = stage_index + 1
                state.epoch = state.step_in_epoch = state.stage_step = 0
            self.checkpoints.save(self.state)  # at every epoch end and at the end of the stage
            if finished:
                break
        bar.close()

    def _train_epoch(self, stage_index: int, stage: str, dataset, plan: StagePlan, bar) -> bool:
        """The rest of the current epoch (all of it unless resumed mid-way); True once the stage's steps are done."""
        args, state = self.args, self.state
        batches = epoch_batches(
            len(dataset), plan.global_batch, args.seed, stage_index, state.epoch, self.rank, self.world
        )
        started, stop = time.time(), False
        for batch in raise_carried(epoch_loader(dataset, batches[state.step_in_epoch :], args.num_workers)):
            logged = self.train_step(stage, batch, state.epoch)
            state.step_in_epoch += 1
            state.stage_step += 1
            state.global_step += 1
            bar.update(1)
            if logged is not None:
                bar.set_postfix(loss=f"{logged['loss']:.4f}")
                self._log_step(stage, logged)
            if state.stage_step >= plan.total:
                stop = True
                break
            # Not on an epoch's last batch: the epoch-end checkpoint follows at once, and saving one step
            # twice would delete the only complete checkpoint before its replacement is in place.
            last_batch = state.step_in_epoch >= len(batches)
            if args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0 and not last_batch:
                self.checkpoints.save(self.state)
        if state.step_in_epoch >= len(batches):  # also when the stage's last step ends the epoch
            self._end_epoch(stage, time.time() - started)
        return stop

    def train_step(self, stage: str, batch: dict, epoch: int) -> dict[str, float] | None:
        """One optimizer step on this process's shard; returns the global-batch loss terms (None if skipped)."""
        device = self.accelerator.device
        pixel_values = batch["pixel_values"].to(device)
        masks = batch["mask"].to(device) if self.use_masks else None
        if self.args.augment:
            pixel_values, masks = augment_inputs(
                self.args, stage, epoch, batch, pixel_values, masks, self.image_mean, self.image_std
            )
        if stage == "text":
            terms = self.losses.stage1(batch, pixel_values, masks)
        else:
            terms = self.losses.stage2(batch, pixel_values, masks)
        logged = global_values(terms, self.reducer, self.world)
        optimizer = self.optimizers[stage]
        if not math.isfinite(logged["loss"]):
            self._refuse_nonfinite_loss(stage, epoch, logged["loss"])  # unless --skip-nonfinite
            optimizer.zero_grad(set_to_none=True)
            return None
        params = optimizer.optimizer.param_groups[0]["params"]
        self.accelerator.backward(terms["loss"])
        average_gradients(params, self.world)
        self.last_grad_norm = grad_norm(params)  # for the log and trackers
        optimizer.step()
        self._check_finite_weights(stage, epoch, optimizer)
        self.schedulers[stage].step()
        optimizer.zero_grad(set_to_none=True)
        return logged

    # ------------------------------------------------------------------ around the loop

    def _open_run(self) -> None:
        """Output folder, resume (or the refusal to start over checkpoints), log repair, arguments, trackers."""
        args, acc = self.args, self.accelerator
        if acc.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
            if args.resume is None and args.overwrite_output_dir:
                self.checkpoints.clear()
                if os.path.exists(self.log_path):
                    os.remove(self.log_path)
        acc.wait_for_everyone()
        self.checkpoints.resume(self.state)
        if acc.is_main_process:  # torn lines (a crash mid-write) and records of steps that will be redone go
            repair_log(self.log_path, self.state.global_step)
            write_training_arguments(args.output_dir, args, self.world)
            self.checkpoints.remove_interrupted_saves()
        if args.report_to != "none":
            acc.init_trackers(
                PROJECT_NAME, config=run_config({**dataclasses.asdict(args), "num_processes": self.world})
            )

    def _start_stage(self, stage: str) -> None:
        set_trainable(self.model, stage_parameters(self.model, stage, self.use_masks))
        if stage == "vision" and not self.state.anchors_ready:
            classes = sorted({s.class_name for s in self.samples})
            store_stage2_anchors(self.model, self.processor, classes, with_stage1="text" in self.args.stages)
            self.state.anchors_ready = True
        self.model.train()

    def _end_epoch(self, stage: str, seconds: float) -> None:
        state = self.state
        logger.info("stage %s epoch %d done in %.1fs", stage, state.epoch, seconds)
        self.accelerator.log(
            {f"{stage}/epoch_seconds": seconds, f"{stage}/epoch": state.epoch}, step=state.global_step
        )
        state.epoch += 1
        state.step_in_epoch = 0
        if self.args.save_epoch_models and stage == "vision":
            save_epoch_model(self.accelerator, self.model, self.processor, self.args.output_dir, state.epoch)

    def _log_step(self, stage: str, logged: dict[str, float]) -> None:
        """Every ``--log-every`` steps (and the first): ``train_log.jsonl``, the trackers and the log."""
        state = self.state
        if state.stage_step % max(1, self.args.log_every) != 0 and state.stage_step != 1:
            return
        record = {
            "stage": stage,
            "epoch": state.epoch,
            "step": state.global_step,
            "lr": self.schedulers[stage].get_last_lr()[0],
            **logged,
            "grad_norm": self.last_grad_norm,
        }
        if self.accelerator.is_main_process:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log(step_values(record), step=state.global_step)
        logger.info(json.dumps(record))

    def _finish(self) -> str:
        args, acc, model = self.args, self.accelerator, self.model
        acc.wait_for_everyone()
        # Anchors are derived state: every stored class (not only the training ones) follows the trained text branch.
        model.refresh_text_anchors(self.processor, sorted({s.class_name for s in self.samples}))
        drop_stale_references(model)
        classes = model.stored_class_names
        set_trainable(model, [])
        model.eval()
        if acc.is_main_process:
            save_model_folder(model, self.processor, args.output_dir)
            logger.info(
                "saved the trained model and processor (anchors for %d classes) to %s", len(classes), args.output_dir
            )
        acc.wait_for_everyone()
        acc.end_training()
        return args.output_dir

    # ------------------------------------------------------------------ non-finite values

    def _where(self, stage: str, epoch: int) -> str:
        return f"stage {stage}, epoch {epoch}, step {self.state.global_step + 1}"

    def _refuse_nonfinite_loss(self, stage: str, epoch: int, loss: float) -> None:
        if self.args.skip_nonfinite:
            logger.warning(
                "non-finite loss (%s) at %s: step skipped (--skip-nonfinite)", loss, self._where(stage, epoch)
            )
            return
        raise NonFiniteLossError(
            f"the loss became {loss} at {self._where(stage, epoch)}; stopped. The last good checkpoint is "
            f"{self.checkpoints.last_good()}; continue with --resume (consider a lower learning rate or "
            "--mixed-precision no), or pass --skip-nonfinite to skip such steps"
        )

    def _check_finite_weights(self, stage: str, epoch: int, optimizer) -> None:
        """Stop at the first optimizer step that leaves a trainable parameter NaN/inf: such weights are never
        saved (the checkpoints and the final model come after this check)."""
        bad = nonfinite_parameter(
            self.model, [p for group in optimizer.optimizer.param_groups for p in group["params"]]
        )
        if bad is not None:
            raise NonFiniteWeightsError(
                f"the optimizer step at {self._where(stage, epoch)} made parameter {bad}; stopped without saving it. "
                f"The last good checkpoint is {self.checkpoints.last_good()}; continue with --resume and a lower "
                "learning rate"
            )


def train(args: AAClipTrainingArguments, lock: bool = True, **kwargs) -> str:
    """Run the stages of ``args``; returns the output folder. ``kwargs`` go to :class:`AAClipTrainer`, ``lock`` to
    `AAClipTrainer.train`."""
    return AAClipTrainer(args, **kwargs).train(lock=lock)


def drop_stale_references(model) -> None:
    """Reference banks are derived from the vision weights: those the training changed are dropped (with a warning
    naming them), never kept to be used silently. Add them again on the trained model (`aaclip add-references`)."""
    current = model.vision_branch_fingerprint()
    stale = sorted(name for name, record in model.config.reference_classes.items() if record["vision"] != current)
    if stale:
        model.remove_references(stale)
        logger.warning("the vision weights changed: the stored references of %s are dropped; add them again", stale)

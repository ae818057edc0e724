"""What a run keeps on disk on its way to the final model: checkpoints (what one holds, which folders count, saving
and rotating them, what `--resume` checks before trusting one), the repaired train log and the per-epoch models.

Checkpoints are written to a temporary folder and renamed atomically (`CheckpointManager.save`); the previous one
is deleted only afterwards. Every file is read back with the safe unpickler, so a tampered checkpoint cannot run
code.

- Only folders named ``checkpoint-<step>`` that hold ``trainer_state.json`` (written last, before the rename)
  are checkpoints; anything else under ``checkpoints/`` is ignored with a warning (`list_checkpoints`).
- ``run_args.json`` in each checkpoint records every result-affecting argument (all `AAClipTrainingArguments`
  fields except `RESUME_NEUTRAL_FIELDS`); `changed_arguments` lists what a resuming run changed and
  `check_resume_arguments` refuses them.
- `repair_log` drops torn or unreadable lines of ``train_log.jsonl`` (a crash mid-write) and the records of
  steps that will be redone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

import accelerate.accelerator as acc_module
import torch

from ..errors import InvalidInputError, OutputConflictError
from ..runtime.model_folder import save_model_folder
from ..runtime.serialization import safe_torch_load
from .arguments import RESUME_NEUTRAL_FIELDS, AAClipTrainingArguments


logger = logging.getLogger("aaclip_hf.training")

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_PATTERN = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
# Written last into the temporary folder, so a checkpoint folder without it is incomplete.
STATE_FILE = "trainer_state.json"
RUN_ARGS_FILE = "run_args.json"


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint (``stage_index`` counts the stages of this run)."""

    stage_index: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    stage_step: int = 0
    global_step: int = 0
    anchors_ready: bool = False
    data_fingerprint: str = ""
    stages: list[str] = field(default_factory=list)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class TrainableWeights:
    """The AA-CLIP parameters (adapters, heads) and stored anchors, for ``save_state``."""

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict:
        params = {name: p.detach().cpu().clone() for name, p in _named_adapter_params(self.model)}
        return {
            "params": params,
            "text_anchors": self.model.text_anchors.detach().cpu().clone(),
            "anchor_class_names": list(self.model.config.anchor_class_names),
        }

    def load_state_dict(self, state: dict) -> None:
        named = dict(_named_adapter_params(self.model))
        if set(named) != set(state["params"]):
            raise InvalidInputError(
                f"checkpoint parameters {sorted(set(state['params']) ^ set(named))[:5]} do not match the model"
            )
        with torch.no_grad():
            for name, value in state["params"].items():
                named[name].copy_(value)
            device = self.model.text_anchors.device
            self.model.text_anchors = state["text_anchors"].to(device)
            self.model.config.anchor_class_names = list(state["anchor_class_names"])


def load_state_weights_only(accelerator, path: str) -> None:
    """``accelerator.load_state`` with every file read by ``torch.load(weights_only=True)``.

    accelerate unpickles registered custom states (``custom_checkpoint_*.pkl``: our TrainState, trainable
    weights and schedulers) with ``weights_only=False``, which would run code from a tampered checkpoint.
    They hold only tensors, numbers, strings and containers, so they load under the safe unpickler; a file
    that needs more is refused with `UnsafeCheckpointError` naming it.
    """

    def load_custom_state(obj, input_dir, index: int = 0) -> None:
        obj.load_state_dict(safe_torch_load(os.path.join(input_dir, f"custom_checkpoint_{index}.pkl")))

    original = acc_module.load_custom_state
    acc_module.load_custom_state = load_custom_state
    try:
        accelerator.load_state(path)
    finally:
        acc_module.load_custom_state = original


def _named_adapter_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    ids = {id(p) for m in model.adapter_modules() for p in m.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


# ----------------------------------------------------------------------------------------------
# what --resume checks
# ----------------------------------------------------------------------------------------------


def list_checkpoints(root: str) -> tuple[list[str], list[str]]:
    """``(complete checkpoints sorted by step, names of everything else under root)``."""
    if not os.path.isdir(root):
        return [], []
    found, stray = [], []
    for name in sorted(os.listdir(root)):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(root, name)
        if match and os.path.isdir(path) and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(match.group(1)), path))
        else:
            stray.append(name)
    return [path for _, path in sorted(found)], stray


def result_arguments(args: AAClipTrainingArguments) -> dict:
    """The arguments that change what a run computes, JSON-normalised (tuples become lists)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name not in RESUME_NEUTRAL_FIELDS}
    return json.loads(json.dumps(values))


def write_run_arguments(folder: str, args: AAClipTrainingArguments) -> None:
    with open(os.path.join(folder, RUN_ARGS_FILE), "w", encoding="utf-8") as f:
        json.dump(result_arguments(args), f, indent=2, sort_keys=True)


def changed_arguments(checkpoint: str, args: AAClipTrainingArguments) -> list[str] | None:
    """``"name: old -> new"`` for each result-affecting argument that differs from the checkpoint's run.

    None when the checkpoint records no arguments (written by an older version): nothing can be compared.
    """
    path = os.path.join(checkpoint, RUN_ARGS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
    current = result_arguments(args)
    names = sorted(set(recorded) | set(current))
    missing = "<not recorded>"
    return [
        f"{name}: {recorded.get(name, missing)!r} -> {current.get(name, missing)!r}"
        for name in names
        if recorded.get(name, missing) != current.get(name, missing)
    ]


def checkpoint_is_finite(path: str) -> bool:
    """Whether every trainable weight saved in checkpoint ``path`` is finite (False if none can be read)."""
    found = False
    for name in sorted(os.listdir(path)):
        if not (name.startswith("custom_checkpoint_") and name.endswith(".pkl")):
            continue
        try:
            state = safe_torch_load(os.path.join(path, name))
        except Exception:  # an unreadable file cannot vouch for the checkpoint
            return False
        if isinstance(state, dict) and isinstance(state.get("params"), dict):
            found = True
            if not all(torch.isfinite(t).all() for t in state["params"].values()):
                return False
    return found


def repair_log(path: str, last_step: int) -> None:
    """Keep the readable records of steps ``<= last_step``; drop torn lines (with a warning) and later steps.

    A crash can cut the last line of ``train_log.jsonl`` short; appending to it would glue the next record onto
    the fragment. Steps after ``last_step`` (the checkpoint resumed from) are redone, so their old records go.
    The file is rewritten atomically.
    """
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    kept, torn, later = [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            torn.append(number)
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line + "\n")
        else:
            later += 1
    if torn:
        logger.warning(
            "%s: dropped %d unreadable line(s) (line %s; a write cut short by a crash)",
            path,
            len(torn),
            ", ".join(map(str, torn)),
        )
    if later:
        logger.info("%s: dropped %d record(s) of steps after %d, which are redone", path, later, last_step)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def check_resume_arguments(path: str, args: AAClipTrainingArguments) -> None:
    """Refuse to continue checkpoint ``path`` with changed result-affecting arguments (unless asked to)."""
    changed = changed_arguments(path, args)
    if changed is None:
        logger.warning("%s records no run arguments (an older version): changed arguments cannot be checked", path)
    elif changed and not args.resume_changed_args:
        raise InvalidInputError(
            f"--resume: {len(changed)} argument(s) that change the result differ from the run that wrote {path}: "
            f"{'; '.join(changed)}. Resume with the same values, start again with --overwrite-output-dir, or "
            "pass --resume-changed-args to continue anyway"
        )
    elif changed:
        logger.warning("--resume-changed-args: continuing %s with changed arguments: %s", path, "; ".join(changed))


def write_training_arguments(output_dir: str, args: AAClipTrainingArguments, num_processes: int) -> None:
    """``OUTPUT/training_args.json``: every argument of the run (rewritten on each start or resume)."""
    with open(os.path.join(output_dir, "training_args.json"), "w", encoding="utf-8") as f:
        json.dump({**dataclasses.asdict(args), "num_processes": num_processes}, f, indent=2)


def save_epoch_model(accelerator, model, processor, output_dir: str, epoch: int) -> str:
    """``OUTPUT/epoch_models/epoch_{epoch}``: a complete model (``save_pretrained``) after a stage-2 epoch, as
    the reference keeps ``image_adapter_{epoch}`` for its per-epoch evaluation. Every stored anchor is
    recomputed for the saved copy only; the run's own anchors are left exactly as they are."""
    final = os.path.join(output_dir, "epoch_models", f"epoch_{epoch}")
    if accelerator.is_main_process:
        saved = (model.text_anchors, list(model.config.anchor_class_names), model.config.anchor_fingerprint)
        tmp = os.path.join(os.path.dirname(final), f".tmp-epoch_{epoch}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if model.config.include_text_model:
                model.refresh_text_anchors(processor)
            save_model_folder(model, processor, tmp)
        finally:
            model.text_anchors, model.config.anchor_class_names, model.config.anchor_fingerprint = saved
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        logger.info("saved the epoch-%d model to %s", epoch, final)
    accelerator.wait_for_everyone()
    return final


class CheckpointManager:
    """``OUTPUT/checkpoints`` of one run: which folders count, resuming from one, saving and rotating them.

    Every process calls every method (they synchronise); only the main process writes or deletes.
    """

    def __init__(self, accelerator, args: AAClipTrainingArguments):
        self.accelerator = accelerator
        self.args = args
        self.root = os.path.join(args.output_dir, "checkpoints")
        self._stray_warned: set[str] = set()

    def complete(self) -> list[str]:
        """Complete checkpoints, oldest first; anything else under checkpoints/ is named once and left alone."""
        found, stray = list_checkpoints(self.root)
        new = [n for n in stray if n not in self._stray_warned]
        if new and self.accelerator.is_main_process:
            logger.warning(
                "ignoring %s under %s: not a complete %sN checkpoint (an interrupted save, or not written by "
                "aaclip train)",
                ", ".join(new),
                self.root,
                CHECKPOINT_PREFIX,
            )
        self._stray_warned.update(new)
        return found

    def last_good(self) -> str:
        """The newest checkpoint whose trainable weights are all finite, for error messages."""
        for path in reversed(self.complete()):
            if checkpoint_is_finite(path):
                return path
        return "(none yet)"

    def clear(self) -> None:
        """Delete every checkpoint (``--overwrite-output-dir`` without ``--resume``; main process)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def remove_interrupted_saves(self) -> None:
        """Delete the ``.tmp-`` folders of saves that never finished (main process)."""
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def save(self, state: TrainState) -> str:
        """``save_state`` into a temporary folder, atomic rename, then drop older checkpoints."""
        acc = self.accelerator
        final = os.path.join(self.root, f"{CHECKPOINT_PREFIX}{state.global_step}")
        tmp = os.path.join(self.root, f".tmp-{CHECKPOINT_PREFIX}{state.global_step}")
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
                json.dump(state.state_dict(), f, indent=2)
            old = [p for p in self.complete() if p != final]
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self, state: TrainState) -> None:
        """Load ``--resume``'s checkpoint into the registered states (``state`` among them), after checking it
        belongs to this run; without ``--resume``, refuse to start over existing checkpoints."""
        args = self.args
        if args.resume is None:
            if self.complete() and not args.overwrite_output_dir:
                raise OutputConflictError(
                    f"{self.root} holds checkpoints; pass --resume to continue or --overwrite-output-dir to start "
                    "again"
                )
            return
        path = self.complete()[-1] if args.resume == "latest" and self.complete() else None
        if args.resume != "latest":
            path = args.resume
        if path is None:
            logger.info("--resume: no checkpoint in %s yet, starting from the beginning", self.root)
            return
        stages, fingerprint = list(state.stages), state.data_fingerprint
        load_state_weights_only(self.accelerator, path)  # first: a tampered checkpoint is refused before anything
        check_resume_arguments(path, args)
        if list(state.stages) != stages:
            raise InvalidInputError(
                f"checkpoint {path} is from a run with stages {state.stages}, this run has {stages}"
            )
        if state.data_fingerprint != fingerprint:
            raise InvalidInputError(
                f"checkpoint {path} was trained on other data (fingerprint {state.data_fingerprint} "
                f"vs {fingerprint}); same --train-data/--shots/--seed are needed to resume"
            )
        logger.info(
            "resumed from %s: stage %s, epoch %d, batch %d, step %d",
            path,
            state.stages[state.stage_index] if state.stage_index < len(stages) else "done",
            state.epoch,
            state.step_in_epoch,
            state.global_step,
        )

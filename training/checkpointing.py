"""What a checkpoint holds besides Accelerate's own state: the position in the run and the trainable weights.

Checkpoints are written to a temporary folder and renamed atomically (`Trainer.save_checkpoint`); every
file is read back with the safe unpickler, so a tampered checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import accelerate.accelerator as acc_module
import torch

from ..runtime.serialization import safe_torch_load


CHECKPOINT_PREFIX = "checkpoint-"


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
            raise ValueError(
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


def _named_adapter_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    ids = {id(p) for m in model.adapter_modules() for p in m.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]

"""What the exported vision towers (ONNX Runtime, OpenVINO) share: the graph they export and the drop-in module.

The graph computes the feature layers' hidden states and the last hidden state of `model.vision_model`; the
drop-in replaces `model.vision_model` and returns them as the tower does, so the seg/det heads, the anchors and
the scoring stay the model's own torch code (`post_layernorm` stays torch too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import InvalidInputError


__all__ = ["ExportedVisionTower", "TowerGraph", "fp32_tower", "output_names"]


class TowerGraph(nn.Module):
    """What an exported graph computes: the feature layers' hidden states, then the last hidden state."""

    def __init__(self, tower: nn.Module, layers: list[int]):
        super().__init__()
        self.tower, self.layers = tower, layers

    def forward(self, pixel_values: torch.Tensor):
        out = self.tower(pixel_values=pixel_values, output_hidden_states=list(self.layers), return_dict=True)
        return (*[out.hidden_states[layer] for layer in self.layers], out.last_hidden_state)


@contextlib.contextmanager
def fp32_tower(tower: nn.Module, attention: str) -> Iterator[nn.Module]:
    """`tower` in fp32 with `attention` for an export, restored afterwards (a bf16 tower is exported from its
    weights cast to fp32, which is exact)."""
    dtype = next(tower.parameters()).dtype
    previous = tower.config._attn_implementation
    tower.set_attn_implementation(attention)
    try:
        yield tower.float()
    finally:
        tower.to(dtype)
        tower.set_attn_implementation(previous)


def output_names(layers: list[int]) -> list[str]:
    """The graph's output names, in `TowerGraph`'s order."""
    return [f"hidden_state_{layer}" for layer in layers] + ["last_hidden_state"]


class ExportedVisionTower(nn.Module):
    """Base of the drop-ins for `model.vision_model`: subclasses set `backend` and implement `run` (numpy in, the
    feature layers' then the last hidden state out)."""

    backend = "exported"

    def __init__(self, tower: nn.Module, layers: list[int], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.layers = list(layers)
        self.num_layers = tower.config.num_hidden_layers
        self.config = tower.config
        self.post_layernorm = tower.post_layernorm
        self.output_dtype = dtype

    def run(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states=None,
        output_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutputWithPooling:
        if output_attentions or output_hidden_states is True or interpolate_pos_encoding:
            raise InvalidInputError(
                f"the {self.backend} backend returns the feature layers only: output_attentions, "
                "output_hidden_states=True and interpolate_pos_encoding need --backend torch"
            )
        array = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        values = [torch.from_numpy(value).to(self.output_dtype) for value in self.run(array)]
        hidden: list[torch.Tensor | None] = [None] * (self.num_layers + 1)
        for layer, value in zip(self.layers, values):
            hidden[layer] = value
        return BaseModelOutputWithPooling(last_hidden_state=values[-1], hidden_states=tuple(hidden))

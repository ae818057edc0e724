"""`aaclip export-onnx`: the vision path of an AA-CLIP model with its stored anchors, as ONNX.

The graph is `AAClipModel.forward` itself, traced: the adapted vision tower, the per-level projections, the stored
anchor table and the scoring for one domain, fixed at export. No tokenizer, no text tower: classes are the model's
stored anchors (`model.stored_class_names`).

Inputs / outputs (batch is dynamic, the image size is the model's `vision_config.image_size`):

* `pixel_values` float32 `(B, 3, S, S)`, from `AAClipProcessor`;
* `class_index` int64 `(B,)`: index into the stored class list, written to the ONNX metadata as `aaclip.class_names`
  (JSON); absent with `--fixed-class NAME`, which bakes one class in;
* outputs `anomaly_map_grid (B, G, G)`, `anomaly_probability_grid (B, G, G)`, `image_score (B,)`,
  `raw_anomaly_score (B,)` and `anomaly_map (B, S, S)` (the grid sum upsampled to the input size: bilinear,
  align_corners=True).

Few-shot: with `--fixed-class NAME` and stored references for that class, the class's reference bank is a constant of
the graph and the nearest-neighbour map is part of every score (`aaclip.references` in the metadata gives the number
of reference images). With a dynamic `class_index` references are left out: each class's bank has its own size, and
a graph cannot pick a constant of another shape per image.

The export uses torch's TorchScript-based exporter (`dynamo=False`): the dynamo exporter needs the `onnxscript`
package, which is not a dependency of this project.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import StaleStateError, UnknownClassError
from ..modeling.modeling_aaclip import upsample_grid


__all__ = ["AAClipOnnxWrapper", "check_onnx", "export_onnx"]

DEFAULT_OPSET = 17
OUTPUT_NAMES = ["anomaly_map_grid", "anomaly_probability_grid", "image_score", "raw_anomaly_score", "anomaly_map"]


class AAClipOnnxWrapper(nn.Module):
    """`AAClipModel.forward` with tensor inputs and outputs: class index (or a fixed class) in, scores and maps out."""

    def __init__(self, model, domain: str | None = None, fixed_class: str | None = None):
        super().__init__()
        self.model = model
        self.domain = model._domain(domain)
        self.fixed_index = None
        self.references = None
        if fixed_class is not None:
            if fixed_class not in model.stored_class_names:
                raise UnknownClassError(
                    f"--fixed-class {fixed_class!r} has no stored anchors; stored: {model.stored_class_names}"
                )
            self.fixed_index = model.stored_class_names.index(fixed_class)
            if fixed_class in model.config.reference_classes:
                self.references = model.references_for(fixed_class)

    def forward(self, pixel_values: torch.Tensor, class_index: torch.Tensor | None = None):
        if self.fixed_index is not None:
            class_index = torch.full((1,), self.fixed_index, dtype=torch.long, device=pixel_values.device)
        out = self.model(pixel_values, class_ids=class_index, references=self.references, domain=self.domain)
        anomaly_map = upsample_grid(out.anomaly_map_grid, tuple(pixel_values.shape[-2:]))
        return out.anomaly_map_grid, out.anomaly_probability_grid, out.image_score, out.raw_anomaly_score, anomaly_map


def export_onnx(
    model,
    output_path: str | Path,
    opset: int = DEFAULT_OPSET,
    domain: str | None = None,
    fixed_class: str | None = None,
    example_batch_size: int = 2,
) -> Path:
    """Export `model`'s vision path to `output_path`; returns the path. The model is not modified.

    The graph is written next to `output_path` under a temporary name and moved there once complete, so a failed
    export leaves no partial file."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(f".{output_path.name}.partial-{os.getpid()}")
    if not bool(model.text_anchors.abs().sum() > 0):
        raise StaleStateError(
            "the model has no computed anchors (all zero); run model.refresh_text_anchors(processor)"
        )
    # Plain MatMul/Softmax attention in the graph (onnxruntime fuses it itself). Set on the vision tower only:
    # an inference-only model has no text tower to switch.
    tower = model.vision_model
    previous_impl = tower.config._attn_implementation
    tower.set_attn_implementation("eager")
    was_training = model.training
    model.eval()
    try:
        wrapper = AAClipOnnxWrapper(model, domain=domain, fixed_class=fixed_class).eval()
        size = model.config.vision_config.image_size
        pixel_values = torch.randn(example_batch_size, model.config.vision_config.num_channels, size, size)
        pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
        names = ["pixel_values"]
        args: tuple = (pixel_values,)
        dynamic = {"pixel_values": {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
        if fixed_class is None:
            args += (torch.zeros(example_batch_size, dtype=torch.long, device=model.device),)
            names.append("class_index")
            dynamic["class_index"] = {0: "batch"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                wrapper,
                args,
                str(partial),
                dynamo=False,
                input_names=names,
                output_names=OUTPUT_NAMES,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
        references = 0 if wrapper.references is None else model.config.reference_classes[fixed_class]["images"]
        _write_metadata(partial, model, wrapper.domain, fixed_class, references)
        os.replace(partial, output_path)
    finally:
        partial.unlink(missing_ok=True)
        tower.set_attn_implementation(previous_impl)
        model.train(was_training)
    return output_path


def _write_metadata(path: Path, model, domain: str, fixed_class: str | None, references: int) -> None:
    """Record what the graph needs to be used correctly: class list, domain, image size, normalisation."""
    import onnx

    proto = onnx.load(str(path))
    entries = {
        "aaclip.class_names": json.dumps(model.stored_class_names),
        "aaclip.domain": domain,
        "aaclip.fixed_class": fixed_class or "",
        "aaclip.image_size": str(model.config.vision_config.image_size),
        "aaclip.image_score_mode": model.config.image_score_mode[domain],
        "aaclip.references": str(references),
    }
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def check_onnx(
    model,
    path: str | Path,
    domain: str | None = None,
    fixed_class: str | None = None,
    batch_size: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Max absolute difference of every output, onnxruntime vs `model.forward`, on random inputs."""
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(batch_size, model.config.vision_config.num_channels, size, size, generator=generator)
    wrapper = AAClipOnnxWrapper(model, domain=domain, fixed_class=fixed_class).eval()
    index = (
        None
        if fixed_class is not None
        else torch.randint(0, len(model.stored_class_names), (batch_size,), generator=generator)
    )
    with torch.no_grad():
        expected = wrapper(
            pixel_values.to(model.device, model.dtype), None if index is None else index.to(model.device)
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"pixel_values": pixel_values.numpy()}
    if index is not None:
        feeds["class_index"] = index.numpy()
    results = session.run(OUTPUT_NAMES, feeds)
    return {
        name: float((torch.from_numpy(result) - value.float().cpu()).abs().max())
        for name, result, value in zip(OUTPUT_NAMES, results, expected)
    }

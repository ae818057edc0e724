"""`aaclip export-onnx`: the vision path of an AA-CLIP model with its stored anchors, as ONNX.

What the graph holds: the adapted vision tower, the seg/det projections, the stored anchor table
and the scoring head of `AAClipModel.forward` (SPEC section 5) for one domain, fixed at export.
No tokenizer, no text tower: classes are the model's stored anchors (`model.stored_class_names`).

Inputs / outputs (batch is dynamic, the image size is the model's `vision_config.image_size`):

* `pixel_values` float32 `(B, 3, S, S)`, from `AAClipProcessor`;
* `class_index` int64 `(B,)`: index into the stored class list, written to the ONNX metadata as
  `aaclip.class_names` (JSON); absent with `--fixed-class NAME`, which bakes one class in;
* outputs `anomaly_map_grid (B, G, G)`, `image_score (B,)`, `raw_anomaly_score (B,)` and
  `anomaly_map (B, S, S)` (the grid upsampled to the input size: bilinear, align_corners=True).

`anomaly_map` is the upsampled *sum* of the level grids; `forward(output_size=...)` sums upsampled levels. Bilinear
resizing is linear, so the two agree to float rounding (the test checks 1e-4).

The export uses torch's TorchScript-based exporter (`dynamo=False`): the dynamo exporter needs the
`onnxscript` package, which is not a dependency of this project.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.modeling_aaclip import gaussian_kernel1d


__all__ = ["AAClipOnnxWrapper", "check_onnx", "export_onnx"]

DEFAULT_OPSET = 17


class AAClipOnnxWrapper(nn.Module):
    """Anchors gathered from the stored table by index, then `AAClipModel`'s vision scoring path."""

    def __init__(self, model, domain: str | None = None, fixed_class: str | None = None):
        super().__init__()
        self.model = model
        self.domain = model._domain(domain)
        self.fixed_index = None
        if fixed_class is not None:
            names = model.stored_class_names
            if fixed_class not in names:
                raise KeyError(f"--fixed-class {fixed_class!r} has no stored anchors; stored: {names}")
            self.fixed_index = names.index(fixed_class)
        # ONNX export of `F.pad(mode="reflect")` with a dynamic batch loses the rank, and the blur's
        # convolution then fails to export; the same reflect border as constant gather indices does not.
        config = model.config
        grid = config.grid_size
        kernel, sigma = config.blur_kernel_size[self.domain], config.blur_sigma[self.domain]
        pad = kernel // 2
        if pad >= grid:
            raise ValueError(f"blur kernel {kernel} needs a patch grid larger than {pad}, got {grid}")
        index = torch.arange(-pad, grid + pad).abs()
        self.register_buffer(
            "reflect_index", torch.where(index > grid - 1, 2 * (grid - 1) - index, index), persistent=False
        )
        self.register_buffer("taps", gaussian_kernel1d(kernel, sigma, dtype=model.dtype), persistent=False)
        self.grid = grid

    def _blurred_grids(self, patch_embeds, anchors) -> list[torch.Tensor]:
        """`AAClipModel.anomaly_grids` with the reflect padding as index gathers (same values)."""
        grids = []
        taps = self.taps.to(anchors.dtype)
        for features in patch_embeds:
            logits = self.model.patch_logits(features, anchors)
            score = ((logits[..., 1] + 1.0 - logits[..., 0]) / 2.0).reshape(-1, 1, self.grid, self.grid)
            padded = score.index_select(3, self.reflect_index).index_select(2, self.reflect_index)
            blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
            grids.append(blurred[:, 0])
        return grids

    def forward(self, pixel_values: torch.Tensor, class_index: torch.Tensor | None = None):
        model = self.model
        if self.fixed_index is not None:
            anchors = model.text_anchors[self.fixed_index : self.fixed_index + 1].expand(pixel_values.shape[0], -1, -1)
        else:
            anchors = model.text_anchors.index_select(0, class_index)
        anchors = anchors.to(pixel_values.dtype)
        patch_embeds, image_embeds = model.get_vision_features(pixel_values)
        grids = self._blurred_grids(patch_embeds, anchors)
        grid_sum = torch.stack(grids).sum(dim=0)
        image_score, raw_score = model.image_scores(grid_sum, image_embeds, anchors, self.domain)
        anomaly_map = F.interpolate(
            grid_sum[:, None], size=tuple(pixel_values.shape[-2:]), mode="bilinear", align_corners=True
        )[:, 0]
        return grid_sum, image_score, raw_score, anomaly_map


OUTPUT_NAMES = ["anomaly_map_grid", "image_score", "raw_anomaly_score", "anomaly_map"]


def export_onnx(
    model,
    output_path: str | Path,
    opset: int = DEFAULT_OPSET,
    domain: str | None = None,
    fixed_class: str | None = None,
    example_batch_size: int = 2,
) -> Path:
    """Export `model`'s vision path to `output_path`; returns the path. The model is not modified."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if not bool(model.text_anchors.abs().sum() > 0):
        raise ValueError(
            "the model has no computed anchors (all zero); run model.update_text_anchors(processor) first"
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
                str(output_path),
                dynamo=False,
                input_names=names,
                output_names=OUTPUT_NAMES,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
    finally:
        tower.set_attn_implementation(previous_impl)
        model.train(was_training)
    _write_metadata(output_path, model, wrapper.domain, fixed_class)
    return output_path


def _write_metadata(path: Path, model, domain: str, fixed_class: str | None) -> None:
    """Record what the graph needs to be used correctly: class list, domain, image size, normalisation."""
    import onnx

    proto = onnx.load(str(path))
    entries = {
        "aaclip.class_names": json.dumps(model.stored_class_names),
        "aaclip.domain": domain,
        "aaclip.fixed_class": fixed_class or "",
        "aaclip.image_size": str(model.config.vision_config.image_size),
        "aaclip.image_score_mode": model.config.image_score_mode[domain],
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
    names = model.stored_class_names
    if fixed_class is None:
        index = torch.randint(0, len(names), (batch_size,), generator=generator)
        class_names = [names[i] for i in index]
    else:
        index, class_names = None, [fixed_class] * batch_size
    with torch.no_grad():
        out = model(
            pixel_values.to(model.device, model.dtype),
            class_names=class_names,
            domain=domain,
            output_size=(size, size),
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"pixel_values": pixel_values.numpy()}
    if index is not None:
        feeds["class_index"] = index.numpy()
    results = dict(zip(OUTPUT_NAMES, session.run(OUTPUT_NAMES, feeds)))
    return {
        name: float((torch.from_numpy(results[name]) - getattr(out, name).float().cpu()).abs().max())
        for name in OUTPUT_NAMES
    }

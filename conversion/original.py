"""``aaclip convert-original``: the reference AA-CLIP checkpoints -> an ``AAClipModel`` folder.

The reference trains two files (its public checkpoint format; docs/conversion.md):

- ``text_adapter.pth`` = ``{"epoch", "text_adapter": sd, "text_optimizer"}`` with ``{i}.fc.0.weight``:
  the first ``K_T`` entries are the layer adapters after text layers ``1..K_T``, the last one is
  the text head ``LeakyReLU(W_p e_eos)``;
- ``image_adapter*.pth`` = ``{"epoch", "image_adapter": sd, "image_optimizer"}`` with
  ``layer_adapters.{i}.fc.0.weight``, ``seg_proj.{j}.fc[.0].weight``, ``det_proj.fc[.0].weight``;
  the ``.0`` appears on the projectors only when they were trained with LeakyReLU (``--relu``).

All are bias-free ``nn.Linear`` weights in ``(out, in)`` layout and land unchanged (no transpose)
in the same-shaped HF modules. ``epoch`` and the Adam state are ignored.

The converted folder holds the reference setting: exact GELU in both towers (the reference builds
its towers with ``nn.GELU`` while loading OpenAI weights), 518 px with an antialiased position
table, and stored anchors for every class of the reference datasets (bare and dataset-prefixed
keys, e.g. ``bottle`` and ``mvtec/bottle``) plus the generic ``object``. Without a text adapter the
anchors come from plain CLIP (its text tower and ``text_projection``), as the reference does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..modeling.configuration_aaclip import DEFAULT_IMAGE_SIZE, GENERIC_CLASS
from ..modeling.processing_aaclip import AAClipProcessor
from ..runtime.serialization import safe_torch_load
from .clip_weights import ConversionError
from .convert_clip import (
    DEFAULT_VERIFY_ATOL,
    aaclip_fields_for,
    build_aaclip,
    check_verification,
    clip_view,
    default_feature_layers,
    load_clip_source,
    save_output,
    verify_clip,
)


# The reference setting (docs/method.md, "Backbone"; docs/conversion.md).
REFERENCE_IMAGE_SIZE = DEFAULT_IMAGE_SIZE
REFERENCE_HIDDEN_ACT = "gelu"
REFERENCE_ADAPTER_WEIGHT = 0.1

# Class keys of the reference datasets (its dataset/constants.py), grouped by a lowercase dataset
# prefix. The prompt names come from the processor's class-name table.
REFERENCE_DATASET_CLASSES: dict[str, list[str]] = {
    "mvtec": [
        "bottle",
        "cable",
        "capsule",
        "carpet",
        "grid",
        "hazelnut",
        "leather",
        "metal_nut",
        "pill",
        "screw",
        "tile",
        "transistor",
        "toothbrush",
        "wood",
        "zipper",
    ],
    "visa": [
        "candle",
        "capsules",
        "cashew",
        "chewinggum",
        "fryum",
        "macaroni1",
        "macaroni2",
        "pcb1",
        "pcb2",
        "pcb3",
        "pcb4",
        "pipe_fryum",
    ],
    "mpdd": ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"],
    "btad": ["01", "02", "03"],
    "brain": ["Brain"],
    "liver": ["Liver"],
    "retina": ["Retina"],
    "colon": ["Colon_clinicDB", "Colon_colonDB", "Kvasir", "CVC-300"],
}

_TEXT_KEY = re.compile(r"^(\d+)\.fc\.0\.weight$")
_LAYER_KEY = re.compile(r"^layer_adapters\.(\d+)\.fc\.0\.weight$")
_SEG_KEY = re.compile(r"^seg_proj\.(\d+)\.fc(\.0)?\.weight$")
_DET_KEY = re.compile(r"^det_proj\.fc(\.0)?\.weight$")


@dataclass
class AdapterWeights:
    """Reference adapter/projector tensors under AA-CLIP HF names, plus the config they imply."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (source "file:key", HF key)
    config: dict = field(default_factory=dict)  # AAClipConfig fields read from the keys
    ignored: list[str] = field(default_factory=list)

    def take(
        self, source: str, state: Mapping[str, torch.Tensor], key: str, target: str, expected: tuple[int, int]
    ) -> None:
        """Copy `state[key]` (fp32, shape-checked) to the HF name `target` and record the mapping."""
        tensor = state[key].detach().float()
        _check_shape(source, key, tensor, expected)
        self.tensors[target] = tensor.clone()
        self.mapped.append((f"{source}:{key}", target))


def reference_anchor_names(prefixed: bool = True, bare: bool = True) -> list[str]:
    """Class names whose anchors a converted reference model stores (``object`` first)."""
    names = [GENERIC_CLASS]
    for dataset, classes in REFERENCE_DATASET_CLASSES.items():
        if bare:
            names += classes
        if prefixed:
            names += [f"{dataset}/{name}" for name in classes]
    return list(dict.fromkeys(names))


def read_reference_checkpoint(path: str | Path, entry: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ``entry`` state dict of a reference checkpoint (safe loading); also the ignored top-level keys."""
    obj = safe_torch_load(path)
    if not isinstance(obj, Mapping) or entry not in obj:
        found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(
            f"{path}: expected a reference AA-CLIP checkpoint with a {entry!r} entry "
            f"(torch.save({{'epoch', {entry!r}, ...}})), found {found}"
        )
    state = obj[entry]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: {entry!r} must be a state dict of tensors")
    return dict(state), sorted(k for k in obj if k != entry)


def _check_shape(path, key: str, tensor: torch.Tensor, expected: tuple[int, int]) -> None:
    if tuple(tensor.shape) != expected:
        raise ConversionError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {expected}")


def convert_text_adapter(
    state: Mapping[str, torch.Tensor], text_width: int, projection_dim: int, source: str = "text_adapter"
) -> AdapterWeights:
    """``{i}.fc.0.weight`` -> text layer adapters ``0..n-2`` and the text head (the last index)."""
    indices: dict[int, str] = {}
    for key in state:
        match = _TEXT_KEY.match(key)
        if not match:
            raise ConversionError(f"{source}: unexpected key {key!r} in text_adapter; expected '<i>.fc.0.weight'")
        indices[int(match.group(1))] = key
    if not indices or sorted(indices) != list(range(len(indices))):
        raise ConversionError(
            f"{source}: text_adapter indices {sorted(indices)} must be 0..n-1 (layers, then the head)"
        )
    out = AdapterWeights()
    head = max(indices)
    for index, key in sorted(indices.items()):
        if index == head:
            out.take(source, state, key, "text_projector.fc.weight", (projection_dim, text_width))
        else:
            out.take(
                source, state, key, f"text_model.encoder.layers.{index}.adapter.fc.weight", (text_width, text_width)
            )
    out.config = {"text_adapter_layers": head, "text_head": "adapter"}
    return out


def convert_image_adapter(
    state: Mapping[str, torch.Tensor], vision_width: int, projection_dim: int, source: str = "image_adapter"
) -> AdapterWeights:
    """Vision layer adapters, ``seg_proj`` and ``det_proj`` -> HF names; the projector activation from the keys."""
    out = AdapterWeights()
    layers: dict[int, str] = {}
    levels: dict[int, str] = {}
    det_key = None
    activations: set[bool] = set()
    for key in state:
        if match := _LAYER_KEY.match(key):
            layers[int(match.group(1))] = key
        elif match := _SEG_KEY.match(key):
            levels[int(match.group(1))] = key
            activations.add(match.group(2) is not None)
        elif match := _DET_KEY.match(key):
            det_key = key
            activations.add(match.group(1) is not None)
        else:
            raise ConversionError(
                f"{source}: unexpected key {key!r} in image_adapter; expected layer_adapters.<i>.fc.0.weight, "
                "seg_proj.<j>.fc[.0].weight and det_proj.fc[.0].weight"
            )
    if sorted(layers) != list(range(len(layers))) or not levels or sorted(levels) != list(range(len(levels))):
        raise ConversionError(
            f"{source}: layer_adapters {sorted(layers)} and seg_proj {sorted(levels)} indices must each be 0..n-1"
        )
    if det_key is None:
        raise ConversionError(f"{source}: no det_proj.fc.weight / det_proj.fc.0.weight in image_adapter")
    if len(activations) != 1:
        raise ConversionError(
            f"{source}: projector keys mix '.fc.weight' and '.fc.0.weight'; all projectors share one activation setting"
        )
    for index, key in sorted(layers.items()):
        out.take(
            source, state, key, f"vision_model.encoder.layers.{index}.adapter.fc.weight", (vision_width, vision_width)
        )
    for index, key in sorted(levels.items()):
        out.take(source, state, key, f"seg_projections.{index}.fc.weight", (projection_dim, vision_width))
    out.take(source, state, det_key, "det_projection.fc.weight", (projection_dim, vision_width))
    out.config = {
        "vision_adapter_layers": len(layers),
        "projector_activation": activations.pop(),
        "num_levels": len(levels),
    }
    return out


def load_adapter_weights(model, weights: AdapterWeights) -> None:
    """Copy the tensors into ``model`` (bit-exact); every target must exist with the same shape."""
    own = model.state_dict()
    missing = [k for k in weights.tensors if k not in own]
    if missing:
        raise ConversionError(f"the AA-CLIP model has no {missing[:5]}; config and checkpoint disagree")
    with torch.no_grad():
        for key, tensor in weights.tensors.items():
            own[key].copy_(tensor.to(own[key].dtype))


def convert_original(
    clip: str | Path,
    output_dir: str | Path,
    text_adapter: str | Path | None = None,
    image_adapter: str | Path | None = None,
    image_size: int = REFERENCE_IMAGE_SIZE,
    hidden_act: str = REFERENCE_HIDDEN_ACT,
    feature_layers: list[int] | None = None,
    text_adapter_weight: float = REFERENCE_ADAPTER_WEIGHT,
    vision_adapter_weight: float = REFERENCE_ADAPTER_WEIGHT,
    anchor_classes: list[str] | None = None,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    seed: int | None = None,
    verify: bool = True,
    verify_atol: float = DEFAULT_VERIFY_ATOL,
    print_fn: Callable[[str], None] = print,
):
    """Build the reference AA-CLIP from its backbone and adapter checkpoints and write ``output_dir``."""
    source = load_clip_source(clip, hidden_act=hidden_act, text_heads=text_heads, vision_heads=vision_heads)
    print_fn(f"Backbone: {source.path} ({source.kind})")
    print_fn(source.report.summary())
    clip_config = source.model.config
    text_width, vision_width = clip_config.text_config.hidden_size, clip_config.vision_config.hidden_size
    projection_dim = clip_config.projection_dim

    fields = aaclip_fields_for(clip_config, feature_layers=feature_layers)
    fields.update(text_adapter_weight=text_adapter_weight, vision_adapter_weight=vision_adapter_weight)
    pieces: list[AdapterWeights] = []
    if text_adapter is not None:
        state, ignored = read_reference_checkpoint(text_adapter, "text_adapter")
        text = convert_text_adapter(state, text_width, projection_dim, source=str(text_adapter))
        text.ignored = ignored
        fields.update(text.config)
        pieces.append(text)
    else:
        fields.update(text_adapter_layers=0, text_head="clip")
        print_fn(
            "No text adapter: anchors come from plain CLIP (text tower + text_projection), as the reference does."
        )
    if image_adapter is not None:
        state, ignored = read_reference_checkpoint(image_adapter, "image_adapter")
        image = convert_image_adapter(state, vision_width, projection_dim, source=str(image_adapter))
        image.ignored = ignored
        num_levels = image.config.pop("num_levels")
        fields.update(image.config)
        pieces.append(image)
        levels = feature_layers or default_feature_layers(clip_config.vision_config.num_hidden_layers, num_levels)
        if len(levels) != num_levels:
            raise ConversionError(
                f"{image_adapter}: {num_levels} seg_proj heads but --feature-layers lists {len(levels)} layers"
            )
        fields["feature_layers"] = levels
    else:
        print_fn("No image adapter: vision adapters and projectors keep a fresh xavier initialisation (untrained).")

    model = build_aaclip(source.model, image_size=image_size, hidden_act=hidden_act, seed=seed, **fields)
    processor = AAClipProcessor.for_model(model.config)
    # The reference's text adapter (if given) is trained; without one the text branch is plain CLIP.
    model.config.untrained_text_adapters = False
    for piece in pieces:
        load_adapter_weights(model, piece)
        print_fn(
            f"Mapped {len(piece.mapped)} adapter tensors (ignored entries: {', '.join(piece.ignored) or 'none'}):"
        )
        for src, dst in piece.mapped:
            print_fn(f"  {src} -> {dst}  [copy]")
    print_fn(
        f"Config: image_size {image_size}, hidden_act {hidden_act}, text_adapter_layers {model.config.text_adapter_layers}, "
        f"vision_adapter_layers {model.config.vision_adapter_layers}, feature_layers {model.config.feature_layers}, "
        f"projector_activation {model.config.projector_activation}, text_head {model.config.text_head}"
    )

    # The adapters changed the text branch: every stored class is recomputed (one text-tower pass per distinct
    # prompt, so prefixed keys share the anchors of their bare name) and the fingerprint recorded.
    model.refresh_text_anchors(processor, anchor_classes or reference_anchor_names())
    distinct = len({processor.prompt_name(name) for name in model.stored_class_names})
    print_fn(f"Stored anchors for {len(model.stored_class_names)} class names ({distinct} distinct prompt names).")

    if verify:
        check_verification(verify_clip(clip_view(model), source, print_fn), verify_atol, print_fn)
    save_output(model, processor, output_dir, print_fn)
    return model

"""Which model a run trains and which of its parameters each stage moves (docs/training.md).

A run starts from an AA-CLIP folder as it is or from a plain CLIP (fresh AA-CLIP, adapters xavier, seeded). Stage 2
without stage 1 on untrained text adapters trains against the plain CLIP text branch, as the reference does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from ..errors import BadInputError, InvalidInputError
from ..modeling.modeling_aaclip import AAClipModel
from ..runtime.loading import load_model_and_processor, model_type_of, processor_for
from .arguments import AAClipTrainingArguments


logger = logging.getLogger("aaclip_hf.training")


def model_for_run(args: AAClipTrainingArguments):
    """What a run starts from: an AA-CLIP folder as it is (through the one loader, fp32 on the CPU; the trainer
    places it), or a fresh AA-CLIP on a plain CLIP (adapters xavier, seeded)."""
    found = model_type_of(args.model) if os.path.isdir(args.model) else None
    if os.path.isdir(args.model) and found not in ("clip", "aaclip"):
        raise BadInputError(
            f"model_type is {found!r}; aaclip train starts from an AA-CLIP folder ('aaclip') or a CLIP one ('clip')",
            os.path.join(args.model, "config.json"),
            "model_type",
        )
    if found == "aaclip":
        if args.image_size is not None or args.hidden_act is not None:
            raise InvalidInputError("--image-size / --hidden-act only apply when building from a plain CLIP model")
        return load_model_and_processor(args.model, device="cpu")
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


def text_branch_for_run(model, processor, stages: Sequence[str]):
    """Stage 2 without stage 1 on untrained text adapters: switch to the plain CLIP text branch (see
    `plain_clip_text_branch`). A run with stage 1 marks the adapters as trained (saved in config.json)."""
    config = model.config
    if not config.include_text_model:
        return model
    if "text" in stages:
        config.untrained_text_adapters = False
        return model
    if not config.untrained_text_adapters:
        return model
    logger.info(
        "no stage 1 and the model's text adapters are untrained (built from a plain CLIP): stage 2 takes its "
        "anchors from plain CLIP (text tower + text_projection), as the reference does; the saved model keeps "
        "that text branch (text_adapter_layers=0, text_head='clip')"
    )
    return plain_clip_text_branch(model, processor)


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
        raise InvalidInputError(f"unknown stage {stage!r}")
    return [p for m in modules for p in m.parameters()]


def set_trainable(model, params: Sequence[torch.nn.Parameter]) -> None:
    """``requires_grad`` True exactly on ``params`` (everything else, backbone included, frozen)."""
    wanted = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)


def store_stage2_anchors(model, processor, classes: Sequence[str], with_stage1: bool) -> None:
    """Compute the stage-2 anchors of ``classes`` once, with the text branch as it is now, and store them."""
    with torch.no_grad():
        anchors = model.compute_text_anchors(classes, processor)
    model.store_text_anchors(classes, anchors)
    if with_stage1:
        source = "the stage-1 text branch"
    elif model.config.text_head == "clip" and model.config.text_adapter_layers == 0:
        source = "the plain CLIP text branch (text tower + text_projection; no trained text adapters)"
    else:
        source = "the model's trained text branch (no stage 1 in this run)"
    logger.info("stage 2 anchors computed once with %s for %d classes", source, len(classes))

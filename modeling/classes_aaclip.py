# Copyright 2026 The aaclip-hf authors. Licensed under the Apache License, Version 2.0.
"""The classes an AA-CLIP model stores, and how they stay honest.

A model stores, per class, its text anchors (`text_anchors`, names in `config.anchor_class_names`) and optionally a
bank of normal reference patches (`reference_bank`, records in `config.reference_classes`). Both are derived state:
anchors from the text branch and the prompt ensemble, banks from the vision branch and the reference images. Each
records a fingerprint of what made it (`weights_digest`) and is bound to its name (`rows_digest`), so a change of the
weights (training) or of the names (an edited config.json) is refused at use, never scored silently. `class_ids` and
`references_for` are the thin layer that resolves class names to this stored state for `AAClipModel.forward`.

A class's decision threshold (`config.decision_thresholds`) is derived state too: it records the fingerprint of the
scoring it was calibrated on (`scoring_fingerprint`), and `decision_threshold` uses it only for that scoring.

`StoredClassesMixin` is part of `AAClipModel` (it uses the model's `config`, `state_dict`, `compute_text_anchors` and
`reference_features`); this flat file travels to the Hub with the model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence

import torch
from transformers.utils import logging

from .configuration_aaclip import (
    GENERIC_CLASS,
    InvalidInputError,
    StaleStateError,
    StaleThresholdWarning,
    UnknownClassError,
    check_class_name,
    class_name_list,
)


logger = logging.get_logger(__name__)

# Config fields that change what a branch computes, besides its weights (part of the branch's fingerprint).
TEXT_BRANCH_SETTINGS = ("text_head", "text_adapter_layers", "text_adapter_weight", "adapter_negative_slope")
VISION_BRANCH_SETTINGS = (
    "feature_layers",
    "vision_adapter_layers",
    "vision_adapter_weight",
    "adapter_negative_slope",
    "projector_activation",
)
TOWER_SETTINGS = ("hidden_act", "layer_norm_eps", "num_attention_heads")
# Config fields that change an image score besides the branches, its anchors and references (a threshold's scoring).
SCORING_SETTINGS = ("similarity_temperature", "few_shot_fusion", "image_score_map_weight")
DOMAIN_SCORING_SETTINGS = ("blur_kernel_size", "blur_sigma", "image_score_mode")
# Bank and anchor-row digests kept per model (`scoring_fingerprint`): a few classes scored in turn are hashed once.
REMEMBERED_TENSOR_DIGESTS = 8


def weights_digest(tensors: Iterable[tuple[str, torch.Tensor]], settings: dict) -> str:
    """SHA-256 of named tensors (name, dtype, shape and bytes) and the settings that change what they compute."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def rows_digest(names: Sequence[str], table: torch.Tensor) -> str:
    """SHA-256 binding each name to its row of a stored table: reordered names or rows no longer match."""
    return weights_digest([(f"row:{name}", row) for name, row in zip(names, table)], {"names": list(names)})


class StoredClassesMixin:
    """Anchors and reference banks per class: computed, stored, bound to their names and to the weights that made them
    (module docstring)."""

    @property
    def stored_class_names(self) -> list[str]:
        return list(self.config.anchor_class_names)

    def text_branch_fingerprint(self) -> str:
        """SHA-256 of everything the anchors derive from: the text tower with its adapters, the text head in use and
        the config fields that change what they compute."""
        self._require_text_tower()
        head = "text_projector." if self.config.text_head == "adapter" else "text_projection."
        settings = {name: getattr(self.config, name) for name in TEXT_BRANCH_SETTINGS}
        settings |= {f"text_config.{name}": getattr(self.config.text_config, name) for name in TOWER_SETTINGS}
        return self._digest(("text_model.", head), settings)

    def vision_branch_fingerprint(self) -> str:
        """`"<dtype>:<SHA-256>"` of everything reference patches derive from: the vision tower with its adapters, the
        per-level projections and the config fields that change what they compute.

        A backend that runs the same weights in another form (int8, an ONNX export: `aaclip_hf.runtime.backends`)
        pins the fingerprint of the weights it was made from (`pin_vision_fingerprint`), so stored references and
        thresholds keep applying, to that backend's rounding."""
        if self._digests.get("pinned_vision") is not None:
            return self._digests["pinned_vision"]
        settings = {name: getattr(self.config, name) for name in VISION_BRANCH_SETTINGS}
        settings |= {f"vision_config.{name}": getattr(self.config.vision_config, name) for name in TOWER_SETTINGS}
        settings |= {"image_size": self.config.vision_config.image_size}
        return f"{self.dtype}:{self._digest(('vision_model.', 'seg_projections.'), settings)}".removeprefix("torch.")

    def pin_vision_fingerprint(self) -> None:
        """Keep today's `vision_branch_fingerprint` while a backend replaces the vision tower by a form of the same
        weights (call it before the replacement)."""
        self._digests["pinned_vision"] = None
        self._digests["pinned_vision"] = self.vision_branch_fingerprint()

    def _digest(self, prefixes: tuple[str, ...], settings: dict) -> str:
        """`weights_digest` of the parameters under `prefixes`, hashed again only when one of them changed."""
        named = [(name, tensor) for name, tensor in self.state_dict().items() if name.startswith(prefixes)]
        key = (prefixes, json.dumps(settings, sort_keys=True, default=str))
        state = tuple((name, tensor.data_ptr(), tensor._version, tensor.dtype) for name, tensor in named)
        cached = self._digests.get(key)
        if cached is None or cached[0] != state:
            self._digests[key] = cached = (state, weights_digest(named, settings))
        return cached[1]

    def anchor_status(self) -> dict:
        """Whether the stored anchors still derive from this model and its names.

        `state`: `"fresh"`; `"stale"` (the text branch changed since they were made); `"tampered"` (names and rows no
        longer match: `anchor_class_names` reordered or edited); `"unknown"` (no fingerprint); `"unchecked"`
        (inference-only model, anchors made elsewhere, or weights in another dtype). `reason` says why and how to fix.
        """
        recorded = self.config.anchor_fingerprint
        fix = "fix: model.refresh_text_anchors(processor) recomputes every stored class, then save the model"
        if recorded is None:
            return {"state": "unknown", "reason": f"no anchor fingerprint recorded; {fix}"}
        dtype = str(self.text_anchors.dtype).removeprefix("torch.")
        if dtype != recorded["dtype"]:
            return {"state": "unchecked", "reason": f"weights are {dtype}, the fingerprint is of {recorded['dtype']}"}
        if rows_digest(self.stored_class_names, self.text_anchors) != recorded["rows"]:
            return {
                "state": "tampered",
                "reason": "the stored anchor rows do not match anchor_class_names (names reordered or edited, or rows "
                f"changed outside the model); {fix}",
            }
        if not self.config.include_text_model or recorded["text_branch"] == "external":
            return {"state": "unchecked", "reason": "no text branch to check the stored anchors against"}
        if self.text_branch_fingerprint() != recorded["text_branch"]:
            return {
                "state": "stale",
                "reason": f"the stored anchors of {len(self.stored_class_names)} class(es) were computed with other "
                f"text-branch weights, so scores would use stale anchors; {fix}",
            }
        return {"state": "fresh", "reason": "the stored anchors match the text branch and the names"}

    def _record_anchors(self, text_branch: str, prompts: str) -> None:
        dtype = str(self.text_anchors.dtype).removeprefix("torch.")
        rows = rows_digest(self.stored_class_names, self.text_anchors)
        self.config.anchor_fingerprint = {"text_branch": text_branch, "prompts": prompts, "dtype": dtype, "rows": rows}

    @torch.no_grad()
    def refresh_text_anchors(self, processor, class_names: Sequence[str] = ()) -> None:
        """Recompute EVERY stored class (plus `class_names`) from the current text branch and record the fingerprint.

        Anchors are derived state: call it after any change to the text branch (training, conversion). `processor` is
        anything with `tokenize_prompts` (its prompt ensemble and class-name table make the anchors).
        """
        names = list(dict.fromkeys([GENERIC_CLASS, *self.stored_class_names, *class_name_list(class_names)]))
        prompts = processor.tokenize_prompts(names)
        was_training = self.training
        self.eval()
        try:
            anchors = self.compute_text_anchors(names, prompts)
        finally:
            self.train(was_training)
        self.text_anchors = anchors.detach().to(self.text_anchors)
        self.config.anchor_class_names = names
        self._record_anchors(self.text_branch_fingerprint(), str(prompts.get("prompt_fingerprint", "unknown")))

    @torch.no_grad()
    def update_text_anchors(self, processor, class_names: Sequence[str] | None = None) -> None:
        """Compute and store the anchors of `class_names` (default: every stored class).

        When the text branch or the prompt ensemble changed since the stored table was made (or its provenance is
        unknown), every stored class is recomputed (`refresh_text_anchors`): the table never mixes old and new anchors.
        """
        if class_names is None:
            return self.refresh_text_anchors(processor)
        names = list(dict.fromkeys(class_name_list(class_names)))
        prompts = processor.tokenize_prompts(names)
        recorded = self.config.anchor_fingerprint or {}
        if self.anchor_status()["state"] != "fresh" or recorded["prompts"] != prompts.get("prompt_fingerprint"):
            return self.refresh_text_anchors(processor, names)
        was_training = self.training
        self.eval()
        try:
            self._store_rows(names, self.compute_text_anchors(names, prompts))
        finally:
            self.train(was_training)
        self._record_anchors(recorded["text_branch"], recorded["prompts"])
        return None

    @torch.no_grad()
    def store_text_anchors(self, class_names: Sequence[str], anchors: torch.Tensor) -> None:
        """Add or replace stored anchors computed elsewhere; they are saved with the weights. Their text branch is
        unknown (`"external"`), but each name stays bound to its row."""
        self._store_rows(class_name_list(class_names), anchors)
        self._record_anchors("external", "external")

    def _store_rows(self, class_names: list[str], anchors: torch.Tensor) -> None:
        anchors = anchors.detach()
        if anchors.shape != (len(class_names), self.config.projection_dim, 2):
            raise InvalidInputError(
                f"anchors must have shape ({len(class_names)}, {self.config.projection_dim}, 2), "
                f"got {tuple(anchors.shape)}"
            )
        names, rows = self.stored_class_names, list(self.text_anchors)
        for name, anchor in zip(class_names, anchors.to(self.text_anchors)):
            if name in names:
                rows[names.index(name)] = anchor
            else:
                names.append(name)
                rows.append(anchor)
        self.text_anchors = torch.stack(rows)
        self.config.anchor_class_names = names

    # ------------------------------------------------------------------ decision thresholds

    def scoring_fingerprint(
        self, class_name: str, anchors: str, references: torch.Tensor | None = None, domain: str | None = None
    ) -> str:
        """`"<dtype>:<SHA-256>"` of everything `class_name`'s image scores derive from: the vision branch, where its
        anchors come from (`anchor_source`), the references it is scored with (`None` = zero-shot), the scoring
        settings and the domain. A threshold calibrated on one scoring means nothing on another (few-shot scores sit
        on another scale than zero-shot ones)."""
        domain = self._domain(domain)
        settings = {name: getattr(self.config, name) for name in SCORING_SETTINGS}
        settings |= {name: getattr(self.config, name)[domain] for name in DOMAIN_SCORING_SETTINGS}
        settings |= {"class": class_name, "domain": domain, "vision": self.vision_branch_fingerprint()}
        settings |= {"anchors": anchors, "references": None if references is None else self._tensor_digest(references)}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()
        return f"{str(self.dtype).removeprefix('torch.')}:{digest}"

    def anchor_source(self, class_name: str, prompt_fingerprint: str | None = None) -> str:
        """What `class_name`'s anchors derive from: for stored anchors, the text branch and prompts recorded with them
        (or their row, when they came from elsewhere); for anchors a pipeline computes, this text branch and the
        processor's `prompt_fingerprint`. Values are not hashed: the same anchors computed alone or next to other
        classes may differ in the last bit."""
        stored = self.stored_class_names
        if class_name in stored and bool(self.text_anchors[stored.index(class_name)].any()):
            recorded = self.config.anchor_fingerprint or {}
            if recorded.get("text_branch") not in (None, "external"):
                return f"{recorded['text_branch']}|{recorded['prompts']}|{class_name}"
            return f"row:{self._tensor_digest(self.text_anchors[stored.index(class_name)])}"
        return f"{self.text_branch_fingerprint()}|{prompt_fingerprint}|{class_name}"

    def _tensor_digest(self, tensor: torch.Tensor) -> str:
        """`weights_digest` of one tensor, hashed again only when it changed (a bank is scored batch after batch). The
        few remembered tensors are held, so their memory, and with it the cache key, cannot pass to another tensor."""
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)
        remembered = self._digests.setdefault("tensors", {})
        cached = remembered.pop(key, None)
        if cached is None or cached[1] != tensor._version:
            cached = (tensor, tensor._version, weights_digest([("tensor", tensor)], {}))
        remembered[key] = cached  # most recent last
        while len(remembered) > REMEMBERED_TENSOR_DIGESTS:
            remembered.pop(next(iter(remembered)))
        return cached[2]

    def decision_threshold(
        self, class_name: str, anchors: str, references: torch.Tensor | None = None, domain: str | None = None
    ) -> tuple[float | None, bool]:
        """`(threshold, calibrated)` for scoring `class_name` with anchors from `anchors` (`anchor_source`),
        `references` and `domain`: the class's own
        threshold when it was calibrated on this scoring (or carries no fingerprint: set by hand), else the fallback
        `config.decision_threshold` with a `StaleThresholdWarning` (weights trained, anchors or references changed,
        or references given for this call only)."""
        threshold, calibrated = self.config.threshold_for(class_name)
        recorded = self.config.threshold_fingerprints.get(class_name)
        if not calibrated or recorded is None:
            return threshold, calibrated
        current = self.scoring_fingerprint(class_name, anchors, references, domain)
        if current == recorded:
            return threshold, True
        if current.split(":")[0] != recorded.split(":")[0]:
            logger.info(f"the threshold of {class_name!r} was calibrated in another dtype: used as stored")
            return threshold, True
        fallback = self.config.decision_threshold
        instead = "the model has no fallback threshold" if fallback is None else f"using the fallback {fallback:.4f}"
        warnings.warn(
            f"the threshold of {class_name!r} ({threshold:.4f}) was calibrated on other scoring (the weights, its "
            "anchors, its references or the scoring settings changed since, or references were given for this call); "
            f"{instead}. Calibrate the class for this scoring (aaclip calibrate).",
            StaleThresholdWarning,
            stacklevel=3,
        )
        return self.config.decision_threshold, False

    # ------------------------------------------------------------------ names -> stored state (the thin layer)

    def class_ids(self, class_names: str | Sequence[str]) -> torch.Tensor:
        """Rows of the stored anchor table for `class_names`: what `forward(class_ids=...)` takes.

        Refuses unknown names, an anchor table whose names and rows no longer match, and anchors made by another text
        branch than this model's (`anchor_status`), instead of scoring with them.
        """
        names = class_name_list(class_names)
        stored = self.stored_class_names
        unknown = sorted({name for name in names if name not in stored})
        if unknown:
            shown = stored[:10] + (["..."] if len(stored) > 10 else [])
            raise UnknownClassError(
                f"no stored text anchors for class(es) {unknown}; stored: {shown}. Compute them with "
                "model.update_text_anchors(processor, [...]) (needs the text tower), or pass text_anchors=..."
            )
        status = self.anchor_status()
        if status["state"] in ("stale", "tampered"):
            raise StaleStateError(status["reason"])
        if GENERIC_CLASS in names and not bool(self.text_anchors[0].any()):
            raise StaleStateError(
                "the generic 'object' anchor was never computed for this model; call "
                "model.refresh_text_anchors(processor) once (from_clip_pretrained does it)"
            )
        return torch.tensor([stored.index(name) for name in names], device=self.text_anchors.device)

    def text_anchors_for(self, class_names: str | Sequence[str]) -> torch.Tensor:
        """Stored anchors gathered per name: `(B, E, 2)`."""
        return self.text_anchors.index_select(0, self.class_ids(class_names))

    @torch.no_grad()
    def add_references(self, class_name: str, pixel_values: torch.Tensor, **options) -> None:
        """Store the normal reference images `pixel_values` (from the processor) as `class_name`'s bank: one call for
        `reference_features` (`options`: augmentations, coreset_ratio, seed) and `store_references`."""
        self.store_references(class_name, self.reference_features(pixel_values, **options), pixel_values.shape[0])

    @torch.no_grad()
    def store_references(self, class_name: str, bank: torch.Tensor, num_images: int) -> None:
        """Store (or replace) the reference bank of `class_name`, made by `reference_features` with this model's
        current vision branch; it is saved with the weights and records that branch's fingerprint. The class must
        have stored anchors (references refine its zero-shot score; they do not replace it)."""
        check_class_name(class_name)
        if class_name not in self.stored_class_names:
            raise UnknownClassError(
                f"class {class_name!r} has no stored anchors, so its references could not be scored; store its "
                "anchors first (model.update_text_anchors(processor, [name]) or aaclip add-class)"
            )
        if bank.dim() != 3 or bank.shape[0] != self.config.num_levels or bank.shape[2] != self.config.projection_dim:
            raise InvalidInputError(
                f"a reference bank must be (levels={self.config.num_levels}, rows, {self.config.projection_dim}), "
                f"got {tuple(bank.shape)}"
            )
        banks = {name: self._stored_bank(name) for name in self.config.reference_classes if name != class_name}
        records = {name: record for name, record in self.config.reference_classes.items() if name != class_name}
        banks[class_name] = bank.detach().to(self.text_anchors)
        records[class_name] = {
            "images": int(num_images),
            "patches": int(bank.shape[1]),
            "vision": self.vision_branch_fingerprint(),
            "rows": rows_digest([class_name], banks[class_name][None]),
        }
        self.register_buffer("reference_bank", torch.cat(list(banks.values()), dim=1))
        self.config.reference_classes = records
        self._drop_threshold(class_name, "its references changed")

    def _drop_threshold(self, class_name: str, why: str) -> None:
        """A class's threshold belongs to the scoring it was calibrated on: when that changes here, it goes."""
        previous = self.config.set_decision_threshold(class_name, None)
        if previous is not None:
            logger.warning(
                f"the decision threshold of {class_name!r} ({previous:.4f}) was dropped: {why}, so it no longer "
                "belongs to the class's scores; calibrate the class again (aaclip calibrate)"
            )

    def to_checked_dtype(self, dtype: torch.dtype):
        """`self.to(dtype)` after checking the stored references in the dtype they were made in (their digests cannot
        match cast weights); `references_for` then refuses a bank that failed, as it would have before the cast."""
        verdicts = {}
        for name in self.config.reference_classes:
            try:
                self.references_for(name)
            except StaleStateError as error:
                verdicts[name] = str(error)
        self._digests["verdicts_before_cast"] = verdicts
        return self.to(dtype)

    def remove_references(self, class_names: Sequence[str] | None = None) -> None:
        """Drop the stored references of `class_names` (default: all of them)."""
        keep = {
            name: record
            for name, record in self.config.reference_classes.items()
            if class_names is not None and name not in class_names
        }
        banks = [self._stored_bank(name) for name in keep]
        for name in self.config.reference_classes:
            if name not in keep:
                self._drop_threshold(name, "its references were removed")
        self.config.reference_classes = keep
        if banks:
            self.register_buffer("reference_bank", torch.cat(banks, dim=1))
        else:
            self._buffers.pop("reference_bank", None)

    def _stored_bank(self, class_name: str) -> torch.Tensor:
        start = 0
        for name, record in self.config.reference_classes.items():
            if name == class_name:
                return self.reference_bank[:, start : start + record["patches"]]
            start += record["patches"]
        raise UnknownClassError(
            f"no stored references for class {class_name!r}; classes with references: "
            f"{sorted(self.config.reference_classes)}. Add them with aaclip add-references or model.store_references"
        )

    def references_for(self, class_name: str) -> torch.Tensor:
        """The stored bank `(L, rows, E)` of `class_name`, refused when it no longer matches this model's vision branch
        (training changed the weights since) or its record (edited outside the model)."""
        bank = self._stored_bank(class_name)
        record = self.config.reference_classes[class_name]
        current = self.vision_branch_fingerprint()
        if current.split(":")[0] != record["vision"].split(":")[0]:  # cast since: the digests cannot match
            verdict = self._digests.get("verdicts_before_cast", {}).get(class_name)
            if verdict is not None:
                raise StaleStateError(verdict)
            logger.info(f"references of {class_name!r} were made in another dtype: checked before the cast, if at all")
            return bank
        if rows_digest([class_name], bank[None]) != record["rows"]:
            raise StaleStateError(
                f"the stored references of {class_name!r} do not match their record in config.json (edited outside "
                "the model); add them again"
            )
        if current != record["vision"]:
            raise StaleStateError(
                f"the stored references of {class_name!r} were made with other vision weights (trained or replaced "
                "since), so their patches no longer compare with this model's; add them again (aaclip add-references)"
            )
        return bank


__all__ = ["StoredClassesMixin", "rows_digest", "weights_digest"]

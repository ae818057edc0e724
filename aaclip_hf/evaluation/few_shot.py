"""Few-shot evaluation (`aaclip evaluate --few-shot K`): K normal reference images per class, their patch bank.

The protocol of the few-shot columns in WinCLIP (Jeong et al., CVPR 2023) and APRIL-GAN (Chen et al., 2023): for
each class, K normal images are drawn at random from the training split (never from the images scored), their patch
features form the class's memory bank, and every test image of the class is scored against that bank as well as
against the class's text anchors. The draw is reproducible:

- the normal images of each class are sorted by path first, so the draw does not depend on the listing order;
- each class has its own generator, keyed by ``(seed, class name)`` as in `aaclip_hf.data.sampling`, so adding or
  removing a class never changes another class's references.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.image_io import load_image
from ..data.samples import Sample
from ..errors import BadInputError, InvalidInputError


__all__ = [
    "DEFAULT_FEW_SHOT_SEED",
    "FewShotReferences",
    "build_references",
    "select_references",
    "stored_references",
]

DEFAULT_FEW_SHOT_SEED = 111  # the seed of the reference's k-shot draws (aaclip_hf.data.sampling)


def select_references(
    samples: Sequence[Sample], class_names: Sequence[str], shots: int, seed: int, split: str
) -> dict[str, list[Sample]]:
    """`shots` normal samples of each class in `class_names`, drawn with `seed` (module docstring).

    Raises `BadInputError` naming the first class with fewer than `shots` normal images in `split`.
    """
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise InvalidInputError(f"few-shot K must be a positive number of normal images, got {shots!r}")
    normals: dict[str, list[Sample]] = {name: [] for name in class_names}
    for sample in samples:
        if sample.label == 0 and sample.class_name in normals:
            normals[sample.class_name].append(sample)
    chosen = {}
    for name in class_names:
        pool = sorted(normals[name], key=lambda s: s.image_path)
        if len(pool) < shots:
            raise BadInputError(
                f"{shots}-shot evaluation needs {shots} normal images of class {name!r} in split {split!r}, found "
                f"{len(pool)}; use a smaller --few-shot or another --reference-split",
                None,
                "few_shot",
            )
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
        chosen[name] = [pool[i] for i in sorted(rng.choice(len(pool), size=shots, replace=False).tolist())]
    return chosen


@dataclass
class FewShotReferences:
    """The reference banks of one evaluation: drawn from the data (`build_references`, every class has one) or the
    model's own stored ones (`stored_references`, classes without references are scored zero-shot)."""

    shots: int | None  # K drawn per class; None for stored banks (their K per class is in `counts`)
    seed: int | None
    reference_split: str | None
    banks: dict[str, torch.Tensor]  # class name -> (L, rows, E)
    images: dict[str, list[str]] = field(default_factory=dict)  # class name -> reference image paths
    counts: dict[str, int] = field(default_factory=dict)  # class name -> stored K

    @property
    def stored(self) -> bool:
        return self.shots is None

    def settings(self, fusion: str) -> dict:
        """What `results.json` records under `settings.few_shot`."""
        if self.stored:
            return {"stored": dict(self.counts), "fusion": fusion}
        return {"shots": self.shots, "seed": self.seed, "reference_split": self.reference_split, "fusion": fusion}

    def describe(self) -> str:
        if self.stored:
            return (
                "the model's stored references (" + ", ".join(f"{k}: {v}-shot" for k, v in self.counts.items()) + ")"
            )
        return f"{self.shots}-shot (seed {self.seed})"

    def bank(self, class_name: str) -> torch.Tensor | None:
        """The class's bank; `None` for a class without stored references (scored zero-shot)."""
        if class_name not in self.banks:
            if self.stored:
                return None
            raise InvalidInputError(
                f"no few-shot references for class {class_name!r}; references exist for {sorted(self.banks)}"
            )
        return self.banks[class_name]


def stored_references(model, class_names: Sequence[str]) -> FewShotReferences | None:
    """The model's stored banks of `class_names` (checked against its vision branch by `references_for`), or `None`
    when none of them has references: an evaluation then measures the model as `aaclip detect` uses it."""
    names = [name for name in class_names if name in model.config.reference_classes]
    if not names:
        return None
    banks = {name: model.references_for(name) for name in names}
    counts = {name: int(model.config.reference_classes[name]["images"]) for name in names}
    return FewShotReferences(None, None, None, banks, counts=counts)


@torch.no_grad()
def build_references(
    model,
    processor,
    reference_samples: Sequence[Sample],
    class_names: Sequence[str],
    shots: int,
    seed: int,
    split: str = "train",
) -> FewShotReferences:
    """Draw `shots` normal images per class from `reference_samples` and build each class's bank with
    `model.reference_features` (no augmentation, every patch kept)."""
    chosen = select_references(reference_samples, class_names, shots, seed, split)
    parameter = next(model.parameters())
    banks = {}
    for name, samples in chosen.items():
        images = [load_image(sample.image_path) for sample in samples]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        banks[name] = model.reference_features(pixel_values.to(device=parameter.device, dtype=parameter.dtype))
    images = {name: [sample.image_path for sample in samples] for name, samples in chosen.items()}
    return FewShotReferences(int(shots), int(seed), split, banks, images)

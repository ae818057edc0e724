"""The data side of a training run: the checked sample list, its summary, and each epoch's sharded batches.

The samples themselves come from `aaclip_hf.data` (readers, pre-flight checks, shots); this module decides
what one run trains on and in which order, so that the order depends on (seed, stage, epoch) only and N
processes see the same global batches as one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from ..data.dataset import CarryErrors, collate_or_error
from ..data.hf_datasets import dataset_samples
from ..data.image_io import BadInputError
from ..data.readers import load_samples
from ..data.samples import summarize_samples, verify_samples
from ..data.sampling import sample_shots
from ..errors import InvalidInputError
from .arguments import AAClipTrainingArguments
from .augment import sample_seed


logger = logging.getLogger("aaclip_hf.training")


def training_samples(args: AAClipTrainingArguments, samples=None, progress: bool = False) -> list:
    """The samples a run trains on: ``samples`` as given (a list, or a `datasets.Dataset` in the hf_datasets
    schema), else ``--train-data`` read, pre-flight checked and drawn to ``--shots``."""
    if isinstance(samples, Dataset):
        return dataset_samples(samples)
    if samples is not None:
        return samples
    found = load_samples(
        args.train_data,
        args.split,
        skip_bad_files=args.skip_bad_files,
        allow_outside_root=args.allow_outside_root,
    )
    # Pre-flight scan: decode every image and mask once now, so a bad file stops the run (or, with
    # --skip-bad-files, is dropped, logged and counted) before training starts, never hours in. Skipping
    # happens before the shots are drawn, so a k-shot set keeps its 1:1 ratio.
    if args.skip_bad_files:
        found = verify_samples(found, skip_bad_files=True, progress=progress)
    found = sample_shots(found, args.shots, seed=args.seed)
    return found if args.skip_bad_files else verify_samples(found, progress=progress)


def describe_samples(samples, use_masks: bool) -> None:
    """Refuse data without any anomaly; log what the run trains on and what gets the image loss only."""
    counts = summarize_samples(samples)
    n_anom = sum(r["anomaly"] for r in counts.values())
    n_masked = sum(r["with_mask"] for r in counts.values())
    if n_anom == 0:
        raise BadInputError(
            f"the training data ({len(samples)} images) has no anomalous image (label 1); AA-CLIP "
            "learns from normal and anomalous examples",
            None,
            "label",
        )
    only_normal = [c for c, r in counts.items() if r["anomaly"] == 0]
    if only_normal:
        logger.warning("class(es) %s have no anomalous image: they take part as normal examples only", only_normal)
    logger.info(
        "training data: %d images, %d classes (%s), %d anomalous, %d with masks",
        len(samples),
        len(counts),
        ", ".join(counts),
        n_anom,
        n_masked,
    )
    if not use_masks:
        logger.warning(
            "no anomaly has a mask: training with the image-level loss only (no segmentation loss; "
            "stage 2 leaves the seg projections untouched)"
        )
    elif n_masked < n_anom:
        logger.warning("%d anomalous images have no mask: they get the image loss only", n_anom - n_masked)


def data_fingerprint(samples) -> str:
    """What `--resume` compares to be sure a checkpoint was trained on the same images, labels and masks."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.image_path}|{s.label}|{s.class_name}|{s.mask_path}\n".encode())
    return h.hexdigest()[:16]


def check_global_batches(args: AAClipTrainingArguments, world: int) -> None:
    """The batch sizes are global: each must split evenly over the processes."""
    for name in ("text_batch_size", "vision_batch_size"):
        if getattr(args, name) % world:
            raise InvalidInputError(
                f"--{name.replace('_', '-')} {getattr(args, name)} (a global batch) is not divisible "
                f"by the {world} processes"
            )


def epoch_batches(
    num_samples: int, global_batch: int, seed: int, stage: int, epoch: int, rank: int, world: int
) -> list[list[int]]:
    """This process's shard of each global batch of one epoch (a seeded permutation, no drop_last).

    A global batch is split into ``world`` contiguous shards (the first ones one larger when it
    does not divide); a final batch smaller than ``world`` is dropped (it cannot be sharded).
    """
    g = torch.Generator().manual_seed(sample_seed(seed, 1_000_000 + stage, epoch))
    order = torch.randperm(num_samples, generator=g).tolist()
    out = []
    for start in range(0, num_samples, global_batch):
        chunk = order[start : start + global_batch]
        if len(chunk) < world:
            continue
        out.append([int(i) for i in np.array_split(np.asarray(chunk), world)[rank]])
    return out


@dataclass(frozen=True)
class StagePlan:
    """One stage's length: ``epochs`` of ``per_epoch`` global batches, cut at ``total`` steps (``--max-steps``)."""

    epochs: int
    global_batch: int
    per_process: int
    per_epoch: int
    total: int

    def __str__(self) -> str:
        return (
            f"{self.epochs} epochs x {self.per_epoch} steps, global batch {self.global_batch} "
            f"({self.per_process} per process)"
        )


def stage_plan(args: AAClipTrainingArguments, stage_index: int, stage: str, num_samples: int, world: int) -> StagePlan:
    epochs = args.text_epochs if stage == "text" else args.vision_epochs
    global_batch = args.text_batch_size if stage == "text" else args.vision_batch_size
    per_epoch = len(epoch_batches(num_samples, global_batch, args.seed, stage_index, 0, 0, world))
    total = epochs * per_epoch if args.max_steps is None else min(epochs * per_epoch, args.max_steps)
    return StagePlan(epochs, global_batch, global_batch // world, per_epoch, total)


def collate(items: list[dict]) -> dict:
    """Stack the `AnomalyDataset` items of one shard; class names and dataset indices stay lists."""
    batch = {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "label": torch.tensor([int(it["label"]) for it in items]),
        "class_name": [it["class_name"] for it in items],
        "index": [int(it["index"]) for it in items],
        "has_mask": torch.tensor([bool(it["has_mask"]) for it in items]),
    }
    if "mask" in items[0]:
        batch["mask"] = torch.stack([it["mask"] for it in items])
    return batch


def epoch_loader(dataset, batches: list[list[int]], num_workers: int) -> torch.utils.data.DataLoader:
    """A loader over exactly ``batches`` (the rest of an epoch when resuming mid-way), in that order."""
    return torch.utils.data.DataLoader(
        CarryErrors(dataset),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_or_error(collate),
        persistent_workers=False,
    )

"""Two-stage AA-CLIP training (docs/training.md): losses, DPAM stage-1 features, augmentation, trainer.

Files: ``arguments`` (every knob and its command-line form), ``trainer`` (the loop: run > stage > epoch > step),
``models`` (which model, what each stage trains), ``batches`` (training samples, epoch order, per-process shards),
``steps`` (per-stage loss terms, global-batch reduction, gradient averaging, finite checks), ``checkpointing``
(checkpoint contents, save/rotate, the resume guard, log repair, epoch models), ``trackers``, ``losses``,
``dpam``, ``augment``.

Run it as ``aaclip train ...``, ``python -m aaclip_hf.training ...`` or, on several devices,
``accelerate launch -m aaclip_hf.training ...`` (docs/training.md).
"""

from .arguments import AAClipTrainingArguments, add_arguments
from .augment import AugmentConfig, augment_batch, sample_seed
from .dpam import Stage1FeatureCache, Stage1Features, dpam_features
from .losses import (
    BatchReducer,
    dice_loss,
    disentangle_loss_paper,
    disentangle_loss_reference,
    focal_loss,
    image_bce_loss,
    image_ce_loss,
    segmentation_loss,
    stage1_loss,
    stage2_loss,
)
from .trainer import AAClipTrainer, train


__all__ = [
    "AAClipTrainer",
    "AAClipTrainingArguments",
    "AugmentConfig",
    "BatchReducer",
    "Stage1FeatureCache",
    "Stage1Features",
    "add_arguments",
    "augment_batch",
    "dice_loss",
    "disentangle_loss_paper",
    "disentangle_loss_reference",
    "dpam_features",
    "focal_loss",
    "image_bce_loss",
    "image_ce_loss",
    "sample_seed",
    "segmentation_loss",
    "stage1_loss",
    "stage2_loss",
    "train",
]

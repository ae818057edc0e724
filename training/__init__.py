"""Two-stage AA-CLIP training (docs/training.md): losses, DPAM stage-1 features, augmentation, trainer.

Files: ``arguments`` (every knob and its command-line form), ``trainer`` (the loop: run > stage > epoch > step),
``models`` (which model, what each stage trains), ``batches`` (training samples, epoch order, per-process shards),
``steps`` (per-stage loss terms, global-batch reduction, gradient averaging, finite checks), ``checkpointing``
(checkpoint contents, save/rotate, the resume guard, log repair, epoch models), ``trackers``, ``losses``,
``dpam``, ``augment``.

Run it as ``aaclip train ...``, ``python -m aaclip_hf.training ...`` or, on several devices,
``accelerate launch -m aaclip_hf.training ...`` (docs/training.md). Names load on first use."""

from .._lazy import lazy_exports


__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "AAClipTrainingArguments": ".arguments",
        "add_arguments": ".arguments",
        "AugmentConfig": ".augment",
        "augment_batch": ".augment",
        "sample_seed": ".augment",
        "Stage1FeatureCache": ".dpam",
        "Stage1Features": ".dpam",
        "dpam_features": ".dpam",
        "BatchReducer": ".losses",
        "dice_loss": ".losses",
        "disentangle_loss_paper": ".losses",
        "disentangle_loss_reference": ".losses",
        "focal_loss": ".losses",
        "image_bce_loss": ".losses",
        "image_ce_loss": ".losses",
        "segmentation_loss": ".losses",
        "stage1_loss": ".losses",
        "stage2_loss": ".losses",
        "AAClipTrainer": ".trainer",
        "train": ".trainer",
    },
)

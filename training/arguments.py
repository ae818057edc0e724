"""Every knob of a training run as a dataclass, and its command-line form (open_clip_train's `params.py`).

The defaults are the paper's / reference's values (docs/training.md); `aaclip train` and
`python -m aaclip_hf.training` share this one parser.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

# Not used here: `aaclip`'s error boundary (aaclip_hf/cli/errors.py) looks the non-finite loss error up in this
# module to report it as one line. It is the one class of aaclip_hf.errors.
from ..errors import InvalidInputError
from .augment import AUGMENT_MODES, AugmentConfig
from .dpam import DPAM_MODES, Stage1FeatureCache
from .trackers import REPORT_TO, trackers


STAGES = ("text", "vision")


# Fields of `AAClipTrainingArguments` that cannot change what a run computes: `--resume` ignores changes to them.
# Every other field (a new one included, unless listed here) must match the checkpoint's run.
RESUME_NEUTRAL_FIELDS = frozenset(
    {
        "output_dir",
        "resume",
        "resume_changed_args",
        "overwrite_output_dir",
        "checkpointing_steps",
        "num_workers",
        "log_every",
        "report_to",
        "progress",
        "push_to_hub",
        "hub_model_id",
        "cpu",
        "cache_stage1_features",
        "allow_outside_root",
        "save_epoch_models",
    }
)


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------


@dataclass
class AAClipTrainingArguments:
    """Every knob of a run; the defaults are the paper's / reference's (docs/training.md)."""

    model: str
    train_data: list[str]
    output_dir: str
    split: str = "test"
    shots: str = "full"
    stage: str = "both"
    text_epochs: int = 5
    vision_epochs: int = 20
    text_lr: float = 1e-5
    vision_lr: float = 5e-4
    adam_betas: tuple[float, float] = (0.5, 0.999)
    adam_eps: float = 1e-8
    text_batch_size: int = 16
    vision_batch_size: int = 2
    text_milestones: list[int] = field(default_factory=list)
    vision_milestones: list[int] = field(default_factory=lambda: [16000, 32000])
    lr_gamma: float = 0.5
    disentangle_weight: float = 0.1
    focal_gamma: float = 2.0
    stage1_loss: str = "reference"
    dpam_mode: str = "per_image"
    dpam_start_layer: int | None = None
    cache_stage1_features: bool = False
    image_size: int | None = None
    hidden_act: str | None = None
    augment: bool = True
    augment_mode: str = "reference"
    aug_rotation: float = 30.0
    aug_rotation_p: float = 0.5
    aug_translate: float = 0.15
    aug_translate_p: float = 0.5
    aug_hflip_p: float = 0.5
    aug_vflip_p: float = 0.5
    aug_jitter: float = 0.5
    aug_jitter_p: float = 0.7
    seed: int = 111
    mixed_precision: str = "no"
    cpu: bool = False
    resume: str | None = None
    resume_changed_args: bool = False
    overwrite_output_dir: bool = False
    save_epoch_models: bool = False
    allow_outside_root: bool = False
    checkpointing_steps: int = 0
    max_steps: int | None = None
    num_workers: int = 4
    skip_bad_files: bool = False
    skip_nonfinite: bool = False
    log_every: int = 10
    report_to: str = "none"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.stage not in ("text", "vision", "both"):
            raise InvalidInputError(f"--stage must be text, vision or both, got {self.stage!r}")
        if self.stage1_loss not in ("reference", "paper"):
            raise InvalidInputError(f"--stage1-loss must be reference or paper, got {self.stage1_loss!r}")
        if self.dpam_mode not in DPAM_MODES:
            raise InvalidInputError(f"--dpam-mode must be one of {DPAM_MODES}, got {self.dpam_mode!r}")
        if self.augment_mode not in AUGMENT_MODES:
            raise InvalidInputError(f"--augment-mode must be one of {AUGMENT_MODES}, got {self.augment_mode!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InvalidInputError(f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        positive = ("text_batch_size", "vision_batch_size", "text_lr", "vision_lr", "log_every")
        non_negative = (
            "text_epochs",
            "vision_epochs",
            "checkpointing_steps",
            "num_workers",
            "disentangle_weight",
            "focal_gamma",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidInputError(f"--max-steps must be >= 1, got {self.max_steps}")
        trackers(self.report_to)  # a missing tracker package stops the run here, before any loading
        if self.cache_stage1_features:
            Stage1FeatureCache.check_valid(self.dpam_mode, self.augment)

    @property
    def stages(self) -> list[str]:
        return list(STAGES) if self.stage == "both" else [self.stage]

    def augment_config(self, stage: str) -> AugmentConfig:
        return AugmentConfig(
            rotation_degrees=self.aug_rotation,
            rotation_p=self.aug_rotation_p,
            translate=self.aug_translate,
            translate_p=self.aug_translate_p,
            hflip_p=self.aug_hflip_p,
            vflip_p=self.aug_vflip_p,
            color_jitter=stage == "vision",
            brightness=self.aug_jitter,
            contrast=self.aug_jitter,
            saturation=self.aug_jitter,
            jitter_p=self.aug_jitter_p,
            mode=self.augment_mode,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`aaclip train` flags (every hyper-parameter at the paper's default)."""
    from ..data.readers import DATA_SPEC_HELP

    d = AAClipTrainingArguments(model="", train_data=[], output_dir="")
    g = parser.add_argument_group("model and data")
    g.add_argument(
        "--model", required=True, help="HF CLIP id/folder (adapters start fresh) or an AA-CLIP model folder"
    )
    g.add_argument(
        "--train-data",
        required=True,
        nargs="+",
        help=DATA_SPEC_HELP,
    )
    g.add_argument(
        "--split",
        default=d.split,
        help="split of the training data (default 'test': the reference trains on the other dataset's test split)",
    )
    g.add_argument(
        "--shots", default=d.shots, help="images per class, k/2 normal + k/2 anomalous (2, 16, 64) or 'full'"
    )
    g.add_argument("--stage", default=d.stage, choices=["text", "vision", "both"], help="which stage(s) to run")
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size when building from a plain CLIP (paper: 518); default: the model's",
    )
    g.add_argument(
        "--hidden-act",
        default=None,
        help="override both towers' activation when building from CLIP ('gelu' = the reference)",
    )
    g.add_argument(
        "--output",
        "--output-dir",
        dest="output_dir",
        required=True,
        help="output folder (model, processor, logs, checkpoints); refused while another run writes it (lock file "
        "OUTPUT.lock)",
    )
    g.add_argument(
        "--skip-bad-files", action="store_true", help="skip unreadable images/masks (logged) instead of stopping"
    )
    g.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept metadata paths that lead outside the dataset root (refused by default)",
    )
    g.add_argument("--num-workers", type=int, default=d.num_workers, help="data loader worker processes")
    o = parser.add_argument_group("optimisation (defaults: the paper's)")
    o.add_argument("--text-epochs", type=int, default=d.text_epochs)
    o.add_argument("--vision-epochs", type=int, default=d.vision_epochs)
    o.add_argument("--text-lr", type=float, default=d.text_lr)
    o.add_argument("--vision-lr", type=float, default=d.vision_lr)
    o.add_argument("--adam-betas", type=float, nargs=2, default=list(d.adam_betas), metavar=("B1", "B2"))
    o.add_argument("--adam-eps", type=float, default=d.adam_eps)
    o.add_argument(
        "--text-batch-size",
        type=int,
        default=d.text_batch_size,
        help="global batch size of stage 1 (split over processes)",
    )
    o.add_argument(
        "--vision-batch-size",
        type=int,
        default=d.vision_batch_size,
        help="global batch size of stage 2 (split over processes)",
    )
    o.add_argument(
        "--text-milestones",
        type=int,
        nargs="*",
        default=d.text_milestones,
        help="MultiStepLR milestones of stage 1, in steps (reference: none)",
    )
    o.add_argument(
        "--vision-milestones",
        type=int,
        nargs="*",
        default=d.vision_milestones,
        help="MultiStepLR milestones of stage 2, in steps",
    )
    o.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="MultiStepLR decay factor")
    o.add_argument(
        "--disentangle-weight", type=float, default=d.disentangle_weight, help="gamma of the disentangle loss"
    )
    o.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    o.add_argument("--stage1-loss", default=d.stage1_loss, choices=["reference", "paper"])
    o.add_argument("--dpam-mode", default=d.dpam_mode, choices=list(DPAM_MODES))
    o.add_argument(
        "--dpam-start-layer",
        type=int,
        default=None,
        help="first V-V layer (1-based); default: the first feature level (6 for ViT-L)",
    )
    o.add_argument(
        "--cache-stage1-features",
        action="store_true",
        help="keep stage-1 DPAM features in CPU memory (needs --no-augment, per_image)",
    )
    o.add_argument(
        "--max-steps", type=int, default=None, help="stop each stage after this many optimizer steps (tests, demos)"
    )
    o.add_argument("--seed", type=int, default=d.seed)
    o.add_argument(
        "--skip-nonfinite", action="store_true", help="skip steps whose loss is NaN/inf instead of stopping"
    )
    u = parser.add_argument_group("augmentation (defaults: the reference's)")
    u.add_argument("--no-augment", dest="augment", action="store_false", help="turn all augmentation off")
    u.add_argument(
        "--augment-mode",
        default=d.augment_mode,
        choices=list(AUGMENT_MODES),
        help="reference: rotate, shift, flips one after the other, each zero-filling (the reference); "
        "composed: one combined warp",
    )
    u.add_argument("--aug-rotation", type=float, default=d.aug_rotation, help="max rotation in degrees")
    u.add_argument("--aug-rotation-p", type=float, default=d.aug_rotation_p)
    u.add_argument("--aug-translate", type=float, default=d.aug_translate, help="max shift as a fraction of the side")
    u.add_argument("--aug-translate-p", type=float, default=d.aug_translate_p)
    u.add_argument("--aug-hflip-p", type=float, default=d.aug_hflip_p)
    u.add_argument("--aug-vflip-p", type=float, default=d.aug_vflip_p)
    u.add_argument(
        "--aug-jitter", type=float, default=d.aug_jitter, help="stage-2 brightness/contrast/saturation strength"
    )
    u.add_argument(
        "--aug-jitter-p", type=float, default=d.aug_jitter_p, help="probability of each stage-2 colour jitter"
    )
    r = parser.add_argument_group("run")
    r.add_argument("--mixed-precision", default=d.mixed_precision, choices=["no", "bf16", "fp16"])
    r.add_argument("--cpu", action="store_true", help="force the CPU even if an accelerator is present")
    r.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="resume from the newest checkpoint in the output folder (or from PATH)",
    )
    r.add_argument(
        "--resume-changed-args",
        action="store_true",
        help="resume even if result-affecting arguments differ from the checkpoint's run (they are listed)",
    )
    r.add_argument(
        "--save-epoch-models",
        action="store_true",
        help="also keep a complete model after every stage-2 epoch in OUTPUT/epoch_models/epoch_K (as the "
        "reference keeps image_adapter_K)",
    )
    r.add_argument(
        "--overwrite-output-dir", action="store_true", help="start fresh even if the output folder holds checkpoints"
    )
    r.add_argument(
        "--checkpointing-steps",
        type=int,
        default=d.checkpointing_steps,
        help="also checkpoint every N steps (0: at each epoch end only)",
    )
    r.add_argument("--log-every", type=int, default=d.log_every, help="log the loss every N steps")
    r.add_argument(
        "--report-to",
        default=d.report_to,
        choices=list(REPORT_TO),
        help="also log losses, learning rates, gradient norms and epoch times to Accelerate trackers "
        "(TensorBoard event files under OUTPUT/runs; wandb needs aaclip-hf[wandb]; all: both)",
    )
    r.add_argument("--push-to-hub", action="store_true")
    r.add_argument("--hub-model-id", default=None)
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def arguments_from_namespace(ns: argparse.Namespace) -> AAClipTrainingArguments:
    names = {f.name for f in dataclasses.fields(AAClipTrainingArguments)}
    kwargs = {k: v for k, v in vars(ns).items() if k in names}
    kwargs["adam_betas"] = tuple(kwargs["adam_betas"])
    kwargs["shots"] = str(kwargs["shots"])
    return AAClipTrainingArguments(**kwargs)

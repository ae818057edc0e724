"""Joint image + mask augmentation of the reference training (docs/training.md, "Augmentation modes").

Pure torch (``affine_grid`` / ``grid_sample``), no torchvision at run time. Per sample:

1. colour jitter (stage 2 only), on the [0, 1] image: brightness, contrast and saturation, each
   applied with probability ``jitter_p`` (0.7) and a factor drawn uniformly from
   ``[1 - s, 1 + s]`` (s = 0.5), in that order, as ``RandomApply(ColorJitter(...))`` x 3;
2. the geometric ops, applied to image **and** mask alike, so the mask moves exactly with the
   image: rotation in ``+-30`` degrees about the centre (p 0.5), translation by a whole number of
   pixels up to 15 % of the side (p 0.5), horizontal flip (p 0.5), vertical flip (p 0.5);
   nearest-neighbour sampling and fill 0. Two modes (``AugmentConfig.mode``, ``--augment-mode``):

   - ``"reference"`` (default): the reference's ``RandomRotation``, ``RandomAffine(translate)``,
     ``RandomHorizontalFlip``, ``RandomVerticalFlip`` **one after the other**, each zero-filling what
     leaves the frame: a corner cut off by the rotation stays black after the shift.
   - ``"composed"``: the same ops folded into one affine warp, sampled once from the original
     image. It differs only where the rotation pushed content out of the frame and the shift
     would bring it back (the composed warp keeps that content; the reference has zeros there).

As in the reference, the fill is 0 on the *normalised* image (i.e. the dataset mean colour) and
masks stay binary. The reference applies the jitter to the PIL image before resizing; here it is
applied after resizing (brightness/saturation commute with resizing up to clipping; the contrast
mean is taken over the resized image).

Randomness comes from an explicit ``torch.Generator`` per sample, seeded by
:func:`sample_seed` from (seed, epoch, dataset index), so a sample gets the same augmentation
whatever the number of processes, workers, or a resume in the middle of an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


__all__ = [
    "AUGMENT_MODES",
    "AugmentConfig",
    "apply_color_jitter",
    "apply_geometric",
    "apply_reference_geometric",
    "augment_batch",
    "sample_params",
    "sample_seed",
]

# "reference": rotate, translate, flips one after the other (each zero-fills); "composed": one affine warp.
AUGMENT_MODES = ("reference", "composed")

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class AugmentConfig:
    """Probabilities and ranges; defaults are the reference recipe (stage 2 adds colour jitter)."""

    rotation_degrees: float = 30.0
    rotation_p: float = 0.5
    translate: float = 0.15
    translate_p: float = 0.5
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    color_jitter: bool = False
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    jitter_p: float = 0.7
    mode: str = "reference"

    def __post_init__(self) -> None:
        if self.mode not in AUGMENT_MODES:
            raise ValueError(f"augmentation mode must be one of {AUGMENT_MODES}, got {self.mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixing (seed, epoch, sample index) (splitmix64-style)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + int(index) * 0x94D049BB133111EB) % (
        1 << 64
    )
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % (1 << 64)
    x ^= x >> 32
    return x & ((1 << 63) - 1)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high, generator=g))


def _coin(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def sample_params(cfg: AugmentConfig, generator: torch.Generator, height: int, width: int) -> dict:
    """Draw the parameters of one sample (fixed draw order, so seeds reproduce)."""
    g = generator
    params: dict = {"angle": 0.0, "tx": 0, "ty": 0, "hflip": False, "vflip": False, "jitter": []}
    if cfg.color_jitter:
        for name, strength in (
            ("brightness", cfg.brightness),
            ("contrast", cfg.contrast),
            ("saturation", cfg.saturation),
        ):
            if _coin(g, cfg.jitter_p):
                params["jitter"].append((name, _uniform(g, max(0.0, 1.0 - strength), 1.0 + strength)))
    if _coin(g, cfg.rotation_p):
        params["angle"] = _uniform(g, -cfg.rotation_degrees, cfg.rotation_degrees)
    if _coin(g, cfg.translate_p):
        params["tx"] = int(round(_uniform(g, -cfg.translate * width, cfg.translate * width)))
        params["ty"] = int(round(_uniform(g, -cfg.translate * height, cfg.translate * height)))
    params["hflip"] = _coin(g, cfg.hflip_p)
    params["vflip"] = _coin(g, cfg.vflip_p)
    return params


def _inverse_pixel_map(params: dict, height: int, width: int) -> torch.Tensor:
    """3x3 map from output to input pixel coordinates (x right, y down, pixel centres at integers)."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a = math.radians(params["angle"])
    cos, sin = math.cos(a), math.sin(a)
    # forward: rotate about the centre (counter-clockwise on screen), translate, then flip
    rot = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    to_c = torch.tensor([[1.0, 0, -cx], [0, 1.0, -cy], [0, 0, 1.0]], dtype=torch.float64)
    from_c = torch.tensor([[1.0, 0, cx], [0, 1.0, cy], [0, 0, 1.0]], dtype=torch.float64)
    shift = torch.tensor([[1.0, 0, params["tx"]], [0, 1.0, params["ty"]], [0, 0, 1.0]], dtype=torch.float64)
    hf = torch.tensor([[-1.0, 0, width - 1], [0, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    vf = torch.tensor([[1.0, 0, 0], [0, -1.0, height - 1], [0, 0, 1.0]], dtype=torch.float64)
    forward = from_c @ rot @ to_c
    forward = shift @ forward
    if params["hflip"]:
        forward = hf @ forward
    if params["vflip"]:
        forward = vf @ forward
    return torch.linalg.inv(forward)


def _theta(params: dict, height: int, width: int) -> torch.Tensor:
    """The (2, 3) ``affine_grid`` matrix (normalised coords, align_corners=True)."""
    to_norm = torch.tensor(
        [[2.0 / max(width - 1, 1), 0, -1.0], [0, 2.0 / max(height - 1, 1), -1.0], [0, 0, 1.0]], dtype=torch.float64
    )
    m = to_norm @ _inverse_pixel_map(params, height, width) @ torch.linalg.inv(to_norm)
    return m[:2]


def apply_geometric(
    images: torch.Tensor, masks: torch.Tensor | None, params: Sequence[dict]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Warp (B, C, H, W) images and (B, H, W) masks with one grid per sample (nearest, fill 0)."""
    b, c, h, w = images.shape
    theta = torch.stack([_theta(p, h, w) for p in params]).to(device=images.device, dtype=torch.float32)
    stack = images.float() if masks is None else torch.cat([images.float(), masks[:, None].float()], dim=1)
    grid = F.affine_grid(theta, [b, stack.shape[1], h, w], align_corners=True)
    out = F.grid_sample(stack, grid, mode="nearest", padding_mode="zeros", align_corners=True)
    new_images = out[:, :c].to(images.dtype)
    new_masks = None if masks is None else out[:, c].to(masks.dtype)
    return new_images, new_masks


def _shift(stack: torch.Tensor, tx: int, ty: int) -> torch.Tensor:
    """Move (C, H, W) content right by ``tx`` and down by ``ty`` whole pixels; zero fill."""
    h, w = stack.shape[-2:]
    out = torch.zeros_like(stack)
    if abs(tx) >= w or abs(ty) >= h:
        return out
    out[..., max(ty, 0) : h + min(ty, 0), max(tx, 0) : w + min(tx, 0)] = stack[
        ..., max(-ty, 0) : h + min(-ty, 0), max(-tx, 0) : w + min(-tx, 0)
    ]
    return out


def apply_reference_geometric(
    images: torch.Tensor, masks: torch.Tensor | None, params: Sequence[dict]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference's order: rotate (nearest, fill 0), then shift (fill 0), then h-flip, then v-flip.

    Each op works on the previous op's output, so what one op moves out of the frame is gone for the next.
    """
    c = images.shape[1]
    stack = images.float() if masks is None else torch.cat([images.float(), masks[:, None].float()], dim=1)
    out = []
    for sample, p in zip(stack, params):
        if p["angle"]:
            rotation = {**p, "tx": 0, "ty": 0, "hflip": False, "vflip": False}
            sample = apply_geometric(sample[None], None, [rotation])[0][0]
        if p["tx"] or p["ty"]:
            sample = _shift(sample, int(p["tx"]), int(p["ty"]))
        if p["hflip"]:
            sample = sample.flip(-1)
        if p["vflip"]:
            sample = sample.flip(-2)
        out.append(sample)
    result = torch.stack(out)
    new_images = result[:, :c].to(images.dtype)
    new_masks = None if masks is None else result[:, c].to(masks.dtype)
    return new_images, new_masks


def _gray(img: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY_WEIGHTS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True)


def apply_color_jitter(image01: torch.Tensor, ops: Sequence[tuple[str, float]]) -> torch.Tensor:
    """Brightness / contrast / saturation on one (3, H, W) image in [0, 1] (torchvision formulas)."""
    x = image01
    for name, f in ops:
        if name == "brightness":
            x = (x * f).clamp(0.0, 1.0)
        elif name == "contrast":
            x = (f * x + (1.0 - f) * _gray(x).mean()).clamp(0.0, 1.0)
        elif name == "saturation":
            x = (f * x + (1.0 - f) * _gray(x)).clamp(0.0, 1.0)
        else:
            raise ValueError(f"unknown colour jitter {name!r}")
    return x


def augment_batch(
    pixel_values: torch.Tensor,
    masks: torch.Tensor | None,
    seeds: Sequence[int],
    cfg: AugmentConfig,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a normalised batch (B, 3, H, W) and its (B, H, W) masks, one seed per sample (``cfg.mode``)."""
    b, _, h, w = pixel_values.shape
    if len(seeds) != b:
        raise ValueError(f"augment_batch: {len(seeds)} seeds for a batch of {b}")
    params = [sample_params(cfg, torch.Generator().manual_seed(int(s)), h, w) for s in seeds]
    x = pixel_values
    if any(p["jitter"] for p in params):
        mean = torch.tensor(image_mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(image_std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        out = []
        for img, p in zip(x, params):
            if p["jitter"]:
                img = (apply_color_jitter((img * std + mean).clamp(0.0, 1.0), p["jitter"]) - mean) / std
            out.append(img)
        x = torch.stack(out)
    if cfg.mode == "composed":
        return apply_geometric(x, masks, params)
    return apply_reference_geometric(x, masks, params)

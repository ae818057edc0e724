"""A deterministic synthetic defect dataset in the MVTec-AD layout.

Tests, examples and smoke-training runs need data with *exact* ground truth and no
download. This module draws ten visually distinct classes (five textures, five objects)
with numpy + PIL and stamps six defect kinds on them. Each defect mask is computed as the
set of pixels whose final 8-bit RGB value differs from the defect-free rendering of the
same image, so the mask is by construction exactly the pixels that changed.

Normal images of a class vary in position, rotation, scale, lighting gradient and sensor
noise, but stay recognisably that class. Everything is a pure function of ``(seed, class,
split, defect kind, index, image_size)``, so a class renders identically whichever other
classes are generated with it.

Layout written by `generate_synthetic_dataset` (read it with ``load_samples(root)``)::

    root/<class>/train/good/000.png
    root/<class>/test/good/000.png
    root/<class>/test/<defect>/000.png
    root/<class>/ground_truth/<defect>/000_mask.png      # 0 / 255, L mode
    root/synthetic_dataset.json                          # the generation parameters
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from ..errors import InvalidInputError


__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_TEXTURE_CLASSES",
    "SYNTHETIC_OBJECT_CLASSES",
    "SYNTHETIC_TRAIN_CLASSES",
    "SYNTHETIC_HELD_OUT_CLASSES",
    "SYNTHETIC_PROMPT_NAMES",
    "DEFECT_KINDS",
    "render_normal",
    "render_defect",
    "generate_synthetic_dataset",
    "preview_grid",
]

SYNTHETIC_TEXTURE_CLASSES: tuple[str, ...] = ("stripes", "grid", "wood", "carpet", "tile")
SYNTHETIC_OBJECT_CLASSES: tuple[str, ...] = ("disc", "pill", "hexnut", "bottle", "cable")
SYNTHETIC_CLASSES: tuple[str, ...] = SYNTHETIC_TEXTURE_CLASSES + SYNTHETIC_OBJECT_CLASSES
# Suggested zero-shot protocol: train on these, evaluate on the held-out ones (both
# halves mix textures and objects, as MVTec / VisA do).
SYNTHETIC_TRAIN_CLASSES: tuple[str, ...] = ("stripes", "grid", "wood", "disc", "pill", "hexnut")
SYNTHETIC_HELD_OUT_CLASSES: tuple[str, ...] = ("carpet", "tile", "bottle", "cable")
# Descriptive names for text prompts (like the reference's REAL_NAMES for MVTec).
SYNTHETIC_PROMPT_NAMES: dict[str, str] = {
    "stripes": "blue and cream striped fabric",
    "grid": "metal mesh grid",
    "wood": "wood surface",
    "carpet": "red carpet",
    "tile": "terracotta tile surface",
    "disc": "metal disc",
    "pill": "red and white capsule",
    "hexnut": "hexagonal metal nut",
    "bottle": "top view of a green bottle",
    "cable": "top view of three cables",
}
DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "crack", "missing_part", "color_spot")

# Photometric variation of normal images (fractions of the mean intensity / 8-bit levels).
DEFAULT_LIGHT_SLOPE = 0.15
DEFAULT_LIGHT_OFFSET = 0.08
DEFAULT_NOISE_STD = 3.0
_SUPERSAMPLE = 2  # objects are drawn at 2x and box-filtered, for smooth edges


@dataclass
class _Layers:
    """A clean (noise-free, unlit) rendering: image, what lies behind the object, object mask."""

    image: np.ndarray  # (H, W, 3) float32 in [0, 255]
    background: np.ndarray  # (H, W, 3) float32
    foreground: np.ndarray  # (H, W) bool; all True for textures


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator keyed by names, stable across runs and Python versions."""
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1), as (y, x)."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return c[:, None].repeat(n, 1), c[None, :].repeat(n, 0)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``cells`` x ``cells`` random grid, bicubic-upsampled."""
    low = rng.random((cells, cells)).astype(np.float32)
    return np.clip(np.asarray(Image.fromarray(low).resize((n, n), Image.BICUBIC)), 0, 1)


def _mix(a: Sequence[float], b: Sequence[float], t: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def _rotate(y: np.ndarray, x: np.ndarray, cy: float, cx: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to (cy, cx) in a frame rotated by ``angle`` radians."""
    dy, dx = y - cy, x - cx
    c, s = np.cos(angle), np.sin(angle)
    return c * dy - s * dx, s * dy + c * dx


# ---------------------------------------------------------------- textures (full frame)


def _stripes(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    angle = np.deg2rad(35 + rng.uniform(-5, 5))
    period = 1 / 7 * rng.uniform(0.95, 1.05)
    t = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    t = np.clip(t * 2.5 * 0.5 + 0.5, 0, 1)
    img = _mix((35, 55, 125), (235, 225, 200), t)
    return _Layers(img, img.copy(), np.ones((n, n), bool))


def _mesh(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    ry, rx = _rotate(y, x, 0.5, 0.5, np.deg2rad(rng.uniform(-4, 4)))
    pitch = 1 / 6
    half_width = 0.012
    oy, ox = rng.uniform(0, pitch, 2)
    dist = np.minimum(np.abs((ry + oy) % pitch - pitch / 2), np.abs((rx + ox) % pitch - pitch / 2))
    t = np.clip((dist - half_width) / 0.01, 0, 1)  # 0 on the wires, 1 in the holes
    img = _mix((70, 72, 80), (200, 206, 214), t)
    return _Layers(img, img.copy(), np.ones((n, n), bool))


def _wood(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    warp = _smooth_noise(rng, n, 4)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (9 * x + 1.8 * warp + 0.6 * y + rng.uniform(0, 1)))
    t = t**1.5 * (0.85 + 0.15 * _smooth_noise(rng, n, 24))
    img = _mix((215, 165, 105), (135, 85, 45), t)
    return _Layers(img, img.copy(), np.ones((n, n), bool))


def _carpet(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    fibres = rng.random((n, n)).astype(np.float32)
    fibres = 0.5 * fibres + 0.125 * sum(np.roll(fibres, sh, ax) for sh in (-1, 1) for ax in (0, 1))
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * n / 4 * x) * np.sin(2 * np.pi * n / 4 * y)
    t = 0.55 * fibres + 0.2 * weave + 0.25 * _smooth_noise(rng, n, 6)
    img = _mix((95, 20, 30), (190, 60, 65), np.clip(t, 0, 1))
    return _Layers(img, img.copy(), np.ones((n, n), bool))


def _tile(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    pitch = 1 / 3.5
    oy, ox = rng.uniform(0, pitch, 2)
    ty, tx = (y + oy) / pitch, (x + ox) / pitch
    shade = rng.uniform(-0.12, 0.12, (8, 8)).astype(np.float32)
    tile_shade = shade[ty.astype(int) % 8, tx.astype(int) % 8]
    grout = np.maximum(np.abs(ty % 1 - 0.5), np.abs(tx % 1 - 0.5)) > 0.46
    speckle = (rng.random((n, n)) < 0.04).astype(np.float32)
    img = _mix((195, 105, 70), (150, 70, 45), np.clip(0.5 + tile_shade + 0.6 * speckle - 0.25, 0, 1))
    img[grout] = (225, 220, 205)
    return _Layers(img, img.copy(), np.ones((n, n), bool))


# ---------------------------------------------------------------- objects on a background


def _pose(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Centre (y, x), scale and rotation jitter of an object."""
    return (
        0.5 + rng.uniform(-0.06, 0.06),
        0.5 + rng.uniform(-0.06, 0.06),
        rng.uniform(0.92, 1.08),
        rng.uniform(-np.pi, np.pi),
    )


def _backdrop(rng: np.random.Generator, n: int, colour: Sequence[float], spread: float) -> np.ndarray:
    return np.asarray(colour, np.float32) * (1 + spread * (_smooth_noise(rng, n, 3)[..., None] - 0.5))


def _disc(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    cy, cx, sc, _ = _pose(rng)
    bg = _backdrop(rng, n, (45, 45, 52), 0.3)
    r = np.hypot(y - cy, x - cx) / (0.32 * sc)
    fg = r < 1
    light = np.clip(0.5 + 0.5 * ((x - cx) * -0.7 + (y - cy) * -0.7) / (0.32 * sc), 0, 1)
    face = _mix((140, 142, 150), (215, 216, 222), light)
    rim = (r > 0.86) & fg
    face[rim] *= 0.78
    return _Layers(np.where(fg[..., None], face, bg), bg, fg)


def _pill(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    cy, cx, sc, _ = _pose(rng)
    ry, rx = _rotate(y, x, cy, cx, rng.uniform(-0.3, 0.3))
    half_len, radius = 0.19 * sc, 0.13 * sc
    d = np.hypot(np.maximum(np.abs(rx) - half_len, 0), ry)  # distance to the capsule's axis segment
    fg = d < radius
    bg = _backdrop(rng, n, (28, 38, 78), 0.3)
    shade = np.clip(1 - 0.35 * (ry / radius) ** 2, 0, 1)[..., None]
    body = np.where((rx < 0)[..., None], np.float32((205, 40, 40)), np.float32((238, 236, 230))) * shade
    return _Layers(np.where(fg[..., None], body, bg), bg, fg)


def _hexnut(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    cy, cx, sc, _ = _pose(rng)
    ang = rng.uniform(0, np.pi / 3)
    ry, rx = _rotate(y, x, cy, cx, ang)
    rad = 0.33 * sc
    hexdist = np.max([np.abs(rx * np.cos(a) + ry * np.sin(a)) for a in (0, np.pi / 3, 2 * np.pi / 3)], axis=0)
    r = np.hypot(ry, rx)
    fg = (hexdist < rad * np.cos(np.pi / 6)) & (r > 0.13 * sc)
    bg = _backdrop(rng, n, (214, 214, 208), 0.15)
    bevel = np.clip((r - 0.13 * sc) / (0.1 * sc), 0, 1)
    metal = _mix((120, 124, 132), (175, 180, 188), bevel)
    return _Layers(np.where(fg[..., None], metal, bg), bg, fg)


def _bottle(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    cy, cx, sc, _ = _pose(rng)
    r = np.hypot(y - cy, x - cx) / sc
    fg = r < 0.38
    bg = _backdrop(rng, n, (236, 234, 226), 0.1)
    glass = _mix((25, 65, 38), (70, 125, 80), np.clip(1 - np.abs(r - 0.24) / 0.14, 0, 1))
    glass[r < 0.1] = (12, 22, 14)
    return _Layers(np.where(fg[..., None], glass, bg), bg, fg)


def _cable(rng: np.random.Generator, n: int) -> _Layers:
    y, x = _grid(n)
    cy, cx, sc, rot = _pose(rng)
    rot = rot * 0.1
    fg = np.hypot(y - cy, x - cx) < 0.4 * sc
    bg = _backdrop(rng, n, (55, 58, 62), 0.25)
    img = np.where(fg[..., None], np.float32((150, 150, 146)), bg)
    for k, colour in enumerate(((40, 150, 60), (40, 80, 190), (130, 80, 40))):
        a = rot + 2 * np.pi * k / 3 - np.pi / 2
        core = np.hypot(y - (cy + 0.19 * sc * np.sin(a)), x - (cx + 0.19 * sc * np.cos(a))) / (0.14 * sc)
        inside = core < 1
        img[inside] = np.float32(colour) * (1.1 - 0.3 * core[inside])[:, None]
    return _Layers(img, bg, fg)


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Layers]] = {
    "stripes": _stripes,
    "grid": _mesh,
    "wood": _wood,
    "carpet": _carpet,
    "tile": _tile,
    "disc": _disc,
    "pill": _pill,
    "hexnut": _hexnut,
    "bottle": _bottle,
    "cable": _cable,
}


def _render_layers(class_name: str, rng: np.random.Generator, n: int) -> _Layers:
    if class_name not in _RENDERERS:
        raise InvalidInputError(f"unknown synthetic class {class_name!r}; choose from {list(SYNTHETIC_CLASSES)}")
    if class_name in SYNTHETIC_TEXTURE_CLASSES:
        return _RENDERERS[class_name](rng, n)
    big = _RENDERERS[class_name](rng, n * _SUPERSAMPLE)
    down = lambda a: a.reshape(n, _SUPERSAMPLE, n, _SUPERSAMPLE, *a.shape[2:]).astype(np.float32).mean((1, 3))  # noqa: E731
    return _Layers(down(big.image), down(big.background), down(big.foreground) > 0.5)


def _finish(clean: np.ndarray, light: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Lighting and sensor noise, then 8-bit quantisation: identical for normal and defect."""
    return np.clip(np.rint(clean * light[..., None] + noise), 0, 255).astype(np.uint8)


def _photometry(
    rng: np.random.Generator, n: int, slope: float, offset: float, noise_std: float
) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(n)
    a, b = rng.uniform(-slope, slope, 2)
    light = 1 + rng.uniform(-offset, offset) + a * (x - 0.5) + b * (y - 0.5)
    return light.astype(np.float32), rng.normal(0, noise_std, (n, n, 3)).astype(np.float32)


# ---------------------------------------------------------------- defects


def _draw_mask(n: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (n, n), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    img = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(2 * radius + 1))
    return np.asarray(img) > 0


def _pick(rng: np.random.Generator, region: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        raise RuntimeError("no room for a defect")
    i = rng.integers(ys.size)
    return float(xs[i]), float(ys[i])


def _contrast_colour(local: np.ndarray, dark: Sequence[float], bright: Sequence[float]) -> np.ndarray:
    lum = float(local.reshape(-1, 3).mean(0) @ np.float32((0.299, 0.587, 0.114))) if local.size else 128.0
    return np.float32(dark if lum > 110 else bright)


def _apply_defect(kind: str, layers: _Layers, rng: np.random.Generator) -> np.ndarray:
    """Return the clean image with one defect of ``kind`` painted on it."""
    n = layers.image.shape[0]
    img, fg = layers.image.copy(), layers.foreground
    texture = bool(fg.all())
    margin = max(2, int(0.1 * n))
    inner = _erode(fg, max(1, int(0.05 * n)))
    inner[:margin], inner[-margin:], inner[:, :margin], inner[:, -margin:] = False, False, False, False
    px, py = _pick(rng, inner)

    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), n * rng.uniform(0.22, 0.36)
        bend = n * rng.uniform(-0.08, 0.08)
        t = np.linspace(-0.5, 0.5, 24)
        pts = [
            (
                px + length * u * np.cos(angle) - bend * (1 - 4 * u * u) * np.sin(angle),
                py + length * u * np.sin(angle) + bend * (1 - 4 * u * u) * np.cos(angle),
            )
            for u in t
        ]
        region = _draw_mask(n, lambda d: d.line(pts, fill=255, width=max(1, round(n / 96)), joint="curve")) & fg
        img[region] = _contrast_colour(img[region], (30, 30, 30), (240, 240, 232))
    elif kind == "crack":
        pts, ang = [(px, py)], rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(7, 11))):
            ang += rng.uniform(-0.8, 0.8)
            step = n * rng.uniform(0.025, 0.045)
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        branch, bang = [pts[len(pts) // 2]], ang + rng.choice((-1.0, 1.0)) * rng.uniform(0.6, 1.2)
        for _ in range(3):
            bang += rng.uniform(-0.5, 0.5)
            branch.append((branch[-1][0] + n * 0.03 * np.cos(bang), branch[-1][1] + n * 0.03 * np.sin(bang)))
        width = max(1, round(n / 64))
        region = (
            _draw_mask(n, lambda d: (d.line(pts, fill=255, width=width), d.line(branch, fill=255, width=width))) & fg
        )
        img[region] = _contrast_colour(img[region], (18, 14, 10), (235, 230, 220))
    elif kind == "hole":
        ra, rb = n * rng.uniform(0.045, 0.075), n * rng.uniform(0.035, 0.06)
        region = _draw_mask(n, lambda d: d.ellipse((px - ra, py - rb, px + ra, py + rb), fill=255)) & fg
        yy, xx = np.nonzero(region)
        depth = np.clip(np.hypot((xx - px) / ra, (yy - py) / rb), 0, 1)
        img[yy, xx] = (8 + 30 * depth)[:, None] * np.float32((1.0, 0.95, 0.9))
    elif kind == "stain":
        blobs = [
            (px + rng.uniform(-0.04, 0.04) * n, py + rng.uniform(-0.04, 0.04) * n, n * rng.uniform(0.03, 0.055))
            for _ in range(int(rng.integers(3, 6)))
        ]
        region = (
            _draw_mask(n, lambda d: [d.ellipse((bx - r, by - r, bx + r, by + r), fill=255) for bx, by, r in blobs])
            & fg
        )
        stain = np.float32((115, 80, 30)) if rng.random() < 0.5 else np.float32((70, 85, 40))
        img[region] = 0.4 * img[region] + 0.6 * stain
    elif kind == "color_spot":
        r = n * rng.uniform(0.03, 0.05)
        region = _draw_mask(n, lambda d: d.ellipse((px - r, py - r, px + r, py + r), fill=255)) & fg
        palette = np.float32(((230, 30, 30), (30, 200, 60), (40, 80, 235), (225, 40, 205), (245, 225, 30)))
        local = img[region].reshape(-1, 3).mean(0) if region.any() else np.zeros(3, np.float32)
        img[region] = palette[int(np.argmax(np.abs(palette - local).sum(1)))]
    elif kind == "missing_part":
        if texture:
            w, h = n * rng.uniform(0.16, 0.26), n * rng.uniform(0.12, 0.2)
            region = _draw_mask(n, lambda d: d.rectangle((px - w / 2, py - h / 2, px + w / 2, py + h / 2), fill=255))
            # The pattern is torn out and a flat backing shows through.
            img[region] = _contrast_colour(img, (60, 60, 60), (205, 205, 205))
        else:
            edge = fg & ~_erode(fg, max(1, int(0.03 * n)))
            ex, ey = _pick(rng, edge)
            r = n * rng.uniform(0.09, 0.13)
            region = _draw_mask(n, lambda d: d.ellipse((ex - r, ey - r, ex + r, ey + r), fill=255)) & fg
            img[region] = layers.background[region]
    else:
        raise InvalidInputError(f"unknown defect kind {kind!r}; choose from {list(DEFECT_KINDS)}")
    return img


# ---------------------------------------------------------------- public rendering API


def render_normal(
    class_name: str,
    rng: np.random.Generator,
    image_size: int = 128,
    *,
    light_slope: float = DEFAULT_LIGHT_SLOPE,
    light_offset: float = DEFAULT_LIGHT_OFFSET,
    noise_std: float = DEFAULT_NOISE_STD,
) -> np.ndarray:
    """One defect-free ``(H, W, 3)`` uint8 image of ``class_name``."""
    layers = _render_layers(class_name, rng, image_size)
    light, noise = _photometry(rng, image_size, light_slope, light_offset, noise_std)
    return _finish(layers.image, light, noise)


def render_defect(
    class_name: str,
    kind: str,
    rng: np.random.Generator,
    image_size: int = 128,
    *,
    light_slope: float = DEFAULT_LIGHT_SLOPE,
    light_offset: float = DEFAULT_LIGHT_OFFSET,
    noise_std: float = DEFAULT_NOISE_STD,
    min_defect_fraction: float = 0.002,
    max_tries: int = 25,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(normal, defective, mask)``: the same scene without and with one defect.

    ``mask`` (bool, H x W) is exactly ``(defective != normal).any(-1)``. A defect covering
    fewer than ``min_defect_fraction`` of the pixels (e.g. a scratch clipped by the object
    edge) is redrawn, so every defect is visible.
    """
    if kind not in DEFECT_KINDS:
        raise InvalidInputError(f"unknown defect kind {kind!r}; choose from {list(DEFECT_KINDS)}")
    layers = _render_layers(class_name, rng, image_size)
    light, noise = _photometry(rng, image_size, light_slope, light_offset, noise_std)
    normal = _finish(layers.image, light, noise)
    min_pixels = max(4, int(min_defect_fraction * image_size * image_size))
    for _ in range(max_tries):
        defective = _finish(_apply_defect(kind, layers, rng), light, noise)
        mask = (defective != normal).any(-1)
        if mask.sum() >= min_pixels:
            return normal, defective, mask
    raise RuntimeError(
        f"could not place a visible {kind!r} defect on {class_name!r} at {image_size} px in {max_tries} tries"
    )


def generate_synthetic_dataset(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    image_size: int = 128,
    n_train_good: int = 16,
    n_test_good: int = 8,
    n_test_defect_per_kind: int = 2,
    defect_kinds: Sequence[str] = DEFECT_KINDS,
    seed: int = 0,
    *,
    light_slope: float = DEFAULT_LIGHT_SLOPE,
    light_offset: float = DEFAULT_LIGHT_OFFSET,
    noise_std: float = DEFAULT_NOISE_STD,
    progress: bool = True,
) -> str:
    """Write the synthetic dataset under ``root`` (MVTec layout) and return ``root``."""

    classes = list(SYNTHETIC_CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in _RENDERERS]
    bad_kinds = [k for k in defect_kinds if k not in DEFECT_KINDS]
    if unknown or bad_kinds:
        raise InvalidInputError(
            f"unknown class(es) {unknown} / defect kind(s) {bad_kinds}; classes: {list(SYNTHETIC_CLASSES)}, kinds: {list(DEFECT_KINDS)}"
        )
    if image_size < 16:
        raise InvalidInputError(f"image_size must be at least 16 px to hold a visible defect, got {image_size}")
    photo = {"light_slope": light_slope, "light_offset": light_offset, "noise_std": noise_std}
    root = os.fspath(root)

    def save(arr: np.ndarray, *parts: str) -> None:
        path = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(arr).save(path)

    total = len(classes) * (n_train_good + n_test_good + len(defect_kinds) * n_test_defect_per_kind)
    with tqdm(total=total, desc="synthetic images", disable=not progress) as bar:
        for cls in classes:
            for split, count in (("train", n_train_good), ("test", n_test_good)):
                for i in range(count):
                    save(
                        render_normal(cls, _rng(seed, cls, split, "good", i), image_size, **photo),
                        cls,
                        split,
                        "good",
                        f"{i:03d}.png",
                    )
                    bar.update()
            for kind in defect_kinds:
                for i in range(n_test_defect_per_kind):
                    _, img, mask = render_defect(cls, kind, _rng(seed, cls, "test", kind, i), image_size, **photo)
                    save(img, cls, "test", kind, f"{i:03d}.png")
                    save(mask.astype(np.uint8) * 255, cls, "ground_truth", kind, f"{i:03d}_mask.png")
                    bar.update()
    info = {
        "generator": "aaclip_hf.data.synthetic",
        "seed": seed,
        "image_size": image_size,
        "classes": classes,
        "defect_kinds": list(defect_kinds),
        "n_train_good": n_train_good,
        "n_test_good": n_test_good,
        "n_test_defect_per_kind": n_test_defect_per_kind,
        **photo,
        "train_classes": [c for c in SYNTHETIC_TRAIN_CLASSES if c in classes],
        "held_out_classes": [c for c in SYNTHETIC_HELD_OUT_CLASSES if c in classes],
    }
    with open(os.path.join(root, "synthetic_dataset.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return root


def preview_grid(
    root: str | os.PathLike,
    out_png: str | os.PathLike,
    classes: Sequence[str] | None = None,
    *,
    tile: int = 96,
    n_normal: int = 2,
) -> str:
    """Save a contact sheet: per class, a row of images (normals, then one per defect kind)
    and below it the same with the ground-truth mask tinted red. Returns ``out_png``."""
    root = os.fspath(root)
    classes = (
        list(classes)
        if classes
        else sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "test")))
    )
    kinds = sorted({k for c in classes for k in os.listdir(os.path.join(root, c, "test")) if k != "good"})
    cols, label_w, head_h = n_normal + len(kinds), 70, 14
    sheet = Image.new("RGB", (label_w + cols * tile, head_h + 2 * len(classes) * tile), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(["good"] * n_normal + kinds):
        draw.text((label_w + j * tile + 2, 1), name[: tile // 6], fill=(0, 0, 0))
    for i, cls in enumerate(classes):
        top = head_h + 2 * i * tile
        draw.text((2, top + tile // 2), cls, fill=(0, 0, 0))
        draw.text((2, top + tile + tile // 2), "+ mask", fill=(160, 0, 0))
        goods = sorted(os.listdir(os.path.join(root, cls, "test", "good")))[:n_normal]
        cells = [(os.path.join(root, cls, "test", "good", g), None) for g in goods]
        for kind in kinds:
            files = (
                sorted(os.listdir(os.path.join(root, cls, "test", kind)))
                if os.path.isdir(os.path.join(root, cls, "test", kind))
                else []
            )
            cells.append(
                (
                    os.path.join(root, cls, "test", kind, files[0]),
                    os.path.join(root, cls, "ground_truth", kind, os.path.splitext(files[0])[0] + "_mask.png"),
                )
                if files
                else (None, None)
            )
        for j, (img_path, mask_path) in enumerate(cells):
            if img_path is None:
                continue
            img = Image.open(img_path).convert("RGB").resize((tile, tile), Image.NEAREST)
            sheet.paste(img, (label_w + j * tile, top))
            if mask_path and os.path.isfile(mask_path):
                m = np.asarray(Image.open(mask_path).convert("L").resize((tile, tile), Image.NEAREST)) > 0
                arr = np.asarray(img).astype(np.float32)
                arr[m] = 0.35 * arr[m] + 0.65 * np.float32((255, 0, 0))
                img = Image.fromarray(arr.astype(np.uint8))
            sheet.paste(img, (label_w + j * tile, top + tile))
    os.makedirs(os.path.dirname(os.path.abspath(out_png)) or ".", exist_ok=True)
    sheet.save(out_png)
    return os.fspath(out_png)


# ---------------------------------------------------------------- CLI: aaclip make-synthetic

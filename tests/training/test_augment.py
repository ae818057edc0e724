"""Joint augmentation: the mask moves exactly with the image, stays binary, and each op is exact."""

from __future__ import annotations

import pytest
import torch

from aaclip_hf.training.augment import (
    AugmentConfig,
    apply_color_jitter,
    apply_geometric,
    augment_batch,
    sample_params,
    sample_seed,
)


MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _params(**kw):
    p = {"angle": 0.0, "tx": 0, "ty": 0, "hflip": False, "vflip": False, "jitter": []}
    p.update(kw)
    return p


def test_single_ops_are_exact_permutations():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 9, 9, generator=g)
    mask = (torch.rand(1, 9, 9, generator=g) > 0.5).float()
    out, m = apply_geometric(img, mask, [_params(hflip=True)])
    assert torch.equal(out, img.flip(-1)) and torch.equal(m, mask.flip(-1))
    out, m = apply_geometric(img, mask, [_params(vflip=True)])
    assert torch.equal(out, img.flip(-2)) and torch.equal(m, mask.flip(-2))
    out, m = apply_geometric(img, mask, [_params(angle=90.0)])  # counter-clockwise on screen
    assert torch.equal(out, torch.rot90(img, 1, dims=(-2, -1))) and torch.equal(m, torch.rot90(mask, 1, dims=(-2, -1)))
    out, m = apply_geometric(img, mask, [_params(tx=2, ty=-1)])  # right by 2, up by 1, zero fill
    expected = torch.zeros_like(img)
    expected[..., :-1, 2:] = img[..., 1:, :-2]
    assert torch.equal(out, expected)
    assert torch.equal(m, expected[:, 0] * 0 + torch.nn.functional.pad(mask[:, 1:, :-2], (2, 0, 0, 1)))


def test_marked_pixel_moves_with_the_mask_and_mask_stays_binary():
    cfg = AugmentConfig(rotation_p=1.0, translate_p=1.0)
    h = w = 33
    for s in range(40):
        img = torch.zeros(1, 3, h, w)
        mask = torch.zeros(1, h, w)
        r, c = 10 + s % 13, 8 + (3 * s) % 17
        img[0, :, r, c] = 5.0  # marked pixel in every channel
        mask[0, r, c] = 1.0
        out, m = augment_batch(img, mask, [sample_seed(111, 0, s)], cfg, MEAN, STD)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(out[0, 0] == 5.0, m[0] == 1.0)
    # a dense random mask equal to channel 0 stays equal to it after any draw
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(8, h, w, generator=g) > 0.7).float()
    imgs = torch.randn(8, 3, h, w, generator=g)
    imgs[:, 0] = masks
    out, m = augment_batch(imgs, masks, [sample_seed(1, 2, i) for i in range(8)], cfg, MEAN, STD)
    assert torch.equal(out[:, 0], m)
    assert not torch.equal(m, masks)  # it did move
    assert set(m.unique().tolist()) <= {0.0, 1.0}


def test_seeded_and_reproducible_with_expected_rates():
    cfg = AugmentConfig(color_jitter=True)
    a = sample_params(cfg, torch.Generator().manual_seed(sample_seed(111, 3, 7)), 64, 64)
    b = sample_params(cfg, torch.Generator().manual_seed(sample_seed(111, 3, 7)), 64, 64)
    assert a == b
    draws = [sample_params(cfg, torch.Generator().manual_seed(sample_seed(5, 0, i)), 100, 100) for i in range(2000)]

    def rate(f):
        return sum(map(f, draws)) / len(draws)

    assert rate(lambda p: p["hflip"]) == pytest.approx(0.5, abs=0.04)
    assert rate(lambda p: p["angle"] != 0) == pytest.approx(0.5, abs=0.04)
    assert rate(lambda p: any(n == "contrast" for n, _ in p["jitter"])) == pytest.approx(0.7, abs=0.04)
    assert max(abs(p["angle"]) for p in draws) <= 30 and max(abs(p["tx"]) for p in draws) <= 15
    assert all(0.5 <= f <= 1.5 for p in draws for _, f in p["jitter"])
    assert not any(
        p["jitter"]
        for p in [sample_params(AugmentConfig(), torch.Generator().manual_seed(i), 8, 8) for i in range(50)]
    )


def test_color_jitter_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 5, generator=g)
    gray = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    assert torch.allclose(apply_color_jitter(x, [("brightness", 1.4)]), (x * 1.4).clamp(0, 1))
    assert torch.allclose(apply_color_jitter(x, [("contrast", 0.6)]), (0.6 * x + 0.4 * gray.mean()).clamp(0, 1))
    assert torch.allclose(apply_color_jitter(x, [("saturation", 1.3)]), (1.3 * x - 0.3 * gray).clamp(0, 1))
    # through augment_batch, on a normalised image, without geometry: only the colours change
    cfg = AugmentConfig(color_jitter=True, jitter_p=1.0, rotation_p=0, translate_p=0, hflip_p=0, vflip_p=0)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    norm = ((x - mean) / std)[None]
    seed = sample_seed(0, 0, 0)
    params = sample_params(cfg, torch.Generator().manual_seed(seed), 4, 5)
    out, _ = augment_batch(norm, None, [seed], cfg, MEAN, STD)
    expected = (apply_color_jitter(x, params["jitter"]) - mean) / std
    assert torch.allclose(out[0], expected, atol=1e-5)

"""Batch-size chooser (hand-computed memory model), the automatic batch of the scoring loop, and the ordered prefetch."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf import AAClipConfig
from aaclip_hf.inference.detect import collect_images, make_pipeline, score_images
from aaclip_hf.runtime.batching import (
    MAX_AUTO_BATCH_SIZE,
    choose_batch_size,
    free_memory_bytes,
    inference_activation_bytes,
    parse_batch_size,
    prefetch,
    resolve_batch_size,
)


# AAClipConfig.tiny(): 40 px / patch 8 -> 25 patches, T = 26 tokens, D = 32, F = 64, 4 heads, 4 feature layers, E = 24.
TINY_PER_IMAGE_FP32 = 4 * (5 * 26 * 32 + (6 * 26 * 32 + 2 * 26 * 64) + 5 * 25 * 24)  # = 61,920 bytes
TINY_EAGER_EXTRA = 4 * 2 * 4 * 26 * 26


def test_activation_estimate_by_hand():
    config = AAClipConfig.tiny()
    assert inference_activation_bytes(config) == TINY_PER_IMAGE_FP32 == 61_920
    assert inference_activation_bytes(config, batch_size=3, dtype_bytes=2) == 3 * TINY_PER_IMAGE_FP32 // 2
    assert inference_activation_bytes(config, fused_attention=False) == TINY_PER_IMAGE_FP32 + TINY_EAGER_EXTRA
    # ViT-L/14 @ 518 px: 127.6 MB per image; the benchmark measured 0.44 GiB of extra resident memory at batch 4.
    assert inference_activation_bytes(AAClipConfig()) == 4 * (
        5 * 1370 * 1024 + 6 * 1370 * 1024 + 2 * 1370 * 4096 + 5 * 1369 * 768
    )


def test_chooser_fits_the_memory_budget():
    config = AAClipConfig.tiny()
    per = TINY_PER_IMAGE_FP32
    # Room for exactly 3 images in half the free memory.
    assert choose_batch_size(config, "cpu", free_bytes=2 * 3 * per, max_batch_size=100) == 3
    assert choose_batch_size(config, "cpu", free_bytes=2 * 3 * per - 1, max_batch_size=100) == 2
    assert choose_batch_size(config, "cpu", free_bytes=2 * 3 * per, max_batch_size=100, memory_fraction=1.0) == 6
    assert choose_batch_size(config, "cpu", free_bytes=10, max_batch_size=100) == 1  # never below 1
    # bf16 halves the estimate, so twice the images fit.
    assert choose_batch_size(config, "cpu", torch.bfloat16, free_bytes=2 * 3 * per, max_batch_size=100) == 6
    # The device's cap applies when memory is plentiful.
    assert choose_batch_size(config, "cpu", free_bytes=10**15) == MAX_AUTO_BATCH_SIZE["cpu"]
    assert choose_batch_size(config, "cuda", free_bytes=10**15) == MAX_AUTO_BATCH_SIZE["cuda"]


@pytest.mark.parametrize("num_images, expected", [(1, 1), (3, 3), (4, 4), (5, 3), (8, 4), (9, 3), (13, 4)])
def test_chooser_balances_the_batches(num_images, expected):
    # limit 4: the fewest batches of at most 4, as even as possible
    assert choose_batch_size(AAClipConfig.tiny(), "cpu", num_images=num_images, free_bytes=10**15) == expected


def test_chooser_errors_and_free_memory():
    config = AAClipConfig.tiny()
    with pytest.raises(ValueError, match="memory_fraction"):
        choose_batch_size(config, memory_fraction=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        choose_batch_size(config, max_batch_size=0)
    with pytest.raises(ValueError, match="num_images"):
        choose_batch_size(config, num_images=0)
    free = free_memory_bytes("cpu")
    assert free is None or free > 0


def test_batch_size_flag_and_resolution(tiny_model):
    assert parse_batch_size("auto") is None and parse_batch_size("6") == 6
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="--batch-size"):
            parse_batch_size(bad)
    assert resolve_batch_size(5, tiny_model) == 5
    assert resolve_batch_size(None, tiny_model, num_images=2) == choose_batch_size(
        tiny_model.config, "cpu", num_images=2
    )


def test_scoring_batches_automatically_by_default(tiny_model, processor, monkeypatch, tmp_path):
    """`score_images` (detect, calibrate) without a batch size runs the chooser's balanced batches; the results equal
    one image at a time."""
    seen = []
    forward = tiny_model.forward

    def spy(pixel_values, *args, **kwargs):
        seen.append(pixel_values.shape[0])
        return forward(pixel_values, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "forward", spy)
    pipe = make_pipeline(tiny_model, processor)
    for i in range(5):
        array = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    images = collect_images([tmp_path])
    batched = [result for _, _, result in score_images(pipe, images, "bottle", progress=False)]
    assert seen == [3, 2]  # the chooser's balanced batches (CPU limit 4)
    seen.clear()
    single = [result for _, _, result in score_images(pipe, images, "bottle", batch_size=1, progress=False)]
    assert seen == [1] * 5
    for a, b in zip(batched, single):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        np.testing.assert_allclose(a["anomaly_map"], b["anomaly_map"], atol=1e-5)


def test_prefetch_keeps_order_runs_ahead_and_raises_in_place():
    started = {i: threading.Event() for i in range(4)}

    def load(i):
        started[i].set()
        if i == 2:
            raise OSError("bad file 2")
        return i * 10

    stream = prefetch(load, range(4))
    assert next(stream) == 0
    # While the consumer holds item 0, item 1 is being (or has been) loaded in the background.
    assert started[1].wait(timeout=60)
    assert next(stream) == 10
    with pytest.raises(OSError, match="bad file 2"):
        next(stream)
    assert list(prefetch(lambda x: x + 1, [])) == []
    assert list(prefetch(lambda x: -x, range(7), ahead=3)) == [-i for i in range(7)]
    with pytest.raises(ValueError, match="ahead"):
        list(prefetch(load, range(2), ahead=0))

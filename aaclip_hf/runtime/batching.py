"""Batch sizes chosen from the device and its free memory, and decoding that overlaps the model's compute.

`choose_batch_size` is what `aaclip detect`, `calibrate` and `evaluate` use for `--batch-size auto` (the pipeline
itself takes a plain batch size). `prefetch` runs a loader one item ahead in a background thread: image decoding
(PIL releases the GIL) then overlaps the forward of the previous batch, and items come back in input order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from ..errors import InvalidInputError
from .resources import free_memory_bytes, inference_activation_bytes


__all__ = [
    "AUTO_BATCH_MEMORY_FRACTION",
    "MAX_AUTO_BATCH_SIZE",
    "add_batch_size_argument",
    "choose_batch_size",
    "free_memory_bytes",
    "inference_activation_bytes",
    "parse_batch_size",
    "prefetch",
    "resolve_batch_size",
]

T = TypeVar("T")
R = TypeVar("R")

# Largest automatic batch per device type. CPU: fp32 matmul efficiency rises from batch 1 to 4 (72 % of the measured
# peak at ViT-L/14 518 px, docs/performance.md) and larger batches add only memory and latency; GPUs keep gaining up
# to a few dozen images.
MAX_AUTO_BATCH_SIZE = {"cpu": 4, "cuda": 32, "mps": 8}
# Share of the free memory an automatic batch may fill with activations (the rest: allocator slack, other jobs).
AUTO_BATCH_MEMORY_FRACTION = 0.5


def choose_batch_size(
    config,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_images: int | None = None,
    free_bytes: int | None = None,
    max_batch_size: int | None = None,
    memory_fraction: float = AUTO_BATCH_MEMORY_FRACTION,
) -> int:
    """Images per forward from the device and its free memory.

    The largest batch up to `max_batch_size` (default `MAX_AUTO_BATCH_SIZE` for the device type) whose
    `inference_activation_bytes` fit in `memory_fraction` of `free_bytes` (default: measured now), at least 1.
    With `num_images`, never more than that, and balanced: 5 images at a limit of 4 run as 3 + 2, not 4 + 1.
    """
    device = torch.device(device)
    if not 0.0 < memory_fraction <= 1.0:
        raise InvalidInputError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    limit = MAX_AUTO_BATCH_SIZE.get(device.type, 1) if max_batch_size is None else int(max_batch_size)
    if limit < 1:
        raise InvalidInputError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if num_images is not None and num_images < 1:
        raise InvalidInputError(f"num_images must be >= 1, got {num_images}")
    free = free_memory_bytes(device) if free_bytes is None else int(free_bytes)
    fused = getattr(config.vision_config, "_attn_implementation", "sdpa") != "eager"
    per_image = inference_activation_bytes(config, 1, torch.finfo(dtype).bits // 8, fused_attention=fused)
    if free is not None:
        limit = min(limit, max(int(memory_fraction * free) // per_image, 1))
    if num_images is None:
        return limit
    limit = min(limit, num_images)
    batches = -(-num_images // limit)
    return -(-num_images // batches)


def parse_batch_size(value: str) -> int | None:
    """`--batch-size` value: `auto` (None) or a positive integer."""
    if str(value).lower() == "auto":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size must be 'auto' or a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--batch-size must be 'auto' or a positive integer, got {value!r}")
    return number


def add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    """The shared `--batch-size` flag (default `auto`)."""
    parser.add_argument(
        "--batch-size",
        type=parse_batch_size,
        default=None,
        metavar="N|auto",
        help="images per forward; auto (default): from the device and its free memory (aaclip_hf.runtime.batching)",
    )


def resolve_batch_size(batch_size: int | None, model, num_images: int | None = None) -> int:
    """An explicit batch size, or the automatic one for `model`'s device and dtype."""
    if batch_size is not None:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)
    parameter = next(model.parameters())
    return choose_batch_size(model.config, parameter.device, parameter.dtype, num_images)


def prefetch(load: Callable[[T], R], items: Iterable[T], ahead: int = 1) -> Iterator[R]:
    """`load(item)` for each item in order, computed up to `ahead` items early in one background thread.

    An exception of `load` is raised when its item is reached, as if it had been loaded in place.
    """
    if ahead < 1:
        raise InvalidInputError(f"ahead must be >= 1, got {ahead}")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aaclip-prefetch") as pool:
        pending = []
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(load, item))
            if len(pending) > ahead:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

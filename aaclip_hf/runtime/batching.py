"""Batch sizes chosen from the device and its free memory, and decoding that overlaps the model's compute.

`choose_batch_size` is the pipeline's own chooser (it lives in the Hub-portable `modeling/pipeline_aaclip.py`
so the Hub copy batches by default too) and is what `aaclip detect` / `aaclip evaluate` use for
`--batch-size auto`. `prefetch` runs a loader one item ahead in a background thread: image decoding (PIL releases
the GIL) then overlaps the forward of the previous batch, and items come back in input order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..modeling.pipeline_aaclip import (
    AUTO_BATCH_MEMORY_FRACTION,
    MAX_AUTO_BATCH_SIZE,
    choose_batch_size,
    free_memory_bytes,
    inference_activation_bytes,
)


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
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)
    parameter = next(model.parameters())
    return choose_batch_size(model.config, parameter.device, parameter.dtype, num_images)


def prefetch(load: Callable[[T], R], items: Iterable[T], ahead: int = 1) -> Iterator[R]:
    """`load(item)` for each item in order, computed up to `ahead` items early in one background thread.

    An exception of `load` is raised when its item is reached, as if it had been loaded in place.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1, got {ahead}")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aaclip-prefetch") as pool:
        pending = []
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(load, item))
            if len(pending) > ahead:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

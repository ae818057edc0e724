"""`AnomalyDataset`: samples -> the tensors training and evaluation consume."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from ..errors import AAClipError, InvalidInputError
from ..modeling.image_processing_aaclip import binarize_mask
from .image_io import BadInputError, load_image, load_mask
from .samples import Sample, verify_samples


logger = logging.getLogger(__name__)

__all__ = ["AnomalyDataset", "CarryErrors", "collate_or_error", "raise_carried"]


def _is_hf_processor(obj: Any) -> bool:
    return isinstance(obj, (ProcessorMixin, BaseImageProcessor))


class AnomalyDataset(torch.utils.data.Dataset):
    """Samples -> ``dict(pixel_values, mask, label, class_name, index, has_mask)``.

    Args:
        samples: the list from `load_samples`.
        processor_or_transform: an `AAClipProcessor` / HF image processor (called with
            ``images=..., return_tensors="pt"``) or any callable ``PIL.Image -> (C, H, W)``
            tensor. The mask is resized (nearest) to the output's ``(H, W)``.
        with_masks: load masks; if False the ``mask`` key is absent and ``has_mask`` False.
        augment: optional joint augmentation ``(pixel_values, mask) -> (pixel_values, mask)``
            applied after preprocessing (geometric transforms must move both alike).
        image_augment: optional ``PIL.Image -> PIL.Image`` applied before preprocessing
            (photometric jitter, which must not touch the mask).
        mask_size_mismatch: ``"error"`` (default; a mask of another size usually means a
            mis-paired file) or ``"resize"`` (nearest resize to the image size, logged).
        high_bit_depth: forwarded to `load_image`.
        skip_bad_files: decode every file once up front (`verify_samples`) and drop the
            unreadable ones and those whose mask size differs, logged and counted; without
            it a bad file raises when its item is loaded.

    ``has_mask`` is False only for anomalous samples without a mask; their ``mask`` is all
    zero and must not be scored. Non-binary masks are binarised with ``!= 0``; the count is
    kept in ``num_non_binary_masks`` (per worker process) and the first one is logged.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        processor_or_transform: Callable[..., Any],
        with_masks: bool = True,
        augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        image_augment: Callable[[Image.Image], Image.Image] | None = None,
        mask_size_mismatch: Literal["error", "resize"] = "error",
        high_bit_depth: Literal["range", "max"] = "range",
        skip_bad_files: bool = False,
    ):
        if mask_size_mismatch not in ("error", "resize"):
            raise InvalidInputError(f"mask_size_mismatch must be 'error' or 'resize', got {mask_size_mismatch!r}")
        self.samples = list(samples)
        if skip_bad_files:
            self.samples = verify_samples(
                self.samples, skip_bad_files=True, check_masks=with_masks and mask_size_mismatch == "error"
            )
        self.transform = processor_or_transform
        self.with_masks = with_masks
        self.augment = augment
        self.image_augment = image_augment
        self.mask_size_mismatch = mask_size_mismatch
        self.high_bit_depth = high_bit_depth
        self.num_non_binary_masks = 0
        self.num_resized_masks = 0

    def __len__(self) -> int:
        return len(self.samples)

    def _pixel_values(self, image: Image.Image, sample: Sample) -> torch.Tensor:
        if _is_hf_processor(self.transform):
            out = self.transform(images=[image], return_tensors="pt")["pixel_values"]
        else:
            out = self.transform(image)
            if isinstance(out, dict) or hasattr(out, "keys"):
                out = out["pixel_values"]
        out = torch.as_tensor(out)
        if out.ndim == 4 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 3:
            raise BadInputError(
                f"the transform returned shape {tuple(out.shape)}; expected (C, H, W)",
                sample.image_path,
                "pixel_values",
            )
        return out

    def _mask(self, sample: Sample, image_size: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
        if sample.label == 0 or sample.mask_path is None:
            return torch.zeros(out_hw, dtype=torch.float32)
        mask = load_mask(sample.mask_path)
        if mask.size != image_size:
            if self.mask_size_mismatch == "error":
                raise BadInputError(
                    f"mask is {mask.size[0]}x{mask.size[1]} but its image {sample.image_path} is "
                    f"{image_size[0]}x{image_size[1]}; expected equal sizes (pass mask_size_mismatch='resize' to resize)",
                    sample.mask_path,
                    "mask_path",
                )
            self.num_resized_masks += 1
            logger.info("resizing mask %s from %s to its image size %s", sample.mask_path, mask.size, image_size)
        arr = np.asarray(mask)
        nonzero = arr[arr != 0]
        if nonzero.size and nonzero.min() != nonzero.max():
            self.num_non_binary_masks += 1
            if self.num_non_binary_masks == 1:
                logger.warning(
                    "mask %s is not binary (several non-zero values); binarising with != 0", sample.mask_path
                )
        return torch.from_numpy(binarize_mask(mask, out_hw).astype(np.float32))

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = load_image(sample.image_path, high_bit_depth=self.high_bit_depth)
        image_size = image.size
        if self.image_augment is not None:
            image = self.image_augment(image)
        pixel_values = self._pixel_values(image, sample)
        item: dict[str, Any] = {"label": sample.label, "class_name": sample.class_name, "index": index}
        if self.with_masks:
            mask = self._mask(sample, image_size, tuple(pixel_values.shape[-2:]))
            if self.augment is not None:
                pixel_values, mask = self.augment(pixel_values, mask)
            item["mask"] = mask
            item["has_mask"] = sample.has_mask
        else:
            if self.augment is not None:
                pixel_values, _ = self.augment(pixel_values, torch.zeros(pixel_values.shape[-2:]))
            item["has_mask"] = False
        item["pixel_values"] = pixel_values
        return item


class CarryErrors(torch.utils.data.Dataset):
    """A dataset whose expected failures (`AAClipError`: an unreadable image, a bad mask) travel as items.

    A DataLoader worker that raises loses the error's identity: torch re-raises it in the main process with the
    worker's formatted traceback as its message. Returned as an item instead, the error is pickled whole, passes
    through `collate_or_error` and `raise_carried` raises it in the main process exactly as it was raised.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except AAClipError as error:
            return error


def collate_or_error(collate: Callable[[list], Any]) -> Callable[[list], Any]:
    """`collate`, except that a batch holding a carried error becomes that error."""

    def collate_items(items: list):
        carried = next((item for item in items if isinstance(item, AAClipError)), None)
        return carried if carried is not None else collate(items)

    return collate_items


def raise_carried(loader):
    """Iterate `loader`'s batches, raising a carried error where its batch would have been."""
    for batch in loader:
        if isinstance(batch, AAClipError):
            raise batch
        yield batch

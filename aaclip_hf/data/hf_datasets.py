"""The bridge to Hugging Face `datasets`: samples to a `Dataset` with `Image()` columns and back."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as HFImage

from .image_io import IMAGE_EXTENSIONS, BadInputError, MissingFileError
from .samples import Sample, parse_label


__all__ = ["from_hf_dataset", "safe_folder_name", "to_hf_dataset"]

# Anything but letters, digits, '-', '_', '.', ' ' and '+' becomes '_' in a folder name made from a class name.
_UNSAFE_FOLDER_CHARS = re.compile(r"[^\w\-. +]")


def safe_folder_name(name: str) -> str:
    """A class name as one harmless folder name: no path separators, no ``..``, never empty or hidden.

    Separators (``/``, ``\\``), control and other special characters become ``_``; leading dots become ``_``
    (so ``..`` and ``.hidden`` stay inside the cache folder and visible). The `Sample` keeps the real name.
    """
    safe = _UNSAFE_FOLDER_CHARS.sub("_", name).strip()
    stripped = safe.lstrip(".")
    safe = "_" * (len(safe) - len(stripped)) + stripped
    return safe or "_"


def _hf_features():

    return Features(
        {
            "image": HFImage(),
            "mask": HFImage(),
            "label": ClassLabel(names=["normal", "anomaly"]),
            "class_name": Value("string"),
            "defect_type": Value("string"),
            "image_path": Value("string"),
        }
    )


def to_hf_dataset(samples: Sequence[Sample], *, embed_images: bool = False):
    """Samples -> `datasets.Dataset` with ``Image()`` columns ``image`` and ``mask``.

    With ``embed_images=False`` the columns reference the files (cheap; `push_to_hub`
    embeds them on upload); ``True`` reads the bytes in, so the dataset is self-contained
    after ``save_to_disk``. Masks of normal images and mask-less anomalies are ``None``.
    """

    def enc(path: str | None):
        if path is None:
            return None
        if not embed_images:
            return path
        with open(path, "rb") as f:
            return {"bytes": f.read(), "path": os.path.basename(path)}

    rows = {
        "image": [enc(s.image_path) for s in samples],
        "mask": [enc(s.mask_path) if s.label == 1 else None for s in samples],
        "label": [s.label for s in samples],
        "class_name": [s.class_name for s in samples],
        "defect_type": [s.defect_type for s in samples],
        "image_path": [s.image_path for s in samples],
    }
    return Dataset.from_dict(rows, features=_hf_features())


def from_hf_dataset(
    ds,
    cache_dir: str | os.PathLike,
    *,
    image_column: str = "image",
    mask_column: str | None = "mask",
    label_column: str = "label",
    class_column: str = "class_name",
    defect_column: str | None = "defect_type",
) -> list[Sample]:
    """A `datasets.Dataset` -> samples, writing embedded images under ``cache_dir``.

    Image bytes are written as they are (no re-encoding) to
    ``cache_dir/<class>/<row>_{image,mask}<ext>`` (``<class>`` made safe by `safe_folder_name`: a class
    name never leads outside ``cache_dir``); rows that only reference an existing
    file use it in place. Labels may be 0/1 integers, booleans, or a `ClassLabel` / string
    whose name is normal/good/ok versus anomaly/anomalous/abnormal/ko.
    """

    cache_dir = os.fspath(cache_dir)
    for col in (image_column, label_column, class_column):
        if col not in ds.column_names:
            raise BadInputError(f"the dataset has no column {col!r}; columns are {ds.column_names}", None, col)
    raw_cols = [
        c for c in (image_column, mask_column) if c and c in ds.column_names and isinstance(ds.features[c], HFImage)
    ]
    for col in raw_cols:
        ds = ds.cast_column(col, HFImage(decode=False))
    label_feature = ds.features[label_column]

    def label_of(value: Any, row: int) -> int:
        if isinstance(label_feature, ClassLabel) and not isinstance(value, str):
            value = label_feature.int2str(int(value))
            if set(label_feature.names) == {"0", "1"}:
                value = int(value)
        parsed = parse_label(value)
        if parsed is None:
            raise BadInputError(
                f"row {row}: expected a label 0/1 or normal/anomaly, got {value!r}", None, label_column
            )
        return parsed

    def materialise(value: Any, row: int, cls: str, kind: str, col: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = {"path": value, "bytes": None}
        if not isinstance(value, dict):
            raise BadInputError(
                f"row {row}: expected an Image() value or a path, got {type(value).__name__}", None, col
            )
        if value.get("bytes"):
            ext = os.path.splitext(value.get("path") or "")[1].lower()
            folder = os.path.join(cache_dir, cls)
            os.makedirs(folder, exist_ok=True)
            out = os.path.join(folder, f"{row:06d}_{kind}{ext if ext in IMAGE_EXTENSIONS else '.png'}")
            with open(out, "wb") as f:
                f.write(value["bytes"])
            return out
        path = value.get("path")
        if not path or not os.path.isfile(path):
            raise MissingFileError(f"row {row}: the {kind} has no bytes and its path does not exist", path, col)
        return path

    samples = []
    for row, rec in enumerate(ds):
        cls = rec[class_column]
        if not isinstance(cls, str) or not cls:
            raise BadInputError(f"row {row}: expected a non-empty class name, got {cls!r}", None, class_column)
        safe_cls = safe_folder_name(cls)
        label = label_of(rec[label_column], row)
        image = materialise(rec[image_column], row, safe_cls, "image", image_column)
        mask = (
            materialise(rec.get(mask_column), row, safe_cls, "mask", mask_column)
            if mask_column and mask_column in rec and label
            else None
        )
        defect = rec.get(defect_column) if defect_column else None
        samples.append(Sample(image, label, cls, mask, defect))
    return samples

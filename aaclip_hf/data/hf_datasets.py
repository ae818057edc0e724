"""The bridge to Hugging Face `datasets`: samples to a `Dataset` with `Image()` columns and back.

A `datasets` dataset is a first-class input (`load_samples` format ``hf``): a ``save_to_disk`` folder
(a `Dataset` or a `DatasetDict`, whose split ``--split`` picks) or a Hub dataset id ``owner/name``.

Schema: ``image`` (Image), ``mask`` (Image, None for normal images and mask-less anomalies), ``label``
(0/1, bool, or a `ClassLabel`/string normal/anomaly) and ``class_name`` (string); ``defect_type`` is read
when present. Other column names map with spec keys, e.g.
``data/ds::image_column=img::label_column=y::mask_column=none::name=bottle`` (``mask_column=none``: no
masks; ``name=``: one class for a dataset without a class column; ``cache=DIR``: where embedded images are
written, default ``$HF_HOME/aaclip/datasets/<fingerprint>``).

`export_dataset` writes samples of any layout as such a ``save_to_disk`` folder with a dataset card.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk
from datasets import Image as HFImage
from datasets import config as datasets_config
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import DatasetCard, DatasetCardData
from huggingface_hub import constants as hub_constants

from .image_io import IMAGE_EXTENSIONS, BadInputError, MissingFileError
from .paths import check_inside_root
from .samples import Sample, parse_label


__all__ = [
    "COLUMN_KEYS",
    "HF_FORMAT",
    "dataset_samples",
    "default_cache_dir",
    "export_dataset",
    "from_hf_dataset",
    "is_saved_dataset",
    "load_hf_dataset",
    "looks_like_hub_id",
    "read_hf_dataset",
    "safe_folder_name",
    "to_hf_dataset",
]

HF_FORMAT = "hf"
# Spec keys that map the schema's columns to a dataset's own names (value "none": the dataset has no such column).
COLUMN_KEYS = {
    "image_column": "image",
    "mask_column": "mask",
    "label_column": "label",
    "class_column": "class_name",
    "defect_column": "defect_type",
}
_OPTIONAL_COLUMNS = ("mask_column", "defect_column")
# owner/name, the form a Hub dataset id takes (a bare name is taken for a missing local path).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}

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
    class_name: str | None = None,
    files_inside: Sequence[str] | None = None,
) -> list[Sample]:
    """A `datasets.Dataset` -> samples, writing embedded images under ``cache_dir``.

    Image bytes are written as they are (no re-encoding) to
    ``cache_dir/<class>/<row>_{image,mask}<ext>`` (``<class>`` made safe by `safe_folder_name`: a class
    name never leads outside ``cache_dir``); rows that only reference an existing
    file use it in place. Labels may be 0/1 integers, booleans, or a `ClassLabel` / string
    whose name is normal/good/ok versus anomaly/anomalous/abnormal/ko. ``class_name`` names the one class
    of a dataset without ``class_column``. Files are written atomically, so processes that read the same
    dataset at once (distributed training) never see a half-written image. With ``files_inside``, a row that
    references a file in place is refused unless the file's real path lies in one of those folders (what
    `aaclip export-dataset` needs before it copies the file's bytes).
    """

    cache_dir = os.fspath(cache_dir)
    if class_name is not None and class_column not in ds.column_names:
        ds = ds.add_column(class_column, [class_name] * len(ds))
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
            if not (os.path.isfile(out) and os.path.getsize(out) == len(value["bytes"])):
                tmp = f"{out}.tmp-{os.getpid()}"
                with open(tmp, "wb") as f:
                    f.write(value["bytes"])
                os.replace(tmp, out)
            return out
        path = value.get("path")
        if not path or not os.path.isfile(path):
            raise MissingFileError(f"row {row}: the {kind} has no bytes and its path does not exist", path, col)
        if files_inside is not None:
            check_inside_root(files_inside, path, where=f"row {row}", source=None, field=col, resolve=True)
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


# ----------------------------------------------------------------------------------------------
# datasets as input: save_to_disk folders and Hub ids
# ----------------------------------------------------------------------------------------------


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``save_to_disk`` folder (of a `Dataset` or a `DatasetDict`)."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return True
    return os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))


def looks_like_hub_id(path: str | os.PathLike) -> bool:
    """Whether ``path`` names no local file or folder and has the form of a Hub dataset id ``owner/name``."""
    path = os.fspath(path)
    metadata_file = os.path.splitext(path)[1].lower() in (".jsonl", ".json", ".csv")
    return not os.path.exists(path) and not metadata_file and bool(_HUB_ID.match(path))


def _hub_offline() -> bool:
    env = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return bool(hub_constants.HF_HUB_OFFLINE) or any(value in _TRUE for value in env)


def _from_hub(dataset_id: str, split: str) -> Dataset:
    advice = "pass a local save_to_disk folder"
    if _hub_offline():
        raise BadInputError(
            f"dataset id {dataset_id}: the Hub is offline; {advice} (no local folder of that name exists)", dataset_id
        )
    try:
        return load_dataset(dataset_id, split=split)
    except DatasetNotFoundError as err:
        raise BadInputError(f"dataset id {dataset_id}: not found on the Hub ({err}); {advice}", dataset_id) from err
    except (ConnectionError, OSError) as err:
        raise BadInputError(
            f"dataset id {dataset_id}: the Hub cannot be reached ({type(err).__name__}); {advice}", dataset_id
        ) from err
    except ValueError as err:  # an unknown split
        raise BadInputError(f"dataset id {dataset_id}: {err}", dataset_id, "split") from err


def load_hf_dataset(path: str | os.PathLike, split: str = "test") -> Dataset:
    """The `Dataset` of a ``save_to_disk`` folder (split ``split`` of a `DatasetDict`) or of a Hub id."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        if not looks_like_hub_id(path):
            raise MissingFileError("expected a datasets save_to_disk folder or a Hub dataset id owner/name", path)
        return _from_hub(path, split)
    if not is_saved_dataset(path):
        raise BadInputError(
            "not a datasets save_to_disk folder (no dataset_dict.json, or state.json + dataset_info.json)", path
        )
    try:
        loaded = load_from_disk(path)
    except (OSError, ValueError) as err:
        raise BadInputError(f"unreadable datasets save_to_disk folder: {err}", path) from err
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise BadInputError(
                f"the dataset has no split {split!r}; it has {sorted(loaded)} (choose with ::split=NAME)",
                path,
                "split",
            )
        loaded = loaded[split]
    return loaded


def _column_kwargs(columns: dict[str, str | None]) -> dict[str, str | None]:
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise BadInputError(f"unknown column key(s) {unknown}; expected {sorted(COLUMN_KEYS)}", None, "spec")
    out: dict[str, str | None] = {}
    for key, value in columns.items():
        if value is None or value.lower() == "none":
            if key not in _OPTIONAL_COLUMNS:
                raise BadInputError(f"{key} cannot be none: the dataset needs that column", None, key)
            out[key] = None
        else:
            out[key] = value
    return out


def default_cache_dir(ds: Dataset) -> str:
    """Where a dataset's embedded images are written: ``$HF_HOME/aaclip/datasets/<fingerprint>``."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "aaclip", "datasets", ds._fingerprint)


def dataset_samples(
    ds: Dataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    class_name: str | None = None,
    files_inside: Sequence[str] | None = None,
    **columns: str | None,
) -> list[Sample]:
    """A `datasets.Dataset` in the schema (or mapped with ``columns``, see the module docstring) as samples."""
    if not isinstance(ds, Dataset):
        raise BadInputError(f"expected a datasets.Dataset, got {type(ds).__name__} (pick a split of a DatasetDict)")
    folder = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir(ds)
    kwargs = _column_kwargs(columns)
    return from_hf_dataset(ds, folder, class_name=class_name, files_inside=files_inside, **kwargs)


def read_hf_dataset(
    path: str | os.PathLike,
    split: str = "test",
    *,
    cache_dir: str | os.PathLike | None = None,
    class_name: str | None = None,
    check_links: bool = False,
    **columns: str | None,
) -> list[Sample]:
    """Samples of a ``save_to_disk`` folder or Hub dataset id (`load_hf_dataset`, then `dataset_samples`).

    ``check_links`` refuses rows that reference a file in place outside the dataset: outside the folder, or, for a
    Hub id, outside the local Hugging Face caches (`from_hf_dataset`'s ``files_inside``).
    """
    ds = load_hf_dataset(path, split)
    inside = None
    if check_links:
        inside = (
            [os.fspath(path)]
            if os.path.isdir(path)
            else [hub_constants.HF_HUB_CACHE, datasets_config.HF_DATASETS_CACHE]
        )
    try:
        return dataset_samples(ds, cache_dir=cache_dir, class_name=class_name, files_inside=inside, **columns)
    except BadInputError as err:
        if err.path is not None:
            raise
        raise type(err)(err.reason, os.fspath(path), err.field) from err


# ----------------------------------------------------------------------------------------------
# export: any layout -> a save_to_disk folder with a dataset card
# ----------------------------------------------------------------------------------------------


def _card(samples: Sequence[Sample], split: str, name: str, source: str) -> DatasetCard:
    counts = Counter((s.class_name, s.label) for s in samples)
    masked = Counter(s.class_name for s in samples if s.label == 1 and s.mask_path is not None)
    classes = sorted({s.class_name for s in samples})
    data = DatasetCardData(
        pretty_name=name,
        task_categories=["image-segmentation", "image-classification"],
        tags=["anomaly-detection", "aaclip"],
        dataset_info={
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "mask", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {"0": "normal", "1": "anomaly"}}}},
                {"name": "class_name", "dtype": "string"},
                {"name": "defect_type", "dtype": "string"},
            ],
            "splits": [{"name": split, "num_examples": len(samples)}],
        },
    )
    rows = "\n".join(f"| {c} | {counts[(c, 0)]} | {counts[(c, 1)]} | {masked[c]} |" for c in classes)
    body = f"""
# {name}

Anomaly detection data exported by `aaclip export-dataset` from `{source}`: one row per image with
`image`, `mask` (None for normal images and for anomalies without a mask), `label` (0 normal, 1 anomaly),
`class_name` and `defect_type`. Images are embedded, so the folder is self-contained.

| class | normal | anomalous | anomalous with mask |
|---|---:|---:|---:|
{rows}

## Use

```python
from datasets import load_from_disk

ds = load_from_disk("<this folder>")["{split}"]
```

`aaclip evaluate --data <this folder>` and `aaclip train --train-data <this folder>` read it as it is.
The images keep the license of the source data set; check it before sharing this copy.
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def export_dataset(
    samples: Sequence[Sample],
    output_dir: str | os.PathLike,
    *,
    split: str = "test",
    name: str | None = None,
    source: str = "samples",
) -> Path:
    """Write ``samples`` as a `DatasetDict` ``{split: Dataset}`` (``save_to_disk``, images embedded) plus a
    ``README.md`` dataset card; returns the folder. An existing non-empty folder is refused."""
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError("the output folder exists and is not empty; choose a new one", str(out), "output")
    if not samples:
        raise BadInputError("no samples to export", source)
    ds = to_hf_dataset(samples, embed_images=True).remove_columns("image_path")
    DatasetDict({split: ds}).save_to_disk(str(out))
    _card(samples, split, name or out.name, source).save(str(out / "README.md"))
    return out

"""Data: every dataset layout -> one `list[Sample]`, images read safely, k-shot splits, synthetic defects.

- `samples`: the `Sample` record and the checks every consumer shares;
- `readers`: the layouts, spec strings and `load_samples` (metadata files: JSON-lines, meta.json, the VisA csv);
- `folders`: the folder layouts (MVTec/MPDD/BTAD, VisA, BMAD, polyp, your own folders); `paths`: the dataset root;
- `image_io`: image and mask decoding with clear errors; `dataset`: the torch `AnomalyDataset`;
- `sampling`: the reference's k-shot sampler; `synthetic`: the defect generator; `hf_datasets`: `datasets` bridge.
"""

from .dataset import AnomalyDataset
from .hf_datasets import from_hf_dataset, to_hf_dataset
from .image_io import IMAGE_EXTENSIONS, BadInputError, MissingFileError, load_image, load_mask
from .readers import (
    ANOMALY_FOLDER_NAMES,
    FORMATS,
    NORMAL_FOLDER_NAMES,
    REFERENCE_CLASS_NAMES,
    detect_format,
    load_samples,
    parse_spec,
    read_bmad,
    read_folder,
    read_jsonl,
    read_meta_json,
    read_mvtec,
    read_polyp,
    read_visa,
)
from .samples import BadFiles, Sample, check_classes_have_anomalies, parse_label, summarize_samples, verify_samples
from .sampling import DEFAULT_SHOT_SEED, parse_shots, sample_shots, write_jsonl


__all__ = [
    "ANOMALY_FOLDER_NAMES",
    "AnomalyDataset",
    "BadFiles",
    "BadInputError",
    "DEFAULT_SHOT_SEED",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "MissingFileError",
    "NORMAL_FOLDER_NAMES",
    "REFERENCE_CLASS_NAMES",
    "Sample",
    "check_classes_have_anomalies",
    "detect_format",
    "from_hf_dataset",
    "load_image",
    "load_mask",
    "load_samples",
    "parse_label",
    "parse_shots",
    "parse_spec",
    "read_bmad",
    "read_folder",
    "read_jsonl",
    "read_meta_json",
    "read_mvtec",
    "read_polyp",
    "read_visa",
    "sample_shots",
    "summarize_samples",
    "to_hf_dataset",
    "verify_samples",
    "write_jsonl",
]

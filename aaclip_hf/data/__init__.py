"""Data: every dataset layout -> one `list[Sample]`, images read safely, k-shot splits, synthetic defects.

- `samples`: the `Sample` record and the checks every consumer shares;
- `readers`: the layouts, spec strings and `load_samples` (metadata files: JSON-lines, meta.json, the VisA csv);
- `folders`: the folder layouts (MVTec/MPDD/BTAD, VisA, BMAD, polyp, your own folders); `paths`: the dataset root;
- `image_io`: image and mask decoding with clear errors; `dataset`: the torch `AnomalyDataset`;
- `sampling`: the reference's k-shot sampler; `synthetic`: the defect generator; `hf_datasets`: `datasets` bridge. Names load on first use."""

from .._lazy import lazy_exports


__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "AnomalyDataset": ".dataset",
        "from_hf_dataset": ".hf_datasets",
        "to_hf_dataset": ".hf_datasets",
        "IMAGE_EXTENSIONS": ".image_io",
        "BadInputError": ".image_io",
        "MissingFileError": ".image_io",
        "load_image": ".image_io",
        "load_mask": ".image_io",
        "ANOMALY_FOLDER_NAMES": ".readers",
        "FORMATS": ".readers",
        "NORMAL_FOLDER_NAMES": ".readers",
        "REFERENCE_CLASS_NAMES": ".readers",
        "detect_format": ".readers",
        "load_samples": ".readers",
        "parse_spec": ".readers",
        "read_bmad": ".readers",
        "read_folder": ".readers",
        "read_jsonl": ".readers",
        "read_meta_json": ".readers",
        "read_mvtec": ".readers",
        "read_polyp": ".readers",
        "read_visa": ".readers",
        "BadFiles": ".samples",
        "Sample": ".samples",
        "check_classes_have_anomalies": ".samples",
        "parse_label": ".samples",
        "summarize_samples": ".samples",
        "verify_samples": ".samples",
        "DEFAULT_SHOT_SEED": ".sampling",
        "parse_shots": ".sampling",
        "sample_shots": ".sampling",
        "write_jsonl": ".sampling",
    },
)

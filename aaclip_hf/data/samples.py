"""The one in-memory form of a dataset: a list of `Sample`, plus the checks every consumer shares.

Every reader funnels into ``list[Sample]``; training, evaluation and shot sampling only ever see
that list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from .image_io import BadInputError, load_image, load_mask


logger = logging.getLogger(__name__)

__all__ = ["BadFiles", "Sample", "check_classes_have_anomalies", "parse_label", "summarize_samples", "verify_samples"]

_LABEL_WORDS = {"normal": 0, "good": 0, "ok": 0, "anomaly": 1, "anomalous": 1, "abnormal": 1, "ko": 1}


@dataclass(frozen=True)
class Sample:
    """One image: where it is, whether it is anomalous, its class and (optionally) its mask."""

    image_path: str
    label: int
    class_name: str
    mask_path: str | None = None
    defect_type: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.label, str) or self.label not in (0, 1):
            raise BadInputError(
                f"label must be 0 (normal) or 1 (anomaly), got {self.label!r}", self.image_path, "label"
            )
        object.__setattr__(self, "label", int(self.label))
        if not isinstance(self.class_name, str) or not self.class_name:
            raise BadInputError(
                f"class_name must be a non-empty string, got {self.class_name!r}", self.image_path, "class_name"
            )

    @property
    def has_mask(self) -> bool:
        """True when the pixel truth is known: normal images (all zero) or anomalies with a mask."""
        return self.label == 0 or self.mask_path is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BadFiles:
    """Raise on the first problem, or (``skip=True``) log it, count it and carry on."""

    def __init__(self, skip: bool, source: str, max_logged: int = 10):
        self.skip, self.source, self.max_logged = skip, source, max_logged
        self.count = 0

    def __call__(self, err: BadInputError) -> None:
        if not self.skip:
            raise err
        self.count += 1
        if self.count <= self.max_logged:
            logger.warning("skipping bad entry: %s", err)

    def done(self) -> None:
        if self.count:
            logger.warning("skipped %d bad entr%s in %s", self.count, "y" if self.count == 1 else "ies", self.source)


def parse_label(value: Any) -> int | None:
    """0/1, 0.0/1.0, booleans, "0"/"1" and the words normal/anomaly (good/ok/ko...)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "1", "0.0", "1.0"):
            return int(float(text))
        return _LABEL_WORDS.get(text)
    return None


def summarize_samples(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """``{class: {"normal", "anomaly", "with_mask"}}`` counts, for logs and tables."""
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        row = out.setdefault(s.class_name, {"normal": 0, "anomaly": 0, "with_mask": 0})
        row["anomaly" if s.label else "normal"] += 1
        row["with_mask"] += int(s.label == 1 and s.mask_path is not None)
    return dict(sorted(out.items()))


def check_classes_have_anomalies(samples: Sequence[Sample], *, require_normals: bool = False) -> None:
    """Raise naming every class without anomalous (or, optionally, normal) images.

    Image AUROC and the 1:1 shot sampler need both kinds; catching this up front beats a
    NaN metric hours later.
    """
    counts = summarize_samples(samples)
    no_anom = [c for c, r in counts.items() if r["anomaly"] == 0]
    no_norm = [c for c, r in counts.items() if r["normal"] == 0] if require_normals else []
    problems = []
    if no_anom:
        problems.append(f"class(es) without anomalous images: {no_anom}")
    if no_norm:
        problems.append(f"class(es) without normal images: {no_norm}")
    if problems:
        raise BadInputError("; ".join(problems), None, "label")


def verify_samples(
    samples: Sequence[Sample], *, skip_bad_files: bool = False, check_masks: bool = True, progress: bool = True
) -> list[Sample]:
    """Decode every image (and mask) once; return the readable ones.

    Catches corrupt or truncated files and masks whose size differs from their image
    before a long run starts. With ``skip_bad_files`` the bad samples are dropped (logged
    and counted); otherwise the first one raises.
    """
    bad = BadFiles(skip_bad_files, f"{len(samples)} samples")
    good: list[Sample] = []
    for s in tqdm(samples, desc="verifying images", disable=not progress):
        try:
            with load_image(s.image_path) as im:
                size = im.size
            if check_masks and s.label == 1 and s.mask_path is not None:
                with load_mask(s.mask_path) as m:
                    if m.size != size:
                        raise BadInputError(
                            f"mask is {m.size[0]}x{m.size[1]} but its image {s.image_path} is {size[0]}x{size[1]}",
                            s.mask_path,
                            "mask_path",
                        )
            good.append(s)
        except BadInputError as err:
            bad(err)
    bad.done()
    return good

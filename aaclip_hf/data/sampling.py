"""k-shot training splits with a 1:1 normal:anomaly ratio per class (AA-CLIP protocol).

The reference trains on ``{k}-shot.jsonl`` files it does not ship; its author describes
them as k/2 normal + k/2 anomalous images drawn at random from each class (the reference repository's public
issue https://github.com/Mwxinnn/AA-CLIP/issues/8, and the
paper: "randomly selected from each class, while maintaining a consistent 1:1 ratio"),
seed 111. This module makes such splits reproducibly:

- the candidates of each class are sorted by path first, so the draw does not depend on
  the order the files were listed in;
- each class gets its own generator, keyed by ``(seed, class name)``, so adding or
  removing a class never changes the images drawn for another.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence

import numpy as np

from .image_io import BadInputError
from .samples import Sample, summarize_samples


__all__ = ["DEFAULT_SHOT_SEED", "sample_shots", "parse_shots", "write_jsonl"]

DEFAULT_SHOT_SEED = 111  # the reference's utils.setup_seed(111)


def parse_shots(shots: int | str) -> int | None:
    """``"full"`` -> None (all images); otherwise a positive even int, with a clear error."""
    if isinstance(shots, str):
        if shots.strip().lower() == "full":
            return None
        try:
            shots = int(shots)
        except ValueError:
            raise BadInputError(
                f"shots must be an even number (2, 16, 64, ...) or 'full', got {shots!r}", None, "shots"
            ) from None
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 2:
        raise BadInputError(f"shots must be an even number >= 2 or 'full', got {shots!r}", None, "shots")
    if shots % 2:
        raise BadInputError(
            f"shots must be even: k-shot keeps a 1:1 normal:anomaly ratio (k/2 of each per class), got {shots}; "
            f"use {shots - 1 if shots > 2 else 2} or {shots + 1}",
            None,
            "shots",
        )
    return int(shots)


def _key(s: Sample) -> tuple[str, str]:
    return (s.image_path, s.mask_path or "")


def sample_shots(samples: Sequence[Sample], shots: int | str, seed: int = DEFAULT_SHOT_SEED) -> list[Sample]:
    """Draw ``shots/2`` normal and ``shots/2`` anomalous samples from every class.

    ``shots="full"`` returns every sample. The result is ordered by class name, then
    normal before anomalous, then path. Raises `BadInputError` naming a class that has
    fewer than ``shots/2`` images of either kind, with its counts.
    """
    k = parse_shots(shots)
    by_class: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.class_name, s.label, *_key(s))):
        by_class.setdefault(s.class_name, []).append(s)
    if k is None:
        return [s for cls in sorted(by_class) for s in by_class[cls]]
    half = k // 2
    counts = summarize_samples(samples)
    short = [
        f"{c!r} has {r['normal']} normal and {r['anomaly']} anomalous"
        for c, r in counts.items()
        if min(r["normal"], r["anomaly"]) < half
    ]
    if short:
        raise BadInputError(
            f"{k}-shot needs {half} normal and {half} anomalous images per class, but class " + "; class ".join(short),
            None,
            "shots",
        )
    out: list[Sample] = []
    for cls in sorted(by_class):
        rng = np.random.default_rng([int(seed), zlib.crc32(cls.encode("utf-8"))])
        for label in (0, 1):
            pool = [s for s in by_class[cls] if s.label == label]
            picked = sorted(rng.choice(len(pool), size=half, replace=False).tolist())
            out.extend(pool[i] for i in picked)
    return out


def write_jsonl(
    samples: Sequence[Sample], path: str | os.PathLike, relative_to: str | os.PathLike | None = None
) -> str:
    """Write samples as reference JSON-lines (``image_path, label, class_name, mask_path``).

    Paths are written relative to ``relative_to`` (default: the output file's folder, so
    ``load_samples(path)`` reads it back as is; pass the dataset root for files in the
    reference's ``dataset/metadata`` style). ``mask_path`` is written for anomalies with a
    mask only, as in the reference; ``defect_type`` is added when known.
    """
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path)) if relative_to is None else os.path.abspath(relative_to)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def rel(p: str) -> str:
        return os.path.relpath(os.path.abspath(p), base).replace(os.sep, "/")

    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            rec: dict = {"image_path": rel(s.image_path), "label": s.label, "class_name": s.class_name}
            if s.label == 1 and s.mask_path is not None:
                rec["mask_path"] = rel(s.mask_path)
            if s.defect_type is not None:
                rec["defect_type"] = s.defect_type
            f.write(json.dumps(rec) + "\n")
    return path


# ---------------------------------------------------------------- CLI: aaclip sample-shots

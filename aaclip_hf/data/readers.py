"""Anomaly-detection datasets: one `Sample` list from any common layout, one torch dataset.

Everything funnels into ``list[Sample]``; training, evaluation and shot sampling only ever
see that list, so a new layout needs a reader and nothing else.

Layouts (`load_samples` tries them in this order when ``format`` is not given):

=========  ===========================================================================
``jsonl``  a ``.jsonl`` file of ``{"image_path", "label", "class_name", "mask_path"}``
           records, paths relative to ``root`` (default: the file's folder). The AA-CLIP
           reference format; ``defect_type`` / ``specie_name`` are read when present.
``meta``   a ``.json`` file, or a folder holding ``meta.json``, in the APRIL-GAN /
           AnomalyCLIP form ``{"train"|"test": {class: [{img_path, mask_path, cls_name,
           specie_name, anomaly}]}}``, paths relative to the file's folder.
``visa``   a folder with ``split_csv/1cls.csv`` (columns object, split, label, image,
           mask), or, without the csv, ``<class>/Data/Images/{Normal,Anomaly}`` with masks
           in ``<class>/Data/Masks/Anomaly`` (then there is no split: all images).
``bmad``   BMAD medical: ``{train,valid,test}/good/img`` and ``test/Ungood/{img,label}``,
           either in the folder itself (one class, named after the folder) or in each
           sub-folder.
``mvtec``  ``<class>/{train,test}/<defect>/*`` with ``<class>/ground_truth/<defect>/``
           masks named ``<stem>_mask.*`` or ``<stem>.*``; ``good`` or ``ok`` is normal.
           Also reads MPDD (same layout) and BTAD (``NN/test/{ok,ko}``, masks with the
           image's stem); ``format="mpdd"`` and ``"btad"`` are aliases.
``polyp``  ``images/`` and ``masks/`` (matched by stem), anomalies only: the colonoscopy
           sets (CVC-ClinicDB, CVC-ColonDB, CVC-300, Kvasir). No split: all images.
``folder`` a generic layout for your own data: ``normal/`` and ``anomaly/`` with an
           optional ``masks/`` matched by stem (``<stem>`` or ``<stem>_mask``), in the
           folder itself (class = folder name) or in each ``<class>/`` sub-folder.
           No split: all images.
``hf``     a Hugging Face `datasets` ``save_to_disk`` folder (the split of a
           `DatasetDict`) or a Hub dataset id ``owner/name``: columns ``image``, ``mask``,
           ``label``, ``class_name``, other names mapped with spec keys (`hf_datasets`).
=========  ===========================================================================

Auto-detection takes a ``save_to_disk`` folder, or a missing path of the form ``owner/name``, for ``hf``;
on other folders it checks ``meta.json`` and ``split_csv/1cls.csv`` first, then the
folder itself and its direct sub-folders against visa, bmad, mvtec, polyp, folder, in that
order (bmad before mvtec because ``test/good/img`` also looks like an MVTec defect folder).

Spec strings: ``PATH[::key=value]...`` with keys ``format``, ``split``, ``classes``
(comma-separated), ``root`` (base folder of relative paths) and ``name`` (class name for
single-class layouts); for ``hf`` also ``image_column``, ``mask_column``, ``label_column``,
``class_column``, ``defect_column`` and ``cache``. Example: ``data/mvtec::classes=bottle,cable``. Pass a list of specs
to combine datasets.

Metadata hygiene (``jsonl``, ``meta``, the VisA csv):

- **Paths stay inside the dataset root.** An image or mask path that resolves outside ``root``
  (``../../etc/passwd``, an absolute path elsewhere) is refused, naming the line, unless
  ``allow_outside_root=True`` (CLI ``--allow-outside-root``). The check is lexical (after
  ``normpath``): symlinks inside the root are followed as usual.
- **Each image appears once.** A second record of the same image path is an error naming both
  places (``file:line``): a duplicate weighs its image twice in every metric (one duplicated
  JSON-lines file moved I-AUROC from 81.2 to 89.3). With ``skip_bad_files=True`` the later
  records are dropped with a warning instead (de-duplication). `load_samples` applies the same
  rule across the specs of a list.

Masks follow SPEC section 7: grey-scale, resized with nearest, binarised with ``!= 0``;
normal images get all-zero masks; anomalies without a mask are kept with
``has_mask=False`` so pixel metrics can skip them instead of faking them.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .hf_datasets import COLUMN_KEYS, HF_FORMAT, is_saved_dataset, looks_like_hub_id, read_hf_dataset
from .image_io import IMAGE_EXTENSIONS, BadInputError, MissingFileError
from .samples import BadFiles, Sample, parse_label


logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "NORMAL_FOLDER_NAMES",
    "REFERENCE_CLASS_NAMES",
    "detect_format",
    "is_inside",
    "load_samples",
    "parse_spec",
    "read_bmad",
    "read_folder",
    "read_jsonl",
    "read_meta_json",
    "read_mvtec",
    "read_polyp",
    "read_visa",
]

# Folder names that mean "normal" in the folder layouts (compared case-insensitively).
NORMAL_FOLDER_NAMES: tuple[str, ...] = ("good", "ok", "normal")
# Folder-name to class-name map for the single-class medical / colonoscopy sets, so the
# class names match the AA-CLIP reference metadata (and hence its prompts and tables).
REFERENCE_CLASS_NAMES: dict[str, str] = {
    "Brain_AD": "Brain",
    "Liver_AD": "Liver",
    "Retina_RESC_AD": "Retina",
    "CVC-ClinicDB": "Colon_clinicDB",
    "CVC-ColonDB": "Colon_colonDB",
}
_SPEC_KEYS = ("format", "split", "classes", "root", "name", "cache", *COLUMN_KEYS)


def _join(root: str, path: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` (absolute, or relative to the working folder) lies in ``root`` (lexically)."""
    base, target = os.path.abspath(root), os.path.abspath(path)
    try:
        return os.path.commonpath([base, target]) == base
    except ValueError:  # different drives (Windows)
        return False


def _image_key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


class _Duplicates:
    """Refuse a second record of the same image, naming both places (``file:line``)."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def check(self, sample: Sample, where: str, source: str) -> None:
        first = self.seen.setdefault(_image_key(sample.image_path), where)
        if first != where:
            raise BadInputError(
                f"duplicate image: {where} repeats {first} ({sample.image_path}); each image may be listed once "
                "(a duplicate counts twice in every metric). Remove one, or pass --skip-bad-files to keep the first",
                source,
                "image_path",
            )


def _check_exists(sample: Sample, where: str) -> None:
    if not os.path.isfile(sample.image_path):
        raise MissingFileError(f"image does not exist (referenced by {where})", sample.image_path, "image_path")
    if sample.mask_path is not None and not os.path.isfile(sample.mask_path):
        raise MissingFileError(f"mask does not exist (referenced by {where})", sample.mask_path, "mask_path")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return [
        os.path.join(folder, n)
        for n in sorted(os.listdir(folder))
        if _is_image(n) and os.path.isfile(os.path.join(folder, n))
    ]


def _subdirs(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return [n for n in sorted(os.listdir(folder)) if not n.startswith(".") and os.path.isdir(os.path.join(folder, n))]


def _mask_index(folder: str) -> dict[str, str]:
    """stem -> mask path for ``<stem>_mask.<ext>`` (preferred) and ``<stem>.<ext>`` files."""
    index: dict[str, str] = {}
    preferred: set[str] = set()
    for path in _list_images(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem.endswith("_mask"):
            index[stem[: -len("_mask")]] = path
            preferred.add(stem[: -len("_mask")])
        elif stem not in preferred:
            index.setdefault(stem, path)
    return index


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# --------------------------------------------------------------------------- readers


def read_jsonl(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    skip_bad_files: bool = False,
    allow_outside_root: bool = False,
) -> list[Sample]:
    """Read the AA-CLIP reference JSON-lines metadata (paths relative to ``root``; hygiene: module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError("metadata file does not exist", path, None)
    root = os.path.dirname(path) if root is None else os.fspath(root)
    bad = BadFiles(skip_bad_files, path)
    duplicates = _Duplicates()
    samples: list[Sample] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {n} of {path}"
            try:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BadInputError(
                        f"line {n}: not valid JSON ({err.msg}); expected one JSON object per line", path
                    ) from None
                if not isinstance(rec, dict):
                    raise BadInputError(f"line {n}: expected a JSON object, got {type(rec).__name__}", path)
                sample = _record_to_sample(
                    rec,
                    root,
                    path,
                    f"line {n}",
                    ("image_path", "label", "class_name", "mask_path"),
                    allow_outside_root=allow_outside_root,
                )
                duplicates.check(sample, f"{path}:{n}", path)
                if check_files:
                    _check_exists(sample, where)
                samples.append(sample)
            except BadInputError as err:
                bad(err)
    bad.done()
    return samples


def _record_to_sample(
    rec: dict,
    root: str,
    source: str,
    where: str,
    fields: tuple[str, str, str, str],
    default_class: str | None = None,
    *,
    allow_outside_root: bool = False,
) -> Sample:
    """Validate one metadata record; ``fields`` names image, label, class and mask keys."""
    f_img, f_label, f_cls, f_mask = fields

    def fail(field: str, expected: str, got: Any) -> BadInputError:
        return BadInputError(f"{where}: expected {expected}, got {got!r}", source, field)

    img = rec.get(f_img)
    if not isinstance(img, str) or not img:
        raise fail(f_img, "a non-empty image path string", img)
    label = parse_label(rec.get(f_label))
    if label is None:
        raise fail(f_label, "0 or 1 (normal / anomaly)", rec.get(f_label, "<missing>"))
    cls = rec.get(f_cls, default_class)
    if not isinstance(cls, str) or not cls:
        raise fail(f_cls, "a non-empty class name string", cls)
    mask = rec.get(f_mask)
    if mask is not None and not isinstance(mask, str):
        raise fail(f_mask, "a mask path string, empty or null", mask)
    defect = rec.get("defect_type", rec.get("specie_name"))
    defect = str(defect) if defect not in (None, "") else None
    image_path, mask_path = _join(root, img), (_join(root, mask) if mask else None)
    if not allow_outside_root:
        for field, value, joined in ((f_img, img, image_path), (f_mask, mask, mask_path)):
            if joined is not None and not is_inside(root, joined):
                raise BadInputError(
                    f"{where}: the path {value!r} leads outside the dataset root {os.path.abspath(root)!r}; "
                    "expected a path inside it (pass --allow-outside-root / allow_outside_root=True if intended)",
                    source,
                    field,
                )
    return Sample(image_path, label, cls, mask_path, defect)


def read_meta_json(
    path: str | os.PathLike,
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    skip_bad_files: bool = False,
    allow_outside_root: bool = False,
) -> list[Sample]:
    """Read an APRIL-GAN / AnomalyCLIP ``meta.json`` (paths relative to its folder; hygiene: module docstring)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "meta.json")
    if not os.path.isfile(path):
        raise MissingFileError("metadata file does not exist", path, None)
    root = os.path.dirname(path) if root is None else os.fspath(root)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as err:
        raise BadInputError(f"not valid JSON at line {err.lineno} ({err.msg})", path) from None
    if not isinstance(meta, dict) or split not in meta:
        have = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise BadInputError(f"expected a top-level key {split!r} (the split), found {have}", path, split)
    by_class = meta[split]
    if not isinstance(by_class, dict):
        raise BadInputError(
            f"expected {{class: [records]}} under {split!r}, got {type(by_class).__name__}", path, split
        )
    bad = BadFiles(skip_bad_files, path)
    duplicates = _Duplicates()
    samples: list[Sample] = []
    for cls in sorted(by_class):
        records = by_class[cls]
        if not isinstance(records, list):
            raise BadInputError(f"expected a list of records for class {cls!r}", path, f"{split}.{cls}")
        for i, rec in enumerate(records):
            where = f"{split}.{cls}[{i}]"
            try:
                if not isinstance(rec, dict):
                    raise BadInputError(f"{where}: expected a JSON object, got {type(rec).__name__}", path)
                sample = _record_to_sample(
                    rec,
                    root,
                    path,
                    where,
                    ("img_path", "anomaly", "cls_name", "mask_path"),
                    default_class=cls,
                    allow_outside_root=allow_outside_root,
                )
                duplicates.check(sample, f"{path}:{where}", path)
                if check_files:
                    _check_exists(sample, f"{where} of {path}")
                samples.append(sample)
            except BadInputError as err:
                bad(err)
    bad.done()
    return samples


def _class_dirs(root: str, is_class: Callable[[str], bool]) -> list[str]:
    """The folder itself when it is a class folder, else its sub-folders that are."""
    if is_class(root):
        return [root]
    return [os.path.join(root, n) for n in _subdirs(root) if is_class(os.path.join(root, n))]


def _class_name(folder: str, override: str | None) -> str:
    name = os.path.basename(os.path.normpath(folder))
    return override or REFERENCE_CLASS_NAMES.get(name, name)


def _empty_class_error(folder: str, expected: str) -> BadInputError:
    return BadInputError(f"class folder holds no images; expected {expected}", folder, "images")


def _is_mvtec_class(folder: str) -> bool:
    return any(_subdirs(os.path.join(folder, s)) for s in ("train", "test"))


def read_mvtec(
    root: str | os.PathLike,
    split: str = "test",
    *,
    class_name: str | None = None,
    normal_names: Sequence[str] = NORMAL_FOLDER_NAMES,
    skip_bad_files: bool = False,
) -> list[Sample]:
    """Read the MVTec-AD layout (also MPDD and BTAD): ``<class>/<split>/<defect>/*``.

    An anomalous image needs its mask when ``ground_truth/<defect>/`` exists (a missing one
    is an error: probably a mis-named file); without that folder the defect type has
    image-level labels only.
    """
    root = os.fspath(root)
    classes = _class_dirs(root, _is_mvtec_class)
    if not classes:
        raise BadInputError("no MVTec-style class folder (<class>/{train,test}/<defect>/) found", root)
    normal = {n.lower() for n in normal_names}
    bad = BadFiles(skip_bad_files, root)
    samples: list[Sample] = []
    for cdir in classes:
        cls = class_name if len(classes) == 1 and class_name else os.path.basename(os.path.normpath(cdir))
        split_dir = os.path.join(cdir, split)
        if not os.path.isdir(split_dir):
            bad(MissingFileError(f"class {cls!r} has no {split!r} folder", split_dir, "split"))
            continue
        if _list_images(split_dir) and not _subdirs(split_dir):
            bad(
                BadInputError(
                    f"images lie directly in {split!r}; expected one sub-folder per defect type (good = normal)",
                    split_dir,
                )
            )
            continue
        n_before, no_mask = len(samples), 0
        for defect in _subdirs(split_dir):
            label = 0 if defect.lower() in normal else 1
            gt_dir = os.path.join(cdir, "ground_truth", defect)
            masks = _mask_index(gt_dir) if label else {}
            for img in _list_images(os.path.join(split_dir, defect)):
                mask = None
                if label and os.path.isdir(gt_dir):
                    mask = masks.get(_stem(img))
                    if mask is None:
                        bad(
                            MissingFileError(
                                f"no mask for this image; expected {_stem(img)}_mask.png or {_stem(img)}.png in {gt_dir}",
                                img,
                                "mask_path",
                            )
                        )
                        continue
                elif label:
                    no_mask += 1
                samples.append(Sample(img, label, cls, mask, defect))
        if len(samples) == n_before:
            bad(_empty_class_error(split_dir, "<defect>/*.png images"))
        if no_mask:
            logger.warning(
                "class %r: %d anomalous image(s) without a ground_truth folder: image-level labels only", cls, no_mask
            )
    bad.done()
    return samples


def _is_visa_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "Data", "Images"))


def read_visa(
    root: str | os.PathLike,
    split: str = "test",
    *,
    csv_path: str | None = None,
    check_files: bool = True,
    skip_bad_files: bool = False,
    allow_outside_root: bool = False,
) -> list[Sample]:
    """Read VisA: ``split_csv/1cls.csv`` when present, else the ``Data/Images`` folders (no split)."""
    root = os.fspath(root)
    csv_path = csv_path or os.path.join(root, "split_csv", "1cls.csv")
    bad = BadFiles(skip_bad_files, root)
    duplicates = _Duplicates()
    samples: list[Sample] = []
    if os.path.isfile(csv_path):
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
            if missing:
                raise BadInputError(
                    f"missing column(s) {sorted(missing)}; expected object,split,label,image,mask", csv_path, "header"
                )
            for n, row in enumerate(reader, start=2):
                if row["split"] != split:
                    continue
                try:
                    rec = {
                        "image": row["image"],
                        "label": row["label"],
                        "object": row["object"],
                        "mask": row["mask"] or None,
                    }
                    sample = _record_to_sample(
                        rec,
                        root,
                        csv_path,
                        f"line {n}",
                        ("image", "label", "object", "mask"),
                        allow_outside_root=allow_outside_root,
                    )
                    if sample.label == 0:  # VisA lists no mask for normal images; never trust one
                        sample = Sample(sample.image_path, 0, sample.class_name, None, "good")
                    else:
                        sample = Sample(sample.image_path, 1, sample.class_name, sample.mask_path, "anomaly")
                    duplicates.check(sample, f"{csv_path}:{n}", csv_path)
                    if check_files:
                        _check_exists(sample, f"line {n} of {csv_path}")
                    samples.append(sample)
                except BadInputError as err:
                    bad(err)
        if not samples:
            raise BadInputError(f"no rows with split {split!r}", csv_path, "split")
        bad.done()
        return samples
    classes = _class_dirs(root, _is_visa_class)
    if not classes:
        raise BadInputError(
            "neither split_csv/1cls.csv nor <class>/Data/Images/ found; expected the VisA layout", root
        )
    logger.info("VisA without split_csv/1cls.csv: reading every image (split %r ignored)", split)
    for cdir in classes:
        cls = os.path.basename(os.path.normpath(cdir))
        images = os.path.join(cdir, "Data", "Images")
        n_before = len(samples)
        for img in _list_images(os.path.join(images, "Normal")):
            samples.append(Sample(img, 0, cls, None, "good"))
        masks = _mask_index(os.path.join(cdir, "Data", "Masks", "Anomaly"))
        for img in _list_images(os.path.join(images, "Anomaly")):
            mask = masks.get(_stem(img))
            if mask is None:
                bad(MissingFileError(f"no mask for this image in {cdir}/Data/Masks/Anomaly", img, "mask_path"))
                continue
            samples.append(Sample(img, 1, cls, mask, "anomaly"))
        if len(samples) == n_before:
            bad(_empty_class_error(images, "Normal/ and Anomaly/ images"))
    bad.done()
    return samples


def _is_bmad_class(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, s, "good", "img")) for s in ("train", "valid", "test"))


def read_bmad(
    root: str | os.PathLike, split: str = "test", *, class_name: str | None = None, skip_bad_files: bool = False
) -> list[Sample]:
    """Read a BMAD medical set: ``<split>/good/img`` and ``<split>/Ungood/{img,label}``."""
    root = os.fspath(root)
    classes = _class_dirs(root, _is_bmad_class)
    if not classes:
        raise BadInputError("no BMAD layout ({train,valid,test}/good/img) found", root)
    bad = BadFiles(skip_bad_files, root)
    samples: list[Sample] = []
    for cdir in classes:
        cls = _class_name(cdir, class_name if len(classes) == 1 else None)
        sdir = os.path.join(cdir, split)
        if not os.path.isdir(sdir):
            bad(MissingFileError(f"class {cls!r} has no {split!r} folder", sdir, "split"))
            continue
        n_before = len(samples)
        for sub in _subdirs(sdir):
            label = 0 if sub.lower() in NORMAL_FOLDER_NAMES else 1
            masks = _mask_index(os.path.join(sdir, sub, "label")) if label else {}
            for img in _list_images(os.path.join(sdir, sub, "img")):
                mask = masks.get(_stem(img)) if label else None
                if label and mask is None and os.path.isdir(os.path.join(sdir, sub, "label")):
                    bad(
                        MissingFileError(
                            f"no mask for this image in {os.path.join(sdir, sub, 'label')}", img, "mask_path"
                        )
                    )
                    continue
                samples.append(Sample(img, label, cls, mask, sub))
        if len(samples) == n_before:
            bad(_empty_class_error(sdir, "good/img/ and Ungood/img/ images"))
    bad.done()
    return samples


def _is_polyp_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "images")) and os.path.isdir(os.path.join(folder, "masks"))


def read_polyp(
    root: str | os.PathLike, *, class_name: str | None = None, skip_bad_files: bool = False
) -> list[Sample]:
    """Read a polyp / colonoscopy set: ``images/`` and ``masks/``, all anomalous."""
    root = os.fspath(root)
    classes = _class_dirs(root, _is_polyp_class)
    if not classes:
        raise BadInputError("no images/ + masks/ folders found; expected the polyp layout", root)
    bad = BadFiles(skip_bad_files, root)
    samples: list[Sample] = []
    for cdir in classes:
        cls = _class_name(cdir, class_name if len(classes) == 1 else None)
        masks = _mask_index(os.path.join(cdir, "masks"))
        images = _list_images(os.path.join(cdir, "images"))
        if not images:
            bad(_empty_class_error(os.path.join(cdir, "images"), "images/*.png"))
        for img in images:
            mask = masks.get(_stem(img))
            if mask is None:
                bad(MissingFileError(f"no mask for this image in {os.path.join(cdir, 'masks')}", img, "mask_path"))
                continue
            samples.append(Sample(img, 1, cls, mask, "polyp"))
    bad.done()
    return samples


def _is_generic_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "normal")) or os.path.isdir(os.path.join(folder, "anomaly"))


def read_folder(
    root: str | os.PathLike, *, class_name: str | None = None, skip_bad_files: bool = False
) -> list[Sample]:
    """Read the generic layout: ``normal/``, ``anomaly/`` and optional ``masks/`` (by stem)."""
    root = os.fspath(root)
    classes = _class_dirs(root, _is_generic_class)
    if not classes:
        raise BadInputError("no normal/ or anomaly/ folder found; expected the generic folder layout", root)
    bad = BadFiles(skip_bad_files, root)
    samples: list[Sample] = []
    for cdir in classes:
        cls = class_name if len(classes) == 1 and class_name else os.path.basename(os.path.normpath(cdir))
        masks = _mask_index(os.path.join(cdir, "masks"))
        normals = _list_images(os.path.join(cdir, "normal"))
        anomalies = _list_images(os.path.join(cdir, "anomaly"))
        if not normals and not anomalies:
            bad(_empty_class_error(cdir, "normal/*.png and/or anomaly/*.png"))
        samples.extend(Sample(p, 0, cls, None, "good") for p in normals)
        samples.extend(Sample(p, 1, cls, masks.get(_stem(p)), "anomaly") for p in anomalies)
        unmatched = len(masks) - sum(_stem(p) in masks for p in anomalies)
        if unmatched:
            logger.warning(
                "class %r: %d mask(s) in %s match no anomaly image by stem",
                cls,
                unmatched,
                os.path.join(cdir, "masks"),
            )
    bad.done()
    return samples


# --------------------------------------------------------------------------- entry point

FORMATS: dict[str, str] = {
    "jsonl": "AA-CLIP reference JSON-lines",
    "meta": "APRIL-GAN / AnomalyCLIP meta.json",
    "visa": "VisA (split_csv/1cls.csv or Data/Images)",
    "bmad": "BMAD medical ({split}/good/img, Ungood/{img,label})",
    "mvtec": "MVTec-AD folders (also MPDD, BTAD)",
    "mpdd": "alias of mvtec",
    "btad": "alias of mvtec",
    "polyp": "images/ + masks/, anomalies only",
    "folder": "generic normal/ + anomaly/ [+ masks/]",
    HF_FORMAT: "datasets save_to_disk folder or Hub dataset id owner/name",
}
_FOLDER_PROBES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("visa", _is_visa_class),
    ("bmad", _is_bmad_class),
    ("mvtec", _is_mvtec_class),
    ("polyp", _is_polyp_class),
    ("folder", _is_generic_class),
)


def detect_format(path: str | os.PathLike) -> str:
    """Name the layout of ``path`` (see the module docstring for the order)."""
    path = os.fspath(path)
    if is_saved_dataset(path) or looks_like_hub_id(path):
        return HF_FORMAT
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext == ".jsonl":
            return "jsonl"
        if ext == ".json":
            return "meta"
        if ext == ".csv":
            return "visa"
        raise BadInputError(
            "unknown metadata file type; expected .jsonl, .json (meta.json) or .csv (VisA split)", path
        )
    if not os.path.isdir(path):
        raise MissingFileError("dataset path does not exist", path)
    if os.path.isfile(os.path.join(path, "meta.json")):
        return "meta"
    if os.path.isfile(os.path.join(path, "split_csv", "1cls.csv")):
        return "visa"
    children = [os.path.join(path, n) for n in _subdirs(path)]
    for name, probe in _FOLDER_PROBES:
        if probe(path) or any(probe(c) for c in children):
            return name
    raise BadInputError(
        f"cannot recognise the dataset layout; expected one of: {', '.join(k for k in FORMATS if 'alias' not in FORMATS[k])}",
        path,
    )


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``PATH::key=value::...`` into the path and its options."""
    path, *parts = str(spec).split("::")
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _SPEC_KEYS:
            raise BadInputError(
                f"bad spec option {part!r}; expected key=value with key in {list(_SPEC_KEYS)}", path, "spec"
            )
        options[key] = value.strip()
    return path, options


def load_samples(
    spec_or_path: str | os.PathLike | Sequence[str | os.PathLike],
    split: str = "test",
    *,
    format: str | None = None,
    classes: Iterable[str] | None = None,
    root: str | os.PathLike | None = None,
    class_name: str | None = None,
    skip_bad_files: bool = False,
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> list[Sample]:
    """Read samples from any supported layout or spec string (a list is concatenated).

    Spec options (``::format=...``) override the keyword arguments for that spec. The result
    keeps each reader's order: class by class, files sorted by name. Metadata paths outside the
    root and duplicate images are refused (module docstring), also across the specs of a list.
    """
    if isinstance(spec_or_path, (list, tuple)):
        out: list[Sample] = []
        bad = BadFiles(skip_bad_files, "the combined datasets")
        duplicates = _Duplicates()
        for number, spec in enumerate(spec_or_path, start=1):
            for sample in load_samples(
                spec,
                split,
                format=format,
                classes=classes,
                root=root,
                class_name=class_name,
                skip_bad_files=skip_bad_files,
                check_files=check_files,
                allow_outside_root=allow_outside_root,
            ):
                try:
                    duplicates.check(sample, f"dataset {number} ({os.fspath(spec)})", os.fspath(spec))
                except BadInputError as err:
                    bad(err)
                    continue
                out.append(sample)
        bad.done()
        return out
    path, opts = parse_spec(os.fspath(spec_or_path))
    split = opts.get("split", split)
    fmt = opts.get("format", format) or detect_format(path)
    root = opts.get("root", root)
    class_name = opts.get("name", class_name)
    if "classes" in opts:
        classes = [c for c in opts["classes"].split(",") if c]
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}", path, "format")
    if fmt == HF_FORMAT:
        samples = read_hf_dataset(
            path,
            split,
            cache_dir=opts.get("cache"),
            class_name=class_name,
            **{key: opts[key] for key in COLUMN_KEYS if key in opts},
        )
    elif fmt == "jsonl":
        samples = read_jsonl(
            path, root, check_files=check_files, skip_bad_files=skip_bad_files, allow_outside_root=allow_outside_root
        )
    elif fmt == "meta":
        samples = read_meta_json(
            path,
            split,
            root,
            check_files=check_files,
            skip_bad_files=skip_bad_files,
            allow_outside_root=allow_outside_root,
        )
    elif fmt == "visa":
        csv_path = path if os.path.isfile(path) else None
        vroot = root or (os.path.dirname(os.path.dirname(os.path.abspath(path))) if csv_path else path)
        samples = read_visa(
            vroot,
            split,
            csv_path=csv_path,
            check_files=check_files,
            skip_bad_files=skip_bad_files,
            allow_outside_root=allow_outside_root,
        )
    elif fmt == "bmad":
        samples = read_bmad(path, split, class_name=class_name, skip_bad_files=skip_bad_files)
    elif fmt in ("mvtec", "mpdd", "btad"):
        samples = read_mvtec(path, split, class_name=class_name, skip_bad_files=skip_bad_files)
    elif fmt == "polyp":
        samples = read_polyp(path, class_name=class_name, skip_bad_files=skip_bad_files)
    else:
        samples = read_folder(path, class_name=class_name, skip_bad_files=skip_bad_files)
    if classes is not None:
        wanted = list(classes)
        have = sorted({s.class_name for s in samples})
        unknown = [c for c in wanted if c not in have]
        if unknown:
            raise BadInputError(f"unknown class(es) {unknown}; the data has {have}", path, "classes")
        samples = [s for s in samples if s.class_name in set(wanted)]
    if not samples:
        raise BadInputError(f"no samples found for split {split!r} (format {fmt!r})", path)
    return samples

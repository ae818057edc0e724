"""Anomaly-detection datasets: one `Sample` list from any common layout, one torch dataset.

Everything funnels into ``list[Sample]``; training, evaluation and shot sampling only ever
see that list, so a new layout needs a reader and nothing else (a folder layout: one `_FolderLayout`,
the description of its class folders and their image groups; metadata files: one `_read_records` call).

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
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

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


# --------------------------------------------------------------------------- metadata records (jsonl, meta, csv)


class _Hygiene(NamedTuple):
    """The metadata readers' switches (module docstring)."""

    check_files: bool
    skip_bad_files: bool
    allow_outside_root: bool


class _Entry(NamedTuple):
    """One metadata record as read, before `_record_to_sample` validates it."""

    record: Any  # the parsed record; a BadInputError when it did not parse
    where: str  # the record in messages: "line 3", "test.bottle[0]"
    key: int | str  # what follows "file:" in duplicate messages
    default_class: str | None = None


def _read_records(
    entries: Iterable[_Entry],
    fields: tuple[str, str, str, str],
    source: str,
    root: str,
    hygiene: _Hygiene,
    *,
    bad_source: str | None = None,
    adjust: Callable[[Sample], Sample] | None = None,
    if_none: BadInputError | None = None,
) -> list[Sample]:
    """The loop every metadata reader shares: record -> Sample (``adjust``ed) -> duplicate and existence checks.

    ``fields`` names the image, label, class and mask keys. Bad records raise or, skipping bad files,
    are counted against ``bad_source`` (default ``source``); ``if_none`` is raised when no record is kept.
    """
    bad = BadFiles(hygiene.skip_bad_files, bad_source or source)
    duplicates = _Duplicates()
    samples: list[Sample] = []
    for entry in entries:
        try:
            if isinstance(entry.record, BadInputError):
                raise entry.record
            if not isinstance(entry.record, dict):
                raise BadInputError(
                    f"{entry.where}: expected a JSON object, got {type(entry.record).__name__}", source
                )
            sample = _record_to_sample(
                entry.record,
                root,
                source,
                entry.where,
                fields,
                entry.default_class,
                allow_outside_root=hygiene.allow_outside_root,
            )
            if adjust is not None:
                sample = adjust(sample)
            duplicates.check(sample, f"{source}:{entry.key}", source)
            if hygiene.check_files:
                _check_exists(sample, f"{entry.where} of {source}")
            samples.append(sample)
        except BadInputError as err:
            bad(err)
    if if_none is not None and not samples:
        raise if_none
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


# The image, label, class and mask keys of each metadata format.
_JSONL_FIELDS = ("image_path", "label", "class_name", "mask_path")
_META_FIELDS = ("img_path", "anomaly", "cls_name", "mask_path")
_VISA_CSV_FIELDS = ("image", "label", "object", "mask")


def _metadata_file(path: str) -> str:
    if not os.path.isfile(path):
        raise MissingFileError("metadata file does not exist", path, None)
    return path


def read_jsonl(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
    skip_bad_files: bool = False,
    allow_outside_root: bool = False,
) -> list[Sample]:
    """Read the AA-CLIP reference JSON-lines metadata (paths relative to ``root``; hygiene: module docstring)."""
    path = _metadata_file(os.fspath(path))
    root = os.path.dirname(path) if root is None else os.fspath(root)
    hygiene = _Hygiene(check_files, skip_bad_files, allow_outside_root)
    with open(path, encoding="utf-8") as f:
        return _read_records(_jsonl_entries(f, path), _JSONL_FIELDS, path, root, hygiene)


def _jsonl_entries(lines: Iterable[str], path: str) -> Iterator[_Entry]:
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            rec = BadInputError(f"line {n}: not valid JSON ({err.msg}); expected one JSON object per line", path)
        yield _Entry(rec, f"line {n}", n)


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
    path = _metadata_file(path)
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
    hygiene = _Hygiene(check_files, skip_bad_files, allow_outside_root)
    return _read_records(_meta_entries(by_class, split, path), _META_FIELDS, path, root, hygiene)


def _meta_entries(by_class: dict, split: str, path: str) -> Iterator[_Entry]:
    for cls in sorted(by_class):
        records = by_class[cls]
        if not isinstance(records, list):
            raise BadInputError(f"expected a list of records for class {cls!r}", path, f"{split}.{cls}")
        for i, rec in enumerate(records):
            where = f"{split}.{cls}[{i}]"
            yield _Entry(rec, where, where, cls)


def _visa_csv_entries(reader: csv.DictReader, split: str) -> Iterator[_Entry]:
    for n, row in enumerate(reader, start=2):
        if row["split"] == split:
            rec = {"image": row["image"], "label": row["label"], "object": row["object"], "mask": row["mask"] or None}
            yield _Entry(rec, f"line {n}", n)


def _visa_csv_sample(sample: Sample) -> Sample:
    if sample.label == 0:  # VisA lists no mask for normal images; never trust one
        return Sample(sample.image_path, 0, sample.class_name, None, "good")
    return Sample(sample.image_path, 1, sample.class_name, sample.mask_path, "anomaly")


# --------------------------------------------------------------------------- folder layouts
#
# A folder layout is a `_FolderLayout`: how to recognise a class folder and, per class, its image
# groups (`_Group`: folder, label, defect type, mask folder and policy). `_read_folders` does the rest
# for every layout: class names, the walk, masks matched by stem, bad files, empty classes.

# Mask policies of a `_Group`.
_NO_MASKS = "none"  # normal images: the mask is all zero, no file
_REQUIRED = "required"  # an image without a mask is a bad file
_IF_FOLDER = "if folder"  # required when the mask folder exists; without it, image-level labels only
_OPTIONAL = "optional"  # kept without one; masks that match no image are warned about


class _Group(NamedTuple):
    """One folder of images of a class, all with the same label and defect type."""

    images: str
    label: int
    defect: str
    masks: str | None = None  # the mask folder, matched by stem (`_mask_index`)
    policy: str = _NO_MASKS
    missing: Callable[[str], str] | None = None  # image path -> message for its missing mask


class _ClassPlan(NamedTuple):
    """A class folder's groups, and what its empty-class error names."""

    groups: list[_Group]
    folder: str
    expected: str


class _FolderLayout(NamedTuple):
    """What a folder reader states about its layout; `_read_folders` does the rest."""

    is_class: Callable[[str], bool]  # does this folder hold one class (also `detect_format`'s probe)
    not_found: str  # the error when neither the root nor a sub-folder is a class folder
    # (class folder, class name, split, lower-case normal folder names) -> the class's groups;
    # raises BadInputError to skip the class (a bad file).
    plan: Callable[[str, str, str, Container[str]], _ClassPlan]
    reference_names: bool = False  # class names through REFERENCE_CLASS_NAMES
    empty_if_none_listed: bool = False  # a class is empty when it lists no image (else: when it keeps none)
    warn_unmasked: bool = False  # warn about anomalies without a mask folder (`_IF_FOLDER`)
    note: str | None = None  # logged (with the split) once the class folders are found


def _class_dirs(root: str, is_class: Callable[[str], bool]) -> list[str]:
    """The folder itself when it is a class folder, else its sub-folders that are."""
    if is_class(root):
        return [root]
    return [os.path.join(root, n) for n in _subdirs(root) if is_class(os.path.join(root, n))]


def _class_name(folder: str, override: str | None, reference: bool) -> str:
    name = os.path.basename(os.path.normpath(folder))
    return override or (REFERENCE_CLASS_NAMES.get(name, name) if reference else name)


def _empty_class_error(folder: str, expected: str) -> BadInputError:
    return BadInputError(f"class folder holds no images; expected {expected}", folder, "images")


def _read_folders(
    layout: _FolderLayout,
    root: str | os.PathLike,
    split: str = "test",
    *,
    class_name: str | None = None,
    normal_names: Iterable[str] = NORMAL_FOLDER_NAMES,
    skip_bad_files: bool = False,
) -> list[Sample]:
    """Read every class folder of ``layout`` under ``root`` (``class_name`` names a single class)."""
    root = os.fspath(root)
    classes = _class_dirs(root, layout.is_class)
    if not classes:
        raise BadInputError(layout.not_found, root)
    if layout.note:
        logger.info(layout.note, split)
    normal = {n.lower() for n in normal_names}
    bad = BadFiles(skip_bad_files, root)
    samples: list[Sample] = []
    for cdir in classes:
        cls = _class_name(cdir, class_name if len(classes) == 1 else None, layout.reference_names)
        try:
            plan = layout.plan(cdir, cls, split, normal)
        except BadInputError as err:
            bad(err)
            continue
        samples.extend(_read_class(layout, plan, cls, bad))
    bad.done()
    return samples


def _read_class(layout: _FolderLayout, plan: _ClassPlan, cls: str, bad: BadFiles) -> list[Sample]:
    listed = [(group, _list_images(group.images)) for group in plan.groups]
    if layout.empty_if_none_listed and not any(images for _, images in listed):
        bad(_empty_class_error(plan.folder, plan.expected))
    samples: list[Sample] = []
    unmasked = sum(_read_group(group, images, cls, bad, samples) for group, images in listed)
    if not layout.empty_if_none_listed and not samples:
        bad(_empty_class_error(plan.folder, plan.expected))
    if layout.warn_unmasked and unmasked:
        logger.warning(
            "class %r: %d anomalous image(s) without a ground_truth folder: image-level labels only", cls, unmasked
        )
    return samples


def _read_group(group: _Group, images: list[str], cls: str, bad: BadFiles, out: list[Sample]) -> int:
    """Append the group's samples to ``out``; return how many anomalies have no mask folder (`_IF_FOLDER`)."""
    masks = _mask_index(group.masks) if group.masks is not None else {}
    needed = group.policy == _REQUIRED or (group.policy == _IF_FOLDER and os.path.isdir(group.masks))
    for img in images:
        mask = masks.get(_stem(img))
        if mask is None and needed:
            bad(MissingFileError(group.missing(img), img, "mask_path"))
            continue
        out.append(Sample(img, group.label, cls, mask, group.defect))
    if group.policy == _OPTIONAL:
        unmatched = len(masks) - sum(_stem(p) in masks for p in images)
        if unmatched:
            logger.warning("class %r: %d mask(s) in %s match no anomaly image by stem", cls, unmatched, group.masks)
    return len(images) if group.policy == _IF_FOLDER and not needed else 0


def _no_mask_in(folder: str) -> Callable[[str], str]:
    return lambda img: f"no mask for this image in {folder}"


def _split_dir(cdir: str, cls: str, split: str) -> str:
    folder = os.path.join(cdir, split)
    if not os.path.isdir(folder):
        raise MissingFileError(f"class {cls!r} has no {split!r} folder", folder, "split")
    return folder


def _defect_groups(
    split_dir: str,
    normal: Container[str],
    images_of: Callable[[str], str],
    masks_of: Callable[[str], str],
    missing_of: Callable[[str], Callable[[str], str]],
) -> list[_Group]:
    """One group per defect sub-folder of ``split_dir``, the ``normal`` ones without masks (MVTec, BMAD)."""
    groups = []
    for defect in _subdirs(split_dir):
        if defect.lower() in normal:
            groups.append(_Group(images_of(defect), 0, defect))
        else:
            masks = masks_of(defect)
            groups.append(_Group(images_of(defect), 1, defect, masks, _IF_FOLDER, missing_of(masks)))
    return groups


def _is_mvtec_class(folder: str) -> bool:
    return any(_subdirs(os.path.join(folder, s)) for s in ("train", "test"))


def _mask_named_like(gt_dir: str) -> Callable[[str], str]:
    return lambda img: f"no mask for this image; expected {_stem(img)}_mask.png or {_stem(img)}.png in {gt_dir}"


def _mvtec_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> _ClassPlan:
    split_dir = _split_dir(cdir, cls, split)
    if _list_images(split_dir) and not _subdirs(split_dir):
        raise BadInputError(
            f"images lie directly in {split!r}; expected one sub-folder per defect type (good = normal)", split_dir
        )
    groups = _defect_groups(
        split_dir,
        normal,
        lambda defect: os.path.join(split_dir, defect),
        lambda defect: os.path.join(cdir, "ground_truth", defect),
        _mask_named_like,
    )
    return _ClassPlan(groups, split_dir, "<defect>/*.png images")


_MVTEC = _FolderLayout(
    _is_mvtec_class,
    "no MVTec-style class folder (<class>/{train,test}/<defect>/) found",
    _mvtec_plan,
    warn_unmasked=True,
)


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
    return _read_folders(
        _MVTEC, root, split, class_name=class_name, normal_names=normal_names, skip_bad_files=skip_bad_files
    )


def _is_visa_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "Data", "Images"))


def _visa_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> _ClassPlan:
    images, masks = os.path.join(cdir, "Data", "Images"), os.path.join(cdir, "Data", "Masks", "Anomaly")
    missing = _no_mask_in(f"{cdir}/Data/Masks/Anomaly")
    groups = [
        _Group(os.path.join(images, "Normal"), 0, "good"),
        _Group(os.path.join(images, "Anomaly"), 1, "anomaly", masks, _REQUIRED, missing),
    ]
    return _ClassPlan(groups, images, "Normal/ and Anomaly/ images")


_VISA = _FolderLayout(
    _is_visa_class,
    "neither split_csv/1cls.csv nor <class>/Data/Images/ found; expected the VisA layout",
    _visa_plan,
    note="VisA without split_csv/1cls.csv: reading every image (split %r ignored)",
)


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
    if not os.path.isfile(csv_path):
        return _read_folders(_VISA, root, split, skip_bad_files=skip_bad_files)
    hygiene = _Hygiene(check_files, skip_bad_files, allow_outside_root)
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise BadInputError(
                f"missing column(s) {sorted(missing)}; expected object,split,label,image,mask", csv_path, "header"
            )
        return _read_records(
            _visa_csv_entries(reader, split),
            _VISA_CSV_FIELDS,
            csv_path,
            root,
            hygiene,
            bad_source=root,
            adjust=_visa_csv_sample,
            if_none=BadInputError(f"no rows with split {split!r}", csv_path, "split"),
        )


def _is_bmad_class(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, s, "good", "img")) for s in ("train", "valid", "test"))


def _bmad_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> _ClassPlan:
    sdir = _split_dir(cdir, cls, split)
    groups = _defect_groups(
        sdir,
        normal,
        lambda sub: os.path.join(sdir, sub, "img"),
        lambda sub: os.path.join(sdir, sub, "label"),
        _no_mask_in,
    )
    return _ClassPlan(groups, sdir, "good/img/ and Ungood/img/ images")


_BMAD = _FolderLayout(
    _is_bmad_class, "no BMAD layout ({train,valid,test}/good/img) found", _bmad_plan, reference_names=True
)


def read_bmad(
    root: str | os.PathLike, split: str = "test", *, class_name: str | None = None, skip_bad_files: bool = False
) -> list[Sample]:
    """Read a BMAD medical set: ``<split>/good/img`` and ``<split>/Ungood/{img,label}``."""
    return _read_folders(_BMAD, root, split, class_name=class_name, skip_bad_files=skip_bad_files)


def _is_polyp_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "images")) and os.path.isdir(os.path.join(folder, "masks"))


def _polyp_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> _ClassPlan:
    images, masks = os.path.join(cdir, "images"), os.path.join(cdir, "masks")
    return _ClassPlan([_Group(images, 1, "polyp", masks, _REQUIRED, _no_mask_in(masks))], images, "images/*.png")


_POLYP = _FolderLayout(
    _is_polyp_class,
    "no images/ + masks/ folders found; expected the polyp layout",
    _polyp_plan,
    reference_names=True,
    empty_if_none_listed=True,
)


def read_polyp(
    root: str | os.PathLike, *, class_name: str | None = None, skip_bad_files: bool = False
) -> list[Sample]:
    """Read a polyp / colonoscopy set: ``images/`` and ``masks/``, all anomalous."""
    return _read_folders(_POLYP, root, class_name=class_name, skip_bad_files=skip_bad_files)


def _is_generic_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "normal")) or os.path.isdir(os.path.join(folder, "anomaly"))


def _generic_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> _ClassPlan:
    groups = [
        _Group(os.path.join(cdir, "normal"), 0, "good"),
        _Group(os.path.join(cdir, "anomaly"), 1, "anomaly", os.path.join(cdir, "masks"), _OPTIONAL),
    ]
    return _ClassPlan(groups, cdir, "normal/*.png and/or anomaly/*.png")


_GENERIC = _FolderLayout(
    _is_generic_class,
    "no normal/ or anomaly/ folder found; expected the generic folder layout",
    _generic_plan,
    empty_if_none_listed=True,
)


def read_folder(
    root: str | os.PathLike, *, class_name: str | None = None, skip_bad_files: bool = False
) -> list[Sample]:
    """Read the generic layout: ``normal/``, ``anomaly/`` and optional ``masks/`` (by stem)."""
    return _read_folders(_GENERIC, root, class_name=class_name, skip_bad_files=skip_bad_files)


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
# `detect_format` probes the folder layouts in this order.
_FOLDER_LAYOUTS: dict[str, _FolderLayout] = {
    "visa": _VISA,
    "bmad": _BMAD,
    "mvtec": _MVTEC,
    "polyp": _POLYP,
    "folder": _GENERIC,
}


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
    for name, layout in _FOLDER_LAYOUTS.items():
        if layout.is_class(path) or any(layout.is_class(c) for c in children):
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
    options: dict[str, Any] = {
        "format": format,
        "classes": classes,
        "root": root,
        "class_name": class_name,
        "skip_bad_files": skip_bad_files,
        "check_files": check_files,
        "allow_outside_root": allow_outside_root,
    }
    if isinstance(spec_or_path, (list, tuple)):
        return _load_combined(spec_or_path, split, options)
    path, opts = parse_spec(os.fspath(spec_or_path))
    split = opts.get("split", split)
    fmt = opts.get("format", format) or detect_format(path)
    root = opts.get("root", root)
    class_name = opts.get("name", class_name)
    if "classes" in opts:
        classes = [c for c in opts["classes"].split(",") if c]
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}", path, "format")
    hygiene = {"check_files": check_files, "skip_bad_files": skip_bad_files, "allow_outside_root": allow_outside_root}
    samples = _read_format(fmt, path, split, opts, root, class_name, hygiene)
    if classes is not None:
        samples = _select_classes(samples, list(classes), path)
    if not samples:
        raise BadInputError(f"no samples found for split {split!r} (format {fmt!r})", path)
    return samples


def _load_combined(specs: Sequence[str | os.PathLike], split: str, options: dict[str, Any]) -> list[Sample]:
    """Concatenate the specs' samples, refusing (or, skipping bad files, dropping) an image seen in an earlier one."""
    out: list[Sample] = []
    bad = BadFiles(options["skip_bad_files"], "the combined datasets")
    duplicates = _Duplicates()
    for number, spec in enumerate(specs, start=1):
        for sample in load_samples(spec, split, **options):
            try:
                duplicates.check(sample, f"dataset {number} ({os.fspath(spec)})", os.fspath(spec))
            except BadInputError as err:
                bad(err)
                continue
            out.append(sample)
    bad.done()
    return out


def _read_format(
    fmt: str,
    path: str,
    split: str,
    opts: dict[str, str],
    root: str | os.PathLike | None,
    class_name: str | None,
    hygiene: dict[str, bool],
) -> list[Sample]:
    """Call the reader of ``fmt``; ``hygiene`` holds check_files, skip_bad_files and allow_outside_root."""
    if fmt == HF_FORMAT:
        columns = {key: opts[key] for key in COLUMN_KEYS if key in opts}
        return read_hf_dataset(path, split, cache_dir=opts.get("cache"), class_name=class_name, **columns)
    if fmt == "jsonl":
        return read_jsonl(path, root, **hygiene)
    if fmt == "meta":
        return read_meta_json(path, split, root, **hygiene)
    if fmt == "visa":
        csv_path = path if os.path.isfile(path) else None
        vroot = root or (os.path.dirname(os.path.dirname(os.path.abspath(path))) if csv_path else path)
        return read_visa(vroot, split, csv_path=csv_path, **hygiene)
    layout = _FOLDER_LAYOUTS["mvtec" if fmt in ("mpdd", "btad") else fmt]  # the readers of bmad, mvtec, polyp, folder
    return _read_folders(layout, path, split, class_name=class_name, skip_bad_files=hygiene["skip_bad_files"])


def _select_classes(samples: list[Sample], wanted: list[str], path: str) -> list[Sample]:
    have = sorted({s.class_name for s in samples})
    unknown = [c for c in wanted if c not in have]
    if unknown:
        raise BadInputError(f"unknown class(es) {unknown}; the data has {have}", path, "classes")
    return [s for s in samples if s.class_name in set(wanted)]

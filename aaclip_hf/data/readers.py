"""Anomaly-detection datasets: one `Sample` list from any common layout, one torch dataset.

Everything funnels into ``list[Sample]``; training, evaluation and shot sampling only ever
see that list, so a new layout needs a reader and nothing else (a folder layout: one `FolderLayout` in
`folders`, the description of its class folders and their image groups; metadata files: one `_read_records`
call here).

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
``folder`` your own folders: ``good/`` (``ok/``, ``normal/``) and ``bad/`` (``ng/``,
           ``defect/``, ``anomaly/``, ``abnormal/``) with an optional ``masks/`` matched by
           stem, in the folder itself (class = folder name) or in each ``<class>/``
           sub-folder; or any folder names given with the spec keys ``normal_dir``,
           ``abnormal_dir``, ``mask_dir`` (anomalib's ``Folder``; `folders`). No split.
``hf``     a Hugging Face `datasets` ``save_to_disk`` folder (the split of a
           `DatasetDict`) or a Hub dataset id ``owner/name``: columns ``image``, ``mask``,
           ``label``, ``class_name``, other names mapped with spec keys (`hf_datasets`).
=========  ===========================================================================

Auto-detection takes a ``save_to_disk`` folder, or a missing path of the form ``owner/name``, for ``hf``;
on other folders it checks ``meta.json`` and ``split_csv/1cls.csv`` first, then the
folder itself and its direct sub-folders against visa, bmad, mvtec, polyp, folder, in that
order (bmad before mvtec because ``test/good/img`` also looks like an MVTec defect folder). A folder it
cannot place is a one-line error listing the layouts and the spec keys, with an example.

Spec strings: ``PATH[::key=value]...`` with keys ``format``, ``split``, ``classes``
(comma-separated), ``root`` (base folder of relative paths in metadata files) and ``name`` (class name for
single-class layouts: it goes into the text prompts); for your own folders ``normal_dir``, ``abnormal_dir``
and ``mask_dir``; for ``hf`` also ``image_column``, ``mask_column``, ``label_column``,
``class_column``, ``defect_column`` and ``cache``. Examples: ``data/mvtec::classes=bottle,cable``,
``parts::normal_dir=ok::abnormal_dir=ng::mask_dir=masks::name=widget``. Pass a list of specs
to combine datasets.

Metadata hygiene (``jsonl``, ``meta``, the VisA csv):

- **Paths stay inside the dataset root.** An image or mask path that resolves outside ``root``
  (``../../etc/passwd``, an absolute path elsewhere) is refused, naming the line, unless
  ``allow_outside_root=True`` (CLI ``--allow-outside-root``). The check is lexical (after
  ``normpath``): symlinks inside the root are followed as usual. ``resolve_links=True`` (what
  ``aaclip export-dataset`` sets, since it copies the files' bytes) also refuses a symbolic link that leads
  outside, in every layout (`paths.check_inside_root`, the one check).
- **Each image appears once.** A second record of the same image is an error naming both
  places (``file:line``): a duplicate weighs its image twice in every metric (one duplicated
  JSON-lines file moved I-AUROC from 81.2 to 89.3). Images are compared by real path, so a symbolic
  link to a listed image is the same image. With ``skip_bad_files=True`` the later
  records are dropped with a warning instead (de-duplication). `load_samples` applies the same
  rule across the specs of a list. (Folder layouts keep one copy of a linked image with a warning: `folders`.)
- **A normal record has no mask.** A record with label 0 and a mask path is ambiguous (is the label wrong,
  or the mask?) and refused, naming the line, unless the mask is all zero (then it is dropped: a normal
  image's mask is all zero anyway).

Masks are grey-scale, resized with nearest and binarised with ``!= 0`` (as the AA-CLIP reference does);
normal images get all-zero masks; anomalies without a mask are kept with
``has_mask=False`` so pixel metrics can skip them instead of faking them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import BadInputError, MissingFileError
from .folders import (
    ANOMALY_FOLDER_NAMES,
    DIR_KEYS,
    FOLDER_LAYOUTS,
    NORMAL_FOLDER_NAMES,
    REFERENCE_CLASS_NAMES,
    VISA,
    FolderError,
    folder_layout_of,
    read_bmad,
    read_folder,
    read_layout,
    read_mvtec,
    read_polyp,
)
from .hf_datasets import COLUMN_KEYS, HF_FORMAT, is_saved_dataset, looks_like_hub_id, read_hf_dataset
from .image_io import load_mask
from .paths import check_inside_root, image_key, is_inside
from .samples import BadFiles, Sample, parse_label


logger = logging.getLogger(__name__)

__all__ = [
    "ANOMALY_FOLDER_NAMES",
    "FORMATS",
    "NORMAL_FOLDER_NAMES",
    "REFERENCE_CLASS_NAMES",
    "DATA_SPEC_HELP",
    "SPEC_KEYS",
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

SPEC_KEYS: tuple[str, ...] = ("format", "split", "classes", "root", "name", *DIR_KEYS, "cache", *COLUMN_KEYS)


def _join(root: str, path: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))


class _Duplicates:
    """Refuse a second record of the same image (by real path), naming both places (``file:line``)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, str]] = {}

    def check(self, sample: Sample, where: str, source: str) -> None:
        first, first_path = self.seen.setdefault(image_key(sample.image_path), (where, sample.image_path))
        if first != where:
            same = "" if os.path.abspath(first_path) == os.path.abspath(sample.image_path) else f" = {first_path}"
            raise BadInputError(
                f"duplicate image: {where} repeats {first} ({sample.image_path}{same}); each image may be listed "
                "once (a duplicate counts twice in every metric). Remove one, or pass --skip-bad-files to keep the "
                "first",
                source,
                "image_path",
            )


def _check_exists(sample: Sample, where: str) -> None:
    if not os.path.isfile(sample.image_path):
        raise MissingFileError(f"image does not exist (referenced by {where})", sample.image_path, "image_path")
    if sample.mask_path is not None and not os.path.isfile(sample.mask_path):
        raise MissingFileError(f"mask does not exist (referenced by {where})", sample.mask_path, "mask_path")


# --------------------------------------------------------------------------- metadata records (jsonl, meta, csv)


class _Hygiene(NamedTuple):
    """The metadata readers' switches (module docstring)."""

    check_files: bool
    skip_bad_files: bool
    allow_outside_root: bool
    resolve_links: bool = False


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
                resolve_links=hygiene.resolve_links,
            )
            if adjust is not None:
                sample = adjust(sample)
            duplicates.check(sample, f"{source}:{entry.key}", source)
            if hygiene.check_files:
                _check_exists(sample, f"{entry.where} of {source}")
            samples.append(_normal_without_mask(sample, entry.where, source, fields[3]))
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
    resolve_links: bool = False,
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
            if joined is not None:
                check_inside_root(
                    root, joined, where=where, source=source, field=field, value=value, resolve=resolve_links
                )
    return Sample(image_path, label, cls, mask_path, defect)


def _normal_without_mask(sample: Sample, where: str, source: str, field: str) -> Sample:
    """A normal record's mask: all zero is dropped (a normal image's mask is all zero anyway); else refused.

    A mask with anomalous pixels on a record labelled normal is ambiguous (is the label wrong, or the mask?), and
    guessing either way changes the metrics.
    """
    if sample.label == 1 or sample.mask_path is None:
        return sample
    if os.path.isfile(sample.mask_path):
        with load_mask(sample.mask_path, field=field) as mask:
            if not np.asarray(mask).any():
                return Sample(sample.image_path, 0, sample.class_name, None, sample.defect_type)
        found = "a mask with anomalous pixels"
    else:
        found = "a mask that does not exist"
    raise BadInputError(
        f"{where}: label 0 (normal) with {found} ({sample.mask_path}); ambiguous: expected label 1 if the image "
        "is anomalous, or no mask if it is normal",
        source,
        field,
    )


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
    resolve_links: bool = False,
) -> list[Sample]:
    """Read the AA-CLIP reference JSON-lines metadata (paths relative to ``root``; hygiene: module docstring)."""
    path = _metadata_file(os.fspath(path))
    root = os.path.dirname(path) if root is None else os.fspath(root)
    hygiene = _Hygiene(check_files, skip_bad_files, allow_outside_root, resolve_links)
    lines = read_utf8(path).splitlines()
    return _read_records(_jsonl_entries(lines, path), _JSONL_FIELDS, path, root, hygiene)


def read_utf8(path: str | os.PathLike) -> str:
    """A metadata file's text; one that is not UTF-8 is a `BadInputError` naming the file and the byte."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise BadInputError(f"not UTF-8 text ({error}); expected UTF-8 metadata", os.fspath(path)) from None


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
    resolve_links: bool = False,
) -> list[Sample]:
    """Read an APRIL-GAN / AnomalyCLIP ``meta.json`` (paths relative to its folder; hygiene: module docstring)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "meta.json")
    path = _metadata_file(path)
    root = os.path.dirname(path) if root is None else os.fspath(root)
    try:
        meta = json.loads(read_utf8(path))
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
    hygiene = _Hygiene(check_files, skip_bad_files, allow_outside_root, resolve_links)
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


# --------------------------------------------------------------------------- VisA (csv or folders)


def read_visa(
    root: str | os.PathLike,
    split: str = "test",
    *,
    csv_path: str | None = None,
    check_files: bool = True,
    skip_bad_files: bool = False,
    allow_outside_root: bool = False,
    resolve_links: bool = False,
) -> list[Sample]:
    """Read VisA: ``split_csv/1cls.csv`` when present, else the ``Data/Images`` folders (no split)."""
    root = os.fspath(root)
    csv_path = csv_path or os.path.join(root, "split_csv", "1cls.csv")
    if not os.path.isfile(csv_path):
        check_links = resolve_links and not allow_outside_root
        return read_layout(VISA, root, split, skip_bad_files=skip_bad_files, check_links=check_links)
    hygiene = _Hygiene(check_files, skip_bad_files, allow_outside_root, resolve_links)
    with io.StringIO(read_utf8(csv_path), newline="") as f:
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


# --------------------------------------------------------------------------- entry point


def _folder_names(names: tuple[str, ...]) -> str:
    """``good/ (ok/, normal/)``: the first name, and the others it may go by."""
    return f"{names[0]}/ ({', '.join(name + '/' for name in names[1:])})"


FORMATS: dict[str, str] = {
    "jsonl": "AA-CLIP reference JSON-lines",
    "meta": "APRIL-GAN / AnomalyCLIP meta.json",
    "visa": "VisA (split_csv/1cls.csv or Data/Images)",
    "bmad": "BMAD medical ({split}/good/img, Ungood/{img,label})",
    "mvtec": "MVTec-AD folders (also MPDD, BTAD)",
    "mpdd": "alias of mvtec",
    "btad": "alias of mvtec",
    "polyp": "images/ + masks/, anomalies only",
    "folder": f"your own folders {_folder_names(NORMAL_FOLDER_NAMES)} + {_folder_names(ANOMALY_FOLDER_NAMES)} "
    "[+ masks/]",
    HF_FORMAT: "datasets save_to_disk folder or Hub dataset id owner/name",
}


# The `--data` / `--train-data` help of the commands that read a dataset (kept in step with the module docstring).
DATA_SPEC_HELP = (
    "dataset folder, metadata file or spec PATH::key=value::... (several are combined). Layouts are detected: "
    "MVTec/MPDD/BTAD, VisA, BMAD, polyp, JSON-lines, meta.json, datasets folders, and your own folders "
    f"{_folder_names(NORMAL_FOLDER_NAMES)} + {_folder_names(ANOMALY_FOLDER_NAMES)} [+ masks/]. "
    "Keys: format=, split=, classes=a,b, root= (base of metadata paths), name= (the class name in the prompts), "
    "and, for folders of any names, normal_dir=, abnormal_dir=, mask_dir= (relative to PATH; masks pair with "
    "abnormal images by file stem), e.g. parts::normal_dir=ok::abnormal_dir=ng::mask_dir=masks::name=widget"
)
# The spec keys a folder of your own may need, in the order the unrecognised-layout error lists them.
_FOLDER_SPEC_KEYS = (*DIR_KEYS, "name", "classes", "format", "split", "root")


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
    name = folder_layout_of(path)
    if name is None:
        raise _unknown_layout(path)
    return name


def _unknown_layout(path: str) -> FolderError:
    """One line: the known layouts, the spec keys that name folders of any other layout, and an example."""
    layouts = "; ".join(f"{name} ({text})" for name, text in FORMATS.items() if not text.startswith("alias"))
    keys = ", ".join(f"{key}=" for key in _FOLDER_SPEC_KEYS)
    example = f"{path.rstrip('/')}::normal_dir=ok::abnormal_dir=ng::mask_dir=masks::name=widget"
    return FolderError(
        f"cannot recognise the dataset layout; known layouts: {layouts}. For folders of other names, say which holds "
        f"what with the spec keys {keys}; e.g. {example!r}",
        path,
    )


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``PATH::key=value::...`` into the path and its options."""
    path, *parts = str(spec).split("::")
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SPEC_KEYS:
            raise BadInputError(
                f"bad spec option {part!r}; expected key=value with key in {list(SPEC_KEYS)}", path, "spec"
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
    resolve_links: bool = False,
) -> list[Sample]:
    """Read samples from any supported layout or spec string (a list is concatenated).

    Spec options (``::format=...``) override the keyword arguments for that spec; ``normal_dir=``,
    ``abnormal_dir=`` and ``mask_dir=`` select your own folders (`folders.read_folder`). The result
    keeps each reader's order: class by class, files sorted by name. Metadata paths outside the
    root and duplicate images are refused (module docstring), also across the specs of a list.
    ``resolve_links`` also refuses, in every layout, images and masks whose real path (symbolic links resolved)
    lies outside the dataset root, unless ``allow_outside_root``: `aaclip export-dataset` copies their bytes.
    """
    options: dict[str, Any] = {
        "format": format,
        "classes": classes,
        "root": root,
        "class_name": class_name,
        "skip_bad_files": skip_bad_files,
        "check_files": check_files,
        "allow_outside_root": allow_outside_root,
        "resolve_links": resolve_links,
    }
    if isinstance(spec_or_path, (list, tuple)):
        return _load_combined(spec_or_path, split, options)
    path, opts = parse_spec(os.fspath(spec_or_path))
    split = opts.get("split", split)
    fmt = _spec_format(path, opts, format)
    root = opts.get("root", root)
    class_name = opts.get("name", class_name)
    if "classes" in opts:
        classes = [c for c in opts["classes"].split(",") if c]
    hygiene = {
        "check_files": check_files,
        "skip_bad_files": skip_bad_files,
        "allow_outside_root": allow_outside_root,
        "resolve_links": resolve_links,
    }
    samples = _read_format(fmt, path, split, opts, root, class_name, hygiene)
    if classes is not None:
        samples = _select_classes(samples, list(classes), path)
    if not samples:
        raise BadInputError(f"no samples found for split {split!r} (format {fmt!r})", path)
    return samples


def _spec_format(path: str, opts: dict[str, str], default: str | None) -> str:
    """The spec's layout: ``format=``, else ``folder`` when a key names folders, else `detect_format`'s."""
    fmt = opts.get("format", default)
    named = [f"{key}=" for key in DIR_KEYS if key in opts]
    if named and fmt not in (None, "folder"):
        raise BadInputError(
            f"{', '.join(named)} name the folders of the folder layout, but the format is {fmt!r}; drop one of them",
            path,
            "format",
        )
    fmt = fmt or ("folder" if named else detect_format(path))
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}", path, "format")
    return fmt


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
    """Call the reader of ``fmt``; ``hygiene`` holds check_files, skip_bad_files, allow_outside_root, resolve_links."""
    check_links = hygiene["resolve_links"] and not hygiene["allow_outside_root"]
    if fmt == HF_FORMAT:
        columns = {key: opts[key] for key in COLUMN_KEYS if key in opts}
        return read_hf_dataset(
            path, split, cache_dir=opts.get("cache"), class_name=class_name, check_links=check_links, **columns
        )
    if fmt == "jsonl":
        return read_jsonl(path, root, **hygiene)
    if fmt == "meta":
        return read_meta_json(path, split, root, **hygiene)
    if fmt == "visa":
        csv_path = path if os.path.isfile(path) else None
        vroot = root or (os.path.dirname(os.path.dirname(os.path.abspath(path))) if csv_path else path)
        return read_visa(vroot, split, csv_path=csv_path, **hygiene)
    skip = hygiene["skip_bad_files"]
    if fmt == "folder":
        named = {key: opts[key] for key in DIR_KEYS if key in opts}
        return read_folder(path, class_name=class_name, skip_bad_files=skip, check_links=check_links, **named)
    layout = FOLDER_LAYOUTS["mvtec" if fmt in ("mpdd", "btad") else fmt]  # the readers of bmad, mvtec, polyp
    return read_layout(layout, path, split, class_name=class_name, skip_bad_files=skip, check_links=check_links)


def _select_classes(samples: list[Sample], wanted: list[str], path: str) -> list[Sample]:
    have = sorted({s.class_name for s in samples})
    unknown = [c for c in wanted if c not in have]
    if unknown:
        raise BadInputError(f"unknown class(es) {unknown}; the data has {have}", path, "classes")
    return [s for s in samples if s.class_name in set(wanted)]

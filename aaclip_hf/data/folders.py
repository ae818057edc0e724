"""The folder layouts: MVTec-AD (also MPDD, BTAD), VisA without its csv, BMAD, the polyp sets and your own folders.

A folder layout is a `FolderLayout`: how to recognise a class folder and, per class, its image groups (`Group`:
folder, label, defect type, mask folder and policy). `read_layout` does the rest for every layout: class names,
the walk, masks matched by stem, bad files, empty classes, and images reached twice through a symbolic link.

Your own folders (format ``folder``) come in two forms:

- **Folder names the reader knows.** A class folder holding normal images in ``good/``, ``ok/`` or ``normal/``
  (`NORMAL_FOLDER_NAMES`) and/or anomalous ones in ``bad/``, ``ng/``, ``defect/``, ``anomaly/`` or ``abnormal/``
  (`ANOMALY_FOLDER_NAMES`), names compared case-insensitively, with an optional ``masks/`` matched by stem
  (``<stem>.*`` or ``<stem>_mask.*``); either the folder itself (one class) or each of its ``<class>/``
  sub-folders. Other sub-folders are ignored with a warning.
- **Any folder names, given as spec keys** with the names of anomalib's ``Folder`` datamodule:
  ``parts::normal_dir=ok::abnormal_dir=ng::mask_dir=masks::name=widget`` (`read_folder`). Relative folders are
  relative to the spec's folder; ``normal_dir`` is required, ``abnormal_dir`` optional (normal-only data, e.g.
  for calibration) and ``mask_dir`` optional (image-level labels only). The folders are read recursively, as
  anomalib reads them. Masks pair with abnormal images by file stem, as in anomalib's ``Folder``: ``ng/000.png``
  with ``masks/000.png`` or ``masks/000_mask.png`` (any image extension; in the same sub-folder when the folders
  have sub-folders). anomalib pairs the sorted lists by position and then checks that each mask's stem contains
  its image's stem; matching the stem directly gives the same pairs for such names without depending on the
  order. As in anomalib, with ``mask_dir`` every abnormal image needs its mask: one without is a bad file (an
  error naming it, or dropped with ``--skip-bad-files``).

The class name is the folder's name (``name=`` sets another, for one class). It goes into the text prompts, so
the reader says which name it uses, once, with a warning that ``name=`` silences.

One image reached twice through a symbolic link (``good/a.png`` and ``good/link.png -> a.png``) is counted once:
the real file is kept and a warning names both paths. The same image as normal and as anomalous is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Container, Iterable, Sequence
from typing import NamedTuple

from ..errors import BadInputError, MissingFileError
from .image_io import IMAGE_EXTENSIONS
from .paths import check_inside_root, image_key, is_inside
from .samples import BadFiles, Sample


logger = logging.getLogger(__name__)

__all__ = [
    "ANOMALY_FOLDER_NAMES",
    "DIR_KEYS",
    "FOLDER_LAYOUTS",
    "NORMAL_FOLDER_NAMES",
    "REFERENCE_CLASS_NAMES",
    "FolderError",
    "MissingFolderError",
    "folder_layout_of",
    "read_bmad",
    "read_folder",
    "read_layout",
    "read_mvtec",
    "read_polyp",
]

# Folder names that mean "normal" in the folder layouts (compared case-insensitively).
NORMAL_FOLDER_NAMES: tuple[str, ...] = ("good", "ok", "normal")
# Folder names that mean "anomalous" in your own folders (compared case-insensitively).
ANOMALY_FOLDER_NAMES: tuple[str, ...] = ("bad", "ng", "defect", "anomaly", "abnormal")
# The mask folder of your own folders, beside the normal and anomalous ones.
MASK_FOLDER_NAME = "masks"
# The spec keys that name your own folders (anomalib's `Folder` names).
DIR_KEYS: tuple[str, ...] = ("normal_dir", "abnormal_dir", "mask_dir")
# Folder-name to class-name map for the single-class medical / colonoscopy sets, so the
# class names match the AA-CLIP reference metadata (and hence its prompts and tables).
REFERENCE_CLASS_NAMES: dict[str, str] = {
    "Brain_AD": "Brain",
    "Liver_AD": "Liver",
    "Retina_RESC_AD": "Retina",
    "CVC-ClinicDB": "Colon_clinicDB",
    "CVC-ColonDB": "Colon_colonDB",
}


class FolderError(BadInputError):
    """A `BadInputError` about a folder: its message says ``folder '...'`` where a file's says ``file '...'``."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, field: str | None = None):
        super().__init__(message, path, field)
        text = str(self)
        if self.path is not None and text.startswith("file "):
            self.args = ("folder " + text[len("file ") :],)


class MissingFolderError(FolderError, MissingFileError):
    """A folder that does not exist (also a `FileNotFoundError`)."""


# --------------------------------------------------------------------------- listing


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str, recursive: bool = False) -> list[str]:
    """The image files of ``folder`` (hidden ones skipped), sorted; ``recursive`` also those of its sub-folders."""
    if not os.path.isdir(folder):
        return []
    if not recursive:
        names = sorted(os.listdir(folder))
        return [os.path.join(folder, n) for n in names if _is_image(n) and os.path.isfile(os.path.join(folder, n))]
    found = []
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(base, n) for n in files if _is_image(n) and os.path.isfile(os.path.join(base, n)))
    return sorted(found, key=lambda path: os.path.relpath(path, folder))


def subdirs(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return [n for n in sorted(os.listdir(folder)) if not n.startswith(".") and os.path.isdir(os.path.join(folder, n))]


def _key(path: str, folder: str) -> str:
    """What pairs an image with its mask: its path in its folder without the extension (flat folders: the stem)."""
    return os.path.splitext(os.path.relpath(path, folder))[0]


def _mask_index(folder: str, recursive: bool = False) -> dict[str, str]:
    """key -> mask path for ``<stem>_mask.<ext>`` (preferred) and ``<stem>.<ext>`` files."""
    index: dict[str, str] = {}
    preferred: set[str] = set()
    for path in list_images(folder, recursive):
        key = _key(path, folder)
        if key.endswith("_mask"):
            index[key[: -len("_mask")]] = path
            preferred.add(key[: -len("_mask")])
        elif key not in preferred:
            index.setdefault(key, path)
    return index


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# --------------------------------------------------------------------------- the shared reader

# Mask policies of a `Group`.
_NO_MASKS = "none"  # no mask files: normal images (all zero), or anomalies with image-level labels only
_REQUIRED = "required"  # an image without a mask is a bad file
_IF_FOLDER = "if folder"  # required when the mask folder exists; without it, image-level labels only
_OPTIONAL = "optional"  # kept without one; masks that match no image are warned about


class Group(NamedTuple):
    """One folder of images of a class, all with the same label and defect type."""

    images: str
    label: int
    defect: str
    masks: str | None = None  # the mask folder, matched by key (`_mask_index`)
    policy: str = _NO_MASKS
    missing: Callable[[str], str] | None = None  # image path -> message for its missing mask
    recursive: bool = False  # also read the sub-folders (masks then pair by path: `_key`)


class ClassPlan(NamedTuple):
    """A class folder's groups, and what its empty-class error names."""

    groups: list[Group]
    folder: str
    expected: str


class FolderLayout(NamedTuple):
    """What a folder reader states about its layout; `read_layout` does the rest."""

    is_class: Callable[[str], bool]  # does this folder hold one class (also `detect_format`'s probe)
    not_found: str  # the error when neither the root nor a sub-folder is a class folder
    # (class folder, class name, split, lower-case normal folder names) -> the class's groups;
    # raises BadInputError to skip the class (a bad file).
    plan: Callable[[str, str, str, Container[str]], ClassPlan]
    reference_names: bool = False  # class names through REFERENCE_CLASS_NAMES
    empty_if_none_listed: bool = False  # a class is empty when it lists no image (else: when it keeps none)
    warn_unmasked: bool = False  # warn about anomalies without a mask folder (`_IF_FOLDER`)
    note: str | None = None  # logged (with the split) once the class folders are found
    announce_names: bool = False  # say which class names (folder names) go into the prompts


def _class_dirs(root: str, is_class: Callable[[str], bool]) -> list[str]:
    """The folder itself when it is a class folder, else its sub-folders that are."""
    if is_class(root):
        return [root]
    return [os.path.join(root, n) for n in subdirs(root) if is_class(os.path.join(root, n))]


def _class_name(folder: str, override: str | None, reference: bool) -> str:
    name = os.path.basename(os.path.abspath(folder))
    return override or (REFERENCE_CLASS_NAMES.get(name, name) if reference else name)


def _empty_class_error(folder: str, expected: str) -> BadInputError:
    return BadInputError(f"class folder holds no images; expected {expected}", folder, "images")


def read_layout(
    layout: FolderLayout,
    root: str | os.PathLike,
    split: str = "test",
    *,
    class_name: str | None = None,
    normal_names: Iterable[str] = NORMAL_FOLDER_NAMES,
    skip_bad_files: bool = False,
    check_links: bool = False,
    roots: Sequence[str] | None = None,
) -> list[Sample]:
    """Read every class folder of ``layout`` under ``root`` (``class_name`` names a single class).

    ``check_links`` refuses images and masks whose real path (symbolic links resolved) leads outside ``roots``
    (default: ``root``), as `aaclip export-dataset` needs before it copies their bytes.
    """
    root = os.fspath(root)
    classes = _class_dirs(root, layout.is_class)
    if not classes:
        raise FolderError(layout.not_found, root)
    if layout.note:
        logger.info(layout.note, split)
    override = class_name if len(classes) == 1 else None
    if layout.announce_names and not override:
        _announce_class_names([_class_name(c, None, layout.reference_names) for c in classes], root)
    normal = {n.lower() for n in normal_names}
    bad = BadFiles(skip_bad_files, root)
    samples: list[Sample] = []
    for cdir in classes:
        cls = _class_name(cdir, override, layout.reference_names)
        try:
            plan = layout.plan(cdir, cls, split, normal)
        except BadInputError as err:
            bad(err)
            continue
        samples.extend(_read_class(layout, plan, cls, bad))
    samples = _drop_linked_copies(samples, bad)
    if check_links:
        samples = _inside_roots(samples, list(roots or [root]), root, bad)
    bad.done()
    return samples


def _announce_class_names(names: list[str], root: str) -> None:
    if len(names) == 1:
        logger.warning(
            "class name %r (the folder's name) goes into the text prompts; to use another, add ::name=NAME to "
            "the data spec (%s::name=NAME)",
            names[0],
            root,
        )
    else:
        logger.warning(
            "class names %s (the folder names) go into the text prompts; rename the folders to change them", names
        )


def _read_class(layout: FolderLayout, plan: ClassPlan, cls: str, bad: BadFiles) -> list[Sample]:
    listed = [(group, list_images(group.images, group.recursive)) for group in plan.groups]
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
    _warn_unmatched_masks(listed, cls)
    return samples


def _read_group(group: Group, images: list[str], cls: str, bad: BadFiles, out: list[Sample]) -> int:
    """Append the group's samples to ``out``; return how many anomalies have no mask folder (`_IF_FOLDER`)."""
    masks = _mask_index(group.masks, group.recursive) if group.masks is not None else {}
    needed = group.policy == _REQUIRED or (group.policy == _IF_FOLDER and os.path.isdir(group.masks))
    for img in images:
        mask = masks.get(_key(img, group.images))
        if mask is None and needed:
            bad(MissingFileError(group.missing(img), img, "mask_path"))
            continue
        out.append(Sample(img, group.label, cls, mask, group.defect))
    return len(images) if group.policy == _IF_FOLDER and not needed else 0


def _warn_unmatched_masks(listed: list[tuple[Group, list[str]]], cls: str) -> None:
    """Warn about masks that pair with no image, per mask folder (several image folders may share one)."""
    used: dict[str, set[str]] = {}
    recursive: dict[str, bool] = {}
    for group, images in listed:
        if group.masks is not None and (group.policy == _OPTIONAL or group.recursive):
            used.setdefault(group.masks, set()).update(_key(p, group.images) for p in images)
            recursive[group.masks] = group.recursive
    for folder, keys in used.items():
        unmatched = len(set(_mask_index(folder, recursive[folder])) - keys)
        if unmatched:
            logger.warning("class %r: %d mask(s) in %s match no anomaly image by stem", cls, unmatched, folder)


def _drop_linked_copies(samples: list[Sample], bad: BadFiles) -> list[Sample]:
    """Count an image reached twice through a symbolic link once (the real file kept), warning with both paths.

    A listing counts it twice otherwise, in every metric; the same file as normal and as anomalous has no right
    label, so that is a bad file (both copies are dropped with ``--skip-bad-files``).
    """
    kept: dict[str, Sample | None] = {}
    for sample in samples:
        key = image_key(sample.image_path)
        if key not in kept:
            kept[key] = sample
            continue
        first = kept[key]
        if first is None:  # already refused as both normal and anomalous
            continue
        if first.label != sample.label:
            kept[key] = None
            bad(
                BadInputError(
                    f"the same image is normal in one place and anomalous in the other ({first.image_path} and "
                    f"{sample.image_path}, one a symbolic link to the other); expected one label: remove the link",
                    sample.image_path,
                    "image_path",
                )
            )
            continue
        keep, drop = (
            (sample, first) if _is_real(sample.image_path) and not _is_real(first.image_path) else (first, sample)
        )
        kept[key] = keep
        logger.warning(
            "the same image is reached twice through a symbolic link: %s and %s; counting it once (%s)",
            drop.image_path,
            keep.image_path,
            keep.image_path,
        )
    order = {id(s): i for i, s in enumerate(samples)}
    return sorted((s for s in kept.values() if s is not None), key=lambda s: order[id(s)])


def _is_real(path: str) -> bool:
    return os.path.realpath(path) == os.path.abspath(path)


def _inside_roots(samples: list[Sample], roots: list[str], root: str, bad: BadFiles) -> list[Sample]:
    kept = []
    for sample in samples:
        try:
            for field, path in (("image_path", sample.image_path), ("mask_path", sample.mask_path)):
                if path is None:
                    continue
                shown = os.path.relpath(path, root) if is_inside(root, path) else path
                try:
                    check_inside_root(roots, path, where="", source=None, field=field, value=shown, resolve=True)
                except BadInputError as err:
                    raise FolderError(err.reason, root, field) from None
        except BadInputError as err:
            bad(err)
            continue
        kept.append(sample)
    return kept


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
) -> list[Group]:
    """One group per defect sub-folder of ``split_dir``, the ``normal`` ones without masks (MVTec, BMAD)."""
    groups = []
    for defect in subdirs(split_dir):
        if defect.lower() in normal:
            groups.append(Group(images_of(defect), 0, defect))
        else:
            masks = masks_of(defect)
            groups.append(Group(images_of(defect), 1, defect, masks, _IF_FOLDER, missing_of(masks)))
    return groups


# --------------------------------------------------------------------------- MVTec-AD, MPDD, BTAD


def _is_mvtec_class(folder: str) -> bool:
    return any(subdirs(os.path.join(folder, s)) for s in ("train", "test"))


def _mask_named_like(gt_dir: str) -> Callable[[str], str]:
    return lambda img: f"no mask for this image; expected {_stem(img)}_mask.png or {_stem(img)}.png in {gt_dir}"


def _mvtec_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> ClassPlan:
    split_dir = _split_dir(cdir, cls, split)
    if list_images(split_dir) and not subdirs(split_dir):
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
    return ClassPlan(groups, split_dir, "<defect>/*.png images")


MVTEC = FolderLayout(
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
    return read_layout(
        MVTEC, root, split, class_name=class_name, normal_names=normal_names, skip_bad_files=skip_bad_files
    )


# --------------------------------------------------------------------------- VisA (without split_csv), BMAD, polyp


def _is_visa_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "Data", "Images"))


def _visa_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> ClassPlan:
    images, masks = os.path.join(cdir, "Data", "Images"), os.path.join(cdir, "Data", "Masks", "Anomaly")
    missing = _no_mask_in(f"{cdir}/Data/Masks/Anomaly")
    groups = [
        Group(os.path.join(images, "Normal"), 0, "good"),
        Group(os.path.join(images, "Anomaly"), 1, "anomaly", masks, _REQUIRED, missing),
    ]
    return ClassPlan(groups, images, "Normal/ and Anomaly/ images")


VISA = FolderLayout(
    _is_visa_class,
    "neither split_csv/1cls.csv nor <class>/Data/Images/ found; expected the VisA layout",
    _visa_plan,
    note="VisA without split_csv/1cls.csv: reading every image (split %r ignored)",
)


def _is_bmad_class(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, s, "good", "img")) for s in ("train", "valid", "test"))


def _bmad_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> ClassPlan:
    sdir = _split_dir(cdir, cls, split)
    groups = _defect_groups(
        sdir,
        normal,
        lambda sub: os.path.join(sdir, sub, "img"),
        lambda sub: os.path.join(sdir, sub, "label"),
        _no_mask_in,
    )
    return ClassPlan(groups, sdir, "good/img/ and Ungood/img/ images")


BMAD = FolderLayout(
    _is_bmad_class, "no BMAD layout ({train,valid,test}/good/img) found", _bmad_plan, reference_names=True
)


def read_bmad(
    root: str | os.PathLike, split: str = "test", *, class_name: str | None = None, skip_bad_files: bool = False
) -> list[Sample]:
    """Read a BMAD medical set: ``<split>/good/img`` and ``<split>/Ungood/{img,label}``."""
    return read_layout(BMAD, root, split, class_name=class_name, skip_bad_files=skip_bad_files)


def _is_polyp_class(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "images")) and os.path.isdir(os.path.join(folder, "masks"))


def _polyp_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> ClassPlan:
    images, masks = os.path.join(cdir, "images"), os.path.join(cdir, "masks")
    return ClassPlan([Group(images, 1, "polyp", masks, _REQUIRED, _no_mask_in(masks))], images, "images/*.png")


POLYP = FolderLayout(
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
    return read_layout(POLYP, root, class_name=class_name, skip_bad_files=skip_bad_files)


# --------------------------------------------------------------------------- your own folders

_NORMAL_NAMES = frozenset(n.lower() for n in NORMAL_FOLDER_NAMES)
_ANOMALY_NAMES = frozenset(n.lower() for n in ANOMALY_FOLDER_NAMES)
_GENERIC_EXPECTED = (
    f"{'/, '.join(NORMAL_FOLDER_NAMES)}/ (normal) and/or {'/, '.join(ANOMALY_FOLDER_NAMES)}/ (anomalous) images"
)


def _is_generic_class(folder: str) -> bool:
    return any(n.lower() in _NORMAL_NAMES | _ANOMALY_NAMES for n in subdirs(folder))


def _generic_plan(cdir: str, cls: str, split: str, normal: Container[str]) -> ClassPlan:
    names = subdirs(cdir)
    normals = [n for n in names if n.lower() in normal]
    anomalies = [n for n in names if n.lower() in _ANOMALY_NAMES and n not in normals]
    ignored = [n for n in names if n not in normals and n not in anomalies and n != MASK_FOLDER_NAME]
    if ignored:
        logger.warning(
            "class %r: ignoring sub-folder(s) %s of %s: expected %s, and masks/; name other folders with "
            "::normal_dir=, ::abnormal_dir=, ::mask_dir=",
            cls,
            ignored,
            cdir,
            _GENERIC_EXPECTED,
        )
    masks = os.path.join(cdir, MASK_FOLDER_NAME)
    groups = [Group(os.path.join(cdir, n), 0, "good") for n in normals]
    groups += [Group(os.path.join(cdir, n), 1, "anomaly", masks, _OPTIONAL) for n in anomalies]
    return ClassPlan(groups, cdir, _GENERIC_EXPECTED)


GENERIC = FolderLayout(
    _is_generic_class,
    f"no folder of your own layout found; expected {_GENERIC_EXPECTED}",
    _generic_plan,
    empty_if_none_listed=True,
    announce_names=True,
)


def read_folder(
    root: str | os.PathLike,
    *,
    class_name: str | None = None,
    skip_bad_files: bool = False,
    normal_dir: str | None = None,
    abnormal_dir: str | None = None,
    mask_dir: str | None = None,
    check_links: bool = False,
) -> list[Sample]:
    """Read your own folders (module docstring): known folder names, or those ``normal_dir`` etc. name.

    ``normal_dir``, ``abnormal_dir`` and ``mask_dir`` are anomalib's ``Folder`` arguments, relative to ``root``
    unless absolute; ``class_name`` is its ``name``. ``check_links``: see `read_layout`.
    """
    root = os.fspath(root)
    named = {"normal_dir": normal_dir, "abnormal_dir": abnormal_dir, "mask_dir": mask_dir}
    if all(value is None for value in named.values()):
        return read_layout(
            GENERIC, root, class_name=class_name, skip_bad_files=skip_bad_files, check_links=check_links
        )
    dirs = _named_dirs(root, named)
    return read_layout(
        _named_dirs_layout(root, dirs),
        root,
        class_name=class_name,
        skip_bad_files=skip_bad_files,
        check_links=check_links,
        roots=[root, *dirs.values()],
    )


def _named_dirs(root: str, named: dict[str, str | None]) -> dict[str, str]:
    """The folders the spec keys name, checked: they exist, hold images, and none lies inside another."""
    if not os.path.isdir(root):
        raise MissingFolderError("dataset folder does not exist", root)
    if named["normal_dir"] is None:
        raise FolderError(
            "normal_dir= is missing; expected the folder of normal images, as in "
            f"{root}::normal_dir=ok::abnormal_dir=ng (abnormal_dir= and mask_dir= are optional)",
            root,
            "normal_dir",
        )
    if named["mask_dir"] is not None and named["abnormal_dir"] is None:
        raise FolderError("mask_dir= without abnormal_dir=; expected the abnormal images its masks belong to", root)
    dirs: dict[str, str] = {}
    for key, value in named.items():
        if value is None:
            continue
        folder = os.path.normpath(value if os.path.isabs(value) else os.path.join(root, value))
        if not value or not os.path.isdir(folder):
            raise MissingFolderError(
                f"{key}={value!r} names no folder; expected a folder, relative to {root!r} unless absolute",
                folder,
                key,
            )
        if not list_images(folder, recursive=True):
            raise FolderError(f"{key}={value!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})", folder, key)
        dirs[key] = folder
    for a in dirs:
        for b in dirs:
            if a != b and is_inside(dirs[b], dirs[a]):
                raise FolderError(
                    f"{a}={named[a]!r} lies inside {b}={named[b]!r}, whose sub-folders are read too; "
                    "expected separate folders",
                    root,
                    a,
                )
    return dirs


def _named_dirs_layout(root: str, dirs: dict[str, str]) -> FolderLayout:
    groups = [Group(dirs["normal_dir"], 0, "good", recursive=True)]
    abnormal, masks = dirs.get("abnormal_dir"), dirs.get("mask_dir")
    if abnormal is not None:
        policy = _NO_MASKS if masks is None else _REQUIRED

        def missing(img: str) -> str:
            key = _key(img, abnormal)
            return f"no mask for this image; expected {key}.png or {key}_mask.png (any image extension) in {masks}"

        groups.append(Group(abnormal, 1, "anomaly", masks, policy, missing, recursive=True))
    plan = ClassPlan(groups, root, "images in normal_dir= or abnormal_dir=")
    return FolderLayout(lambda folder: True, "", lambda *args: plan, empty_if_none_listed=True, announce_names=True)


# --------------------------------------------------------------------------- detection

# `detect_format` probes the folder layouts in this order (bmad before mvtec because ``test/good/img`` also looks
# like an MVTec defect folder).
FOLDER_LAYOUTS: dict[str, FolderLayout] = {
    "visa": VISA,
    "bmad": BMAD,
    "mvtec": MVTEC,
    "polyp": POLYP,
    "folder": GENERIC,
}


def folder_layout_of(path: str) -> str | None:
    """The name of the first folder layout whose class folder is ``path`` or one of its sub-folders, if any."""
    children = [os.path.join(path, n) for n in subdirs(path)]
    for name, layout in FOLDER_LAYOUTS.items():
        if layout.is_class(path) or any(layout.is_class(c) for c in children):
            return name
    return None

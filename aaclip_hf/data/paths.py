"""Where a dataset's files may lie: the one "inside the dataset root" check, and the key that names one image.

Every reader and `aaclip export-dataset` share these, so a path is judged the same way wherever it comes from:

- `check_inside_root` refuses an image or mask path outside the dataset root. Readers compare lexically (after
  ``normpath``), so symbolic links inside the root are followed as usual when images are only decoded;
  ``resolve=True`` compares real paths (symbolic links resolved), which is what an export needs: it copies the
  file's bytes into a dataset meant to be shared, so a link to ``/etc/...`` must not ride along.
- `image_key` is an image's identity: its real path, so ``good/a.png`` and ``good/link.png -> a.png`` are one image
  and are never counted twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import BadInputError


__all__ = ["OUTSIDE_ROOT_HINT", "check_inside_root", "image_key", "is_inside"]

OUTSIDE_ROOT_HINT = "pass --allow-outside-root / allow_outside_root=True if intended"


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` (absolute, or relative to the working folder) lies in ``root`` (lexically)."""
    base, target = os.path.abspath(root), os.path.abspath(path)
    try:
        return os.path.commonpath([base, target]) == base
    except ValueError:  # different drives (Windows)
        return False


def image_key(path: str | os.PathLike) -> str:
    """The identity of an image file: its real path (symbolic links resolved), case-folded where the OS does."""
    return os.path.normcase(os.path.realpath(path))


def check_inside_root(
    roots: str | os.PathLike | Sequence[str | os.PathLike],
    path: str | os.PathLike,
    *,
    where: str,
    source: str | None,
    field: str | None,
    value: str | None = None,
    resolve: bool = False,
) -> None:
    """Raise `BadInputError` unless ``path`` lies inside one of ``roots`` (the dataset root, or its folders).

    ``where`` names the record in the message ("line 3", "row 7"; empty: the path alone names it), ``value`` is
    the path as the record spelled it (default ``path``), ``source`` and ``field`` name the file and field.
    ``resolve`` compares real paths: a symbolic link is judged by where it leads.
    """
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if resolve:
        target = os.path.realpath(path)
        if any(is_inside(os.path.realpath(root), target) for root in roots):
            return
    elif any(is_inside(root, path) for root in roots):
        return
    shown = os.fspath(path) if value is None else value
    via = ""
    if resolve and target != os.path.abspath(path):
        via = f" (a symbolic link to {target!r})"
    if len(roots) == 1:
        inside = f"the dataset root {os.path.abspath(roots[0])!r}"
    else:
        inside = f"the dataset folders {[os.path.abspath(root) for root in roots]}"
    prefix = f"{where}: " if where else ""
    raise BadInputError(
        f"{prefix}the path {shown!r}{via} leads outside {inside}; expected a path inside it ({OUTSIDE_ROOT_HINT})",
        source,
        field,
    )

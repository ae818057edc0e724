"""transformers' own common model and config tests, fetched from its PyPI sdist at test time.

`transformers-<version>.tar.gz` (the installed version) ships `tests/test_modeling_common.py` and
`tests/test_configuration_common.py`; this module downloads it once with pip into a cache folder
(`$AACLIP_TF_TESTS_CACHE`, default `~/.cache/aaclip-hf/transformers-<version>-tests`), extracts only those two
files into a package named `transformers_sdist_tests` (not `tests`, which is ours) and imports them. Nothing of
transformers is committed to this repository.

The sdist does not ship three helper modules those files import; they get stand-ins registered in `sys.modules`:

- `exporters.test_export.ExportTesterMixin`: an empty mixin, so transformers' `torch.export` checks are not run
  (their source is not distributed);
- `generation.test_utils.GenerationTesterMixin`: an empty class; it is only used in `issubclass` checks, and AA-CLIP
  cannot generate, so its tester must not inherit it either way;
- `utils.test_configuration_utils.config_common_kwargs`: `{}`; only `ConfigTester.check_config_arguments_init` reads
  it, and that check returns before reading it for composite configs such as `AAClipConfig`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import pytest
import transformers


PACKAGE = "transformers_sdist_tests"
FILES = ("test_modeling_common.py", "test_configuration_common.py")
DOWNLOAD_TIMEOUT_S = 600


def cache_root(version: str = transformers.__version__) -> Path:
    configured = os.environ.get("AACLIP_TF_TESTS_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "aaclip-hf" / f"transformers-{version}-tests"


def _download_sdist(version: str, folder: Path) -> Path:
    """`pip download` the sdist of transformers `version` into `folder`; skips the caller's tests if impossible."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        f"transformers=={version}",
        "-d",
        str(folder),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(
            f"cannot download the transformers {version} sdist for its common tests: {error}", allow_module_level=True
        )
    archives = sorted(folder.glob(f"transformers-{version}.tar.gz"))
    if done.returncode != 0 or not archives:
        last_line = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        pytest.skip(
            f"cannot download the transformers {version} sdist for its common tests (no network?): {last_line}",
            allow_module_level=True,
        )
    return archives[0]


def fetch(version: str = transformers.__version__) -> Path:
    """The folder that holds the `transformers_sdist_tests` package, downloading and extracting it if needed."""
    root = cache_root(version)
    package = root / PACKAGE
    if all((package / name).is_file() for name in FILES):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        archive = _download_sdist(version, Path(scratch))
        staged = Path(scratch) / PACKAGE
        staged.mkdir()
        with tarfile.open(archive) as tar:
            for name in FILES:
                member = f"transformers-{version}/tests/{name}"
                try:
                    source = tar.extractfile(member)
                except KeyError:
                    raise FileNotFoundError(f"{archive.name} has no {member}") from None
                (staged / name).write_bytes(source.read())
        # transformers' test_configuration_common executes this file (as `direct_transformers_import`): keep it empty.
        (staged / "__init__.py").write_text("")
        if package.exists():  # a partial folder from an interrupted run
            shutil.rmtree(package)
        try:
            staged.rename(package)
        except OSError:  # another process finished first
            if not all((package / name).is_file() for name in FILES):
                raise
    return root


def _stand_in(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []  # importable as a package, so its children resolve through sys.modules too
    sys.modules[name] = module


class ExportTesterMixin:
    """Stand-in: transformers' tests/exporters is not in the sdist, so its torch.export checks are not run."""


class GenerationTesterMixin:
    """Stand-in: only used by `issubclass`; AA-CLIP cannot generate, so its tester never inherits the real one."""


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """`(test_modeling_common, test_configuration_common)` of the installed transformers version."""
    root = fetch()
    for parent in ("exporters", "generation", "utils"):
        _stand_in(f"{PACKAGE}.{parent}")
    _stand_in(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=ExportTesterMixin)
    _stand_in(f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=GenerationTesterMixin)
    _stand_in(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs={})
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration

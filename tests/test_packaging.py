"""The package builds as a wheel with one import namespace and works from it, outside the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]

SMOKE = textwrap.dedent(
    """
    import sys
    # Hide the editable install of the source tree, so only the wheel's copy can be imported.
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path = [p for p in sys.path if "__editable__" not in p and p.rstrip("/") != sys.argv[2]]
    sys.path.insert(0, sys.argv[1])
    import torch
    import aaclip_hf
    from aaclip_hf import AAClipConfig, AAClipModel, AAClipProcessor
    from aaclip_hf.cli import main
    assert aaclip_hf.__file__.startswith(sys.argv[1]), aaclip_hf.__file__
    import aaclip_hf.modeling, aaclip_hf.conversion, aaclip_hf.training
    processor = AAClipProcessor()  # needs the bundled tokenizer package data
    model = AAClipModel(AAClipConfig.tiny()).eval()
    model.update_text_anchors(processor)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 40, 40), output_size=(40, 40))
    assert out.anomaly_map.shape == (1, 40, 40)
    assert main(["info"]) == 0
    print("wheel OK")
    """
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        timeout=300,
        cwd=out,
    )
    (path,) = out.glob("aaclip_hf-*.whl")
    return path


def test_wheel_has_one_namespace_and_the_tokenizer(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"aaclip_hf"}
    for required in (
        "aaclip_hf/modeling/modeling_aaclip.py",
        "aaclip_hf/modeling/clip_tokenizer/tokenizer.json",
        "aaclip_hf/conversion/tokenizer.py",
        "aaclip_hf/training/__init__.py",
        "aaclip_hf/cli/__init__.py",
        "aaclip_hf/benchmark/runner.py",
        "aaclip_hf/data/readers.py",
        "aaclip_hf/evaluation/operating_points.py",
        "aaclip_hf/evaluation/anomaly_metrics/anomaly_metrics.py",
        "aaclip_hf/evaluation/anomaly_metrics/exact_metrics.py",
        "aaclip_hf/evaluation/anomaly_metrics/README.md",
        "aaclip_hf/evaluation/anomaly_metrics/requirements.txt",
        "aaclip_hf/hub/publish.py",
        "aaclip_hf/inference/detect.py",
        "aaclip_hf/runtime/loading.py",
    ):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "aaclip = aaclip_hf.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_works_outside_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    result = subprocess.run(
        [sys.executable, str(script), str(target), str(REPO)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=""),
    )
    assert "wheel OK" in result.stdout

"""`aaclip detect` (and the other scoring commands) start without torchvision, which transformers would import for
nothing; other commands and library users are left as they are."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

from aaclip_hf.cli import lean


def test_only_scoring_commands_skip_torchvision_and_only_before_transformers(monkeypatch):
    modules = {name: module for name, module in sys.modules.items() if name != "transformers"}
    monkeypatch.setattr(sys, "modules", modules)  # a process that has imported neither yet
    modules.pop("torchvision", None)
    assert not lean.skip_unused_imports("convert-openclip") and "torchvision" not in modules
    assert not lean.skip_unused_imports(None)
    assert lean.skip_unused_imports("detect") and modules["torchvision"] is None
    modules.pop("torchvision")
    modules["transformers"] = object()  # too late: transformers has decided already
    assert not lean.skip_unused_imports("evaluate") and "torchvision" not in modules


def test_detect_runs_without_importing_torchvision(tiny_model, processor, tmp_path):
    from aaclip_hf.runtime.model_folder import save_model_folder

    folder = save_model_folder(tiny_model, processor, tmp_path / "model")
    (tmp_path / "images").mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (24, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.png")
    argv = ["detect", str(tmp_path / "images"), "--model", str(folder), "--output", str(tmp_path / "out")]
    program = textwrap.dedent(
        f"""
        import json, sys
        from aaclip_hf.cli import main
        code = main({[*argv, "--device", "cpu", "--no-progress"]!r})
        print(json.dumps({{"code": code, "torchvision": sys.modules.get("torchvision", "absent") is not None}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "torchvision": False}
    assert len(json.loads((tmp_path / "out" / "detections.json").read_text())) == 2

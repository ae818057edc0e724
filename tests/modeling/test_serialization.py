"""save_pretrained / from_pretrained, Auto classes, and Hub-portable remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from transformers import AutoConfig, AutoModel, AutoProcessor

from aaclip_hf import AAClipModel, AAClipProcessor

from ..conftest import TINY_IMAGE_SIZE


def test_round_trip_is_bit_exact(tmp_path, tiny_model, pixel_values):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = AAClipModel.from_pretrained(tmp_path)
    ours, theirs = tiny_model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert loaded.stored_class_names == ["object", "bottle", "pcb1"]
    with torch.no_grad():
        a = tiny_model(
            pixel_values, class_ids=tiny_model.class_ids(["bottle", "pcb1", "object"]), output_size=TINY_IMAGE_SIZE
        )
        b = loaded(pixel_values, class_ids=loaded.class_ids(["bottle", "pcb1", "object"]), output_size=TINY_IMAGE_SIZE)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.image_score, b.image_score)


def test_auto_classes_resolve_to_the_package(tmp_path, tiny_model, processor):
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "aaclip"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_aaclip.AAClipConfig",
        "AutoModel": "modeling_aaclip.AAClipModel",
    }
    for name in ("configuration_aaclip.py", "modeling_aaclip.py", "processing_aaclip.py"):
        assert (tmp_path / name).is_file()
    # The installed package is registered: no trust_remote_code needed.
    assert type(AutoConfig.from_pretrained(tmp_path)).__module__.startswith("aaclip_hf")
    assert isinstance(AutoModel.from_pretrained(tmp_path), AAClipModel)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path), AAClipProcessor)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "aaclip_hf" or name.startswith("aaclip_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockPackage())
    try:
        import aaclip_hf  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("aaclip_hf must not be importable here")

    import torch
    from transformers import AutoModel, AutoProcessor

    folder, pixels, out = sys.argv[1:4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert type(processor).__name__ == "AAClipProcessor"
    with torch.no_grad():
        pixel_values = torch.load(pixels)
        result = model(pixel_values, class_ids=model.class_ids(["bottle", "pcb1", "object"]), output_size=pixel_values.shape[-2:])
    torch.save({"map": result.anomaly_map, "score": result.image_score,
                "prompts": processor.build_prompts("bottle")}, out)
    """
)


def test_remote_code_loads_in_a_process_without_the_package(tmp_path, tiny_model, processor, pixel_values):
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "pixels.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=300,
    )
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        local = tiny_model(
            pixel_values, class_ids=tiny_model.class_ids(["bottle", "pcb1", "object"]), output_size=TINY_IMAGE_SIZE
        )
    assert torch.equal(remote["map"], local.anomaly_map)
    assert torch.equal(remote["score"], local.image_score)
    assert remote["prompts"] == processor.build_prompts("bottle")

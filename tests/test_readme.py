"""The README's "Use a trained model" section runs as written, on a tiny saved model and generated images.

The snippets are read from README.md itself, so an edit that breaks one fails here. Only the placeholders a reader
replaces are substituted: the model id ("path/or/hub-id") and the metric snippet's inputs (`maps`, `masks`,
`names`, which the README leaves to the reader). Shell lines run through `aaclip`'s own entry point.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.cli import main as aaclip
from aaclip_hf.runtime.model_folder import save_model_folder

from .conftest import make_tiny_model


README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_PLACEHOLDER = "path/or/hub-id"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _commands(block: str) -> list[list[str]]:
    """The `aaclip ...` lines of a bash block, comments dropped; `pip install` lines are set-up, not usage."""
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("aaclip ")]


def _image(path: Path, seed: int, defect: bool = False) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.full((48, 56, 3), 120, dtype=np.uint8) + rng.integers(0, 20, (48, 56, 3), dtype=np.uint8)
    if defect:
        pixels[10:24, 12:30] = (250, 20, 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def reader_folder(tmp_path, monkeypatch, processor):
    """What a reader has: a model folder, a part to check, a few good parts, photos and a labelled folder."""
    model = make_tiny_model()
    model.update_text_anchors(processor, ["bottle"])
    save_model_folder(model, processor, tmp_path / "model")
    _image(tmp_path / "part.png", 0, defect=True)
    for index in range(4):
        _image(tmp_path / f"good{index + 1}.png", 10 + index)
        _image(tmp_path / "good_parts" / f"good_{index}.png", 20 + index)
        _image(tmp_path / "photos" / f"photo_{index}.png", 30 + index, defect=index % 2 == 0)
        _image(tmp_path / "my_parts" / "ok" / f"ok_{index}.png", 40 + index)
        _image(tmp_path / "my_parts" / "ng" / f"ng_{index}.png", 50 + index, defect=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_use_a_trained_model_runs_as_written(reader_folder):
    section = _section(README.read_text(encoding="utf-8"), "Use a trained model")
    model = str(reader_folder / "model")
    python_blocks = [block.replace(MODEL_PLACEHOLDER, model) for block in _blocks(section, "python")]
    bash_blocks = [block.replace(MODEL_PLACEHOLDER, model) for block in _blocks(section, "bash")]
    assert len(python_blocks) == 3 and len(bash_blocks) == 3, "the section's snippets changed: update this test"

    namespace: dict = {}
    exec(compile(python_blocks[0], "README: pipeline", "exec"), namespace)
    result = namespace["result"]
    assert result["label"] in ("anomaly", "normal") and 0.0 <= result["score"] <= 1.0
    assert result["calibrated"] is False and result["normal_references"] == 0
    assert result["mask"].size == (56, 48) and result["anomaly_probability"].shape == (48, 56)

    exec(compile(python_blocks[1], "README: few-shot", "exec"), namespace)
    assert namespace["few_shot"]["normal_references"] == 2

    for command in _commands(bash_blocks[0]) + _commands(bash_blocks[1]):
        assert aaclip(command[1:]) == 0, command
    written = reader_folder / "model-bottle-4shot"
    from aaclip_hf import AAClipConfig

    config = AAClipConfig.from_pretrained(written)
    assert list(config.reference_classes) == ["bottle"] and "bottle" in config.decision_thresholds
    assert (reader_folder / "detections").is_dir() and (reader_folder / "results" / "scores.csv").is_file()
    assert f"aaclip app {model} --port" in bash_blocks[2]  # served by tests/cli/test_app*.py (needs the [app] extra)

    exec(compile(python_blocks[2], "README: model and processor", "exec"), namespace)
    direct = namespace["result"]
    assert direct["anomaly_map"].shape == (48, 56)


def test_readme_metric_snippet_runs(monkeypatch):
    """The `evaluate` module snippet, with the inputs the README leaves to the reader."""
    section = _section(README.read_text(encoding="utf-8"), "The paper setting, step by step")
    (snippet,) = [block for block in _blocks(section, "python") if "load_metric" in block]
    import aaclip_hf

    rng = np.random.default_rng(0)
    masks = [np.zeros((8, 8), dtype=np.uint8) for _ in range(4)]
    for mask in masks[2:]:
        mask[2:5, 2:5] = 1
    maps = [mask + rng.uniform(0, 0.5, mask.shape) for mask in masks]
    namespace = {"aaclip_hf": aaclip_hf, "maps": maps, "masks": masks, "names": ["a", "a", "b", "b"]}
    exec(compile(snippet, "README: metric", "exec"), namespace)

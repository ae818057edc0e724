"""The model card of a published folder, parsed: thresholds per class, stored references, Limitations, YAML that names
Hub ids only, and usage examples that run as written."""

from __future__ import annotations

import re

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from aaclip_hf.hub import publish as hub


REPO_ID = "acme/aaclip-card"


def _sections(text: str) -> dict[str, str]:
    """`## Title` -> the section's text."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def _table(section: str) -> list[list[str]]:
    """Rows of the first markdown table of a section, header and separator dropped."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


@pytest.fixture
def published(tiny_model, processor, tmp_path):
    """A folder with two calibrated classes, a fallback threshold and stored references for one class."""
    pixels = processor(images=[Image.new("RGB", (40, 40), (90, 90, 90))] * 3)["pixel_values"]
    tiny_model.add_references("bottle", pixels)  # before the thresholds: storing references drops a class's one
    tiny_model.config.decision_thresholds = {"pcb1": 0.61, "bottle": 0.4375}
    tiny_model.config.decision_threshold = 0.55
    summary = {"train_data": ["/home/me/data/visa", "acme/mvtec-ad", "data/sub/btad"]}
    return hub.save_for_hub(tiny_model, processor, tmp_path / "hub", repo_id=REPO_ID, training_summary=summary)


def test_card_states_each_class_threshold_the_fallback_and_the_references(published, tiny_model):
    card = ModelCard.load(published / "README.md")
    sections = _sections(card.text)
    rows = _table(sections["Decisions"])
    assert rows[:2] == [["`bottle`", "0.4375", "yes"], ["`pcb1`", "0.6100", "yes"]]
    assert rows[2][0] == "any other class" and rows[2][1].startswith("0.5500 (the model's fallback threshold")
    assert rows[2][2] == "no"
    references = _table(sections["Decisions"].split("Normal reference images", 1)[1])
    record = tiny_model.config.reference_classes["bottle"]
    assert references == [["`bottle`", "3", str(record["patches"])]]
    limitations = sections["Limitations"]
    assert len(re.findall(r"^- ", limitations, flags=re.M)) >= 4
    assert "calibrate" in limitations and "fallback threshold" in limitations
    # YAML: Hub ids only (the local folders appear in the text by their folder name)
    assert card.data.datasets == ["acme/mvtec-ad"]
    assert "/home/me" not in (published / "README.md").read_text()
    assert "visa, acme/mvtec-ad, data/sub/btad" in sections["Training"]


def test_card_without_calibration_says_what_every_class_uses(tiny_model, processor, tmp_path):
    folder = hub.save_for_hub(tiny_model, processor, tmp_path / "hub", repo_id=REPO_ID)
    sections = _sections(ModelCard.load(folder / "README.md").text)
    assert "0.5 (not calibrated" in sections["Decisions"] and "`calibrated: False`" in sections["Decisions"]
    assert "No normal reference images are stored: every score is zero-shot." in sections["Decisions"]


def test_usage_examples_run_as_written(published, tmp_path, monkeypatch):
    """Each python block of the card, with the repo id pointing at the published folder, runs in a folder holding
    the images it names."""
    text = ModelCard.load(published / "README.md").text
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    workdir = tmp_path / "work"
    workdir.mkdir()
    rng = np.random.default_rng(0)
    for name in ("image.png", "good1.png", "good2.png"):
        Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(workdir / name)
    monkeypatch.chdir(workdir)
    results = []
    for block in blocks:
        assert f'"{REPO_ID}"' in block
        namespace: dict = {}
        exec(compile(block.replace(f'"{REPO_ID}"', repr(str(published))), "<card>", "exec"), namespace)
        results.append(namespace["result"])
    few_shot, direct = results
    assert few_shot["normal_references"] == 2 and few_shot["anomaly_probability"].shape == (30, 50)
    assert direct["anomaly_map"].shape == (30, 50) and 0.0 <= direct["score"] <= 1.0
    assert "torch.no_grad()" in blocks[1] and 'class_ids=model.class_ids("bottle")' in blocks[1]

"""Stage 2 without stage 1: on untrained text adapters the anchors come from plain CLIP (text tower +
``text_projection``), as the reference does; the oracle is a stock transformers ``CLIPModel`` with the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from aaclip_hf import AAClipConfig, AAClipModel, AAClipProcessor
from aaclip_hf.training.arguments import AAClipTrainingArguments
from aaclip_hf.training.trainer import AAClipTrainer

from ..conftest import make_tiny_model


CLASSES = ["disc", "stripes"]


def _clip_of(model: AAClipModel) -> CLIPModel:
    """A stock CLIP holding the AA-CLIP backbone's weights (adapters and heads left out)."""
    c = model.config
    clip = CLIPModel(
        CLIPConfig(
            text_config=c.text_config.to_dict(),
            vision_config=c.vision_config.to_dict(),
            projection_dim=c.projection_dim,
        )
    )
    missing, _ = clip.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    return clip.eval()


@torch.no_grad()
def _plain_anchors(clip: CLIPModel, processor, names) -> torch.Tensor:
    prompts = processor.tokenize_prompts(names)
    out = clip.get_text_features(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"])
    feats = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
    feats = feats.reshape(len(names), -1, feats.shape[-1])
    k = prompts["num_normal"]
    normal = F.normalize(feats[:, :k].mean(1), dim=-1)
    anomaly = F.normalize(feats[:, k:].mean(1), dim=-1)
    return torch.stack([normal, anomaly], dim=-1)


def _run(training_root, tmp_path, model, processor, monkeypatch) -> tuple[AAClipTrainer, list]:
    used = []
    original = AAClipModel.text_anchors_for

    def recording(self, class_names):
        anchors = original(self, class_names)
        used.append((list(class_names), anchors.detach().clone()))
        return anchors

    monkeypatch.setattr(AAClipModel, "text_anchors_for", recording)
    args = AAClipTrainingArguments(
        model=str(training_root / "model"),
        train_data=[str(training_root / "data")],
        output_dir=str(tmp_path),
        stage="vision",
        vision_epochs=1,
        vision_batch_size=4,
        max_steps=2,
        num_workers=0,
        progress=False,
    )
    trainer = AAClipTrainer(args, model=model, processor=processor)
    trainer.train()
    return trainer, used


@pytest.fixture
def fresh(processor):
    """A tiny AA-CLIP as `from_clip_pretrained` leaves it: untrained text adapters and head."""
    model = make_tiny_model(seed=0)
    model.config.untrained_text_adapters = True
    proc = AAClipProcessor.for_model(model.config)
    model.update_text_anchors(proc, ["object"])
    return model, proc


def test_stage2_anchors_are_the_plain_clip_anchors(training_root, tmp_path, fresh, monkeypatch):
    model, processor = fresh
    clip = _clip_of(model)
    expected = dict(zip(["object", *CLASSES], _plain_anchors(clip, processor, ["object", *CLASSES])))
    adapted = dict(zip(CLASSES, model.compute_text_anchors(CLASSES, processor).detach()))
    assert all((adapted[c] - expected[c]).abs().max() > 1e-2 for c in CLASSES)  # the two branches differ
    trainer, used = _run(training_root, tmp_path, model, processor, monkeypatch)
    assert len(used) == 2  # one text_anchors_for call per stage-2 step
    for names, anchors in used:
        for name, anchor in zip(names, anchors):
            torch.testing.assert_close(anchor, expected[name], atol=1e-5, rtol=0)
    # the saved model keeps the plain CLIP text branch, so its stored anchors and the pipeline agree with stage 2
    saved = AAClipModel.from_pretrained(tmp_path)
    assert (saved.config.text_head, saved.config.text_adapter_layers) == ("clip", 0)
    assert saved.config.untrained_text_adapters is False
    for name in ["object", *CLASSES]:
        torch.testing.assert_close(saved.text_anchors_for([name])[0], expected[name], atol=1e-5, rtol=0)
    # the backbone is untouched
    assert torch.equal(saved.text_projection.weight, model.text_projection.weight)


def test_trained_text_adapters_are_used_as_they_are(training_root, tmp_path, fresh, monkeypatch):
    model, processor = fresh
    model.config.untrained_text_adapters = False  # e.g. a stage-1 output or a converted reference model
    adapted = dict(zip(CLASSES, model.compute_text_anchors(CLASSES, processor).detach()))
    _, used = _run(training_root, tmp_path, model, processor, monkeypatch)
    for names, anchors in used:
        for name, anchor in zip(names, anchors):
            torch.testing.assert_close(anchor, adapted[name], atol=1e-5, rtol=0)
    saved = AAClipModel.from_pretrained(tmp_path)
    assert (saved.config.text_head, saved.config.text_adapter_layers) == ("adapter", 1)


def test_from_clip_pretrained_marks_the_text_adapters_untrained_and_stage1_clears_it(
    training_root, tmp_path, monkeypatch
):
    tiny = AAClipConfig.tiny()
    clip = CLIPModel(
        CLIPConfig(
            text_config=tiny.text_config.to_dict(),
            vision_config=tiny.vision_config.to_dict(),
            projection_dim=tiny.projection_dim,
        )
    )
    fields = {k: getattr(tiny, k) for k in ("text_adapter_layers", "vision_adapter_layers", "feature_layers")}
    model = AAClipModel.from_clip_pretrained(clip, seed=0, **fields)
    assert model.config.untrained_text_adapters is True
    assert AAClipModel(tiny).config.untrained_text_adapters is False  # the default: nothing known to be fresh
    processor = AAClipProcessor.for_model(model.config)
    model.update_text_anchors(processor, ["object"])
    args = AAClipTrainingArguments(
        model="unused",
        train_data=[str(training_root / "data")],
        output_dir=str(tmp_path),
        stage="both",
        text_epochs=1,
        vision_epochs=1,
        text_batch_size=4,
        vision_batch_size=4,
        max_steps=1,
        num_workers=0,
        progress=False,
    )
    AAClipTrainer(args, model=model, processor=processor).train()
    saved = AAClipModel.from_pretrained(tmp_path)
    assert saved.config.untrained_text_adapters is False and saved.config.text_head == "adapter"

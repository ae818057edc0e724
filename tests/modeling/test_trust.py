"""Trust from training to the Hub and back (issue 10 items 2-3 and the native path of item 1; issue 13 item 3).

Each test names the fault it tries. Anchors are derived state, weights are complete and finite or refused,
config values are possible or refused, and `save_pretrained` writes a pipeline-ready, Hub-safe folder.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

from aaclip_hf import AAClipConfig, AAClipModel, AAClipProcessor
from aaclip_hf.modeling import configuration_aaclip, modeling_aaclip, pipeline_aaclip, processing_aaclip
from aaclip_hf.modeling.configuration_aaclip import (
    GENERIC_CLASS,
    StaleAnchorsWarning,
    UnknownClassNameWarning,
    binarize_mask,
    high_bit_to_uint8,
)
from aaclip_hf.modeling.pipeline_aaclip import TASK, AAClipAnomalyDetectionPipeline
from aaclip_hf.modeling.serialization_aaclip import (
    CorruptWeightsError,
    IncompleteWeightsError,
    NonFiniteWeightsError,
    verify_manifest,
)

from ..conftest import make_tiny_model


MODELING_DIR = Path(modeling_aaclip.__file__).parent


def _saved(tmp_path, processor, classes=("object", "bottle"), name="model") -> tuple[AAClipModel, Path]:
    model = make_tiny_model()
    model.update_text_anchors(processor, list(classes))
    folder = tmp_path / name
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, folder


def _rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _from_tiny_clip(processor, name_or_path: str | None = None) -> AAClipModel:
    cfg = AAClipConfig.tiny()
    clip = CLIPModel(CLIPConfig(text_config=cfg.text_config.to_dict(), vision_config=cfg.vision_config.to_dict()))
    if name_or_path is not None:
        clip.name_or_path = name_or_path
    return AAClipModel.from_clip_pretrained(
        clip, processor=processor, seed=0, feature_layers=(1, 2, 3, 4), text_adapter_layers=1, vision_adapter_layers=2
    )


def _image(seed=0, size=(30, 50)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def _imports(path: Path) -> set[str]:
    """Every module a file imports, lazy imports included (relative ones as `.name`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


# ---------------------------------------------------------------------------------- one source of truth


def test_modeling_files_form_no_import_cycle_and_never_import_the_package():
    """The model never builds a processor: modeling -> processing (and back) is gone, lazy imports included."""
    graph = {path.stem: _imports(path) for path in MODELING_DIR.glob("*.py") if path.stem != "__init__"}
    for name, imports in graph.items():
        assert not any(module.split(".")[0] == "aaclip_hf" for module in imports), (name, imports)
    assert ".processing_aaclip" not in graph["modeling_aaclip"]
    siblings = {name: {module[1:] for module in imports if module.startswith(".")} for name, imports in graph.items()}

    def reaches(start, goal, seen=()):
        return any(dep == goal or (dep not in seen and reaches(dep, goal, (*seen, dep))) for dep in siblings[start])

    assert not [name for name in siblings if reaches(name, name)], siblings


def test_constants_and_rules_have_one_home():
    """GENERIC_CLASS, the input size and the image/mask rules live in configuration_aaclip; the others use them."""
    assert processing_aaclip.GENERIC_CLASS is configuration_aaclip.GENERIC_CLASS
    assert pipeline_aaclip.GENERIC_CLASS is configuration_aaclip.GENERIC_CLASS
    assert AAClipConfig().vision_config.image_size == configuration_aaclip.DEFAULT_IMAGE_SIZE == 518
    for module in (processing_aaclip, pipeline_aaclip):
        source = Path(module.__file__).read_text(encoding="utf-8")
        assert "HIGH_BIT_MODES = " not in source and 'GENERIC_CLASS = "object"' not in source
    from aaclip_hf.data import image_io

    assert image_io.high_bit_to_uint8 is high_bit_to_uint8


def test_processor_for_model_fits_the_config():
    config = AAClipConfig.tiny(vision_config={"image_size": 48, "patch_size": 8})
    assert AAClipProcessor.for_model(config).image_size == (48, 48)
    assert AAClipProcessor.for_model(AAClipModel(config)).image_size == (48, 48)
    clip = CLIPConfig(vision_config={"image_size": 64, "patch_size": 16})
    assert AAClipProcessor.for_model(clip).image_size == (64, 64)


def test_high_bit_rule_stretches_refuses_non_finite_and_knows_both_policies():
    scan = np.array([[1000, 2000], [3000, 1000]], dtype=np.uint16)
    np.testing.assert_array_equal(high_bit_to_uint8(Image.fromarray(scan)), [[0, 128], [255, 0]])
    np.testing.assert_array_equal(high_bit_to_uint8(Image.fromarray(scan), "max"), np.rint(scan / 65535 * 255))
    flat = np.full((2, 2), 7, dtype=np.uint16)
    np.testing.assert_array_equal(high_bit_to_uint8(Image.fromarray(flat)), np.zeros((2, 2)))
    bad = np.array([[0.0, np.nan], [1.0, np.inf]], dtype=np.float32)
    with pytest.raises(ValueError, match="2 NaN/inf"):
        high_bit_to_uint8(Image.fromarray(bad))
    with pytest.raises(ValueError, match="policy"):
        high_bit_to_uint8(Image.fromarray(scan), "clip")


def test_processor_composites_transparency_on_black_like_the_file_reader(processor):
    """An RGBA PIL image handed to the processor follows the file policy (it used to drop the alpha channel)."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:4, ..., 3] = 255  # top half opaque, bottom half transparent
    got = processor(images=[Image.fromarray(rgba, "RGBA")])["pixel_values"]
    expected_rgb = rgba[..., :3].copy()
    expected_rgb[4:] = 0
    want = processor(images=[Image.fromarray(expected_rgb)])["pixel_values"]
    assert torch.equal(got, want)


def test_mask_rule_ignores_alpha_and_resizes_nearest(processor):
    """One mask rule for processor, dataset and evaluation: non-zero in any colour channel; alpha is no label."""
    mask = np.zeros((4, 4, 4), dtype=np.uint8)
    mask[..., 3] = 255  # an opaque, all-black RGBA mask: no anomaly
    mask[0, 0, 0] = 1  # one dark-red pixel: anomaly
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = True
    np.testing.assert_array_equal(binarize_mask(Image.fromarray(mask, "RGBA")), expected)
    assert processor.preprocess_masks([Image.fromarray(mask, "RGBA")], size=4)[0].bool().numpy().tolist() == (
        expected.tolist()
    )
    np.testing.assert_array_equal(binarize_mask(expected, (8, 8)), np.kron(expected, np.ones((2, 2), dtype=bool)))


# ---------------------------------------------------------------------------------- anchors: derived state


def test_refresh_recomputes_every_stored_class_and_records_the_fingerprint(processor):
    model = make_tiny_model()
    model.store_text_anchors(["object", "bottle", "pcb1"], torch.randn(3, 24, 2))  # stale on purpose
    assert model.config.anchor_fingerprint is None and model.anchor_status()["state"] == "unknown"
    model.refresh_text_anchors(processor, ["carpet"])
    assert model.stored_class_names == ["object", "bottle", "pcb1", "carpet"]
    with torch.no_grad():
        expected = model.compute_text_anchors(model.stored_class_names, processor)
    torch.testing.assert_close(model.text_anchors, expected, rtol=0, atol=1e-6)
    recorded = model.config.anchor_fingerprint
    assert recorded["prompts"] == processor.prompt_fingerprint() and recorded["dtype"] == "float32"
    assert len(recorded["text_branch"]) == 64 and model.anchor_status()["state"] == "fresh"


def test_update_after_a_text_branch_change_recomputes_every_stored_class(processor):
    """Adding one class after training the text branch must not leave the other stored anchors stale."""
    model = make_tiny_model()
    model.update_text_anchors(processor, ["object", "bottle"])
    before = model.anchors_for(["bottle"]).clone()
    with torch.no_grad():
        weight = model.text_projector.fc.weight
        weight.add_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))  # "training"
    assert model.anchor_status()["state"] == "stale"
    model.update_text_anchors(processor, ["screw"])
    with torch.no_grad():
        expected = model.compute_text_anchors(["object", "bottle", "screw"], processor)
    torch.testing.assert_close(model.anchors_for(["object", "bottle", "screw"]), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(before, model.anchors_for(["bottle"]))
    assert model.anchor_status()["state"] == "fresh"


def test_fingerprint_covers_text_weights_head_and_settings_but_not_vision(processor):
    model = make_tiny_model()
    base = model.text_branch_fingerprint()["text_branch"]
    changes = {
        "tower": lambda m: m.text_model.encoder.layers[1].mlp.fc1.weight,
        "adapter": lambda m: m.text_model.encoder.layers[0].adapter.fc.weight,
        "head": lambda m: m.text_projector.fc.weight,
    }
    for name, tensor in changes.items():
        other = make_tiny_model()
        with torch.no_grad():
            tensor(other).view(-1)[0] += 1e-3
        assert other.text_branch_fingerprint()["text_branch"] != base, name
    other = make_tiny_model()
    with torch.no_grad():
        other.vision_model.encoder.layers[0].adapter.fc.weight.add_(1.0)
        other.det_projection.fc.weight.add_(1.0)
    assert other.text_branch_fingerprint()["text_branch"] == base
    other.config.text_adapter_weight = 0.2  # a setting that changes what the text branch computes
    assert other.text_branch_fingerprint()["text_branch"] != base
    edited = AAClipProcessor(templates=["a close-up photo of {}."])
    assert edited.prompt_fingerprint() != processor.prompt_fingerprint()


def test_stale_anchors_warn_at_load_with_the_fix_and_fresh_ones_do_not(tmp_path, processor):
    model, folder = _saved(tmp_path, processor)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleAnchorsWarning)
        assert AAClipModel.from_pretrained(folder).anchor_status()["state"] == "fresh"
    _rewrite_weights(folder, lambda t: t["text_projector.fc.weight"].mul_(1.01))  # a text branch changed after
    with pytest.warns(StaleAnchorsWarning, match=r"stale anchors.*model\.update_text_anchors\(processor\)"):
        loaded = AAClipModel.from_pretrained(folder)
    loaded.update_text_anchors(processor)
    assert loaded.anchor_status()["state"] == "fresh"


def test_inference_only_and_unfingerprinted_models_are_not_warned_falsely(tmp_path, processor):
    model, folder = _saved(tmp_path, processor)
    small = model.to_inference_only()
    small.save_pretrained(tmp_path / "small")
    config = json.loads((folder / "config.json").read_text())
    config["anchor_fingerprint"] = None  # saved before fingerprints existed
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleAnchorsWarning)
        status = AAClipModel.from_pretrained(tmp_path / "small").anchor_status()
        assert status["state"] == "unchecked" and "inference-only" in status["reason"]
        assert AAClipModel.from_pretrained(folder).anchor_status()["state"] == "unknown"


def test_a_half_precision_load_is_unchecked_not_stale(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleAnchorsWarning)
        status = AAClipModel.from_pretrained(folder, dtype=torch.bfloat16).anchor_status()
    assert status["state"] == "unchecked" and "bfloat16" in status["reason"]


def test_unknown_class_name_warns_with_its_prompt_and_suggestions(tiny_model, processor):
    pipe = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")
    with pytest.warns(UnknownClassNameWarning, match=r"'botle'.*'a damaged botle\.'.*bottle"):
        pipe(_image(), class_name="botle")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownClassNameWarning)
        pipe(_image(), class_name="bottle")  # stored
        pipe(_image(), class_name="metal_nut")  # in the class-name table
        pipe(_image(), class_name="mvtec/screw")  # a dataset-prefixed table key
        pipe(_image(), class_name="botle")  # cached: warned once


@pytest.mark.parametrize("value", [3, None, ["bottle"], b"bottle"])
def test_non_string_class_names_are_clear_errors(tiny_model, processor, pixel_values, value):
    named = re.escape(repr(value))
    with pytest.raises(TypeError, match=f"class names must be strings, got {named}"):
        tiny_model(pixel_values[:2], class_names=[value, "bottle"])
    with pytest.raises(TypeError, match=f"class names must be strings, got {named}"):
        tiny_model.update_text_anchors(processor, [value, "bottle"])
    with pytest.raises(TypeError, match=f"class names must be strings, got {named}"):
        processor.tokenize_prompts([value])
    if value is not None:  # None is "no class name given" for the pipeline
        pipe = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")
        with pytest.raises(TypeError, match=f"class names must be strings, got {named}"):
            pipe([_image(), _image(1)], class_name=[value, "bottle"])
        with pytest.raises(TypeError, match=f"class names must be strings, got {named}"):
            pipe({"image": _image(), "class_name": value})
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model(pixel_values[:1], class_names=[" "])


def test_pipeline_warns_when_its_prompts_differ_from_those_of_the_stored_anchors(tiny_model):
    edited = AAClipProcessor.for_model(tiny_model.config, templates=["a close-up photo of {}."])
    pipe = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=edited, device="cpu")
    with pytest.warns(StaleAnchorsWarning, match="prompt ensemble"):
        pipe(_image(), class_name="bottle")


def test_info_shows_the_fingerprint_and_verify_checks_everything(tmp_path, processor, capsys):
    from aaclip_hf.cli import main

    model, folder = _saved(tmp_path, processor)
    assert main(["info", str(folder), "--verify"]) == 0
    report = json.loads(capsys.readouterr().out)["model"]
    assert report["anchor_fingerprint"] == model.config.anchor_fingerprint
    assert json.loads(capsys.readouterr().out or "null") is None
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    assert main(["info", str(folder), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "SHA-256" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------- weights: complete and finite


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)

    def damage(tensors):
        del tensors["seg_projections.0.fc.weight"]
        tensors["not_a_model_key.weight"] = torch.zeros(2)
        tensors["det_projection.fc.weight"] = torch.zeros(3, 3)

    _rewrite_weights(folder, damage)
    with pytest.raises(IncompleteWeightsError) as info:
        AAClipModel.from_pretrained(folder)
    message = str(info.value)
    assert "missing seg_projections.0.fc.weight" in message and "unexpected not_a_model_key.weight" in message
    assert "mis-shaped det_projection.fc.weight (file (3, 3), model (24, 32))" in message
    assert isinstance(info.value, ValueError) and "\n" not in message
    # Inspecting a partial load is still possible, the transformers way.
    _, loading = AAClipModel.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True)
    assert loading["missing_keys"] == {"seg_projections.0.fc.weight"}


def test_a_single_missing_key_is_no_longer_silently_reinitialised(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    _rewrite_weights(folder, lambda t: t.pop("text_model.encoder.layers.0.adapter.fc.weight"))
    with pytest.raises(IncompleteWeightsError, match=r"missing text_model\.encoder\.layers\.0\.adapter\.fc\.weight"):
        AAClipModel.from_pretrained(folder)


def test_inference_only_folders_and_from_clip_pretrained_still_load(tmp_path, processor):
    model, folder = _saved(tmp_path, processor)
    model.to_inference_only().save_pretrained(tmp_path / "small")
    small = AAClipModel.from_pretrained(tmp_path / "small")
    assert not small.config.include_text_model and small.stored_class_names == ["object", "bottle"]
    built = _from_tiny_clip(processor)
    assert built.anchor_status()["state"] == "fresh" and built.stored_class_names == [GENERIC_CLASS]


def test_non_finite_weights_are_refused_at_load_with_the_tensor_name(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    _rewrite_weights(folder, lambda t: t["vision_model.post_layernorm.weight"].__setitem__(0, float("nan")))
    with pytest.raises(NonFiniteWeightsError, match=r"1 tensor\(s\): vision_model\.post_layernorm\.weight"):
        AAClipModel.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header_only"])
def test_corrupt_safetensors_is_one_line_naming_the_file(tmp_path, processor, capsys, damage):
    _, folder = _saved(tmp_path, processor)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not safetensors", "header_only": data[:8]}[damage]
    )
    with pytest.raises(CorruptWeightsError, match="truncated or corrupt") as info:
        AAClipModel.from_pretrained(folder)
    assert str(path) in str(info.value) and "\n" not in str(info.value) and isinstance(info.value, ValueError)
    from aaclip_hf.cli import main

    capsys.readouterr()
    assert main(["info", str(folder), "--verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"similarity_temperature": float("nan")}, "similarity_temperature"),
        ({"image_score_map_weight": float("inf")}, "image_score_map_weight"),
        ({"blur_sigma": {"industrial": float("inf"), "medical": 1.5}}, "blur_sigma.industrial"),
        ({"logit_scale_init_value": float("-inf")}, "logit_scale_init_value"),
        ({"vision_config": {"patch_size": 0}}, "vision_config.patch_size"),
        ({"vision_config": {"patch_size": -8}}, "vision_config.patch_size"),
        ({"vision_config": {"image_size": 42}}, "vision_config.image_size"),
        ({"vision_config": {"num_attention_heads": 0}}, "vision_config.num_attention_heads"),
        ({"text_config": {"hidden_size": 30}}, "text_config.hidden_size"),
        ({"text_config": {"layer_norm_eps": float("nan")}}, "text_config.layer_norm_eps"),
        ({"vision_config": {"attention_dropout": 1.5}}, "vision_config.attention_dropout"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"anchor_fingerprint": {"text_branch": 1}}, "anchor_fingerprint"),
    ],
)
def test_impossible_config_values_are_refused_naming_the_field(overrides, field):
    with pytest.raises(Exception, match=field.replace(".", r"\.")):
        AAClipConfig.tiny(**overrides)


def test_config_json_with_nan_is_refused_on_load(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    text = (
        (folder / "config.json")
        .read_text()
        .replace('"similarity_temperature": 100.0', '"similarity_temperature": NaN')
    )
    (folder / "config.json").write_text(text)
    with pytest.raises(Exception, match="similarity_temperature must be a finite number"):
        AAClipModel.from_pretrained(folder)


def test_save_pretrained_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    model = make_tiny_model()
    with torch.no_grad():
        model.seg_projections[1].fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"seg_projections\.1\.fc\.weight; nothing was written"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_manifest_records_the_weights_and_verify_names_what_differs(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    manifest = json.loads((folder / "weights_manifest.json").read_text())
    data = (folder / "model.safetensors").read_bytes()
    assert manifest == {"model.safetensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    assert verify_manifest(folder) == []
    (folder / "model.safetensors").write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    assert [p.split(": ", 1)[1] for p in verify_manifest(folder)] == [
        "SHA-256 differs from the manifest (changed or corrupt since it was saved)"
    ]
    (folder / "model.safetensors").write_bytes(data[:-4])
    assert "the manifest says" in verify_manifest(folder)[0]
    (folder / "model.safetensors").unlink()
    assert "listed in weights_manifest.json but missing" in verify_manifest(folder)[0]
    (folder / "model.safetensors").write_bytes(data)
    (folder / "model-extra.safetensors").write_bytes(data)
    assert verify_manifest(folder) == [
        f"{folder / 'model-extra.safetensors'}: a weight file not listed in weights_manifest.json"
    ]
    (folder / "weights_manifest.json").unlink()
    assert "weights_manifest.json: missing" in verify_manifest(folder)[0]


def test_sharded_weights_get_a_manifest_of_every_shard(tmp_path):
    model = make_tiny_model()
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    manifest = json.loads((tmp_path / "weights_manifest.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(manifest) == sorted([*shards, "model.safetensors.index.json"])
    assert verify_manifest(tmp_path) == []
    assert AAClipModel.from_pretrained(tmp_path).anchor_status()["state"] == "unknown"


# ---------------------------------------------------------------------------------- native path: pipeline-ready


def test_save_pretrained_writes_a_pipeline_ready_hub_safe_folder(tmp_path, processor):
    model, folder = _saved(tmp_path, processor)
    assert sorted(os.listdir(folder)) == [
        "README.md",
        "config.json",
        "configuration_aaclip.py",
        "model.safetensors",
        "modeling_aaclip.py",
        "pipeline_aaclip.py",
        "processing_aaclip.py",
        "processor_config.json",
        "serialization_aaclip.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "weights_manifest.json",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        TASK: {"impl": "pipeline_aaclip.AAClipAnomalyDetectionPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    }
    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "pipeline_tag: other" in front
    assert '- "zero-shot-anomaly-detection"' in front and "base_model" not in front
    assert f'pipeline("{TASK}"' in card and "trust_remote_code=True" in card
    (folder / "README.md").write_text("my own card")
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "my own card"  # never overwritten


def test_the_card_records_the_base_model_a_hub_id_built_on(tmp_path, processor):
    model = _from_tiny_clip(processor, name_or_path="acme/clip-tiny")
    assert model.config.base_model == "acme/clip-tiny"
    model.save_pretrained(tmp_path)
    assert 'base_model: "acme/clip-tiny"' in (tmp_path / "README.md").read_text().split("---")[1]


def test_push_uploads_exactly_the_hub_safe_files_and_keeps_an_existing_card(tmp_path, processor, monkeypatch):
    """Pickles, optimizer state, dotfiles and symlinks already in the folder are never uploaded."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    commits, has_card = [], {"value": False}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "file_exists", lambda self, repo_id, filename, **kw: has_card["value"])
    monkeypatch.setattr(
        HfApi,
        "create_commit",
        lambda self, repo_id, operations, **kw: commits.append(sorted(op.path_in_repo for op in operations)) or "url",
    )
    model = make_tiny_model()
    model.update_text_anchors(processor, ["object"])
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("optimizer.bin", "scheduler.pt", "pytorch_model.bin", ".env", "notes.pkl"):
        (folder / name).write_text("secret")
    (tmp_path / "outside.json").write_text("{}")
    (folder / "linked.json").symlink_to(tmp_path / "outside.json")
    model.save_pretrained(folder, push_to_hub=True, repo_id="acme/aaclip-tiny")
    expected = [
        "README.md",
        "config.json",
        "configuration_aaclip.py",
        "model.safetensors",
        "modeling_aaclip.py",
        "pipeline_aaclip.py",
        "serialization_aaclip.py",
        "weights_manifest.json",
    ]
    assert commits == [expected]
    has_card["value"] = True
    model.push_to_hub("acme/aaclip-tiny")
    assert commits[-1] == [name for name in expected if name != "README.md"]


REMOTE_PIPELINE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "aaclip_hf" or name.startswith("aaclip_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockPackage())
    import numpy as np
    from PIL import Image
    from transformers import AutoModel, pipeline

    folder, broken, image_path, scan_path, out = sys.argv[1:6]
    detector = pipeline("zero-shot-anomaly-detection", model=folder, trust_remote_code=True, device="cpu")
    assert type(detector).__module__.startswith("transformers_modules"), type(detector).__module__
    assert type(detector.model).__module__.startswith("transformers_modules"), type(detector.model).__module__
    before = json.dumps(detector.model.config.to_dict(), sort_keys=True, default=str)
    results = {
        "rgb": detector(image_path, class_name="bottle")["score"],
        "scan": detector(scan_path, class_name="bottle")["score"],
        "new": detector(image_path, class_name="widget")["score"],
    }
    assert json.dumps(detector.model.config.to_dict(), sort_keys=True, default=str) == before
    try:
        AutoModel.from_pretrained(broken, trust_remote_code=True)
    except ValueError as error:
        results["broken"] = f"{type(error).__name__}: {error}"
    assert "aaclip_hf" not in sys.modules
    json.dump(results, open(out, "w"))
    """
)


def test_native_save_loads_as_a_pipeline_where_the_package_cannot_be_imported(tmp_path, processor):
    """model.save_pretrained + processor.save_pretrained -> pipeline(trust_remote_code=True) without aaclip_hf,
    with the same file policy (a 16-bit scan is stretched there too) and the same trust checks."""
    model, folder = _saved(tmp_path, processor)
    _, broken = _saved(tmp_path, processor, name="broken")
    _rewrite_weights(broken, lambda t: t.pop("det_projection.fc.weight"))
    _image().save(tmp_path / "rgb.png")
    scan = (np.arange(30 * 50, dtype=np.uint16).reshape(30, 50) * 13 + 900).astype(np.uint16)
    Image.fromarray(scan).save(tmp_path / "scan.png")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_PIPELINE_SCRIPT)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    args = [
        str(folder),
        str(broken),
        str(tmp_path / "rgb.png"),
        str(tmp_path / "scan.png"),
        str(tmp_path / "out.json"),
    ]
    subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, check=True, timeout=600)
    remote = json.loads((tmp_path / "out.json").read_text())
    local = AAClipAnomalyDetectionPipeline(model=model, processor=processor, device="cpu")
    assert remote["rgb"] == pytest.approx(local(str(tmp_path / "rgb.png"), class_name="bottle")["score"], abs=1e-6)
    assert remote["scan"] == pytest.approx(local(str(tmp_path / "scan.png"), class_name="bottle")["score"], abs=1e-6)
    assert remote["new"] == pytest.approx(local(str(tmp_path / "rgb.png"), class_name="widget")["score"], abs=1e-6)
    assert (
        remote["broken"].startswith("IncompleteWeightsError")
        and "missing det_projection.fc.weight" in remote["broken"]
    )

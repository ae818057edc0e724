"""Trust from training to the Hub and back: derived state is never stale, weights are complete and finite or refused,
config values are possible or refused, no code from a model folder runs, and one writer makes a pipeline-ready folder.

Each test names the fault it tries. The method's own checks (anchors bound to their names and text branch) live in
`modeling/` and hold in the Hub copy too; loading and writing checks live in `aaclip_hf.runtime`.
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
from aaclip_hf.errors import (
    BadInputError,
    CorruptWeightsError,
    IncompleteWeightsError,
    NonFiniteWeightsError,
    ResourceLimitError,
    StaleStateError,
)
from aaclip_hf.modeling import (
    configuration_aaclip,
    image_processing_aaclip,
    modeling_aaclip,
    pipeline_aaclip,
    processing_aaclip,
)
from aaclip_hf.modeling.configuration_aaclip import GENERIC_CLASS, TASK, StaleAnchorsWarning, UnknownClassNameWarning
from aaclip_hf.modeling.image_processing_aaclip import binarize_mask, high_bit_to_uint8
from aaclip_hf.modeling.pipeline_aaclip import AAClipAnomalyDetectionPipeline
from aaclip_hf.runtime.loading import load_model
from aaclip_hf.runtime.model_folder import MANIFEST_NAME, save_model_folder, verify_manifest, write_manifest
from aaclip_hf.runtime.resources import state_elements

from ..conftest import make_tiny_model


MODELING_DIR = Path(modeling_aaclip.__file__).parent


def _saved(tmp_path, processor, classes=("object", "bottle"), name="model") -> tuple[AAClipModel, Path]:
    model = make_tiny_model()
    model.update_text_anchors(processor, list(classes))
    folder = tmp_path / name
    save_model_folder(model, processor, folder)
    return model, folder


def _rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _from_tiny_clip(processor) -> AAClipModel:
    cfg = AAClipConfig.tiny()
    clip = CLIPModel(CLIPConfig(text_config=cfg.text_config.to_dict(), vision_config=cfg.vision_config.to_dict()))
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
    """The model never builds a processor, and no model file imports the package (their Hub copy runs alone)."""
    graph = {path.stem: _imports(path) for path in MODELING_DIR.glob("*.py") if path.stem != "__init__"}
    for name, imports in graph.items():
        assert not any(module.split(".")[0] == "aaclip_hf" for module in imports), (name, imports)
    assert ".processing_aaclip" not in graph["modeling_aaclip"]
    siblings = {name: {module[1:] for module in imports if module.startswith(".")} for name, imports in graph.items()}

    def reaches(start, goal, seen=()):
        return any(dep == goal or (dep not in seen and reaches(dep, goal, (*seen, dep))) for dep in siblings[start])

    assert not [name for name in siblings if reaches(name, name)], siblings


def test_constants_and_rules_have_one_home():
    """GENERIC_CLASS and the input size live in configuration_aaclip, the image and mask rules in
    image_processing_aaclip; the file reader and the pipeline use them."""
    assert processing_aaclip.GENERIC_CLASS is configuration_aaclip.GENERIC_CLASS
    assert pipeline_aaclip.GENERIC_CLASS is configuration_aaclip.GENERIC_CLASS
    assert AAClipConfig().vision_config.image_size == configuration_aaclip.DEFAULT_IMAGE_SIZE == 518
    for module in (processing_aaclip, pipeline_aaclip, configuration_aaclip, modeling_aaclip):
        source = Path(module.__file__).read_text(encoding="utf-8")
        assert "HIGH_BIT_MODES = " not in source and "def binarize_mask" not in source
    from aaclip_hf.data import image_io

    assert image_io.image_to_rgb is image_processing_aaclip.image_to_rgb
    assert image_io.binarize_mask is binarize_mask


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
    with pytest.raises(ValueError, match="high_bit_depth must be one of"):
        high_bit_to_uint8(Image.fromarray(scan), "clip")


def test_processor_composites_transparency_on_black_like_the_file_reader(processor):
    """An RGBA PIL image handed to the processor follows the file policy (not PIL's channel drop)."""
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


@pytest.mark.parametrize(
    ("field", "value"),
    [("image_std", [0.0, 0.26, 0.27]), ("image_mean", [float("nan"), 0.45, 0.4]), ("image_std", [1, 2])],
)
def test_an_image_processor_that_would_divide_by_zero_or_nan_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        image_processing_aaclip.AAClipImageProcessor(**{field: value})


# ---------------------------------------------------------------------------------- anchors: derived state


def test_refresh_recomputes_every_stored_class_and_records_the_fingerprint(processor):
    model = make_tiny_model()
    model.store_text_anchors(["object", "bottle", "pcb1"], torch.randn(3, 24, 2))  # made elsewhere
    assert model.config.anchor_fingerprint["text_branch"] == "external"
    assert model.anchor_status()["state"] == "unchecked"
    model.refresh_text_anchors(processor, ["carpet"])
    assert model.stored_class_names == ["object", "bottle", "pcb1", "carpet"]
    with torch.no_grad():
        expected = model.compute_text_anchors(model.stored_class_names, processor)
    torch.testing.assert_close(model.text_anchors, expected, rtol=0, atol=1e-6)
    recorded = model.config.anchor_fingerprint
    assert recorded["prompts"] == processor.prompt_fingerprint() and recorded["dtype"] == "float32"
    assert len(recorded["text_branch"]) == 64 and len(recorded["rows"]) == 64
    assert model.anchor_status()["state"] == "fresh"


def test_update_after_a_text_branch_change_recomputes_every_stored_class(processor):
    """Adding one class after training the text branch must not leave the other stored anchors stale."""
    model = make_tiny_model()
    model.update_text_anchors(processor, ["object", "bottle"])
    before = model.text_anchors_for(["bottle"]).clone()
    with torch.no_grad():
        weight = model.text_projector.fc.weight
        weight.add_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))  # "training"
    assert model.anchor_status()["state"] == "stale"
    with pytest.raises(StaleStateError, match=r"other text-branch weights.*refresh_text_anchors\(processor\)"):
        model.class_ids("bottle")  # never silently used
    model.update_text_anchors(processor, ["screw"])
    with torch.no_grad():
        expected = model.compute_text_anchors(["object", "bottle", "screw"], processor)
    torch.testing.assert_close(model.text_anchors_for(["object", "bottle", "screw"]), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(before, model.text_anchors_for(["bottle"]))
    assert model.anchor_status()["state"] == "fresh"


def test_fingerprint_covers_text_weights_head_and_settings_but_not_vision(processor):
    model = make_tiny_model()
    base = model.text_branch_fingerprint()
    changes = {
        "tower": lambda m: m.text_model.encoder.layers[1].mlp.fc1.weight,
        "adapter": lambda m: m.text_model.encoder.layers[0].adapter.fc.weight,
        "head": lambda m: m.text_projector.fc.weight,
    }
    for name, tensor in changes.items():
        other = make_tiny_model()
        with torch.no_grad():
            tensor(other).view(-1)[0] += 1e-3
        assert other.text_branch_fingerprint() != base, name
    other = make_tiny_model()
    with torch.no_grad():
        other.vision_model.encoder.layers[0].adapter.fc.weight.add_(1.0)
        other.det_projection.fc.weight.add_(1.0)
    assert other.text_branch_fingerprint() == base
    other.config.text_adapter_weight = 0.2  # a setting that changes what the text branch computes
    assert other.text_branch_fingerprint() != base
    edited = AAClipProcessor(templates=["a close-up photo of {}."])
    assert edited.prompt_fingerprint() != processor.prompt_fingerprint()


def test_a_stale_text_branch_after_load_is_refused_with_the_fix(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    assert load_model(folder)[0].anchor_status()["state"] == "fresh"
    _rewrite_weights(folder, lambda t: t["text_projector.fc.weight"].mul_(1.01))  # a text branch changed after
    loaded = AAClipModel.from_pretrained(folder)  # the plain transformers way loads it ...
    with pytest.raises(StaleStateError, match="stale anchors"):  # ... and the stored anchors are refused at use
        loaded.class_ids("bottle")
    loaded.refresh_text_anchors(processor)
    assert loaded.anchor_status()["state"] == "fresh" and loaded.class_ids("bottle").tolist() == [1]


def test_reordered_anchor_names_are_refused_and_info_says_tampered(tmp_path, processor, capsys):
    """Reordering `anchor_class_names` in config.json would score bottle with pcb1's anchors: the rows are bound."""
    from aaclip_hf.cli import main

    _, folder = _saved(tmp_path, processor, classes=("object", "bottle", "pcb1"))
    _edit_config(folder, lambda config: config.update(anchor_class_names=["object", "pcb1", "bottle"]))
    loaded = AAClipModel.from_pretrained(folder)
    assert loaded.anchor_status()["state"] == "tampered"
    with pytest.raises(StaleStateError, match="do not match anchor_class_names"):
        loaded.class_ids("bottle")
    write_manifest(folder)  # even with a manifest that agrees, the binding refuses
    assert main(["info", str(folder), "--verify"]) == 2
    assert "do not match anchor_class_names" in capsys.readouterr().err


def test_inference_only_unfingerprinted_and_half_precision_models_still_score(tmp_path, processor):
    model, folder = _saved(tmp_path, processor)
    small = model.to_inference_only()
    assert small.anchor_status()["state"] == "unchecked" and small.class_ids("bottle").tolist() == [1]
    _edit_config(folder, lambda config: config.update(anchor_fingerprint=None))  # provenance unknown
    unknown = AAClipModel.from_pretrained(folder)
    assert unknown.anchor_status()["state"] == "unknown" and unknown.class_ids("bottle").tolist() == [1]
    _, folder = _saved(tmp_path, processor, name="again")
    half = AAClipModel.from_pretrained(folder, dtype=torch.bfloat16)
    status = half.anchor_status()
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


@pytest.mark.parametrize("value", [3, None, ["bottle"], b"bottle", " "])
def test_non_string_class_names_are_clear_errors(tiny_model, processor, value):
    named = re.escape(repr(value))
    with pytest.raises(ValueError, match=f"class names must be non-empty strings, got {named}"):
        tiny_model.class_ids([value, "bottle"])
    with pytest.raises(ValueError, match=f"class names must be non-empty strings, got {named}"):
        tiny_model.update_text_anchors(processor, [value, "bottle"])
    with pytest.raises(ValueError, match=f"class names must be non-empty strings, got {named}"):
        processor.tokenize_prompts([value])
    if value is not None:  # None is "no class name given" for the pipeline
        pipe = AAClipAnomalyDetectionPipeline(model=tiny_model, processor=processor, device="cpu")
        with pytest.raises(ValueError, match=f"class names must be non-empty strings, got {named}"):
            pipe([_image(), _image(1)], class_name=[value, "bottle"])
        with pytest.raises(ValueError, match=f"class names must be non-empty strings, got {named}"):
            pipe({"image": _image(), "class_name": value})


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
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    assert main(["info", str(folder), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "SHA-256" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------- loading: complete, finite, bounded


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)

    def damage(tensors):
        del tensors["seg_projections.0.fc.weight"]
        tensors["not_a_model_key.weight"] = torch.zeros(2)
        tensors["det_projection.fc.weight"] = torch.zeros(3, 3)

    _rewrite_weights(folder, damage)
    with pytest.raises(IncompleteWeightsError) as info:
        load_model(folder)
    message = str(info.value)
    assert "missing seg_projections.0.fc.weight" in message and "unexpected not_a_model_key.weight" in message
    assert "mis-shaped det_projection.fc.weight (file [3, 3], model [24, 32])" in message
    assert isinstance(info.value, ValueError) and "\n" not in message
    # Inspecting a partial load is still possible, the transformers way.
    _, loading = AAClipModel.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True)
    assert loading["missing_keys"] == {"seg_projections.0.fc.weight"}


def test_a_single_missing_key_is_never_silently_reinitialised(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    _rewrite_weights(folder, lambda t: t.pop("text_model.encoder.layers.0.adapter.fc.weight"))
    with pytest.raises(IncompleteWeightsError, match=r"missing text_model\.encoder\.layers\.0\.adapter\.fc\.weight"):
        load_model(folder)


def test_inference_only_folders_and_from_clip_pretrained_still_load(tmp_path, processor):
    model, _ = _saved(tmp_path, processor)
    save_model_folder(model.to_inference_only(), processor, tmp_path / "small")
    small, _ = load_model(tmp_path / "small")
    assert not small.config.include_text_model and small.stored_class_names == ["object", "bottle"]
    built = _from_tiny_clip(processor)
    assert built.anchor_status()["state"] == "fresh" and built.stored_class_names == [GENERIC_CLASS]


def test_non_finite_weights_are_refused_at_load_with_the_tensor_name(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    _rewrite_weights(folder, lambda t: t["vision_model.post_layernorm.weight"].__setitem__(0, float("nan")))
    with pytest.raises(NonFiniteWeightsError, match=r"1 tensor\(s\): vision_model\.post_layernorm\.weight"):
        load_model(folder)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64])
def test_weights_that_are_not_floating_point_are_refused_not_cast(tmp_path, processor, dtype):
    """An int8 or bool tensor would be cast on load and score outside [0, 1]: refused from the header, named."""
    _, folder = _saved(tmp_path, processor)
    name = "vision_model.post_layernorm.weight"
    _rewrite_weights(folder, lambda t: t.__setitem__(name, t[name].to(dtype)))
    with pytest.raises(
        CorruptWeightsError, match=rf"tensors that are not floating point: {re.escape(name)} \("
    ) as info:
        load_model(folder)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header_only"])
def test_corrupt_safetensors_is_one_line_naming_the_file(tmp_path, processor, capsys, damage):
    _, folder = _saved(tmp_path, processor)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not safetensors", "header_only": data[:8]}[damage]
    )
    with pytest.raises(CorruptWeightsError, match="truncated or corrupt") as info:
        load_model(folder)
    assert str(path) in str(info.value) and "\n" not in str(info.value) and isinstance(info.value, ValueError)
    from aaclip_hf.cli import main

    capsys.readouterr()
    assert main(["info", str(folder), "--verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err


def test_an_index_pointing_outside_the_folder_is_refused_without_echoing_it(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    (tmp_path / "elsewhere.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"vision_model.post_layernorm.weight": "../elsewhere.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptWeightsError, match="outside its folder") as info:
        load_model(folder)
    assert "elsewhere" not in str(info.value)
    (folder / "model.safetensors.index.json").write_text("SECRET-TOKEN-123 not json")
    with pytest.raises(CorruptWeightsError, match="not a valid safetensors index") as info:
        load_model(folder)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"similarity_temperature": float("nan")}, "similarity_temperature"),
        ({"similarity_temperature": 1e308}, "similarity_temperature"),
        ({"image_score_map_weight": float("inf")}, "image_score_map_weight"),
        ({"blur_sigma": {"industrial": float("inf"), "medical": 1.5}}, "blur_sigma.industrial"),
        ({"blur_sigma": {"industrial": 1e-300, "medical": 1.5}}, "blur_sigma['industrial']"),
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
        ({"decision_threshold": True}, "decision_threshold"),
        ({"decision_threshold": "0.5"}, "decision_threshold"),
        ({"decision_thresholds": {"bottle": 1.5}}, "decision_thresholds"),
        ({"feature_layers": "1234"}, "feature_layers"),
        ({"include_text_model": "no"}, "include_text_model"),
        ({"reference_classes": {"bottle": {"images": 2}}}, "reference_classes"),
        ({"few_shot_fusion": "max"}, "few_shot_fusion"),
    ],
)
def test_impossible_config_values_are_refused_naming_the_field(overrides, field):
    with pytest.raises(Exception, match=re.escape(field)):
        AAClipConfig.tiny(**overrides)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"similarity_temperature": NaN}', "similarity_temperature must be a finite number"),
        ("[1, 2, 3]", "holds a JSON list, expected an object"),
        ("[" * 100000 + "]" * 100000, "not valid JSON"),
        ('{"dtype": "evil"}', "not a valid AA-CLIP config: dtype must name a torch dtype such as 'float32'"),
        ('{"decision_threshold": true}', "not a valid AA-CLIP config: decision_threshold must be int or float"),
        ('{"__class__": "x"}', "not a valid AA-CLIP config"),
        ('{"model_type": "bert"}', "model_type is 'bert'"),
        ("{}", "model_type is None"),
    ],
)
def test_a_hostile_config_json_is_one_line_naming_the_file(tmp_path, processor, content, expected):
    _, folder = _saved(tmp_path, processor)
    config = json.loads((folder / "config.json").read_text())
    edit = json.loads(content.replace("NaN", '"NaN"')) if content.startswith("{") else None
    if isinstance(edit, dict):
        config.update({k: (float("nan") if v == "NaN" else v) for k, v in edit.items()})
        if content == "{}":
            config.pop("model_type")
        text = json.dumps(config)
    else:
        text = content
    (folder / "config.json").write_text(text)
    with pytest.raises(BadInputError, match=re.escape(expected)) as info:
        load_model(folder)
    assert "config.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"vision_config": {"image_size": 80000}},
        {"vision_config": {"image_size": 23168}},
        {"vision_config": {"hidden_size": 2**20, "num_attention_heads": 4}},
        {"text_config": {"vocab_size": 10**9}},
        {"vision_config": {"num_hidden_layers": 100000}},
    ],
)
def test_a_config_that_promises_a_huge_model_is_refused_before_anything_is_built(tmp_path, processor, overrides):
    """The values a config describes are counted, not allocated: a mismatch with the weights' header is refused."""
    _, folder = _saved(tmp_path, processor)
    config = json.loads((folder / "config.json").read_text())
    for tower, values in overrides.items():
        config[tower].update(values)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompleteWeightsError, match="describes a model of .* values but its weights hold"):
        load_model(folder)


def test_the_memory_check_refuses_a_model_that_cannot_fit(tmp_path, processor, monkeypatch):
    from aaclip_hf.runtime import resources

    _, folder = _saved(tmp_path, processor)
    monkeypatch.setattr(resources, "free_memory_bytes", lambda device="cpu": 1000)
    with pytest.raises(ResourceLimitError, match="needs about .* GiB but cpu has"):
        load_model(folder)


def test_state_elements_counts_exactly_what_a_model_holds(processor):
    for config in (
        AAClipConfig.tiny(),
        AAClipConfig.tiny(include_text_model=False),
        AAClipConfig.tiny(text_head="clip", anchor_class_names=["object", "a", "b"]),
        AAClipConfig.tiny(reference_classes={"a": {"images": 2, "patches": 50, "vision": "x", "rows": "y"}}),
    ):
        with torch.device("meta"):
            model = AAClipModel(config)
        assert state_elements(config) == sum(t.numel() for t in model.state_dict().values())


def test_no_code_from_a_model_folder_runs_through_the_loader(tmp_path, processor):
    """A folder whose config.json lacks model_type and whose code files are hostile: refused, nothing executed."""
    _, folder = _saved(tmp_path, processor)
    marker = tmp_path / "ran.txt"
    for name in ("configuration_aaclip.py", "modeling_aaclip.py", "processing_aaclip.py"):
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    _edit_config(folder, lambda config: config.pop("model_type"))
    with pytest.raises(BadInputError, match="model_type"):
        load_model(folder)
    _edit_config(folder, lambda config: config.update(model_type="aaclip"))
    model, _ = load_model(folder)  # the installed classes load it; the folder's code is never imported
    assert type(model).__module__.startswith("aaclip_hf") and not marker.exists()


# ---------------------------------------------------------------------------------- writing: one writer


def test_the_writer_refuses_non_finite_weights_and_writes_nothing(tmp_path, processor):
    model = make_tiny_model()
    with torch.no_grad():
        model.seg_projections[1].fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"seg_projections\.1\.fc\.weight"):
        save_model_folder(model, processor, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_manifest_records_every_file_and_verify_names_what_differs(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    data = (folder / "model.safetensors").read_bytes()
    assert manifest["model.safetensors"] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert {"config.json", "modeling_aaclip.py", "pipeline_aaclip.py", "processor_config.json"} <= set(manifest)
    assert verify_manifest(folder) == []
    (folder / "model.safetensors").write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    assert [p.split(": ", 1)[1] for p in verify_manifest(folder)] == [
        "SHA-256 differs from the manifest (changed or corrupt since it was saved)"
    ]
    (folder / "model.safetensors").write_bytes(data[:-4])
    assert "the manifest says" in verify_manifest(folder)[0]
    (folder / "model.safetensors").unlink()
    assert f"listed in {MANIFEST_NAME} but missing" in verify_manifest(folder)[0]
    (folder / "model.safetensors").write_bytes(data)
    (folder / "model-extra.safetensors").write_bytes(data)
    assert verify_manifest(folder) == [f"{folder / 'model-extra.safetensors'}: not listed in {MANIFEST_NAME}"]
    (folder / "model-extra.safetensors").unlink()
    code = (folder / "modeling_aaclip.py").read_text()
    (folder / "modeling_aaclip.py").write_text(code + "\n# edited\n")
    assert "modeling_aaclip.py: " in verify_manifest(folder)[0]  # the manifest covers the code too
    (folder / MANIFEST_NAME).unlink()
    assert f"{MANIFEST_NAME}: missing" in verify_manifest(folder)[0]


def test_sharded_weights_load_and_get_a_manifest_of_every_shard(tmp_path, processor):
    model = make_tiny_model()
    model.update_text_anchors(processor, ["object"])
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    processor.save_pretrained(tmp_path)
    write_manifest(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and {*shards, "model.safetensors.index.json"} <= set(manifest)
    assert verify_manifest(tmp_path) == []
    assert load_model(tmp_path)[0].anchor_status()["state"] == "fresh"


def test_the_writer_makes_a_pipeline_ready_folder(tmp_path, processor):
    _, folder = _saved(tmp_path, processor)
    assert sorted(os.listdir(folder)) == [
        "classes_aaclip.py",
        "config.json",
        "configuration_aaclip.py",
        "image_processing_aaclip.py",
        MANIFEST_NAME,
        "model.safetensors",
        "modeling_aaclip.py",
        "pipeline_aaclip.py",
        "preprocessor_config.json",
        "processing_aaclip.py",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((folder / "config.json").read_text())
    entry = config["custom_pipelines"][TASK]  # what transformers' Pipeline.save_pretrained records
    assert {key: entry[key] for key in ("impl", "pt", "type")} == {
        "impl": "pipeline_aaclip.AAClipAnomalyDetectionPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }


def test_the_native_pipeline_push_uploads_the_writers_files(tmp_path, processor, monkeypatch):
    """`pipeline(...).push_to_hub(repo)` (transformers' own path) uploads what the one writer writes."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi, ModelCard
    from huggingface_hub.errors import EntryNotFoundError

    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(
        HfApi,
        "create_commit",
        lambda self, repo_id, operations, **kw: commits.append(sorted(op.path_in_repo for op in operations)) or "url",
    )

    def no_card(*args, **kwargs):
        raise EntryNotFoundError("no card")

    monkeypatch.setattr(ModelCard, "load", classmethod(no_card))
    model, folder = _saved(tmp_path, processor)
    pipe = AAClipAnomalyDetectionPipeline(model=model, processor=processor, device="cpu")
    pipe.push_to_hub("acme/aaclip-tiny")
    written = sorted(name for name in os.listdir(folder) if name != MANIFEST_NAME)
    assert commits == [sorted([*written, "README.md"])]


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
    _, loading = AutoModel.from_pretrained(broken, trust_remote_code=True, output_loading_info=True)
    results["broken"] = sorted(loading["missing_keys"])
    assert "aaclip_hf" not in sys.modules
    json.dump(results, open(out, "w"))
    """
)


def test_native_save_loads_as_a_pipeline_where_the_package_cannot_be_imported(tmp_path, processor):
    """A folder written by the one writer -> pipeline(trust_remote_code=True) without aaclip_hf, with the same image
    policy (a 16-bit scan is stretched there too); transformers alone reports a missing weight in its loading info
    (the package's loader refuses it)."""
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
    assert remote["broken"] == ["det_projection.fc.weight"]

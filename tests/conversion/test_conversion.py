"""Conversion of CLIP and reference AA-CLIP checkpoints, checked against open_clip as an independent oracle.

Tiny random open_clip models are saved in every source layout the converter accepts (OpenAI-style
state dict, OpenCLIP checkpoint, CustomTextCLIP, TorchScript archive, safetensors, HF folder), converted,
and their image/text embeddings compared with open_clip's own forward. The reference AA-CLIP forward
(adapters after the first K layers with the norm rescale, multi-level ln_post + projections, prompt
ensemble anchors) is re-implemented here on open_clip modules from docs/method.md, so the converted
adapters are checked by what they compute, not only by where they are stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F


open_clip = pytest.importorskip("open_clip")

from transformers import AutoModel, CLIPModel  # noqa: E402

from aaclip_hf.cli import main as cli_main  # noqa: E402
from aaclip_hf.conversion import convert_clip as convert_clip_module  # noqa: E402
from aaclip_hf.conversion.clip_weights import (  # noqa: E402
    ConversionError,
    convert_clip_state_dict,
    infer_clip_config,
    resize_position_embedding,
)
from aaclip_hf.conversion.convert_clip import (  # noqa: E402
    check_verification,
    clip_model_from_state_dict,
    clip_view,
    load_clip_source,
    verify_clip,
)
from aaclip_hf.conversion.original import convert_original, reference_anchor_names  # noqa: E402
from aaclip_hf.runtime.serialization import UnsafeCheckpointError  # noqa: E402


ATOL = 1e-5
EMBED = 64  # = text width: the text projection is square, so only values can expose a missing transpose
WIDTH = 64
HEADS = 2
VISION_LAYERS = 4
TEXT_LAYERS = 2
PATCH = 8
IMAGE = 32  # 4 x 4 grid
CONTEXT = 77  # the real tokenizer's context and vocabulary, so the bundled processor can build anchors
VOCAB = 49408
HEAD_FLAGS = ["--text-heads", str(HEADS), "--vision-heads", str(HEADS)]


def make_open_clip(quick_gelu: bool, seed: int = 0, custom_text: bool = False, proj_bias: bool = False):
    torch.manual_seed(seed)
    vision_cfg = {
        "layers": VISION_LAYERS,
        "width": WIDTH,
        "head_width": WIDTH // HEADS,
        "patch_size": PATCH,
        "image_size": IMAGE,
    }
    text_cfg = {
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "width": WIDTH,
        "heads": HEADS,
        "layers": TEXT_LAYERS,
        "proj_bias": proj_bias,
    }
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(EMBED, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=quick_gelu)
    with torch.no_grad():  # open_clip zero-inits some biases; random values make every mapping visible
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def open_clip_at(source: torch.nn.Module, image_size: int, quick_gelu: bool):
    """The same weights in an open_clip model built for another input size (its own resize_pos_embed)."""
    vision_cfg = {
        "layers": VISION_LAYERS,
        "width": WIDTH,
        "head_width": WIDTH // HEADS,
        "patch_size": PATCH,
        "image_size": image_size,
    }
    text_cfg = {"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": HEADS, "layers": TEXT_LAYERS}
    model = open_clip.CLIP(EMBED, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=quick_gelu)
    state = dict(source.state_dict())
    open_clip.model.resize_pos_embed(state, model)
    model.load_state_dict(state)
    return model.eval()


def inputs(image_size: int = IMAGE, batch: int = 3):
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    ids = torch.randint(1, VOCAB - 2, (batch, CONTEXT), generator=generator)
    ids[:, 0] = VOCAB - 2
    for row, eos in enumerate((5, 11, 40)[:batch]):
        ids[row, eos] = VOCAB - 1
        ids[row, eos + 1 :] = 0
    return images, ids


@torch.no_grad()
def embedding_diffs(hf_model: CLIPModel, oc_model, image_size: int = IMAGE) -> tuple[float, float]:
    images, ids = inputs(image_size)
    image = hf_model.get_image_features(pixel_values=images).pooler_output
    text = hf_model.get_text_features(input_ids=ids).pooler_output
    return (
        float((image - oc_model.encode_image(images)).abs().max()),
        float((text - oc_model.encode_text(ids)).abs().max()),
    )


@pytest.fixture(scope="module")
def oc_quick():
    return make_open_clip(quick_gelu=True)


@pytest.fixture(scope="module")
def oc_gelu():
    return make_open_clip(quick_gelu=False, seed=1)


# ---------------------------------------------------------------- CLIP-level mapping


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_openai_state_dict_matches_open_clip(act, oc_quick, oc_gelu, tmp_path):
    oc = oc_quick if act == "quick_gelu" else oc_gelu
    path = tmp_path / "openai_style.pt"
    torch.save(oc.state_dict(), path)
    source = load_clip_source(path, hidden_act=act, text_heads=HEADS, vision_heads=HEADS)
    assert source.kind == "state_dict" and source.hidden_act == act
    image_diff, text_diff = embedding_diffs(source.model, oc)
    assert image_diff < ATOL and text_diff < ATOL
    # The wrong activation is visible: the comparison can fail.
    wrong = load_clip_source(
        path, hidden_act="gelu" if act == "quick_gelu" else "quick_gelu", text_heads=HEADS, vision_heads=HEADS
    )
    assert max(embedding_diffs(wrong.model, oc)) > 1e-3


def test_default_activation_is_openai_quick_gelu(oc_quick, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(oc_quick.state_dict(), path)
    source = load_clip_source(path, text_heads=HEADS, vision_heads=HEADS)
    assert source.model.config.text_config.hidden_act == source.model.config.vision_config.hidden_act == "quick_gelu"
    assert any("quick_gelu" in note for note in source.report.notes)


def test_mapping_report_and_config(oc_quick):
    hf_state, report = convert_clip_state_dict(oc_quick.state_dict())
    config = infer_clip_config(oc_quick.state_dict(), hidden_act="gelu", text_heads=HEADS, vision_heads=HEADS)
    text, vision = config.text_config, config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (
        WIDTH,
        4,
        PATCH,
        IMAGE,
    )
    assert (vision.intermediate_size, vision.num_attention_heads, vision.hidden_act) == (4 * WIDTH, HEADS, "gelu")
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size, text.max_position_embeddings) == (
        WIDTH,
        2,
        VOCAB,
        77,
    )
    assert (text.bos_token_id, text.eos_token_id, config.projection_dim) == (49406, 49407, EMBED)
    assert config.logit_scale_init_value == pytest.approx(float(oc_quick.logit_scale))
    # Fused in_proj split in order q, k, v; projections transposed; logit_scale 0-d.
    fused = oc_quick.visual.transformer.resblocks[1].attn.in_proj_weight
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(
            hf_state[f"vision_model.encoder.layers.1.self_attn.{name}.weight"],
            fused[index * WIDTH : (index + 1) * WIDTH],
        )
    assert torch.equal(hf_state["visual_projection.weight"], oc_quick.visual.proj.T)
    assert torch.equal(hf_state["text_projection.weight"], oc_quick.text_projection.T)
    assert hf_state["logit_scale"].shape == ()
    assert ("visual.proj", "visual_projection.weight", "transpose") in report.mapped
    assert "Dropped nothing" in report.summary()
    # Default heads (width // 64) would be 1 here: an explicit count is honoured.
    assert infer_clip_config(oc_quick.state_dict()).vision_config.num_attention_heads == 1


def test_fp16_openai_weights_are_upcast(oc_quick, tmp_path):
    # OpenAI archives hold fp16 tensors: the converter computes in fp32 on the same (fp16-rounded) values.
    half = {k: v.half() for k, v in oc_quick.state_dict().items()}
    torch.save(half, tmp_path / "fp16.pt")
    source = load_clip_source(tmp_path / "fp16.pt", text_heads=HEADS, vision_heads=HEADS)
    assert all(p.dtype == torch.float32 for p in source.model.parameters())
    rounded = make_open_clip(quick_gelu=True)
    rounded.load_state_dict({k: v.float() for k, v in half.items()})
    assert max(embedding_diffs(source.model, rounded)) < ATOL


def test_vit_l14_336_config_from_shapes():
    """The real OpenAI ViT-L/14-336 layout (shapes only, on the meta device) gives the HF/paper config."""
    from aaclip_hf.modeling.configuration_aaclip import VIT_L14_518_VISION_CONFIG, VIT_L14_TEXT_CONFIG

    with torch.device("meta"):
        vit_l = open_clip.CLIP(**open_clip.get_model_config("ViT-L-14-336"), quick_gelu=True)
    state = vit_l.state_dict()
    config = infer_clip_config(state)
    for key, value in VIT_L14_TEXT_CONFIG.items():
        assert getattr(config.text_config, key) == value, key
    for key, value in VIT_L14_518_VISION_CONFIG.items():
        assert getattr(config.vision_config, key) == (336 if key == "image_size" else value), key
    assert config.projection_dim == 768 and config.vision_config.layer_norm_eps == 1e-5
    hf_state, report = convert_clip_state_dict(state)
    with torch.device("meta"):
        hf_model = CLIPModel(config)
    expected = {k: v.shape for k, v in hf_model.state_dict().items() if not k.endswith("position_ids")}
    assert {k: v.shape for k, v in hf_state.items()} == expected and not report.dropped


def test_square_text_projection_missing_transpose_is_caught_by_value(oc_quick, tmp_path):
    assert oc_quick.text_projection.shape[0] == oc_quick.text_projection.shape[1]  # no shape error possible
    path = tmp_path / "sd.pt"
    torch.save(oc_quick.state_dict(), path)
    source = load_clip_source(path, text_heads=HEADS, vision_heads=HEADS)
    good = verify_clip(source.model, source)
    check_verification(good, atol=ATOL)
    assert good.max_abs_diff < ATOL
    state = {k: v for k, v in source.model.state_dict().items() if not k.endswith("position_ids")}
    state["text_projection.weight"] = state["text_projection.weight"].T.contiguous()  # the classic bug
    broken = clip_model_from_state_dict(state, source.model.config)
    result = verify_clip(broken, source)
    assert result.text_max_abs_diff > 1e-2 and result.image_max_abs_diff < ATOL
    with pytest.raises(ConversionError, match="differ"):
        check_verification(result, atol=1e-4)


def test_openclip_checkpoint_wrapper_and_safetensors(oc_gelu, tmp_path):
    from safetensors.torch import save_file

    optimizer = torch.optim.Adam(oc_gelu.parameters())
    ckpt = {
        "epoch": 3,
        "name": "tiny",
        "state_dict": {f"module.{k}": v for k, v in oc_gelu.state_dict().items()},
        "optimizer": optimizer.state_dict(),
    }
    torch.save(ckpt, tmp_path / "epoch_3.pt")
    save_file({k: v.contiguous() for k, v in oc_gelu.state_dict().items()}, str(tmp_path / "open_clip.safetensors"))
    for name in ("epoch_3.pt", "open_clip.safetensors"):
        source = load_clip_source(tmp_path / name, hidden_act="gelu", text_heads=HEADS, vision_heads=HEADS)
        assert max(embedding_diffs(source.model, oc_gelu)) < ATOL, name


@pytest.mark.parametrize("proj_bias", [False, True])
def test_custom_text_clip_layouts(proj_bias, tmp_path):
    oc = make_open_clip(quick_gelu=False, seed=2, custom_text=True, proj_bias=proj_bias)
    state = oc.state_dict()
    assert any(k.startswith("text.") for k in state)
    assert ("text.text_projection.weight" in state) == proj_bias
    if proj_bias:
        with torch.no_grad():
            oc.text.text_projection.bias.zero_()
    torch.save(oc.state_dict(), tmp_path / "custom.pt")
    source = load_clip_source(tmp_path / "custom.pt", hidden_act="gelu", text_heads=HEADS, vision_heads=HEADS)
    assert max(embedding_diffs(source.model, oc)) < ATOL
    if proj_bias:  # a real bias cannot be represented by HF CLIP: refused, not dropped
        with torch.no_grad():
            oc.text.text_projection.bias.fill_(0.5)
        with pytest.raises(ConversionError, match="text_projection.bias"):
            convert_clip_state_dict(oc.state_dict())


def test_torchscript_archive(oc_quick, tmp_path, monkeypatch):
    # OpenAI archives also carry integer metadata entries; add them the same way.
    scripted = make_open_clip(quick_gelu=True)
    for name in ("input_resolution", "context_length", "vocab_size"):
        if hasattr(scripted, name):
            delattr(scripted, name)
        scripted.register_buffer(name, torch.tensor(IMAGE if name == "input_resolution" else 77))
    images, ids = inputs()
    traced = torch.jit.trace_module(scripted, {"encode_image": (images,), "encode_text": (ids,)}, check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    source = load_clip_source(path, text_heads=HEADS, vision_heads=HEADS)
    assert source.kind == "torchscript"
    dropped = {key for key, _ in source.report.dropped}
    assert {"input_resolution", "context_length", "vocab_size"} <= dropped
    assert max(embedding_diffs(source.model, scripted)) < ATOL
    # Without open_clip, the archive itself is the reference.
    real_find_spec = convert_clip_module.importlib.util.find_spec
    monkeypatch.setattr(
        convert_clip_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "open_clip" else real_find_spec(name, *a),
    )
    result = verify_clip(source.model, source)
    assert "TorchScript" in result.reference and result.max_abs_diff < ATOL


def test_bad_layouts_are_refused_with_the_key(oc_quick):
    state = dict(oc_quick.state_dict())
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(WIDTH)
    with pytest.raises(ConversionError, match="ls_1.gamma"):
        convert_clip_state_dict(state, source="x.pt")
    state = {k: v for k, v in oc_quick.state_dict().items() if k != "visual.proj"}
    with pytest.raises(ConversionError, match="only ViT"):
        convert_clip_state_dict(state, source="x.pt")
    hf_state, _ = convert_clip_state_dict(oc_quick.state_dict())
    with pytest.raises(ConversionError, match="x.bin.*already an HF CLIPModel"):
        convert_clip_state_dict(hf_state, source="x.bin")


def test_malicious_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for name, obj in (
        ("evil.pt", {"visual.proj": Payload()}),
        ("evil_adapter.pth", {"epoch": 1, "text_adapter": {"0.fc.0.weight": Payload()}}),
    ):
        torch.save(obj, tmp_path / name)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt.*refusing"):
        load_clip_source(tmp_path / "evil.pt")
    assert (
        cli_main(["convert-original", "--clip", str(tmp_path / "evil_adapter.pth"), "--output", str(tmp_path / "o")])
        == 2
    )
    assert "evil_adapter.pth" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- position table


@pytest.mark.parametrize("new_grid", [7, 3])
def test_position_resize_equals_open_clip(new_grid):
    table = torch.randn(1 + 4 * 4, WIDTH, generator=torch.Generator().manual_seed(3))
    state = {"visual.positional_embedding": table.clone()}
    open_clip.model.resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(new_grid, new_grid))))
    ours = resize_position_embedding(table, new_grid)
    torch.testing.assert_close(ours, state["visual.positional_embedding"], rtol=0, atol=1e-6)
    assert torch.equal(ours[0], table[0])  # CLS row kept
    # Without antialias (HF's run-time interpolation) the values differ: the test can tell them apart.
    grid = table[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    plain = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    assert (plain.permute(0, 2, 3, 1).reshape(-1, WIDTH) - ours[1:]).abs().max() > 1e-3


def test_clip_only_cli_at_new_size_matches_open_clip(oc_gelu, tmp_path, capsys):
    torch.save(oc_gelu.state_dict(), tmp_path / "sd.pt")
    out = tmp_path / "clip48"
    assert (
        cli_main(
            [
                "convert-clip",
                str(tmp_path / "sd.pt"),
                str(out),
                "--clip-only",
                "--image-size",
                "48",
                "--hidden-act",
                "gelu",
                *HEAD_FLAGS,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Mapped" in printed and "Verification against open_clip (48 px, gelu" in printed
    model = CLIPModel.from_pretrained(str(out)).eval()
    assert model.config.vision_config.image_size == 48
    from transformers import CLIPProcessor

    assert CLIPProcessor.from_pretrained(str(out))(images=[torch.zeros(3, 10, 20)], return_tensors="pt")[
        "pixel_values"
    ].shape == (1, 3, 48, 48)
    assert model.vision_model.embeddings.position_embedding.weight.shape == (1 + 6 * 6, WIDTH)
    assert max(embedding_diffs(model, open_clip_at(oc_gelu, 48, quick_gelu=False), image_size=48)) < ATOL


# ---------------------------------------------------------------- AA-CLIP folders


def test_convert_clip_to_aaclip_folder(oc_quick, tmp_path):
    torch.save(oc_quick.state_dict(), tmp_path / "sd.pt")
    out = tmp_path / "aaclip"
    assert (
        cli_main(["convert-clip", str(tmp_path / "sd.pt"), str(out), "--image-size", "40", "--seed", "0", *HEAD_FLAGS])
        == 0
    )
    model = AutoModel.from_pretrained(str(out)).eval()
    assert type(model).__name__ == "AAClipModel"
    assert model.config.vision_config.image_size == 40 and model.config.vision_config.hidden_act == "quick_gelu"
    assert model.config.feature_layers == [1, 2, 3, 4]
    assert {"configuration_aaclip.py", "modeling_aaclip.py", "tokenizer.json"} <= set(os.listdir(out))
    assert max(embedding_diffs(clip_view(model), open_clip_at(oc_quick, 40, quick_gelu=True), image_size=40)) < ATOL
    assert model.stored_class_names == ["object"] and bool(model.text_anchors[0].any())
    from transformers import AutoProcessor

    pixels = AutoProcessor.from_pretrained(str(out))(images=[torch.zeros(3, 10, 20)], return_tensors="pt")
    assert pixels["pixel_values"].shape == (1, 3, 40, 40)


def test_hf_clip_folder_source(oc_gelu, tmp_path):
    hf_state, _ = convert_clip_state_dict(oc_gelu.state_dict())
    config = infer_clip_config(oc_gelu.state_dict(), hidden_act="gelu", text_heads=HEADS, vision_heads=HEADS)
    clip_model_from_state_dict(hf_state, config).save_pretrained(str(tmp_path / "hf_clip"))
    out = tmp_path / "aaclip"
    assert cli_main(["convert-clip", str(tmp_path / "hf_clip"), str(out), "--image-size", "40"]) == 0
    model = AutoModel.from_pretrained(str(out)).eval()
    assert model.config.text_config.hidden_act == "gelu"  # kept from the source config
    assert max(embedding_diffs(clip_view(model), open_clip_at(oc_gelu, 40, quick_gelu=False), image_size=40)) < ATOL


def test_push_to_hub_with_mocked_hub(oc_quick, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    commits = []
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_repo",
        lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id, url=f"https://hub/{repo_id}"),
    )

    def create_commit(self, repo_id, operations, **kwargs):
        commits.append((repo_id, sorted(op.path_in_repo for op in operations)))
        return SimpleNamespace(commit_url=f"https://hub/{repo_id}/commit/1", oid="1" * 40, pr_url=None)

    def no_card(*args, **kwargs):
        raise EntryNotFoundError("no card")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        commits.append(
            (repo_id, sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()))
        )
        return SimpleNamespace(commit_url=f"https://hub/{repo_id}/commit/1", oid="1" * 40, pr_url=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.ModelCard, "load", classmethod(lambda cls, *a, **k: no_card()))
    torch.save(oc_quick.state_dict(), tmp_path / "sd.pt")
    assert (
        cli_main(
            [
                "convert-clip",
                str(tmp_path / "sd.pt"),
                str(tmp_path / "out"),
                "--image-size",
                "40",
                "--push-to-hub",
                "acme/aaclip-tiny",
                "--no-verify",
                *HEAD_FLAGS,
            ]
        )
        == 0
    )
    pushed = {path for repo, paths in commits for path in paths}
    assert all(repo == "acme/aaclip-tiny" for repo, _ in commits)
    assert {
        "model.safetensors",
        "config.json",
        "modeling_aaclip.py",
        "tokenizer.json",
        "processor_config.json",
        "pipeline_aaclip.py",
        "README.md",
    } <= pushed


# ---------------------------------------------------------------- reference AA-CLIP checkpoints


def reference_checkpoints(tmp_path, relu: bool, seed: int = 5):
    """Files in the reference's exact format: {epoch, <part>_adapter: sd, <part>_optimizer: Adam state}."""
    generator = torch.Generator().manual_seed(seed)

    def weight(out_dim, in_dim):
        bound = (6 / (in_dim + out_dim)) ** 0.5
        return (torch.rand(out_dim, in_dim, generator=generator) * 2 - 1) * bound

    text_sd = {f"{i}.fc.0.weight": weight(WIDTH, WIDTH) for i in range(TEXT_LAYERS)}
    text_sd[f"{TEXT_LAYERS}.fc.0.weight"] = weight(EMBED, WIDTH)  # the text head
    suffix = "fc.0.weight" if relu else "fc.weight"
    image_sd = {f"layer_adapters.{i}.fc.0.weight": weight(WIDTH, WIDTH) for i in range(3)}
    image_sd.update({f"seg_proj.{j}.{suffix}": weight(EMBED, WIDTH) for j in range(4)})
    image_sd[f"det_proj.{suffix}"] = weight(EMBED, WIDTH)

    def adam_state(state_dict):
        params = [torch.nn.Parameter(v.clone()) for v in state_dict.values()]
        optimizer = torch.optim.Adam(params, lr=1e-5, betas=(0.5, 0.999))
        sum(p.sum() for p in params).backward()
        optimizer.step()
        return optimizer.state_dict()

    torch.save(
        {"epoch": 5, "text_adapter": text_sd, "text_optimizer": adam_state(text_sd)}, tmp_path / "text_adapter.pth"
    )
    torch.save(
        {"epoch": 15, "image_adapter": image_sd, "image_optimizer": adam_state(image_sd)},
        tmp_path / "image_adapter_15.pth",
    )
    return text_sd, image_sd


def adapter_fuse(x, weight, lam=0.1):
    a = F.leaky_relu(x @ weight.T, 0.01)
    a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
    return lam * a + (1 - lam) * x


@torch.no_grad()
def reference_vision(oc, layer_adapters, seg, det, levels, relu, images):
    """The vision branch (docs/method.md) on open_clip modules: adapters after layers 1..K_I, levels -> ln_post -> proj -> normalise."""
    visual = oc.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    taken = []
    for index, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        if index < len(layer_adapters):
            x = adapter_fuse(x, layer_adapters[index])
        if index + 1 in levels:
            taken.append(x[:, 1:])
    act = (lambda t: F.leaky_relu(t, 0.01)) if relu else (lambda t: t)
    patches = [F.normalize(act(visual.ln_post(t) @ w.T), dim=-1) for t, w in zip(taken, seg)]
    image = F.normalize(act(visual.ln_post(taken[-1]) @ det.T), dim=-1).mean(dim=1)
    return patches, image


@torch.no_grad()
def reference_anchor(oc, class_prompt_name, text_adapters=None, head=None):
    """The anchors (docs/method.md) with open_clip's own tokenizer; plain CLIP when no adapters are given."""
    from aaclip_hf.modeling.processing_aaclip import ANOMALY_STATES, NORMAL_STATES, TEMPLATES

    def encode(sentences):
        ids = open_clip.tokenize(sentences)
        x = oc.token_embedding(ids) + oc.positional_embedding
        for index, block in enumerate(oc.transformer.resblocks):
            x = block(x, attn_mask=oc.attn_mask)
            if text_adapters is not None and index < len(text_adapters):
                x = adapter_fuse(x, text_adapters[index])
        x = oc.ln_final(x)[torch.arange(len(sentences)), ids.argmax(dim=-1)]
        x = F.leaky_relu(x @ head.T, 0.01) if head is not None else x @ oc.text_projection
        return F.normalize(F.normalize(x, dim=-1).mean(dim=0), dim=-1)

    def sentences(states):
        return [t.format(s.format(class_prompt_name)) for s in states for t in TEMPLATES]

    return torch.stack([encode(sentences(NORMAL_STATES)), encode(sentences(ANOMALY_STATES))], dim=-1)


@pytest.mark.parametrize("relu", [False, True])
def test_convert_original_reference_setting(relu, tmp_path, capsys):
    oc = make_open_clip(quick_gelu=False, seed=3)  # the reference builds exact-GELU towers on OpenAI weights
    torch.save(oc.state_dict(), tmp_path / "backbone.pt")
    text_sd, image_sd = reference_checkpoints(tmp_path, relu)
    out = tmp_path / "aaclip"
    assert (
        cli_main(
            [
                "convert-original",
                "--clip",
                str(tmp_path / "backbone.pt"),
                "--text-adapter",
                str(tmp_path / "text_adapter.pth"),
                "--image-adapter",
                str(tmp_path / "image_adapter_15.pth"),
                "--output",
                str(out),
                "--image-size",
                "40",
                *HEAD_FLAGS,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "ignored entries: epoch, text_optimizer" in printed
        and "Verification against open_clip (40 px, gelu" in printed
    )

    model = AutoModel.from_pretrained(str(out)).eval()
    config = model.config
    assert config.projector_activation is relu
    assert (config.text_adapter_layers, config.vision_adapter_layers, config.text_head) == (TEXT_LAYERS, 3, "adapter")
    assert config.feature_layers == [1, 2, 3, 4] and config.vision_config.image_size == 40
    assert config.text_config.hidden_act == config.vision_config.hidden_act == "gelu"
    # Bit-exact landing.
    suffix = "fc.0.weight" if relu else "fc.weight"
    for i in range(TEXT_LAYERS):
        assert torch.equal(model.text_model.encoder.layers[i].adapter.fc.weight, text_sd[f"{i}.fc.0.weight"])
    assert torch.equal(model.text_projector.fc.weight, text_sd[f"{TEXT_LAYERS}.fc.0.weight"])
    for i in range(3):
        assert torch.equal(
            model.vision_model.encoder.layers[i].adapter.fc.weight, image_sd[f"layer_adapters.{i}.fc.0.weight"]
        )
    for j in range(4):
        assert torch.equal(model.seg_projections[j].fc.weight, image_sd[f"seg_proj.{j}.{suffix}"])
    assert torch.equal(model.det_projection.fc.weight, image_sd[f"det_proj.{suffix}"])

    # What the converted model computes equals the reference forward on open_clip modules.
    reference = open_clip_at(oc, 40, quick_gelu=False)
    images, _ = inputs(40, batch=2)
    ref_patches, ref_image = reference_vision(
        reference,
        [image_sd[f"layer_adapters.{i}.fc.0.weight"] for i in range(3)],
        [image_sd[f"seg_proj.{j}.{suffix}"] for j in range(4)],
        image_sd[f"det_proj.{suffix}"],
        [1, 2, 3, 4],
        relu,
        images,
    )
    with torch.no_grad():
        patches, image = model.get_vision_features(images)
    for ours, theirs in zip(patches, ref_patches):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=ATOL)

    # Stored anchors: every reference class, bare and dataset-prefixed, equal to the reference text branch.
    assert set(reference_anchor_names()) <= set(model.stored_class_names)
    assert model.stored_class_names[0] == "object"
    expected = reference_anchor(
        reference,
        "dark bottle",
        [text_sd[f"{i}.fc.0.weight"] for i in range(TEXT_LAYERS)],
        text_sd[f"{TEXT_LAYERS}.fc.0.weight"],
    )
    stored = model.text_anchors_for(["bottle", "mvtec/bottle"])
    torch.testing.assert_close(stored[0], expected, rtol=0, atol=ATOL)
    assert torch.equal(stored[0], stored[1])
    # ... and recorded as derived from this text branch and prompt ensemble: no stale-anchor warning at load.
    assert model.anchor_status()["state"] == "fresh"


def test_convert_original_without_text_adapter_uses_plain_clip_anchors(tmp_path):
    oc = make_open_clip(quick_gelu=False, seed=4)
    torch.save(oc.state_dict(), tmp_path / "backbone.pt")
    reference_checkpoints(tmp_path, relu=False)
    model = convert_original(
        tmp_path / "backbone.pt",
        tmp_path / "out",
        image_adapter=tmp_path / "image_adapter_15.pth",
        image_size=40,
        text_heads=HEADS,
        vision_heads=HEADS,
        anchor_classes=["visa/pcb1"],
        print_fn=lambda *_: None,
    )
    assert model.config.text_head == "clip" and model.config.text_adapter_layers == 0
    assert model.stored_class_names == ["object", "visa/pcb1"]
    expected = reference_anchor(oc, "dual ultrasonic distance sensor pcb module")
    torch.testing.assert_close(model.text_anchors_for(["visa/pcb1"])[0], expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(
        model.text_anchors_for(["object"])[0], reference_anchor(oc, "object"), rtol=0, atol=ATOL
    )


def test_reference_checkpoint_errors(tmp_path, oc_quick):
    torch.save(oc_quick.state_dict(), tmp_path / "backbone.pt")
    torch.save({"epoch": 1, "image_adapter": {}}, tmp_path / "wrong_entry.pth")
    with pytest.raises(ConversionError, match="wrong_entry.pth.*'text_adapter'"):
        convert_original(
            tmp_path / "backbone.pt",
            tmp_path / "o",
            text_adapter=tmp_path / "wrong_entry.pth",
            text_heads=HEADS,
            vision_heads=HEADS,
            print_fn=lambda *_: None,
        )
    _, image_sd = reference_checkpoints(tmp_path, relu=False)
    image_sd["det_proj.fc.0.weight"] = image_sd.pop("det_proj.fc.weight")  # mixed activation settings
    torch.save({"epoch": 1, "image_adapter": image_sd}, tmp_path / "mixed.pth")
    with pytest.raises(ConversionError, match="mix"):
        convert_original(
            tmp_path / "backbone.pt",
            tmp_path / "o",
            image_adapter=tmp_path / "mixed.pth",
            image_size=40,
            text_heads=HEADS,
            vision_heads=HEADS,
            print_fn=lambda *_: None,
        )


# ---------------------------------------------------------------- tokenizer


def test_convert_tokenizer_cli_matches_open_clip(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    out = tmp_path / "tok"
    assert cli_main(["convert-tokenizer", str(out)]) == 0  # BPE file from the open_clip_torch install
    tokenizer = CLIPTokenizer.from_pretrained(str(out))
    reference = SimpleTokenizer()
    for text in ["a photo of a damaged dark bottle.", "Hello,  World!! café 123", "metal_nut with flaw"]:
        expected = [49406, *reference.encode(text), 49407]
        assert tokenizer(text)["input_ids"] == expected, text
    assert len(tokenizer) == VOCAB


@pytest.mark.slow
def test_vit_l14_336_full_size_reference_conversion(tmp_path):
    """Random weights at the real ViT-L/14-336 size, stored like OpenAI's (fp16), converted to the reference
    setting at 518 px: the open_clip check runs at full size. Several GB of RAM, minutes on 2 CPU cores."""
    torch.manual_seed(0)
    vit_l = open_clip.CLIP(**open_clip.get_model_config("ViT-L-14-336"), quick_gelu=True).eval()
    torch.save({k: v.half() for k, v in vit_l.state_dict().items()}, tmp_path / "ViT-L-14-336px.pt")
    del vit_l
    generator = torch.Generator().manual_seed(1)
    text = {f"{i}.fc.0.weight": 0.03 * torch.randn(768, 768, generator=generator) for i in range(4)}
    image = {f"layer_adapters.{i}.fc.0.weight": 0.03 * torch.randn(1024, 1024, generator=generator) for i in range(6)}
    image.update({f"seg_proj.{j}.fc.weight": 0.03 * torch.randn(768, 1024, generator=generator) for j in range(4)})
    image["det_proj.fc.weight"] = 0.03 * torch.randn(768, 1024, generator=generator)
    torch.save({"epoch": 5, "text_adapter": text, "text_optimizer": {}}, tmp_path / "text_adapter.pth")
    torch.save({"epoch": 15, "image_adapter": image, "image_optimizer": {}}, tmp_path / "image_adapter_15.pth")
    lines: list[str] = []
    model = convert_original(
        tmp_path / "ViT-L-14-336px.pt",
        tmp_path / "out",
        text_adapter=tmp_path / "text_adapter.pth",
        image_adapter=tmp_path / "image_adapter_15.pth",
        print_fn=lines.append,
    )
    config = model.config
    assert config.vision_config.image_size == 518 and config.grid_size == 37
    assert config.feature_layers == [6, 12, 18, 24] and config.vision_config.hidden_act == "gelu"
    assert (config.text_adapter_layers, config.vision_adapter_layers) == (3, 6)
    assert model.vision_model.embeddings.position_embedding.weight.shape == (1370, 1024)
    assert any(line.startswith("Verification against open_clip (518 px, gelu") for line in lines)

"""Bad and odd inputs across the user-facing paths: the pipeline, the processor,
`aaclip detect`, `aaclip evaluate`, model loading and the converters. Each odd-but-valid file is read by one
documented policy; each bad one is a clear error naming the file/field and what was expected (or, with
`--skip-bad-files`, skipped and counted). The file readers' own unit tests are in tests/test_image_io.py and
tests/test_data.py; training's pre-flight scan is in tests/test_reliability_training.py. docs/reliability.md
lists every fault with its test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_hf import AAClipModel
from aaclip_hf.cli import main as cli_main
from aaclip_hf.data import load_samples
from aaclip_hf.data.synthetic import generate_synthetic_dataset
from aaclip_hf.evaluation.protocols import evaluate
from aaclip_hf.runtime.loading import load_model_and_processor

from .conftest import make_tiny_model


LONG_CLASS = " ".join(["very"] * 80) + " long part name"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from aaclip_hf import AAClipProcessor

    folder = tmp_path_factory.mktemp("rel_model")
    model = make_tiny_model()
    processor = AAClipProcessor.for_model(model.config)
    model.update_text_anchors(processor, ["object", "stripes"])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model_and_processor(str(model_dir), "cpu")


@pytest.fixture(scope="module")
def pipe(loaded):
    from aaclip_hf.inference.detect import make_pipeline

    return make_pipeline(*loaded)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel_data")
    generate_synthetic_dataset(
        root / "data",
        classes=["stripes"],
        image_size=32,
        n_train_good=0,
        n_test_good=3,
        n_test_defect_per_kind=1,
        defect_kinds=["hole", "stain"],
        progress=False,
    )
    return root / "data"


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ odd but valid images


def _odd_images(folder):
    """name -> (file, the 8-bit RGB array the documented policy must produce from it)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = (rng.random((24, 18, 3)) * 255).astype(np.uint8)
    gray = (rng.random((24, 18)) * 255).astype(np.uint8)
    out = {}

    def save(name, image, expected, **kw):
        image.save(folder / name, **kw)
        out[name] = (folder / name, expected)

    save("gray.png", Image.fromarray(gray), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((24, 18, 1), 255, np.uint8)], axis=2)
    rgba[:12, :, 3] = 0  # transparent top half: black, whatever colour is stored under it
    composite = rgb.copy()
    composite[:12] = 0
    save("rgba.png", Image.fromarray(rgba), composite)
    palette = Image.fromarray(rgb).quantize(16)
    save("palette.png", palette, np.asarray(palette.convert("RGB")))
    scan = (rng.random((24, 18)) * 3000 + 1000).astype(np.uint16)  # a 16-bit scan using part of the range
    lo, hi = float(scan.min()), float(scan.max())
    stretched = np.rint((scan - lo) / (hi - lo) * 255).astype(np.uint8)
    save("scan16.png", Image.fromarray(scan), np.repeat(stretched[..., None], 3, axis=2))
    save("scan16.tif", Image.fromarray(scan), np.repeat(stretched[..., None], 3, axis=2))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), None)  # JPEG: compare with PIL's own decode below
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    save("phone.jpg", rotated, None, exif=exif)
    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 30)), np.array([[[200, 10, 30]]], np.uint8))
    for name in ("cmyk.jpg", "phone.jpg"):
        with Image.open(out[name][0]) as im:
            from PIL import ImageOps

            out[name] = (out[name][0], np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    return out


def test_odd_image_files_follow_one_policy_in_pipeline_and_detect(pipe, model_dir, tmp_path, capsys):
    """Every odd file scores exactly like the 8-bit RGB array the policy says it is; maps come back at the
    displayed size (EXIF applied); `aaclip detect` handles the whole folder."""
    images = _odd_images(tmp_path / "odd")
    for name, (path, expected) in images.items():
        got, want = pipe(str(path)), pipe(expected)
        assert got["anomaly_map"].shape == expected.shape[:2], name
        assert got["score"] == want["score"], name
        np.testing.assert_array_equal(got["anomaly_map"], want["anomaly_map"], err_msg=name)
        assert np.isfinite(got["anomaly_map"]).all() and 0.0 <= got["score"] <= 1.0
    assert pipe(str(images["phone.jpg"][0]))["anomaly_map"].shape == (18, 24)  # stored 18x24 (w x h), shown 24x18
    # the 16-bit scan is not clipped to white (PIL's own convert("RGB") would do that)
    white = pipe(np.full((24, 18, 3), 255, np.uint8))["score"]
    assert pipe(str(images["scan16.png"][0]))["score"] != white

    code, err = _cli(
        capsys,
        "detect",
        tmp_path / "odd",
        "--model",
        model_dir,
        "--output",
        tmp_path / "out",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0, err
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted(r["image"].split("/")[-1] for r in records) == sorted(images)
    sizes = {r["image"].split("/")[-1]: (r["height"], r["width"]) for r in records}
    assert sizes["phone.jpg"] == (18, 24) and sizes["one_pixel.png"] == (1, 1)


def test_a_bfloat16_tensor_scores_like_its_float32_values(pipe):
    """A `(C, H, W)` bfloat16 tensor in [0, 1] (a half-precision data pipeline's output) is an image like any other."""
    tensor = torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    got, want = pipe(tensor), pipe(tensor.float())
    assert got["score"] == want["score"] and got["anomaly_map"].shape == (20, 28)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: np.full((8, 8, 3), np.nan, np.float32), "NaN/inf"),
        (lambda: torch.full((3, 8, 8), float("inf")), "NaN/inf"),
        (lambda: Image.new("RGB", (0, 0)), "0x0"),
        (lambda: np.zeros((0, 0, 3), np.uint8), "0x0"),
    ],
    ids=["nan-array", "inf-tensor", "empty-pil", "empty-array"],
)
def test_non_finite_and_empty_images_are_one_line_errors(pipe, make, message):
    from aaclip_hf.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=message) as info:
        pipe(make())
    assert "\n" not in str(info.value)


def test_processor_scales_high_bit_pil_images(loaded):
    """A 16-bit PIL image handed straight to the processor is stretched, not clipped (same as the file reader)."""
    _, processor = loaded
    scan = np.arange(24 * 18, dtype=np.uint16).reshape(24, 18) * 7 + 1000
    lo, hi = float(scan.min()), float(scan.max())
    eight_bit = np.rint((scan - lo) / (hi - lo) * 255).astype(np.uint8)
    got = processor(images=[Image.fromarray(scan)])["pixel_values"]
    want = processor(images=[Image.fromarray(eight_bit).convert("RGB")])["pixel_values"]
    assert torch.equal(got, want)


# ------------------------------------------------------------------ bad image files


@pytest.mark.parametrize("fault", ["truncated", "not_an_image", "missing"])
def test_bad_image_file_is_named_by_pipeline_and_detect(pipe, model_dir, dataset, tmp_path, capsys, fault):
    good = dataset / "stripes" / "test" / "good" / "000.png"
    bad = tmp_path / "bad.png"
    if fault == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        expected = "truncated"
    elif fault == "not_an_image":
        bad.write_text("<html>404 not found</html>")
        expected = "not a readable image"
    else:
        expected = "no such"
    with pytest.raises((ValueError, FileNotFoundError), match=expected) as info:
        pipe(str(bad))
    assert str(bad) in str(info.value)
    code, err = _cli(
        capsys,
        "detect",
        good,
        bad,
        "--model",
        model_dir,
        "--output",
        tmp_path / "out",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 2 and str(bad) in err and expected in err.lower(), err


def test_evaluate_names_a_corrupt_image_or_skips_and_counts_it(model_dir, dataset, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    bad = data / "stripes" / "test" / "hole" / "000.png"
    bad.write_bytes(bad.read_bytes()[:100])
    argv = [
        "evaluate",
        "--model",
        model_dir,
        "--data",
        data,
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--no-progress",
        "--output",
    ]
    code, err = _cli(capsys, *argv, tmp_path / "a")
    assert code == 2 and str(bad) in err and "image_path" in err, err
    code, err = _cli(capsys, *argv, tmp_path / "b", "--skip-bad-files")
    assert code == 0, err
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    assert result["settings"]["num_images"] == 4
    assert any("1 image(s) skipped" in note for note in result["notes"])
    assert "skipped 1 bad entry" in caplog.text and str(bad) in caplog.text  # logged, with the file


# ------------------------------------------------------------------ masks


def test_non_binary_and_odd_mode_masks_give_the_binarised_metrics(loaded, dataset, tmp_path):
    """Masks are binarised with != 0 whatever their mode or values: grey levels, palette, RGB, 16-bit."""
    model, processor = loaded
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    masks = sorted((data / "stripes" / "ground_truth").rglob("*_mask.png"))
    assert len(masks) == 2
    first = np.asarray(Image.open(masks[0])) != 0
    levels = np.where(first, np.arange(first.size).reshape(first.shape) % 200 + 1, 0).astype(np.uint8)
    Image.fromarray(levels).save(masks[0])  # grey levels 1..200 on the defect
    second = np.asarray(Image.open(masks[1])) != 0
    Image.fromarray((second * 40000).astype(np.uint16)).save(masks[1])  # 16-bit
    reference = evaluate(model, processor, load_samples(str(dataset)), progress=False)
    odd = evaluate(model, processor, load_samples(str(data)), progress=False)
    assert odd.classes["stripes"]["pixel_auroc"] == reference.classes["stripes"]["pixel_auroc"]
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro", "image_auroc"):
        assert odd.mean[key] == reference.mean[key], key


def test_mask_of_another_size_and_missing_mask_are_named(model_dir, dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    mask = data / "stripes" / "ground_truth" / "stain" / "000_mask.png"
    Image.new("L", (16, 8), 255).save(mask)
    argv = [
        "evaluate",
        "--model",
        model_dir,
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--no-progress",
        "--output",
        tmp_path / "out",
        "--data",
    ]
    code, err = _cli(capsys, *argv, data)
    assert code == 2 and str(mask) in err and "mask is 16x8 but its image" in err and "32x32" in err, err

    # a metadata file whose mask does not exist: the line, the field and the path
    meta = tmp_path / "meta.jsonl"
    lines = [
        {"image_path": str(dataset / "stripes" / "test" / "good" / "000.png"), "label": 0, "class_name": "stripes"},
        {
            "image_path": str(dataset / "stripes" / "test" / "hole" / "000.png"),
            "label": 1,
            "class_name": "stripes",
            "mask_path": str(tmp_path / "gone_mask.png"),
        },
    ]
    meta.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    code, err = _cli(capsys, *argv, meta, "--allow-outside-root")  # absolute paths into another folder
    assert code == 2 and "gone_mask.png" in err and "mask_path" in err and "line 2" in err, err


@pytest.mark.parametrize(
    "record, field",
    [({"label": "maybe"}, "label"), ({"image_path": 7}, "image_path"), ({"class_name": ""}, "class_name")],
)
def test_metadata_line_with_a_bad_field_names_line_and_field(model_dir, dataset, tmp_path, capsys, record, field):
    meta = tmp_path / "meta.jsonl"
    good = {"image_path": str(dataset / "stripes" / "test" / "good" / "000.png"), "label": 0, "class_name": "stripes"}
    meta.write_text(json.dumps(good) + "\n" + json.dumps({**good, **record}) + "\n")
    code, err = _cli(
        capsys,
        "evaluate",
        "--model",
        model_dir,
        "--data",
        meta,
        "--allow-outside-root",  # absolute paths into another folder
        "--device",
        "cpu",
        "--output",
        tmp_path / "out",
        "--no-progress",
    )
    assert code == 2 and "line 2" in err and f"field {field!r}" in err and "expected" in err, err


# ------------------------------------------------------------------ classes and prompts


def test_unknown_class_on_inference_only_model_is_named(loaded, tmp_path, capsys):
    from aaclip_hf.inference.detect import make_pipeline

    model, processor = loaded
    folder = tmp_path / "lite"
    model.to_inference_only().save_pretrained(folder)
    processor.save_pretrained(folder)
    lite = make_pipeline(*load_model_and_processor(str(folder), "cpu"))
    image = np.zeros((8, 8, 3), np.uint8)
    assert 0.0 <= lite(image, class_name="stripes")["score"] <= 1.0  # stored: fine without a tokenizer
    with pytest.raises(
        ValueError, match=r"\['bottle'\] have no stored anchors.*inference-only.*\['object', 'stripes'\]"
    ):
        lite(image, class_name="bottle")
    Image.fromarray(image).save(tmp_path / "x.png")
    code, err = _cli(
        capsys,
        "detect",
        tmp_path / "x.png",
        "--model",
        folder,
        "--class-name",
        "bottle",
        "--output",
        tmp_path / "out",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 2 and "bottle" in err and "inference-only" in err, err


def test_prompt_over_77_tokens_is_a_clear_error(pipe, model_dir, tmp_path, capsys):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"over CLIP's 77-token context.*class_name_table"):
        pipe(image, class_name=LONG_CLASS)
    Image.fromarray(image).save(tmp_path / "x.png")
    code, err = _cli(
        capsys,
        "detect",
        tmp_path / "x.png",
        "--model",
        model_dir,
        "--class-name",
        LONG_CLASS,
        "--output",
        tmp_path / "out",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 2 and "77-token" in err, err


# ------------------------------------------------------------------ configs and checkpoints


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("feature_layers", [0, 9], "feature_layers must be strictly increasing"),
        (
            "image_score_mode",
            {"industrial": "best", "medical": "map"},
            "image_score_mode['industrial'] must be one of",
        ),
        ("vision_adapter_weight", 1.5, "vision_adapter_weight must be in [0.0, 1.0], got 1.5"),
    ],
)
def test_config_json_with_an_invalid_field_names_it(model_dir, dataset, tmp_path, capsys, field, value, message):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")):
        AAClipModel.from_pretrained(folder)
    code, err = _cli(capsys, "evaluate", "--model", folder, "--data", dataset, "--output", tmp_path / "out")
    assert code == 2 and message in err, err


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A BERT and a ViT checkpoint: HF folders and bare state dicts."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=50)
    )
    vit = ViTModel(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
            image_size=16,
            patch_size=8,
        )
    )
    bert.save_pretrained(root / "bert")
    vit.save_pretrained(root / "vit")
    torch.save(bert.state_dict(), root / "bert.pth")
    torch.save({"epoch": 1, "model": vit.state_dict()}, root / "vit.pt")
    return root


@pytest.mark.parametrize("arch", ["bert", "vit"])
def test_another_architecture_folder_is_refused(foreign, dataset, tmp_path, capsys, arch):
    with pytest.raises(ValueError, match=f"model_type is '{arch}', expected 'aaclip'"):
        load_model_and_processor(foreign / arch, "cpu")  # the one checked loader
    code, err = _cli(capsys, "evaluate", "--model", foreign / arch, "--data", dataset, "--output", tmp_path / "o")
    assert code == 2 and str(foreign / arch) in err and f"model_type is '{arch}'" in err, err
    code, err = _cli(
        capsys, "detect", dataset, "--model", foreign / arch, "--output", tmp_path / "d", "--device", "cpu"
    )
    assert code == 2 and f"model_type is '{arch}'" in err and not (tmp_path / "d").exists(), err
    # as the CLIP backbone of a new AA-CLIP (`aaclip train --model` with a non-AA-CLIP folder)
    with pytest.raises(ValueError, match=f"model_type '{arch}', expected a CLIP"):
        AAClipModel.from_clip_pretrained(str(foreign / arch))
    code, err = _cli(
        capsys,
        "train",
        "--model",
        foreign / arch,
        "--train-data",
        dataset,
        "--output",
        tmp_path / "t",
        "--num-workers",
        "0",
        "--no-progress",
    )
    assert code == 2 and f"model_type is '{arch}'" in err and not (tmp_path / "t" / "checkpoints").exists(), err
    assert "an AA-CLIP folder ('aaclip') or a CLIP one ('clip')" in err  # what train takes, unlike the others


def test_another_architecture_state_dict_is_refused_by_the_converters(foreign, tmp_path, capsys):
    from aaclip_hf.conversion.convert_clip import load_clip_source
    from aaclip_hf.conversion.original import read_reference_checkpoint

    for name in ("bert.pth", "vit.pt"):
        with pytest.raises(ValueError, match=r"visual\.proj.*ViT CLIP|expected a CLIP state dict") as info:
            load_clip_source(foreign / name)
        assert name in str(info.value)
    with pytest.raises(ValueError, match=r"bert\.pth: expected a reference AA-CLIP checkpoint with a 'text_adapter'"):
        read_reference_checkpoint(foreign / "bert.pth", "text_adapter")
    code, err = _cli(capsys, "convert-clip", foreign / "bert.pth", tmp_path / "o")
    assert code == 2 and "bert.pth" in err and "visual.proj" in err, err
    for arch in ("bert", "vit"):  # an HF folder of another architecture: refused, not converted to a random CLIP
        with pytest.raises(ValueError, match=f"model_type '{arch}'; expected a CLIP model"):
            load_clip_source(foreign / arch)
    code, err = _cli(capsys, "convert-clip", foreign / "vit", tmp_path / "o")
    assert code == 2 and "model_type 'vit'" in err and not (tmp_path / "o" / "config.json").exists(), err

"""`aaclip export-onnx`: the vision path with stored anchors (and a fixed class's references) runs in onnxruntime
like torch."""

import json

import numpy as np
import pytest
import torch
from PIL import Image


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from aaclip_hf import cli  # noqa: E402
from aaclip_hf.hub.onnx_export import OUTPUT_NAMES, check_onnx, export_onnx  # noqa: E402
from aaclip_hf.runtime.model_folder import REMOTE_CODE_FILES, save_model_folder  # noqa: E402


def _run_onnx(path, pixel_values, class_index=None):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"pixel_values": pixel_values.numpy()}
    if class_index is not None:
        feeds["class_index"] = class_index.numpy()
    return dict(zip(OUTPUT_NAMES, session.run(OUTPUT_NAMES, feeds)))


def test_onnx_matches_torch_with_class_index_and_dynamic_batch(tiny_model, tmp_path):
    path = export_onnx(tiny_model, tmp_path / "model.onnx", example_batch_size=2)
    # batch 3 against an export traced at batch 2: the batch axis is dynamic; mixed classes per sample.
    pixels = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    names = tiny_model.stored_class_names
    index = torch.tensor([2, 0, 1])
    result = _run_onnx(path, pixels, index)
    with torch.no_grad():
        ref = tiny_model(pixels, class_ids=tiny_model.class_ids([names[i] for i in index]), output_size=40)
    for name in OUTPUT_NAMES:
        expected = getattr(ref, name)
        assert result[name].shape == tuple(expected.shape), name
        assert float((torch.from_numpy(result[name]) - expected).abs().max()) <= 1e-4, name
    # the class input matters (a graph that ignored it would give equal grids)
    other = _run_onnx(path, pixels, torch.tensor([0, 0, 0]))
    assert abs(other["anomaly_map_grid"][0] - result["anomaly_map_grid"][0]).max() > 1e-3


def test_onnx_graph_has_no_text_tower_and_records_classes(tiny_model, tmp_path):
    path = export_onnx(tiny_model, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["pixel_values", "class_index"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["aaclip.class_names"]) == tiny_model.stored_class_names
    assert meta["aaclip.domain"] == "industrial"
    exported = sum(int(torch.tensor(list(t.dims)).prod()) if t.dims else 1 for t in proto.graph.initializer)
    text = sum(p.numel() for p in tiny_model.text_model.parameters()) + tiny_model.text_projector.fc.weight.numel()
    everything = sum(p.numel() for p in tiny_model.parameters()) + tiny_model.text_anchors.numel()
    vision_side = everything - text - tiny_model.text_projection.weight.numel() - 1  # - logit_scale
    # Constant folding may transpose weights but never adds parameters: the graph holds at most the
    # vision side (+ small constants: blur taps, reflect indices, shapes), and no token-embedding table.
    assert exported <= vision_side - tiny_model.visual_projection.weight.numel() + 200
    vocab = tiny_model.config.text_config.vocab_size
    assert all(vocab not in list(t.dims) for t in proto.graph.initializer)


def test_onnx_fixed_class_medical_domain(tiny_model, tmp_path):
    path = export_onnx(tiny_model, tmp_path / "bottle.onnx", fixed_class="bottle", domain="medical")
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["pixel_values"]
    diffs = check_onnx(tiny_model, path, domain="medical", fixed_class="bottle", batch_size=2)
    assert max(diffs.values()) <= 1e-4, diffs
    with pytest.raises(KeyError, match="no stored anchors"):
        export_onnx(tiny_model, tmp_path / "x.onnx", fixed_class="carpet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bottle.onnx"]


def test_a_failed_export_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    from aaclip_hf.hub import onnx_export

    def fail(path, *args):
        assert path.is_file()  # the graph was written, under its temporary name
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(onnx_export, "_write_metadata", fail)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(tiny_model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_onnx_cli(tiny_model, processor, tmp_path, capsys):
    save_model_folder(tiny_model, processor, tmp_path / "model")
    assert cli.main(["export-onnx", str(tmp_path / "model"), str(tmp_path / "out.onnx"), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime vs torch" in printed and (tmp_path / "out.onnx").is_file()
    assert cli.main(["export-onnx", str(tmp_path), str(tmp_path / "y.onnx")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_export_onnx_never_writes_onto_an_existing_file_or_the_model(tiny_model, processor, tmp_path, capsys):
    model = save_model_folder(tiny_model, processor, tmp_path / "model")
    weights = (model / "model.safetensors").read_bytes()
    capsys.readouterr()  # the writer's progress bars
    for output in (model / "model.safetensors", model / "config.json", model):
        assert cli.main(["export-onnx", str(model), str(output)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(output) in err, err
    assert (model / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in model.iterdir()) == sorted(
        [*REMOTE_CODE_FILES, "config.json", "manifest.json", "model.safetensors", "preprocessor_config.json"]
        + ["processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    )


def _with_bottle_references(model, processor, count: int = 3):
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(count)]
    model.add_references("bottle", processor(images=images)["pixel_values"])
    return model


def test_fixed_class_with_stored_references_puts_the_bank_in_the_graph(tiny_model, processor, tmp_path):
    model = _with_bottle_references(tiny_model, processor)
    path = export_onnx(model, tmp_path / "bottle.onnx", fixed_class="bottle")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["aaclip.references"] == "3" and meta["aaclip.fixed_class"] == "bottle"
    pixels = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    result = _run_onnx(path, pixels)
    class_ids = model.class_ids(["bottle", "bottle"])
    with torch.no_grad():
        few_shot = model(pixels, class_ids=class_ids, references=model.references_for("bottle"), output_size=40)
        zero_shot = model(pixels, class_ids=class_ids, output_size=40)
    for name in OUTPUT_NAMES:
        assert float((torch.from_numpy(result[name]) - getattr(few_shot, name)).abs().max()) <= 1e-4, name
    # the bank matters: the graph's probability map is the few-shot one, not the zero-shot one
    assert (few_shot.anomaly_probability_grid - zero_shot.anomaly_probability_grid).abs().max() > 1e-3
    assert check_onnx(model, path, fixed_class="bottle", batch_size=2)["anomaly_probability_grid"] <= 1e-4


def test_a_class_index_graph_leaves_stored_references_out(tiny_model, processor, tmp_path, capsys):
    model = _with_bottle_references(tiny_model, processor, count=2)
    path = export_onnx(model, tmp_path / "all.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["aaclip.references"] == "0" and meta["aaclip.fixed_class"] == ""
    pixels = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    index = torch.tensor([1, 1])  # "bottle", which has stored references
    assert model.stored_class_names[1] == "bottle"
    result = _run_onnx(path, pixels, index)
    with torch.no_grad():
        zero_shot = model(pixels, class_ids=index, output_size=40)
    expected = zero_shot.anomaly_probability_grid
    assert float((torch.from_numpy(result["anomaly_probability_grid"]) - expected).abs().max()) <= 1e-4
    # The CLI says so, and says how to include them.
    folder = save_model_folder(model, processor, tmp_path / "model")
    assert cli.main(["export-onnx", str(folder), str(tmp_path / "cli.onnx")]) == 0
    out = capsys.readouterr().out
    assert "stored references of bottle are not in a class_index graph" in out and "--fixed-class" in out
    assert cli.main(["export-onnx", str(folder), str(tmp_path / "b.onnx"), "--fixed-class", "bottle"]) == 0
    assert "with the 2 stored reference images of bottle" in capsys.readouterr().out


def test_onnx_from_inference_only_model(tiny_model, tmp_path):
    lean = tiny_model.to_inference_only()
    path = export_onnx(lean, tmp_path / "lean.onnx")
    diffs = check_onnx(lean, path, batch_size=2)
    assert max(diffs.values()) <= 1e-4, diffs
    assert lean.vision_model.config._attn_implementation == tiny_model.vision_model.config._attn_implementation

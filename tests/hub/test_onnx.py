"""`aaclip export-onnx`: the vision path with stored anchors runs in onnxruntime like torch."""

import json

import pytest
import torch


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from aaclip_hf import cli  # noqa: E402
from aaclip_hf.hub.onnx_export import OUTPUT_NAMES, check_onnx, export_onnx  # noqa: E402


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


def test_export_onnx_cli(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    assert cli.main(["export-onnx", str(tmp_path / "model"), str(tmp_path / "out.onnx"), "--check"]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime vs torch" in printed and (tmp_path / "out.onnx").is_file()
    assert cli.main(["export-onnx", str(tmp_path), str(tmp_path / "y.onnx")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_onnx_from_inference_only_model(tiny_model, tmp_path):
    lean = tiny_model.to_inference_only()
    path = export_onnx(lean, tmp_path / "lean.onnx")
    diffs = check_onnx(lean, path, batch_size=2)
    assert max(diffs.values()) <= 1e-4, diffs
    assert lean.vision_model.config._attn_implementation == tiny_model.vision_model.config._attn_implementation

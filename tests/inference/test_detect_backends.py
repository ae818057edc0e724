"""`aaclip detect --backend/--quantize/--batch-size`: same detections through every backend, batching, prefetch order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from aaclip_hf.cli import main
from aaclip_hf.inference.detect import collect_images, make_pipeline, score_images


def _images(folder, count):
    folder.mkdir(parents=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (30 + i, 41, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _detect(model_dir, images, out, *extra):
    argv = ["detect", str(images), "--model", str(model_dir), "--output", str(out), "--device", "cpu"]
    assert main([*argv, "--no-progress", "--save-maps", "--class-name", "bottle", *extra]) == 0
    records = json.loads((out / "detections.json").read_text())
    return {r["image"]: (r["score"], np.load(out / r["anomaly_map"])) for r in records}


def test_backends_give_the_same_detections(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("AACLIP_CACHE", str(tmp_path / "cache"))
    images = _images(tmp_path / "images", 5)
    eager = _detect(model_dir, images, tmp_path / "eager", "--backend", "torch", "--batch-size", "1")
    batched = _detect(model_dir, images, tmp_path / "auto")  # auto batch size, auto backend
    onnx = _detect(model_dir, images, tmp_path / "onnx", "--backend", "onnx", "--batch-size", "2")
    onnx_again = _detect(model_dir, images, tmp_path / "onnx2", "--backend", "onnx")
    assert len(list((tmp_path / "cache").rglob("*.onnx"))) == 1  # exported once, then reused
    for other in (batched, onnx, onnx_again):
        assert list(other) == list(eager)  # input order
        for image, (score, anomaly_map) in eager.items():
            assert other[image][0] == pytest.approx(score, abs=1e-4)
            np.testing.assert_allclose(other[image][1], anomaly_map, atol=1e-4)
    for backend in ("torch", "onnx"):
        int8 = _detect(model_dir, images, tmp_path / f"int8-{backend}", "--backend", backend, "--quantize", "int8")
        a = np.concatenate([m.ravel() for _, m in eager.values()])
        b = np.concatenate([m.ravel() for _, m in int8.values()])
        assert np.corrcoef(a, b)[0, 1] >= 0.99 and not np.array_equal(a, b), backend


def test_score_images_prefetches_in_order_and_skips_bad_files(tiny_model, processor, tmp_path):
    images = _images(tmp_path / "images", 5)
    (images / "img2.png").write_bytes(b"not a png")
    pipe = make_pipeline(tiny_model, processor)
    skipped = []
    inputs = collect_images([images])
    results = list(score_images(pipe, inputs, "bottle", batch_size=2, progress=False, skipped=skipped))
    assert [item.name for item, _, _ in results] == ["img0.png", "img1.png", "img3.png", "img4.png"]
    assert [s["image"] for s in skipped] == ["img2.png"] and "img2.png" in skipped[0]["error"]
    fourth = inputs[3]
    single = {i: r["score"] for i, _, r in score_images(pipe, [fourth], "bottle", batch_size=1, progress=False)}
    assert {i: r["score"] for i, _, r in results}[fourth] == pytest.approx(single[fourth], abs=1e-5)


def test_bad_batch_size_flag(model_dir, tmp_path, capsys):
    images = _images(tmp_path / "images", 1)
    with pytest.raises(SystemExit):
        main(["detect", str(images), "--model", str(model_dir), "--output", str(tmp_path / "o"), "--batch-size", "0"])
    assert "--batch-size must be 'auto' or a positive integer" in capsys.readouterr().err

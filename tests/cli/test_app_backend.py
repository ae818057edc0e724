"""`aaclip app --quantize int8 / --backend`: the loaded model is put on the chosen CPU path before serving."""

from __future__ import annotations

import pytest

from aaclip_hf.runtime.quantize import is_quantized


def test_app_prepares_the_model_with_the_backend_flags(tiny_model, processor, tmp_path, monkeypatch):
    space_app = pytest.importorskip("aaclip_hf.hub.space_app")  # needs gradio (the app extra)
    from aaclip_hf.cli import main
    from aaclip_hf.runtime.model_folder import save_model_folder

    folder = save_model_folder(tiny_model, processor, tmp_path / "model")
    calls = {}

    def fake_main(model, host, port, share, device, prepare, load):
        calls["model"] = model
        prepare(tiny_model)

    monkeypatch.setattr(space_app, "main", fake_main)
    assert main(["app", str(folder), "--quantize", "int8", "--backend", "torch"]) == 0
    assert calls["model"] == str(folder) and is_quantized(tiny_model)

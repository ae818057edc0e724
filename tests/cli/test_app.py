"""`aaclip app MODEL [--port P] [--share]`: loads the model with its pipeline code and serves the Gradio app."""

from __future__ import annotations

import os
import sys

import pytest

from aaclip_hf.cli import build_parser, main
from aaclip_hf.runtime.model_folder import save_model_folder


gradio = pytest.importorskip("gradio", reason="the app extra is not installed: pip install aaclip-hf[app]")


def test_app_command_loads_the_model_and_launches_with_the_flags(tiny_model, processor, tmp_path, monkeypatch):
    assert "app" in build_parser()[1]
    save_model_folder(tiny_model, processor, tmp_path / "model")
    launched = {}

    def fake_launch(self, **kwargs):  # serving would block; the browser test serves for real
        launched.update(kwargs, blocks=self)

    monkeypatch.setattr(gradio.Blocks, "launch", fake_launch)
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    assert main(["app", str(tmp_path / "model"), "--port", "7999", "--share", "--device", "cpu"]) == 0
    assert (launched["server_name"], launched["server_port"], launched["share"]) == ("127.0.0.1", 7999, True)
    assert isinstance(launched["blocks"], gradio.Blocks)
    # With the package installed the app runs the installed classes: no remote code module is ever imported.
    assert not [name for name in sys.modules if name.startswith("transformers_modules")]
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"  # no usage reports unless asked for
    launched.clear()
    assert main(["app", str(tmp_path / "model")]) == 0
    assert (launched["server_port"], launched["share"]) == (7860, False)


def test_app_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    assert main(["app", str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    assert main(["app", str(tmp_path)]) == 2  # not a model folder: the loader's one-line error
    assert str(tmp_path) in capsys.readouterr().err
    import aaclip_hf.hub

    monkeypatch.setitem(sys.modules, "aaclip_hf.hub.space_app", None)  # as if gradio were not installed
    monkeypatch.delattr(aaclip_hf.hub, "space_app", raising=False)
    assert main(["app", str(tmp_path)]) == 2
    assert "pip install 'aaclip-hf[app]'" in capsys.readouterr().err


def test_the_served_app_scores_with_the_installed_classes_and_stored_references(tiny_model, processor, tmp_path):
    """`aaclip app` loads through the checked loader (no remote code) and the app reports the class's threshold
    and its stored references."""
    from PIL import Image

    from aaclip_hf.cli.app import _installed_pipeline
    from aaclip_hf.hub import space_app

    images = [Image.new("RGB", (40, 40), (90 + 10 * i, 90, 90)) for i in range(2)]
    tiny_model.add_references("bottle", processor(images=images)["pixel_values"])
    tiny_model.config.decision_thresholds = {"bottle": 0.25}
    detector = _installed_pipeline(str(save_model_folder(tiny_model, processor, tmp_path / "model")), "cpu")
    assert type(detector).__module__ == "aaclip_hf.modeling.pipeline_aaclip"
    _, score, text = space_app.analyze(detector, Image.new("RGB", (30, 20), (200, 10, 10)), "bottle")
    assert "(bottle's calibrated threshold); 2-shot, stored references;" in text and 0.0 <= score <= 1.0

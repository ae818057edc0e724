"""`aaclip demo --quick`: the whole offline workflow end to end (data, train, evaluate, detect, Hub folder, reload)."""

from __future__ import annotations

import json
from pathlib import Path

from aaclip_hf.demo import run_demo


def test_quick_demo_runs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("demo")  # relative, as `make demo` passes it
    summary = run_demo(out, quick=True, progress=False)
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED CLIP" in printed and "Where to look" in printed and "before -> after" in printed
    assert json.loads((out / "summary.json").read_text())["held_out_classes"] == summary["held_out_classes"]
    # zero-shot: evaluated on classes never trained on
    assert not set(summary["train_classes"]) & set(summary["held_out_classes"])
    for name in ("eval_untrained", "eval_trained"):
        results = json.loads((out / name / "results.json").read_text())
        assert set(results["classes"]) == set(summary["held_out_classes"])
        assert 0.0 <= results["mean"]["pixel_auroc"] <= 1.0
    assert "before -> after" in (out / "comparison.md").read_text()
    overlays = [
        p for d in summary["outputs"]["overlays"] for p in (out / "detect").rglob("*.png") if str(p).startswith(d)
    ]
    assert len(overlays) == 2 * len(summary["held_out_classes"])
    hub = out / "hub_model"
    assert {"README.md", "pipeline_aaclip.py", "modeling_aaclip.py", "processor_config.json"} <= {
        p.name for p in hub.iterdir()
    }
    card = (hub / "README.md").read_text()
    assert "randomly initialised" in card.lower() or "random tiny CLIP" in card
    assert "synthetic-held-out" in card  # the trained model's evaluation is in the card
    assert summary["reload_max_score_difference"] <= 1e-4  # the fresh process reproduced the scores
    assert (out / "trained_model" / "training_args.json").is_file()

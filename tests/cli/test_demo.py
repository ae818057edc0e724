"""`aaclip demo --quick`: the whole offline workflow end to end (data, train, zero- and few-shot evaluation, published
thresholds and the rates at them, detect, Hub folder, reload)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    comparison = (out / "comparison.md").read_text()
    assert "before -> after" in comparison
    # few-shot: zero-shot next to 1-, 2- and 4-shot, untrained and trained, from evaluations with their references
    assert "## Few-shot on the held-out classes" in comparison
    for model in ("untrained", "trained"):
        assert f"| {model} | 0 (zero-shot) |" in comparison
        for k in (1, 2, 4):
            assert f"| {model} | {k} |" in comparison
            results = json.loads((out / "eval_few_shot" / model / f"{k}-shot" / "results.json").read_text())
            assert results["settings"]["few_shot"]["shots"] == k and results["protocol"] == "per-image"
            assert summary["few_shot"][model][k]["pixel_auroc"] == pytest.approx(results["mean"]["pixel_auroc"])
            assert all(len(paths) == k for paths in results["settings"]["reference_images"].values())
    # the thresholds are published with the model, and the rates at them are shown
    assert "## Published decision thresholds" in comparison
    hub_config = json.loads((out / "hub_model" / "config.json").read_text())
    assert hub_config["decision_thresholds"] == pytest.approx(summary["decision_thresholds"])
    assert set(summary["decision_thresholds"]) == set(summary["held_out_classes"])
    for name, point in summary["operating_points"].items():
        assert point["threshold"] == pytest.approx(summary["decision_thresholds"][name])
        assert point["num_normal"] + point["num_anomalous"] > 0
        rates = f"{point['false_rejects']}/{point['num_normal']} ({100 * point['false_reject_rate']:.1f}%)"
        assert f"| {name} | {point['threshold']:.4f} | {rates} |" in comparison
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

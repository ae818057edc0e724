"""Start-up: a bare `import aaclip_hf` and `aaclip --help` / `--version` load neither torch nor transformers; the Auto
registration happens as soon as transformers is in use, whichever is imported first; the rest loads on first use.

Each case runs in a fresh interpreter (the test process has long imported everything).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> dict:
    """Run `code` then `REPORT` in a fresh interpreter; returns what REPORT printed."""
    program = textwrap.dedent(code) + REPORT
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


REPORT = """
import json, sys
heavy = ("torch", "transformers", "numpy", "PIL", "torchvision", "datasets", "sklearn", "accelerate")
print(json.dumps({
    "loaded": sorted(name for name in heavy if name in sys.modules),
    "ours": sorted(name for name in sys.modules if name.startswith("aaclip_hf")),
    **globals().get("extra", {}),
}))
"""


def test_a_bare_import_loads_nothing_heavy():
    report = _run("import aaclip_hf\n")
    assert report["loaded"] == []
    assert set(report["ours"]) <= {"aaclip_hf", "aaclip_hf.version"}


@pytest.mark.parametrize("order", ["aaclip_hf first", "transformers first"])
def test_registration_happens_with_transformers_in_either_order_and_loads_only_the_model_files(order):
    first, second = (
        ("import aaclip_hf", "import transformers")
        if order == "aaclip_hf first"
        else (
            "import transformers",
            "import aaclip_hf",
        )
    )
    report = _run(
        f"""
        {first}
        {second}
        from transformers import AutoConfig, AutoModel
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.pipelines import PIPELINE_REGISTRY
        extra = {{"registered": "aaclip" in CONFIG_MAPPING,
                  "task": "zero-shot-anomaly-detection" in PIPELINE_REGISTRY.get_supported_tasks()}}
        """
    )
    assert report["registered"] and report["task"]
    rooms = {name.split(".")[1] for name in report["ours"] if name.count(".") >= 1}
    assert rooms <= {"modeling", "version"}, report["ours"]  # evaluation, data, hub, training, runtime: on first use
    assert "datasets" not in report["loaded"] and "sklearn" not in report["loaded"]


def test_a_name_loads_its_module_on_first_use():
    report = _run(
        """
        import aaclip_hf
        model_class = aaclip_hf.AAClipModel
        extra = {"name": model_class.__name__, "metric": "aaclip_hf.evaluation" in __import__("sys").modules}
        """
    )
    assert report["name"] == "AAClipModel" and not report["metric"]


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_the_cli_help_and_version_load_neither_torch_nor_transformers(argv):
    report = _run(
        f"""
        import contextlib, io
        from aaclip_hf.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main({argv!r})
            except SystemExit:
                pass
        extra = {{"printed": out.getvalue()}}
        """
    )
    assert report["loaded"] == []
    assert ("aaclip-hf " in report["printed"]) if argv == ["--version"] else ("add-references" in report["printed"])

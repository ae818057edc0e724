"""The one CLI error boundary: every subcommand x every failure class that applies -> one stderr line, exit 2.

Each case runs `aaclip_hf.cli.main` in-process against a broken input built once per module (tiny models from
tests/conftest.py) and checks three things: exit status 2, exactly one line on stderr (no traceback), and that
the line names the file or field that is wrong. `--debug` / `AACLIP_DEBUG=1` bring the traceback back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from aaclip_hf import AAClipProcessor
from aaclip_hf.cli import build_parser, main
from aaclip_hf.cli.errors import expected_error_message
from aaclip_hf.data.synthetic import generate_synthetic_dataset
from aaclip_hf.errors import BadInputError
from aaclip_hf.runtime.outputs import output_lock

from ..conftest import make_tiny_model


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good inputs and one broken copy per failure class."""
    root = tmp_path_factory.mktemp("boundary")
    model = make_tiny_model()
    processor = AAClipProcessor.for_model(model.config)
    model.update_text_anchors(processor, ["object"])
    good = root / "model"
    model.save_pretrained(good)
    processor.save_pretrained(good)

    def variant(name, edit):
        folder = root / name
        shutil.copytree(good, folder)
        edit(folder)
        return folder

    config = json.loads((good / "config.json").read_text())
    bad_field = dict(config, vision_config={**config["vision_config"], "patch_size": 0})
    weights = (good / "model.safetensors").read_bytes()

    def pickled_weights(folder):
        (folder / "model.safetensors").unlink()
        torch.save({"payload": _RunsCode()}, folder / "pytorch_model.bin")

    paths = {
        "model": good,
        "bad_json": variant("bad_json", lambda f: (f / "config.json").write_text('{"model_type": "aaclip",')),
        "bad_field": variant("bad_field", lambda f: (f / "config.json").write_text(json.dumps(bad_field))),
        "bad_utf8": variant(
            "bad_utf8", lambda f: (f / "config.json").write_bytes(b'{"model_type": "aaclip", "x": "\xff"}')
        ),
        "truncated": variant(
            "truncated", lambda f: (f / "model.safetensors").write_bytes(weights[: len(weights) // 3])
        ),
        "pickled": variant("pickled", pickled_weights),
    }
    torch.save({"payload": _RunsCode()}, root / "evil.pt")
    paths["evil_pt"] = root / "evil.pt"
    (root / "cut.safetensors").write_bytes(weights[:1000])
    paths["cut_safetensors"] = root / "cut.safetensors"
    data = generate_synthetic_dataset(
        root / "data",
        classes=["stripes"],
        image_size=32,
        n_train_good=0,
        n_test_good=2,
        n_test_defect_per_kind=1,
        defect_kinds=["hole", "stain"],
        progress=False,
    )
    data = Path(data)
    paths["data"] = data
    corrupt = root / "data_corrupt"
    shutil.copytree(data, corrupt)
    victim = corrupt / "stripes" / "test" / "hole" / "000.png"
    victim.write_bytes(victim.read_bytes()[:60])
    paths["data_corrupt"], paths["corrupt_image"] = corrupt, victim
    paths["image"] = data / "stripes" / "test" / "good" / "000.png"
    paths["normal"] = data / "stripes" / "test" / "good"
    (root / "latin1.jsonl").write_bytes(b'{"image_path": "caf\xe9.png", "label": 0, "class_name": "cup"}\n')
    paths["latin1_jsonl"] = root / "latin1.jsonl"
    foreign = root / "my_files"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work\n")
    paths["foreign"] = foreign
    paths["root"] = root
    return paths


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    """No progress bars on stderr (the single-line check), no debug mode, a cwd without `no_such_folder`."""
    hf_logging.disable_progress_bar()
    monkeypatch.delenv("AACLIP_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    hf_logging.enable_progress_bar()


MISSING = "no_such_folder"
OFFLINE = "no such folder, and the Hub is offline"

# (subcommand, fault) -> argv (with {placeholders} from `world`; {out} is a fresh folder) and what the line names.
CASES = {
    # a model path that is neither a folder nor reachable
    ("detect", "missing_model"): (["detect", "{image}", "--model", MISSING, "--output", "{out}"], [MISSING, OFFLINE]),
    ("evaluate", "missing_model"): (
        ["evaluate", "--model", MISSING, "--data", "{data}", "--output", "{out}"],
        [OFFLINE],
    ),
    ("calibrate", "missing_model"): (
        ["calibrate", "--model", MISSING, "--normal", "{normal}", "--output", "{out}"],
        [MISSING, OFFLINE],
    ),
    ("train", "missing_model"): (
        ["train", "--model", MISSING, "--train-data", "{data}", "--output", "{out}"],
        [OFFLINE],
    ),
    ("convert-clip", "missing_model"): (["convert-clip", MISSING, "{out}"], [MISSING, "the Hub is offline"]),
    ("convert-original", "missing_model"): (
        ["convert-original", "--clip", MISSING, "--output", "{out}"],
        [MISSING, "the Hub is offline"],
    ),
    ("demo", "missing_model"): (["demo", "--model", MISSING, "--output", "{out}"], [OFFLINE]),
    ("app", "missing_model"): (["app", MISSING], [MISSING, OFFLINE]),
    ("info", "missing_model"): (["info", MISSING], [MISSING, "config.json"]),
    ("export-onnx", "missing_model"): (["export-onnx", MISSING, "{out}.onnx"], [MISSING, OFFLINE]),
    ("push", "missing_model"): (["push", MISSING, "me/model", "--dry-run", "{out}"], [MISSING]),
    ("add-class", "missing_model"): (["add-class", MISSING, "widget", "--output", "{out}"], [MISSING, OFFLINE]),
    ("add-references", "missing_model"): (
        ["add-references", MISSING, "--class-name", "object", "--images", "{normal}", "--output", "{out}"],
        [MISSING, OFFLINE],
    ),
    # invalid config.json: not JSON, an impossible field, not UTF-8
    **{
        (command, fault): (argv, names)
        for fault, names in (
            ("bad_json", ["bad_json/config.json"]),
            ("bad_field", ["patch_size"]),
            ("bad_utf8", ["bad_utf8/config.json"]),
        )
        for command, argv in (
            ("detect", ["detect", "{image}", "--model", "{%s}" % fault, "--output", "{out}"]),
            ("evaluate", ["evaluate", "--model", "{%s}" % fault, "--data", "{data}", "--output", "{out}"]),
            ("calibrate", ["calibrate", "--model", "{%s}" % fault, "--normal", "{normal}", "--output", "{out}"]),
            ("train", ["train", "--model", "{%s}" % fault, "--train-data", "{data}", "--output", "{out}"]),
            ("info", ["info", "{%s}" % fault]),
            ("export-onnx", ["export-onnx", "{%s}" % fault, "{out}.onnx"]),
            ("add-class", ["add-class", "{%s}" % fault, "widget", "--output", "{out}"]),
        )
    },
    # corrupt safetensors
    **{
        (command, "truncated_safetensors"): (argv, ["truncated/model.safetensors"])
        for command, argv in (
            ("detect", ["detect", "{image}", "--model", "{truncated}", "--output", "{out}"]),
            ("evaluate", ["evaluate", "--model", "{truncated}", "--data", "{data}", "--output", "{out}"]),
            ("calibrate", ["calibrate", "--model", "{truncated}", "--normal", "{normal}", "--output", "{out}"]),
            ("train", ["train", "--model", "{truncated}", "--train-data", "{data}", "--output", "{out}"]),
            ("export-onnx", ["export-onnx", "{truncated}", "{out}.onnx"]),
        )
    },
    ("convert-clip", "truncated_safetensors"): (["convert-clip", "{cut_safetensors}", "{out}"], ["cut.safetensors"]),
    ("push", "truncated_safetensors"): (
        ["push", "{truncated}", "me/model", "--dry-run", "{out}"],
        ["truncated/model.safetensors", "truncated"],
    ),
    ("info", "truncated_safetensors"): (["info", "{truncated}", "--verify"], ["truncated/model.safetensors"]),
    ("info", "refused_pickle"): (
        ["info", "{pickled}", "--verify"],
        ["pickled", "no model.safetensors", "refusing to load pytorch_model.bin"],
    ),
    # refused pickles
    **{
        (command, "refused_pickle"): (argv, ["pytorch_model.bin", "refusing", "no model.safetensors"])
        for command, argv in (
            ("detect", ["detect", "{image}", "--model", "{pickled}", "--output", "{out}"]),
            ("evaluate", ["evaluate", "--model", "{pickled}", "--data", "{data}", "--output", "{out}"]),
            ("calibrate", ["calibrate", "--model", "{pickled}", "--normal", "{normal}", "--output", "{out}"]),
            ("train", ["train", "--model", "{pickled}", "--train-data", "{data}", "--output", "{out}"]),
        )
    },
    ("convert-clip", "refused_pickle"): (["convert-clip", "{evil_pt}", "{out}"], ["evil.pt", "refusing"]),
    ("convert-original", "refused_pickle"): (
        ["convert-original", "--clip", "{evil_pt}", "--output", "{out}"],
        ["evil.pt", "refusing"],
    ),
    # missing input files and impossible values
    ("detect", "missing_input"): (["detect", "nope.png", "--model", "{model}", "--output", "{out}"], ["nope.png"]),
    ("evaluate", "missing_input"): (
        ["evaluate", "--model", "{model}", "--data", "nope", "--output", "{out}"],
        ["nope"],
    ),
    ("calibrate", "missing_input"): (
        ["calibrate", "--model", "{model}", "--normal", "nope", "--output", "{out}"],
        ["nope"],
    ),
    ("train", "missing_input"): (
        ["train", "--model", "{model}", "--train-data", "nope", "--output", "{out}"],
        ["nope"],
    ),
    ("sample-shots", "missing_input"): (["sample-shots", "nope", "--shots", "2", "--output", "{out}.jsonl"], ["nope"]),
    ("export-dataset", "missing_input"): (["export-dataset", "nope", "--output", "{out}"], ["nope"]),
    ("convert-tokenizer", "missing_input"): (["convert-tokenizer", "nope.txt", "{out}"], ["nope.txt"]),
    ("push", "missing_input"): (
        ["push", "{model}", "me/model", "--eval-results", "nope.json", "--dry-run", "{out}"],
        ["nope.json"],
    ),
    ("add-references", "missing_input"): (
        ["add-references", "{model}", "--class-name", "object", "--images", "nope", "--output", "{out}"],
        ["nope"],
    ),
    ("add-references", "truncated_safetensors"): (
        ["add-references", "{truncated}", "--class-name", "object", "--images", "{normal}", "--output", "{out}"],
        ["truncated/model.safetensors"],
    ),
    ("make-synthetic", "bad_value"): (["make-synthetic", "{out}", "--image-size", "8"], ["--image-size"]),
    ("push-metric", "bad_value"): (["push-metric", "me/not-an-id", "--dry-run", "{out}"], ["me/not-an-id"]),
    # errors raised inside DataLoader workers
    ("evaluate", "worker_error"): (
        ["evaluate", "--model", "{model}", "--data", "{data_corrupt}", "--output", "{out}", "--num-workers", "1"],
        ["hole/000.png", "image_path"],
    ),
    # encoding errors
    **{
        (command, "not_utf8"): (argv, ["latin1.jsonl", "UTF-8"])
        for command, argv in (
            ("sample-shots", ["sample-shots", "{latin1_jsonl}", "--shots", "2", "--output", "{out}.jsonl"]),
            ("evaluate", ["evaluate", "--model", "{model}", "--data", "{latin1_jsonl}", "--output", "{out}"]),
            ("train", ["train", "--model", "{model}", "--train-data", "{latin1_jsonl}", "--output", "{out}"]),
        )
    },
    # an output folder that another run is writing, or that holds other files
    **{
        (command, fault): (argv, names)
        for fault, target, names in (
            ("output_in_use", "{out}", ["in use", "pid", ".lock"]),
            ("output_foreign", "{foreign}", ["my_files", "thesis.tex"]),
        )
        for command, argv in (
            ("detect", ["detect", "{image}", "--model", "{model}", "--output", target]),
            ("evaluate", ["evaluate", "--model", "{model}", "--data", "{data}", "--output", target]),
            ("calibrate", ["calibrate", "--model", "{model}", "--normal", "{normal}", "--output", target]),
            ("add-class", ["add-class", "{model}", "widget", "--output", target]),
            (
                "add-references",
                ["add-references", "{model}", "--class-name", "object", "--images", "{normal}", "--output", target],
            ),
        )
    },
}
# Flags that keep stderr to the error line (no progress bars) and the work on the CPU.
QUIET = {
    "detect": ["--no-progress", "--device", "cpu"],
    "evaluate": ["--no-progress", "--device", "cpu"],
    "calibrate": ["--no-progress", "--device", "cpu"],
    "train": ["--no-progress", "--cpu", "--num-workers", "0"],
    "demo": ["--no-progress"],
}


def _argv(template, world, out):
    values = {key: str(value) for key, value in world.items()} | {"out": str(out)}
    argv = [part.format(**values) for part in template]
    return argv + QUIET.get(argv[0], [])


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("command", "fault"), sorted(CASES), ids=[f"{c}-{f}" for c, f in sorted(CASES)])
def test_expected_failure_is_one_named_line_with_exit_2(command, fault, world, tmp_path, capsys):
    template, names = CASES[(command, fault)]
    out = tmp_path / "out"
    argv = _argv(template, world, out)
    before = _snapshot(world["foreign"])
    if fault == "output_in_use":
        with output_lock(out, "another run"):  # a second open of the lock file: refused like another process
            code = main(argv)
    else:
        code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"aaclip {command}: error: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert "Traceback" not in captured.err and "Caught" not in captured.err
    assert _snapshot(world["foreign"]) == before  # a refused output folder keeps its files
    assert not out.exists() or fault == "missing_input" and command == "push"


def test_every_subcommand_with_inputs_is_covered():
    """Every subcommand that reads files or a model has at least one row (bench reads none)."""
    covered = {command for command, _ in CASES}
    assert set(build_parser()[1]) - covered <= {"bench"}


def test_debug_flag_and_env_show_the_traceback(world, tmp_path, monkeypatch):
    argv = ["detect", str(world["image"]), "--model", MISSING, "--output", str(tmp_path / "o"), "--no-progress"]
    with pytest.raises(FileNotFoundError, match=OFFLINE):
        main(["--debug", *argv])
    monkeypatch.setenv("AACLIP_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match=OFFLINE):
        main(argv)
    monkeypatch.setenv("AACLIP_DEBUG", "0")  # an explicit "off"
    assert main(argv) == 2


def test_the_debug_flag_is_listed_in_help(capsys):
    assert main([]) == 0
    assert "--debug" in capsys.readouterr().out


def test_a_bug_keeps_its_traceback_and_says_so(monkeypatch, capsys):
    """Only expected failures (`AAClipError`, an `OSError` naming a file) are shortened: a bug keeps its traceback."""
    from aaclip_hf.cli import info

    monkeypatch.setattr(info, "describe_environment", lambda: 1 + "x")
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "TypeError" in err
    assert "aaclip info: internal error (TypeError): this is a bug in aaclip-hf" in err.strip().splitlines()[-1]
    monkeypatch.setattr(info, "describe_environment", lambda: int("not a number"))
    assert main(["info"]) == 1  # a ValueError from a bug is a bug too, not a polite line


def test_the_real_hub_path_when_online_but_unreachable(monkeypatch, tmp_path, capsys):
    """Online with no Hub (an endpoint on a closed local port, no network used): 'the Hub is unreachable'."""
    from huggingface_hub import constants

    import aaclip_hf.runtime.loading as loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # skip the retry waits
    with pytest.raises(FileNotFoundError, match="the Hub is unreachable") as error:
        loading.load_model_and_processor("someone/not-cached", "cpu")
    assert "someone/not-cached" in str(error.value)
    # and through the CLI: one line
    code = main(["detect", "x.png", "--model", "someone/not-cached", "--output", str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert [line for line in lines if line.startswith("aaclip")] == [lines[-1]]
    assert "the Hub is unreachable" in lines[-1]


# ---------------------------------------------------------------------------------------- errors from workers


def test_an_error_raised_in_a_loader_worker_reaches_the_main_process_whole():
    """`CarryErrors` returns a worker's expected failure as an item: the main process raises the same error, with
    its own message, instead of torch's re-raise that carries the worker's traceback as text."""
    from aaclip_hf.data.dataset import CarryErrors, collate_or_error, raise_carried

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            if index == 2:
                raise BadInputError("image data is corrupt", "/data/a.png", "image_path")
            return torch.tensor(index)

    loader = torch.utils.data.DataLoader(
        CarryErrors(Broken()), batch_size=2, num_workers=1, collate_fn=collate_or_error(torch.stack)
    )
    batches = raise_carried(loader)
    assert next(batches).tolist() == [0, 1]
    with pytest.raises(BadInputError) as error:
        next(batches)
    assert str(error.value) == "file '/data/a.png', field 'image_path': image data is corrupt"


def test_the_worker_unwrapping_runs_in_a_real_worker_process(world, tmp_path, capsys):
    """evaluate with one loader worker: the corrupt image is named once, as the reader words it."""
    code = main(
        [
            "evaluate",
            "--model",
            str(world["model"]),
            "--data",
            str(world["data_corrupt"]),
            "--output",
            str(tmp_path / "o"),
            "--num-workers",
            "1",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"file '{world['corrupt_image']}', field 'image_path'" in err


def test_refused_pickles_corrupt_files_and_foreign_encodings_are_named_at_their_source(world):
    from aaclip_hf.data.readers import load_samples
    from aaclip_hf.errors import CorruptWeightsError, MissingExtraError, UnsafeCheckpointError
    from aaclip_hf.runtime.serialization import load_tensor_file

    with pytest.raises(UnsafeCheckpointError, match="refusing to load.*GLOBAL") as error:
        load_tensor_file(world["evil_pt"])
    assert str(world["evil_pt"]) in str(error.value)
    with pytest.raises(CorruptWeightsError) as error:
        load_tensor_file(world["cut_safetensors"])
    assert str(error.value).startswith(f"{world['cut_safetensors']}: not a readable safetensors file")
    with pytest.raises(BadInputError, match="not UTF-8 text.*expected UTF-8 metadata") as error:
        load_samples(str(world["latin1_jsonl"]))
    assert str(world["latin1_jsonl"]) in str(error.value)
    assert expected_error_message(MissingExtraError("the app needs gradio: pip install 'aaclip-hf[app]'"))
    assert expected_error_message(ImportError("a broken import is a bug")) is None
    assert expected_error_message(FileNotFoundError(2, "No such file or directory", "x.png")) == (
        "x.png: No such file or directory"
    )


def test_a_training_worker_error_is_one_line(world, tmp_path, monkeypatch, capsys):
    """`aaclip train --num-workers 1`: an image that turns bad after the pre-flight scan fails in a worker."""
    from aaclip_hf.data.dataset import AnomalyDataset

    original = AnomalyDataset.__getitem__

    def fails_in_worker(self, index):
        if torch.utils.data.get_worker_info() is not None:  # only inside a loader worker process
            raise BadInputError("image data is corrupt or truncated", self.samples[index].image_path, "image_path")
        return original(self, index)

    monkeypatch.setattr(AnomalyDataset, "__getitem__", fails_in_worker)
    argv = ["train", "--model", str(world["model"]), "--train-data", str(world["data"]), "--output", str(tmp_path)]
    argv += ["--stage", "vision", "--max-steps", "1", "--vision-batch-size", "2", "--num-workers", "1"]
    assert main([*argv, "--cpu", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aaclip train: error: file '"), lines
    assert "field 'image_path': image data is corrupt" in lines[0] and "Caught" not in lines[0]

"""The `aaclip` entry point: every subcommand is wired, help works, input errors are one line."""

from __future__ import annotations

import argparse

import pytest

from aaclip_hf.cli import build_parser, main


COMMANDS = sorted(build_parser()[1])


def test_the_workflow_commands_are_registered():
    for name in ("detect", "calibrate", "evaluate", "train", "make-synthetic", "sample-shots", "export-onnx"):
        assert name in COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_a_parser_and_a_runner(name):
    command = build_parser()[1][name]
    run, configure = command.get_default("func"), command.get_default("configure")
    assert callable(run) and run.__name__.startswith("run_")
    configure(argparse.ArgumentParser())  # its flags build on a fresh parser
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    printed = capsys.readouterr().out
    for name in COMMANDS:
        assert name in printed


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_input_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aaclip info: error:" in err and "no config.json" in err
    assert "Traceback" not in err

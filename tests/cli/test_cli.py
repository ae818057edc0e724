"""The `aaclip` entry point: every subcommand is wired, help works, input errors are one line."""

from __future__ import annotations

import argparse
import importlib

import pytest

from aaclip_hf.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_a_parser_and_a_runner(name):
    module_name, suffix, _help = COMMANDS[name]
    module = importlib.import_module(module_name)
    prefix = f"_{suffix}" if suffix else ""
    parser = argparse.ArgumentParser()
    getattr(module, f"add{prefix}_arguments")(parser)
    assert callable(getattr(module, f"run{prefix}"))
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
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_input_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "aaclip info: error:" in err and "has no config.json" in err and "Traceback" not in err

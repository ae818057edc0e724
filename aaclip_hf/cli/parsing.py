"""How a subcommand joins the `aaclip` parser: its arguments are added only once it is chosen."""

from __future__ import annotations

import argparse


__all__ = ["HelpFormatter", "add_command"]


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help (`--help` says what an omitted flag means), unless the help already
    does or there is none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, []) and not action.required
        if "%(default)" in text or not shown or action.option_strings == [] and action.nargs in ("*", "+"):
            return text
        return f"{text} (default: %(default)s)"


def add_command(subparsers, name: str, help_text: str, run, configure) -> argparse.ArgumentParser:
    """A subcommand whose arguments `configure(parser)` adds once it is chosen (so `aaclip --help` stays light)."""
    parser = subparsers.add_parser(
        name, help=help_text, description=help_text, add_help=False, formatter_class=HelpFormatter
    )
    parser.set_defaults(func=run, configure=configure)
    return parser

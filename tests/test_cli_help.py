"""A first-time user learns the CLI from `--help`: every command says what it does, every flag says
what it means and its default, and `--version` names the installed version."""
from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from pipeline.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subparsers(child, path + (name,))


def _commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return list(_subparsers(build_parser()))


def test_every_command_has_a_description():
    missing = [" ".join(path) for path, p in _commands() if not p.description]
    assert missing == []


def test_every_flag_and_argument_has_help_text():
    missing = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in _commands() for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


def test_help_shows_a_flags_default():
    generate = dict(_commands())[("generate",)]
    assert "(default: 8)" in generate.format_help()  # --max-length


def test_help_does_not_say_a_default_twice():
    for path, p in _commands():
        for line in p.format_help().splitlines():
            assert line.count("(default:") <= 1, (path, line)


def test_version_prints_the_installed_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"specstop {version('specstop')}"

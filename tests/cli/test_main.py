"""vdictl's dispatch: the command table matches what the modules register."""

from __future__ import annotations

import argparse

import pytest

from vdigui.cli import COMMANDS, build_parser


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def test_command_table_lists_exactly_the_registered_commands() -> None:
    assert _choices(build_parser()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_registered_by_its_module(command: str) -> None:
    assert command in _choices(build_parser(command))

"""Docs under test: every command has help, and the README shows each one."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtsearch.cli import main

README = (Path(__file__).parent.parent / "README.md").read_text()
COMMANDS = sorted(main.commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_has_help_and_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert main.commands[command].help and "Example" in main.commands[command].help


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_shows_each_command(command):
    assert re.search(rf"^\s*vtsearch {command}\b", README, re.MULTILINE), command


def test_readme_starts_with_the_two_setup_commands():
    code = re.search(r"```(?:bash|sh)?\n(.*?)```", README, re.DOTALL).group(1)
    commands = [line for line in code.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci

"""Every `edgefleet ...` command shown in README.md exists (its --help succeeds)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgefleet.core.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def shown_commands() -> list[list[str]]:
    """The `edgefleet` invocations in the README's code blocks, as argument lists."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in re.split(r"\|\||&&|\|", line):
                words = shlex.split(part.split("#", 1)[0].strip() or "true")
                # the command word: after `sudo`, `do` (a loop body) and VAR=value
                while words and (words[0] in ("sudo", "do") or "=" in words[0]):
                    words = words[1:]
                if words and (words[0] == "edgefleet" or words[0].endswith("/bin/edgefleet")):
                    commands.append(words[1:])
    return commands


def command_path(args: list[str]) -> list[str]:
    """The leading words of ``args`` that name (sub)commands."""
    ctx = click.Context(cli)
    command: click.Command = cli
    path: list[str] = []
    for word in args:
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, word)
        if sub is None:
            break
        path.append(word)
        command = sub
    return path


def test_readme_shows_commands() -> None:
    assert len(shown_commands()) >= 20


@pytest.mark.parametrize(
    "path",
    sorted({" ".join(command_path(args)) for args in shown_commands()}),
)
def test_readme_command_exists(path: str) -> None:
    words = path.split()
    assert words, "a README line runs `edgefleet` without a known command"
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output

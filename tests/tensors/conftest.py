"""Fixtures for the tensor-model tests: the real CLI in-process, and an agent state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.agents import AgentEnv, make_env

from edgefleet.core.cli.main import main

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``edgefleet ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return int(info.value.code or 0), out, err

    return run


@pytest.fixture
def env(tmp_path: Path) -> AgentEnv:
    """An agent config and state directory (test profile, trusted publisher key)."""
    return make_env(tmp_path / "agent")

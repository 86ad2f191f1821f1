"""``agent install`` shows the deployment stages as they pass (on a terminal, not with --json)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.support.agents import make_env, stop
from tests.terminal import run_with_terminal_stderr


def install(env_config: Path, bundle: Path, *extra: str) -> tuple[int, str, str]:
    return run_with_terminal_stderr(
        [sys.executable, "-m", "edgefleet.core.cli.main", "agent", "install", str(bundle),
         "--config", str(env_config), *extra]
    )  # fmt: skip


def stages(terminal: str) -> list[str]:
    return [line[4:].strip() for line in terminal.splitlines() if line.startswith("... ")]


@pytest.mark.subprocess
def test_stages_without_a_daemon(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    code, out, err = install(env.config_path, env.bundle(1))
    assert code == 0, err
    shown = [stage.split(" ")[0].rstrip(":") for stage in stages(err)]
    assert shown == ["copying", "verifying", "staged", "activating", "serving", "committed"], err
    assert "committed" in out


@pytest.mark.subprocess
def test_stages_through_the_daemon_and_none_with_json(tmp_path: Path) -> None:
    env = make_env(tmp_path, probation={"min_requests": 0, "max_seconds": 0})
    proc = env.start_daemon()
    try:
        env.endpoint_url(proc)
        code, _out, err = install(env.config_path, env.bundle(1), "--wait", "final")
        assert code == 0, err
        shown = stages(err)
        assert shown and shown[-1].startswith("committed"), (shown, env.log_tail())
        code, out, err = install(env.config_path, env.bundle(2), "--json")
        assert code == 0, err
        assert not stages(err) and out.lstrip().startswith("{")
    finally:
        stop(proc)

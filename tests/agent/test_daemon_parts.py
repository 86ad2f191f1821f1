"""Small parts of the daemon: journald-friendly logging, a corrupt telemetry database."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from tests.support.agents import make_env

from edgefleet.agent.daemon import setup_logging
from edgefleet.agent.deploy.context import AgentContext


def test_log_lines_carry_syslog_priorities_under_systemd(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging("info")
    log = logging.getLogger("edgefleet.agent.test")
    log.info("hello")
    log.warning("careful\nsecond line")
    log.debug("hidden")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "<6>edgefleet.agent.test: hello",
        "<4>edgefleet.agent.test: careful | second line",
    ]


def test_plain_log_lines_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("debug")
    logging.getLogger("edgefleet.agent.test").debug("detail")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("DEBUG edgefleet.agent.test: detail")


def test_a_corrupt_telemetry_database_is_moved_aside(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ctx = AgentContext.load(env.config_path)
    ctx.layout.ensure()
    ctx.layout.telemetry_db.write_bytes(b"this is not a database" * 100)
    reset_at_ms = int(time.time() * 1000)
    buffer = ctx.open_buffer_or_reset()
    try:
        # The new buffer numbers from the clock: no seq the hub already holds is reused.
        assert buffer.append("event", {"model": "m", "state": "x", "at": 1.0}) >= reset_at_ms
        assert buffer.integrity_ok()
    finally:
        buffer.close()
    aside = ctx.layout.root / "telemetry.db.corrupt"
    assert aside.read_bytes().startswith(b"this is not a database")

"""The root command: groups listed without importing roles, errors mapped to exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgefleet.core.errors import (
    BundleError,
    ConfigError,
    EdgefleetError,
    ProtocolError,
    StorageError,
    exit_code_for,
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.core.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.subprocess
def test_help_lists_every_group() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for group in ("keys", "bundle", "registry", "pack", "agent", "hub", "demo"):
        assert f"  {group}" in result.stdout


@pytest.mark.subprocess
def test_help_does_not_import_roles() -> None:
    code = (
        "import sys\n"
        "from edgefleet.core.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in sys.modules if m.startswith(('edgefleet.packager', "
        "'edgefleet.agent', 'edgefleet.hub', 'onnxruntime', 'sklearn', 'onnx'))]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.subprocess
def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BundleError("x"), 3),
        (ConfigError("x"), 2),
        (StorageError("x"), 1),
        (ProtocolError("x", side="device"), 1),
        (EdgefleetError("x"), 1),
        (RuntimeError("x"), 1),
    ],
    ids=["verification", "usage", "operational", "protocol", "base", "foreign"],
)
def test_exit_code_families(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


def test_protocol_error_names_the_side() -> None:
    assert str(ProtocolError("bad frame", side="device")) == "device broke the protocol: bad frame"


@pytest.mark.subprocess
def test_ctrl_c_exits_130() -> None:
    code = (
        "import click\n"
        "from edgefleet.core.cli import main as m\n"
        "@m.cli.command('sleepy')\n"
        "def sleepy():\n    raise KeyboardInterrupt\n"
        "m.main(['sleepy'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr

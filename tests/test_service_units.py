"""The agent's and the hub's systemd units, checked by ``systemd-analyze verify``.

``systemd-analyze`` comes with the ``systemd`` package (scripts/install-system-deps.sh);
without it this test fails rather than skips: an unverified unit is not a checked unit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.core.cli.main import cli
from edgefleet.core.systemd_unit import ServiceSpec, render_unit

EXECUTABLE = str(Path(sys.executable).absolute().parent / "edgefleet")
HARDENING = (
    "User=edgefleet",
    "Group=edgefleet",
    "ProtectSystem=strict",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "Restart=on-failure",
)


def verify(unit_dir: Path, *names: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    assert binary is not None, "systemd-analyze missing: run scripts/install-system-deps.sh"
    return subprocess.run(
        [binary, "verify", *(str(unit_dir / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def unit_of(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--executable", EXECUTABLE])
    assert result.exit_code == 0, result.output
    return result.output


def write_hub_toml(path: Path, store_dir: Path) -> None:
    path.write_text(
        f'[store]\npath = "{store_dir}/hub.db"\nbundles_dir = "{store_dir}/bundles"\n'
        '[keys]\nhub_signing_key = "hub.key"\npublisher_keys = ["publisher.pub"]\n'
    )


@pytest.mark.subprocess
def test_both_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    hub_toml = tmp_path / "hub.toml"
    write_hub_toml(hub_toml, tmp_path / "hub-data")
    agent = unit_of("agent", "service-unit", "--config", str(tmp_path / "absent.toml"))
    hub = unit_of("hub", "service-unit", "--config", str(hub_toml))
    (tmp_path / "edgefleet-agent.service").write_text(agent)
    (tmp_path / "edgefleet-hub.service").write_text(hub)
    result = verify(tmp_path, "edgefleet-agent.service", "edgefleet-hub.service")
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for unit, state in ((agent, "/var/lib/edgefleet"), (hub, "/var/lib/edgefleet-hub")):
        for line in (*HARDENING, f"WorkingDirectory={state}", f"StateDirectory={state[9:]}"):
            assert line in unit.splitlines(), line
        assert "WatchdogSec" not in unit
        rw = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
        assert rw.split("=", 1)[1].split()[0] == state
    # The hub's store and bundles live outside its state directory: they must be writable.
    assert f"{tmp_path / 'hub-data'} {tmp_path / 'hub-data' / 'bundles'}" in hub
    assert f"--config {hub_toml}" in hub


@pytest.mark.subprocess
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: a misspelt hardening key is reported on stderr.
    spec = ServiceSpec(
        description="x",
        exec_start=f"{EXECUTABLE} hub serve",
        user="edgefleet",
        state_dir=Path("/var/lib/x"),
    )
    broken = render_unit(spec).replace("ProtectSystem=strict", "ProtectSystem=strictly")
    (tmp_path / "broken.service").write_text(broken)
    result = verify(tmp_path, "broken.service")
    assert "ProtectSystem" in result.stderr or "protect system" in result.stderr.lower()


def test_agent_working_directory_is_its_state_dir(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    state = tmp_path / "state"
    from edgefleet.agent.config import example_config

    config.write_text(example_config(state_dir=state))
    unit = unit_of("agent", "service-unit", "--config", str(config))
    assert f"WorkingDirectory={state}" in unit.splitlines()
    assert "StateDirectory=" not in unit  # systemd manages /var/lib/NAME only


def test_relative_state_dir_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        ServiceSpec(description="x", exec_start="x", user="u", state_dir=Path("rel"))

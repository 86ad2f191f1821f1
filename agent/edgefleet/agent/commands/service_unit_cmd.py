"""``edgefleet agent service-unit``: a hardened systemd unit for the daemon.

No watchdog (``WatchdogSec``): the agent does not speak sd_notify, and a
watchdog that kills a Pi's agent during a long bundle verification would do
more harm than good; ``Restart=on-failure`` covers crashes. The state
directory is the only writable path.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from edgefleet.agent.config import DEFAULT_STATE_DIR
from edgefleet.agent.deploy.context import DEFAULT_CONFIG
from edgefleet.core.cli.output import emit, json_option

UNIT_NAME = "edgefleet-agent.service"


def default_executable() -> str:
    found = shutil.which("edgefleet")
    if found:
        return str(Path(found).resolve())
    return str(Path(sys.executable).resolve().parent / "edgefleet")


def render_unit(
    *,
    executable: str,
    config: Path,
    state_dir: Path,
    user: str,
    shutdown_timeout_s: float = 10.0,
) -> str:
    state_directory = ""
    if state_dir.parent == Path("/var/lib"):
        # systemd creates /var/lib/NAME owned by User= with this mode.
        state_directory = f"StateDirectory={state_dir.name}\nStateDirectoryMode=0750\n"
    stop_timeout = int(shutdown_timeout_s) + 20
    return f"""\
[Unit]
Description=edgefleet agent: offline inference, telemetry buffer, safe model installs
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={executable} agent run --config {config}
Restart=on-failure
RestartSec=5
# SIGTERM starts a graceful shutdown (the agent needs at most shutdown_timeout_s).
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
User={user}
Group={user}
{state_directory}ReadWritePaths={state_dir}
UMask=0027
Environment=PYTHONUNBUFFERED=1

# Hardening (no watchdog: the agent does not use sd_notify).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


@click.command("service-unit")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent.toml the unit runs with (its state_dir is used when the file exists).",
)
@click.option("--user", default="edgefleet", show_default=True, help="User (and group) to run as.")
@click.option("--executable", default=None, help="Path of the edgefleet command.")
@json_option
def service_unit(config_path: Path, user: str, executable: str | None, as_json: bool) -> None:
    """Print a systemd unit for `edgefleet agent run`.

    Save it as /etc/systemd/system/edgefleet-agent.service, then
    `systemctl daemon-reload && systemctl enable --now edgefleet-agent`.
    """
    state_dir = DEFAULT_STATE_DIR
    shutdown_timeout_s = 10.0
    config_path = config_path.resolve() if config_path.exists() else config_path
    if config_path.exists():
        from edgefleet.agent.config import AgentConfig

        config = AgentConfig.load(config_path)
        state_dir = config.state_dir
        shutdown_timeout_s = config.shutdown_timeout_s
    unit = render_unit(
        executable=executable or default_executable(),
        config=config_path,
        state_dir=state_dir,
        user=user,
        shutdown_timeout_s=shutdown_timeout_s,
    )
    if as_json:
        emit(True, {"name": UNIT_NAME, "unit": unit})
    else:
        click.echo(unit, nl=False)

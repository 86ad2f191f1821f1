"""``edgefleet agent service-unit``: a hardened systemd unit for the daemon.

The unit's text (dedicated user, the state directory as working directory and only
writable path, hardening, restart policy, no watchdog) comes from
:mod:`edgefleet.core.systemd_unit`, shared with ``hub service-unit``.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.agent.config import DEFAULT_STATE_DIR
from edgefleet.agent.deploy.context import DEFAULT_CONFIG
from edgefleet.core.cli.output import json_option
from edgefleet.core.systemd_unit import ServiceSpec, default_executable, emit_unit, unit_options
from edgefleet.core.systemd_unit import render_unit as render_service_unit

UNIT_NAME = "edgefleet-agent.service"


def render_unit(
    *,
    executable: str,
    config: Path,
    state_dir: Path,
    user: str,
    shutdown_timeout_s: float = 10.0,
) -> str:
    return render_service_unit(
        ServiceSpec(
            description="edgefleet agent: offline inference, telemetry buffer, safe model installs",
            exec_start=f"{executable} agent run --config {config}",
            user=user,
            state_dir=state_dir,
            # the agent needs at most shutdown_timeout_s for a graceful stop
            stop_timeout_s=int(shutdown_timeout_s) + 20,
        )
    )


@click.command("service-unit")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent.toml the unit runs with (its state_dir is used when the file exists).",
)
@unit_options
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
    emit_unit(UNIT_NAME, unit, as_json)

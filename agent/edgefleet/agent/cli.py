"""``edgefleet agent``: each subcommand lives in its own module under ``commands/``."""

from __future__ import annotations

import click

from edgefleet.core.cli.main import LazyGroup, RoleCommand


def _cmd(module: str, attribute: str, summary: str) -> RoleCommand:
    return RoleCommand(f"edgefleet.agent.commands.{module}", attribute, "agent", summary)


AGENT_COMMANDS: dict[str, RoleCommand] = {
    "run": _cmd("run_cmd", "run", "Run the daemon (systemd-friendly)."),
    "install": _cmd("install_cmd", "install", "Install a bundle from a local file."),
    "status": _cmd("status_cmd", "status", "Models, versions, slots, states, backlog."),
    "rollback": _cmd("rollback_cmd", "rollback", "Go back one version of a model."),
    "predict": _cmd("predict_cmd", "predict", "Batch inference from a file."),
    "service-unit": _cmd("service_unit_cmd", "service_unit", "Print a systemd unit."),
}


@click.group(cls=LazyGroup, lazy_commands=AGENT_COMMANDS)
def agent() -> None:
    """The device daemon: offline inference, telemetry buffer, safe installs."""

"""``edgefleet agent status``: models, versions, slots, deployment states, telemetry backlog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.agent.deploy.context import DEFAULT_CONFIG
from edgefleet.core.cli.output import emit, json_option


def _version(slot: dict[str, Any] | None) -> str:
    if slot is None:
        return "-"
    return f"v{slot['version']} ({slot['bundle_sha256'][:12]})"


def render(status: dict[str, Any]) -> str:
    lines = [
        f"device {status['device_id']}  profile {status['profile']}  "
        f"agent {'running' if status['agent_running'] else 'stopped'}"
        + (f"  endpoint {status['endpoint']['url']}" if status.get("endpoint") else ""),
        "",
    ]
    if not status["models"]:
        lines.append("no models installed")
    for model in status["models"]:
        lines.append(
            f"{model['name']:<20} active {_version(model['active'])}  "
            f"previous {_version(model['previous'])}"
        )
        if model.get("not_served"):
            lines.append(f"{'':<20} {model['not_served']}")
        last = model.get("last_deployment")
        if last:
            version = f" v{last['version']}" if last.get("version") is not None else ""
            reason = f": {last['reason']}" if last.get("reason") else ""
            lines.append(f"{'':<20} last {last['kind']}{version} {last['state']}{reason}")
    deployment = status.get("deployment")
    lines.append("")
    if deployment:
        lines.append(
            f"deployment {deployment['id']}: {deployment['kind']} "
            f"{deployment.get('model') or ''} {deployment['state']}"
            + (f" ({deployment['reason']})" if deployment.get("reason") else "")
        )
    else:
        lines.append("no deployment in progress")
    telemetry = status.get("telemetry")
    if telemetry and "error" not in telemetry:
        lines.append(
            f"telemetry: {telemetry['backlog_records']} records waiting "
            f"({telemetry['backlog_bytes']} bytes), {telemetry['open_windows']} open windows, "
            f"{telemetry['size_bytes']}/{telemetry['budget_bytes']} bytes on disk, "
            f"{telemetry['dropped_records']} dropped"
        )
    elif telemetry:
        lines.append(f"telemetry: {telemetry['error']}")
    else:
        lines.append("telemetry: no buffer yet")
    return "\n".join(lines)


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
)
@json_option
def status(config_path: Path, as_json: bool) -> None:
    """Installed models with their active and previous versions, the deployment in
    progress, the last outcome of each model with its reason, and the telemetry backlog."""
    from edgefleet.agent.deploy.context import AgentContext
    from edgefleet.agent.deploy.status import collect_status

    emit(as_json, collect_status(AgentContext.load(config_path)), render)

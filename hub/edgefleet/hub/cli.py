"""``edgefleet hub``: each subcommand lives in its own module under ``commands/``."""

from __future__ import annotations

import click

from edgefleet.core.cli.main import LazyGroup, RoleCommand


def _cmd(module: str, attribute: str, summary: str) -> RoleCommand:
    return RoleCommand(f"edgefleet.hub.commands.{module}", attribute, "hub", summary)


HUB_COMMANDS: dict[str, RoleCommand] = {
    "serve": _cmd("serve_cmd", "serve", "Run the hub service."),
    "device": _cmd("device_cmd", "device", "Enroll, revoke, remove devices."),
    "devices": _cmd("devices_cmd", "devices", "List the fleet."),
    "broker-config": _cmd("broker_config_cmd", "broker_config", "Write Mosquitto config + ACL."),
    "publish": _cmd("publish_cmd", "publish", "Verify and store a bundle."),
    "bundles": _cmd("publish_cmd", "bundles", "List published bundles."),
    "rollout": _cmd("rollout_cmd", "rollout", "Staged rollouts with gates."),
    "drift": _cmd("drift_cmd", "drift", "Fleet drift report."),
    "evidence": _cmd("evidence_cmd", "evidence", "Field evidence of a version (JSON)."),
    "alerts": _cmd("alerts_cmd", "alerts", "Open and resolved alerts."),
    "service-unit": _cmd("service_unit_cmd", "service_unit", "Print a systemd unit."),
    "store": _cmd("store_cmd", "store", "Move the hub store to PostgreSQL."),
    "api": _cmd("api_cmd", "api", "REST API and dashboard."),
    "openapi": _cmd("api_cmd", "openapi", "Print the API's OpenAPI document."),
    "token": _cmd("token_cmd", "token", "API tokens with roles."),
}


@click.group(cls=LazyGroup, lazy_commands=HUB_COMMANDS)
def hub() -> None:
    """The fleet hub: enrollment, distribution, rollouts, drift and alerts."""

"""``edgefleet hub device reissue|revoke|remove``: a device's broker account after enrollment.

Each rewrites the broker's password file and ACL in ``[broker] config_dir`` and runs
``[broker] reload_command`` (see :mod:`edgefleet.hub.console.lifecycle`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.commands.common import config_option, hub_store
from edgefleet.hub.console.service import FleetConsole
from edgefleet.hub.enrollment import DEFAULT_STATE_DIR


def _broker_note(r: dict[str, Any]) -> str:
    return f"broker: {r['broker']['detail']}"


@click.command()
@click.argument("device_id")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, help="Agent state dir.")
@click.option("--endpoint-port", default=8080, show_default=True, type=int)
@config_option
@json_option
def reissue(
    device_id: str, state_dir: str, endpoint_port: int, config_path: Path | None, as_json: bool
) -> None:
    """New broker password for DEVICE_ID (re-admits a revoked device); prints its agent.toml."""
    with hub_store(config_path) as (config, store):
        result = FleetConsole(config, store).reissue_device(
            device_id, state_dir=state_dir, endpoint_port=endpoint_port
        )
    emit(as_json, result, _render_reissued)


def _render_reissued(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"# re-issued credentials of {r['device']}; the old password no longer works",
            f"# {_broker_note(r)}",
            "# ---- agent.toml",
            r["agent_toml"].rstrip(),
            "# ---- trust.json",
            json.dumps(r["trust"], indent=2, sort_keys=True),
        ]
    )


@click.command()
@click.argument("device_id")
@config_option
@json_option
def revoke(device_id: str, config_path: Path | None, as_json: bool) -> None:
    """Close DEVICE_ID's broker account; its record and history stay."""
    with hub_store(config_path) as (config, store):
        result = FleetConsole(config, store).revoke_device(device_id)
    emit(as_json, result, lambda r: f"revoked {r['device']}; {_broker_note(r)}")


@click.command()
@click.argument("device_id")
@config_option
@json_option
def remove(device_id: str, config_path: Path | None, as_json: bool) -> None:
    """Delete DEVICE_ID (refused while an active rollout includes it)."""
    with hub_store(config_path) as (config, store):
        result = FleetConsole(config, store).remove_device(device_id)
    emit(as_json, result, lambda r: f"removed {r['device']}; {_broker_note(r)}")

"""``edgefleet hub devices``: the fleet at a glance, with why a device refuses its directive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.commands.common import ago, config_option, hub_store, now, table
from edgefleet.hub.console.devices import DEVICE_STATES, DeviceFilter
from edgefleet.hub.console.service import FleetConsole


@click.command()
@click.option("--group", default=None, help="Only devices of this group.")
@click.option("--state", type=click.Choice(DEVICE_STATES), default=None, help="Only this state.")
@config_option
@json_option
def devices(group: str | None, state: str | None, config_path: Path | None, as_json: bool) -> None:
    """List enrolled devices: online, last seen, group, profile, state, models, refusals."""
    current = now()
    with hub_store(config_path) as (config, store):
        rows = FleetConsole(config, store).device_rows(DeviceFilter(group=group, state=state))
        result = {"devices": rows, "counters": store.counters(), "now": current}
    emit(as_json, result, lambda r: _render(r, current))


def _render(result: dict[str, Any], current: float) -> str:
    if not result["devices"]:
        return "no devices enrolled (edgefleet hub device add ID --profile P)"
    body = []
    for d in result["devices"]:
        models = ", ".join(
            f"{name}:v{m['version'] if m['version'] is not None else '-'}"
            + (f" ({m['deployment']})" if m["deployment"] else "")
            for name, m in sorted(d["models"].items())
        )
        body.append(
            [
                d["device"],
                "online" if d["online"] else "offline",
                ago(d["last_seen"], current),
                d["group"] or "-",
                d["profile"],
                d["state"] + (" (revoked)" if d["revoked"] else ""),
                models or "-",
            ]
        )
    online = sum(1 for d in result["devices"] if d["online"])
    text = table(["DEVICE", "STATUS", "LAST SEEN", "GROUP", "PROFILE", "STATE", "MODELS"], body)
    lines = [text, f"{len(result['devices'])} devices, {online} online"]
    refusing = [d for d in result["devices"] if d["refusal"]]
    if refusing:
        lines.append(f"{len(refusing)} refusing the hub's directive:")
        lines += [f"  {d['device']}: {d['refusal'][:200]}" for d in refusing]
    return "\n".join(lines)

"""``edgefleet hub device add ID --profile P``: enroll a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.broker_config import is_loopback_host
from edgefleet.hub.commands.common import config_option, hub_store, now
from edgefleet.hub.enrollment import DEFAULT_STATE_DIR, enroll_device


@click.group()
def device() -> None:
    """Enroll, re-key, revoke and remove devices."""


@device.command("add")
@click.argument("device_id")
@click.option("--profile", required=True, help="Device profile name (or path to a profile .toml).")
@click.option("--group", default=None, help="Group name used by rollout selectors (group=G).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag (repeatable).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write agent.toml, trust.json (and ca.crt) here instead of printing them.",
)
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, help="Agent state dir.")
@click.option("--endpoint-port", default=8080, show_default=True, type=int)
@click.option("--profiles", "profiles_dir", type=click.Path(path_type=Path), default=None)
@config_option
@json_option
def add(
    device_id: str,
    profile: str,
    group: str | None,
    tags: tuple[str, ...],
    out_dir: Path | None,
    state_dir: str,
    endpoint_port: int,
    profiles_dir: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Enroll DEVICE_ID and print (or write) its agent.toml, trust store and credentials."""
    with hub_store(config_path) as (config, store):
        enrollment = enroll_device(
            store,
            config,
            device_id,
            profile,
            now(),
            group=group,
            tags=tags,
            state_dir=state_dir,
            endpoint_port=endpoint_port,
            profiles_dir=profiles_dir,
            out_dir=out_dir,
        )
    if is_loopback_host(config.broker.public_host):
        click.echo(
            f"warning: {device_id} will connect to {config.broker.public_host}, which is itself; "
            "set broker.device_host in hub.toml to the address devices reach",
            err=True,
        )
    emit(as_json, enrollment.to_dict(), _render)


def _render(result: dict[str, Any]) -> str:
    if result["files"]:
        lines = [f"enrolled {result['device']} ({result['profile']}); wrote:"]
        lines += [f"  {p}" for p in result["files"]]
        lines.append("copy these to the device (agent.toml holds its broker password),")
        lines.append("then rerun `edgefleet hub broker-config` and reload mosquitto.")
        return "\n".join(lines)
    parts = [
        f"# enrolled {result['device']} ({result['profile']})",
        f"# broker username: {result['mqtt']['username']}",
        f"# broker password: {result['mqtt']['password']}",
        "# ---- agent.toml",
        result["agent_toml"].rstrip(),
        "# ---- trust.json",
        json.dumps(result["trust"], indent=2, sort_keys=True),
    ]
    if result["ca_crt"]:
        parts += ["# ---- ca.crt", result["ca_crt"].rstrip()]
    return "\n".join(parts)


def _lifecycle() -> None:
    from edgefleet.hub.commands import device_lifecycle_cmd as lc

    for command in (lc.reissue, lc.revoke, lc.remove):
        device.add_command(command)


_lifecycle()

"""``edgefleet hub broker-config --out DIR``: Mosquitto config, password file and ACL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.broker_config import write_broker_config
from edgefleet.hub.commands.common import config_option, hub_store
from edgefleet.hub.console.lifecycle import broker_devices


@click.command("broker-config")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--port", type=int, default=None, help="Listener port (default 1883, 8883 with TLS).")
@click.option(
    "--bind",
    default=None,
    help="Listener address (default 127.0.0.1; 0.0.0.0 for all interfaces; required "
    "with --tls-host).",
)
@click.option(
    "--tls-host",
    "tls_hosts",
    multiple=True,
    help="Enable TLS with a generated CA; the server certificate names these hosts (repeatable).",
)
@click.option("--no-persistence", is_flag=True, help="Do not persist retained messages.")
@click.option(
    "--run-as",
    default=None,
    help="Account mosquitto switches to when started as root (writes `user`); the files "
    "it reads are given to that account's group.",
)
@click.option(
    "--hubs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Hub processes sharing this broker: with 2 or more, each gets its own account, "
    "client id and hub-K-broker.toml.",
)
@config_option
@json_option
def broker_config(
    out_dir: Path,
    port: int | None,
    bind: str | None,
    tls_hosts: tuple[str, ...],
    no_persistence: bool,
    run_as: str | None,
    hubs: int,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Write mosquitto.conf, passwd and acl confining every device to its own topics."""
    with hub_store(config_path) as (config, store):
        files = write_broker_config(
            out_dir,
            config,
            broker_devices(store.list_devices()),  # revoked devices stay out
            port=port,
            bind=bind,
            tls_hosts=list(tls_hosts),
            persistence=not no_persistence,
            run_as=run_as,
            hubs=hubs,
        )
    result: dict[str, Any] = {
        "conf": str(files.conf),
        "password_file": str(files.password_file),
        "acl_file": str(files.acl_file),
        "port": files.port,
        "devices": files.devices,
        "hub_username": files.hub_username,
        "hub_password_file": str(files.hub_password_file) if files.hub_password_file else None,
        "bind": files.bind,
        "tls": None if files.tls is None else {k: str(v) for k, v in vars(files.tls).items()},
        "hub_toml": files.hub_toml,
        "hub_toml_file": str(files.hub_toml_file),
        "hub_toml_mismatches": list(files.mismatches),
        "hub_processes": [
            {
                "username": a.username,
                "client_id": a.username,
                "password_file": str(a.password_file),
                "hub_toml_file": str(a.hub_toml_file),
            }
            for a in files.hub_processes
        ],
    }
    emit(as_json, result, _render)


def _render(r: dict[str, Any]) -> str:
    lines = [
        f"wrote {r['conf']} (listener {r['bind']}:{r['port']}), {r['password_file']} "
        f"({r['devices']} devices + hub account {r['hub_username']}), {r['acl_file']}",
    ]
    if r["tls"]:
        lines.append(f"TLS: CA {r['tls']['ca_cert']}, server certificate {r['tls']['server_cert']}")
    if r["hub_password_file"]:
        lines.append(
            f"wrote the hub's broker password to {r['hub_password_file']}; "
            "broker.password_file in hub.toml must point at it"
        )
    if r["hub_toml_mismatches"]:
        lines.append(
            f"hub.toml disagrees with this broker on {', '.join(r['hub_toml_mismatches'])}; "
            f"use these settings (also in {r['hub_toml_file']}):"
        )
        lines.append(r["hub_toml"].rstrip())
    for a in r["hub_processes"]:
        lines.append(
            f"hub process {a['username']}: its [broker] section is in {a['hub_toml_file']}"
        )
    lines.append(f"run: mosquitto -c {r['conf']}")
    return "\n".join(lines)

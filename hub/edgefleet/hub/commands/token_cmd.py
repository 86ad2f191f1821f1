"""``edgefleet hub token create|list|revoke``: API tokens with roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.commands.common import config_option, now, table
from edgefleet.hub.config import load_config
from edgefleet.hub.console.access_store import ROLES, AccessStore, console_db_path
from edgefleet.hub.console.auth import create_token


def _access(config_path: Path | None) -> AccessStore:
    config = load_config(config_path)
    return AccessStore(console_db_path(config.store.path))


@click.group()
def token() -> None:
    """API tokens for the REST API and the dashboard (viewer, operator, admin)."""


@token.command()
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option(
    "--expires-days",
    type=click.FloatRange(min=0, min_open=True, max=3650),
    default=90.0,
    show_default=True,
    help="Days until the token stops working.",
)
@config_option
@json_option
def create(
    name: str, role: str, expires_days: float, config_path: Path | None, as_json: bool
) -> None:
    """Create token NAME and print it once (only its hash is kept)."""
    access = _access(config_path)
    try:
        issued = create_token(access, name, role, now(), expires_days)
    finally:
        access.close()
    result = {**issued.record.to_dict(), "token": issued.secret}
    emit(as_json, result, _render_created)


def _render_created(r: dict[str, Any]) -> str:
    return (
        f"{r['token']}\n"
        f"token {r['name']} ({r['role']}) created; it is shown only now. Send it as "
        "'Authorization: Bearer TOKEN' or paste it into the dashboard."
    )


@token.command("list")
@config_option
@json_option
def list_tokens(config_path: Path | None, as_json: bool) -> None:
    """List tokens (names, roles, expiry; never the tokens themselves)."""
    access = _access(config_path)
    try:
        records = access.list_tokens()
    finally:
        access.close()
    current = now()
    result = {"tokens": [{**t.to_dict(), "live": t.live(current)} for t in records]}
    emit(
        as_json,
        result,
        lambda r: (
            table(
                ["NAME", "ROLE", "LIVE"],
                [[t["name"], t["role"], "yes" if t["live"] else "no"] for t in r["tokens"]],
            )
            if r["tokens"]
            else "no tokens"
        ),
    )


@token.command()
@click.argument("name")
@config_option
@json_option
def revoke(name: str, config_path: Path | None, as_json: bool) -> None:
    """Revoke token NAME; its browser sessions end too."""
    access = _access(config_path)
    try:
        record = access.revoke_token(name, now())
    finally:
        access.close()
    emit(as_json, record.to_dict(), lambda r: f"token {r['name']} revoked")

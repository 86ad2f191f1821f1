"""``edgefleet hub store migrate --to postgresql://...``: move the fleet off SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.commands.common import config_option
from edgefleet.hub.config import load_config
from edgefleet.hub.errors import HubUsageError


@click.group()
def store() -> None:
    """The hub store: move it between engines."""


@store.command()
@click.option(
    "--to",
    "target_url",
    required=True,
    metavar="URL",
    help="postgresql://[user@]host[:port]/database: an empty database to copy the store into.",
)
@config_option
@json_option
def migrate(target_url: str, config_path: Path | None, as_json: bool) -> None:
    """Copy the SQLite hub store of hub.toml, fleet tables included, into an empty
    PostgreSQL database.

    Stop `hub serve` first (a running one is refused). The SQLite file is left as it
    was; point hub.toml at the new store with `[store] url = "..."` afterwards.
    """
    from edgefleet.hub.bundles import PublishedBundleStore
    from edgefleet.hub.store.migrate import copy_store
    from edgefleet.hub.store.postgres import PostgresHubStore, is_postgres_url, redact_url
    from edgefleet.hub.store.serve_lock import ServeLock
    from edgefleet.hub.store.sqlite import SqliteHubStore

    config = load_config(config_path)
    if not is_postgres_url(target_url):
        raise HubUsageError(f"--to must be a postgresql:// URL: {redact_url(target_url)}")
    if not config.store.is_sqlite:
        raise HubUsageError(f"the hub store of {config.source} is already on PostgreSQL")
    if not config.store.path.exists():
        raise HubUsageError(f"no hub store at {config.store.path} to migrate")
    with ServeLock(config.store.path):  # no hub serve writes to the old store meanwhile
        source = SqliteHubStore(config.store.path)
        try:
            target = PostgresHubStore(target_url)
            try:
                copied = copy_store(source, target)
                # Bundles recorded before the store held their bytes: from this host's
                # files, so every hub on the new store can serve them.
                stored, missing = PublishedBundleStore(
                    config.store.bundles_dir, target
                ).store_missing_bytes()
            finally:
                target.close()
        finally:
            source.close()
    result: dict[str, Any] = {
        "from": str(config.store.path),
        "to": redact_url(target_url),
        "rows": copied,
        "bundle_bytes_stored": len(stored),
        "bundles_without_bytes": missing,
        "next": f'set [store] url = "{redact_url(target_url)}" in {config.source}',
    }
    emit(as_json, result, _render)


def _render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [f"copied {result['from']} -> {result['to']}"]
    lines += [f"  {table:<20} {n}" for table, n in rows.items()]
    if result["bundle_bytes_stored"]:
        lines.append(f"stored the bytes of {result['bundle_bytes_stored']} bundle(s) from files")
    for sha256 in result["bundles_without_bytes"]:
        lines.append(f"warning: bundle {sha256[:16]} has no file here; publish it again")
    lines.append(f"next: {result['next']}, then start hub serve")
    return "\n".join(lines)

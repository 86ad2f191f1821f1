"""``edgefleet hub publish FILE`` and ``edgefleet hub bundles``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.commands.common import ago, config_option, hub_store, now, table
from edgefleet.hub.enrollment import publisher_trust


@click.command()
@click.argument("bundle_file", type=click.Path(path_type=Path, dir_okay=False))
@config_option
@json_option
def publish(bundle_file: Path, config_path: Path | None, as_json: bool) -> None:
    """Verify BUNDLE_FILE against the trusted publisher keys and store it."""
    with hub_store(config_path) as (config, store):
        bundles = PublishedBundleStore(config.store.bundles_dir, store)
        result = bundles.publish(bundle_file, publisher_trust(config), now())
    out = {**result.bundle.to_dict(), "created": result.created}
    emit(as_json, out, _render_published)


def _render_published(r: dict[str, Any]) -> str:
    verb = "published" if r["created"] else "already published"
    profile = f" for {r['profile']}" if r["profile"] else ""
    return f"{verb} {r['model']}:{r['version']}{profile} sha256 {r['sha256']} ({r['size']} bytes)"


@click.command()
@config_option
@json_option
def bundles(config_path: Path | None, as_json: bool) -> None:
    """List published bundles."""
    current = now()
    with hub_store(config_path) as (_config, store):
        rows = [b.to_dict() for b in store.list_bundles()]
    emit(as_json, {"bundles": rows}, lambda r: _render_list(r, current))


def _render_list(r: dict[str, Any], current: float) -> str:
    if not r["bundles"]:
        return "no bundles published (edgefleet hub publish FILE)"
    return table(
        ["MODEL", "VERSION", "PROFILE", "SIZE", "SHA256", "PUBLISHED"],
        [
            [
                b["model"],
                str(b["version"]),
                b["profile"] or "-",
                str(b["size"]),
                b["sha256"][:16],
                ago(b["published_at"], current),
            ]
            for b in r["bundles"]
        ],
    )

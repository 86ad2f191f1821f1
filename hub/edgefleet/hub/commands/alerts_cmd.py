"""``edgefleet hub alerts``: open and resolved fleet alerts, newest first."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.commands.common import config_option, fleet_db_option
from edgefleet.hub.commands.drift_cmd import open_fleet
from edgefleet.hub.fleet.alert_store import AlertStore
from edgefleet.hub.fleet.report_text import render_alerts


@click.command()
@click.option(
    "--status",
    type=click.Choice(["open", "resolved", "all"]),
    default="all",
    show_default=True,
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True)
@fleet_db_option
@config_option
@json_option
def alerts(
    status: str, limit: int, db_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List fleet alerts (drift, data quality, accuracy, errors, latency)."""
    with open_fleet(config_path, db_path) as view:
        store = AlertStore(view.db)
        records = store.list_alerts(None if status == "all" else status, limit)
        open_count = sum(store.open_counts().values())
    result = {"alerts": [a.to_dict() for a in records], "open": open_count}
    emit(as_json, result, lambda _r: render_alerts(records))

"""``edgefleet hub drift MODEL[:VERSION]``: fleet drift, data quality and performance.

Reads the fleet database (``--db FILE``, or the one next to the hub store named in
``hub.toml``) without writing to it; reference profiles and validation metrics come from the
hub's bundle store when a config is available, else from the copy the hub service cached
in the fleet database. Verdicts use the ``[fleet.thresholds]`` of that config (the ones the
alert monitor scores with), or the defaults with only ``--db``; the JSON says which.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.drift import DriftThresholds
from edgefleet.hub.commands.common import config_option, fleet_db_option, now
from edgefleet.hub.console.fleet_access import FleetView as FleetView
from edgefleet.hub.console.fleet_access import open_fleet
from edgefleet.hub.console.service import drift_headline
from edgefleet.hub.errors import HubStoreError
from edgefleet.hub.fleet.aggregate import BY_CHOICES, DriftQuery, FleetAggregator
from edgefleet.hub.fleet.report_html import render_html
from edgefleet.hub.fleet.report_text import render_drift

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TARGET = re.compile(r"^([^:\s]+)(?::(\d+))?$")


def parse_since(text: str, current: float) -> float | None:
    """``30m``, ``24h``, ``7d``, ``2w`` before ``current``; ``all`` means no limit."""
    if text.strip().lower() == "all":
        return None
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 24h, 7d or 'all'")
    return current - float(match.group(1)) * _UNITS[match.group(2)]


def parse_target(text: str) -> tuple[str, int | None]:
    match = _TARGET.fullmatch(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not MODEL or MODEL:VERSION")
    version = match.group(2)
    return match.group(1), None if version is None else int(version)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary sibling and a rename (nothing half-written)."""
    path = path.resolve()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise HubStoreError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise HubStoreError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@click.command()
@click.argument("target", metavar="MODEL[:VERSION]")
@click.option("--by", type=click.Choice(BY_CHOICES), default=None, help="Break down the fleet.")
@click.option(
    "--since",
    default="24h",
    show_default=True,
    help="Window of time: 30m, 24h, 7d, 2w or 'all' (rounded down to whole hours).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write a self-contained HTML report here.",
)
@fleet_db_option
@config_option
@json_option
def drift(
    target: str,
    by: str | None,
    since: str,
    html_path: Path | None,
    db_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Per-feature drift, dataset drift share, prediction drift, data quality and
    performance of MODEL (newest version with telemetry unless :VERSION is given)."""
    model, version = parse_target(target)
    current = now()
    since_s = parse_since(since, current)
    with open_fleet(config_path, db_path) as view:
        aggregator = FleetAggregator(view.store, view.references, view.thresholds)
        result = aggregator.query(DriftQuery(model, version, by, since_s), current)
        # The first line names every drifting group and device and every open drift alert:
        # a clean pooled fleet must not hide them.
        head = drift_headline(view, model, result.version, since_s, current)
        thresholds, thresholds_from = view.thresholds, view.thresholds_from
    if html_path is not None:
        write_atomically(html_path, render_html(result, current))
    out = result.to_dict()
    # Also when nothing could be scored (no reference, too few rows): what a verdict would use.
    out["thresholds"] = thresholds.to_dict()
    out["thresholds_from"] = thresholds_from
    out["html"] = None if html_path is None else str(html_path)
    out["headline"], out["drifting_scopes"] = head["headline"], head["drifting"]
    emit(
        as_json,
        out,
        lambda _r: (
            head["headline"]
            + "\n"
            + render_drift(result)
            + _thresholds_note(thresholds, thresholds_from)
            + _html_note(html_path)
        ),
    )


def _thresholds_note(t: DriftThresholds, source: str) -> str:
    origin = "defaults" if source == "defaults" else f"[fleet.thresholds] of {source}"
    return (
        f"\nthresholds ({origin}): PSI warn {t.psi_warn:g} / drift {t.psi_drift:g},"
        f" JS {t.js_drift:g}, W1/std {t.wasserstein_drift:g}, p < {t.p_value:g},"
        f" min n {t.min_n} (W1 {t.min_n_wasserstein}), dataset drift share"
        f" {t.dataset_drift_share:g}"
    )


def _html_note(path: Path | None) -> str:
    return "" if path is None else f"\nHTML report written to {path}"

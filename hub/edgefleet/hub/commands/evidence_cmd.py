"""``edgefleet hub evidence MODEL:VERSION``: a version's field evidence as one JSON document.

The figures come from the same fleet aggregation as ``hub drift`` (read-only,
``--db`` or the hub config): devices that reported, inferences, error rate,
p50/p95 latency, accuracy from labels returned late, drift share. The document
is what ``edgefleet registry compare A B --evidence FILE...`` puts beside the
registry's own metrics, so the packager never reads the hub's store. Its shape
(``kind`` ``edgefleet.field_evidence``, ``version`` 1)::

    {"kind": "edgefleet.field_evidence", "version": 1, "model": "churn",
     "model_version": 2, "since_s": ..., "until_s": ..., "devices": 20,
     "inferences": 12000, "errors": 3, "error_rate": 0.00025,
     "latency_p50_ms": 2.5, "latency_p95_ms": 5.0, "accuracy": 0.93,
     "labels": 800, "validation_accuracy": 0.95, "drift_share": 0.1,
     "dataset_drift": false}

Values a fleet has not produced (no labels back, no drift reference) are null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.hub.commands.common import config_option, fleet_db_option, now
from edgefleet.hub.commands.drift_cmd import open_fleet, parse_since, parse_target
from edgefleet.hub.fleet.aggregate import DriftQuery, FleetAggregator

EVIDENCE_KIND = "edgefleet.field_evidence"
EVIDENCE_VERSION = 1


def evidence_from_drift(result: dict[str, Any]) -> dict[str, Any]:
    """The evidence document from ``FleetDriftResult.to_dict()`` (pure)."""
    fleet = result["fleet"]
    requests = int(fleet.get("requests") or 0)
    errors = int(sum((fleet.get("errors") or {}).values()))
    latency = fleet.get("latency") or {}
    performance = fleet.get("performance") or {}
    return {
        "kind": EVIDENCE_KIND,
        "version": EVIDENCE_VERSION,
        "model": result["model"],
        "model_version": result["version"],
        "since_s": result.get("since_s"),
        "until_s": result.get("until_s"),
        "devices": fleet.get("devices"),
        "inferences": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "latency_p50_ms": latency.get("p50_ms"),
        "latency_p95_ms": latency.get("p95_ms"),
        "accuracy": performance.get("accuracy"),
        "labels": performance.get("labels"),
        "validation_accuracy": performance.get("validation_accuracy"),
        "drift_share": fleet.get("drift_share"),
        "dataset_drift": fleet.get("dataset_drift"),
    }


@click.command()
@click.argument("target", metavar="MODEL:VERSION")
@click.option(
    "--since",
    default="all",
    show_default=True,
    help="Window of time: 30m, 24h, 7d, 2w or 'all'.",
)
@fleet_db_option
@config_option
@json_option
def evidence(
    target: str, since: str, db_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """Field evidence of MODEL:VERSION (devices, inferences, error rate, p95 latency,
    accuracy from late labels, drift share) for `registry compare --evidence`."""
    model, version = parse_target(target)
    if version is None:
        raise click.BadParameter(f"{target!r}: give MODEL:VERSION (evidence is per version)")
    current = now()
    since_s = parse_since(since, current)
    with open_fleet(config_path, db_path) as view:
        aggregator = FleetAggregator(view.store, view.references, view.thresholds)
        result = aggregator.query(DriftQuery(model, version, None, since_s), current)
    doc = evidence_from_drift(result.to_dict())
    emit(as_json, doc, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))

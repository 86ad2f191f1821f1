"""Fleet telemetry: ingest, exact drift aggregation, alerts, reports and metrics.

Parts (docs/drift-monitoring.md tells the whole story)::

    ingest.py        FleetTelemetry (store batches exactly once), IngestWorker (bounded
                     queue + worker thread, so the MQTT thread never waits on SQLite)
    window_store.py  per-device windows and rollups: insert exactly once, read back
    retention.py     roll-up (per device and per group/profile), hour -> day, retention
    aggregate.py     FleetAggregator: merge by model/version/group/profile/device/time, score
    alerts.py        pure rules and the persistence/hysteresis state machine
    monitor.py       FleetMonitor: evaluates newly received windows, stores alerts, notifies
    alert_sinks.py   log, MQTT ``{root}/alerts``, webhook (background retries)
    report_html.py   the self-contained HTML report; report_text.py the terminal one
    metrics.py       Prometheus text and a tiny /metrics server
    workers.py       FleetWorkers: the parts above as ``hub serve`` runs them

The names below are imported on first use, so ``import edgefleet.hub.fleet.settings``
(hub.toml parsing, every hub command) does not load aggregation, HTTP and report code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DriftQuery": "aggregate",
    "FleetAggregator": "aggregate",
    "FleetDriftResult": "aggregate",
    "AlertEvent": "alert_sinks",
    "AlertSink": "alert_sinks",
    "LogSink": "alert_sinks",
    "MqttAlertSink": "alert_sinks",
    "WebhookSink": "alert_sinks",
    "AlertRecord": "alert_store",
    "AlertStore": "alert_store",
    "AlertPolicy": "alerts",
    "DeviceInfo": "ingest",
    "FleetTelemetry": "ingest",
    "IngestResult": "ingest",
    "IngestWorker": "ingest",
    "HubMetrics": "metrics",
    "MetricsServer": "metrics",
    "collect": "metrics",
    "render_metrics": "metrics",
    "FleetMonitor": "monitor",
    "References": "references",
    "bundle_loaders": "references",
    "FleetWorkers": "workers",
    "FleetSettings": "settings",
    "fleet_location": "settings",
}

__all__ = [
    "AlertEvent",
    "AlertPolicy",
    "AlertRecord",
    "AlertSink",
    "AlertStore",
    "DeviceInfo",
    "DriftQuery",
    "FleetAggregator",
    "FleetDriftResult",
    "FleetMonitor",
    "FleetWorkers",
    "FleetSettings",
    "FleetTelemetry",
    "HubMetrics",
    "IngestResult",
    "IngestWorker",
    "LogSink",
    "MetricsServer",
    "MqttAlertSink",
    "References",
    "WebhookSink",
    "bundle_loaders",
    "collect",
    "fleet_location",
    "render_metrics",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from edgefleet.hub.fleet.aggregate import DriftQuery, FleetAggregator, FleetDriftResult
    from edgefleet.hub.fleet.alert_sinks import (
        AlertEvent,
        AlertSink,
        LogSink,
        MqttAlertSink,
        WebhookSink,
    )
    from edgefleet.hub.fleet.alert_store import AlertRecord, AlertStore
    from edgefleet.hub.fleet.alerts import AlertPolicy
    from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry, IngestResult, IngestWorker
    from edgefleet.hub.fleet.metrics import HubMetrics, MetricsServer, collect, render_metrics
    from edgefleet.hub.fleet.monitor import FleetMonitor
    from edgefleet.hub.fleet.references import References, bundle_loaders
    from edgefleet.hub.fleet.settings import FleetSettings, fleet_location
    from edgefleet.hub.fleet.workers import FleetWorkers

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
"""

from __future__ import annotations

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
from edgefleet.hub.fleet.settings import FleetSettings, fleet_db_path

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
    "fleet_db_path",
    "render_metrics",
]

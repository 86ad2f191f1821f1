"""Prometheus metrics of the hub: fleet presence, telemetry ingest and open alerts.

``render_metrics`` is a pure function from a :class:`HubMetrics` snapshot to the text
exposition format (version 0.0.4); ``collect`` takes the snapshot from the running parts;
:class:`MetricsServer` serves ``GET /metrics`` and ``GET /healthz`` from a small stdlib HTTP
server in a thread of its own (loopback by default; any other path is 404, any other method
405). ``/healthz`` answers 200 ``ok`` while every worker makes progress and 503 naming the
stalled ones otherwise, so a supervisor restarts a hub that looks up but stores nothing.

Invariant: a scrape never writes and never waits for the ingest worker — it reads counters
the worker keeps in memory, the queue length, one small SELECT on the alerts table and one
on the fleet database's counters (WAL: a reader does not wait for the writer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer

from edgefleet.core.protocol.bounds import REASONS
from edgefleet.hub.fleet.alert_store import AlertStore
from edgefleet.hub.fleet.ingest import IngestWorker
from edgefleet.hub.fleet.quotas import LIMITS as QUOTA_LIMITS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SEVERITIES = ("warning", "critical")


@dataclass(frozen=True)
class HubMetrics:
    devices_total: int | None = None
    devices_online: int | None = None
    ingest_records_total: int = 0
    ingest_duplicates_total: int = 0
    ingest_malformed_total: int = 0
    ingest_rejected_total: int = 0  # batches refused because the queue was full
    ingest_failed_total: int = 0  # batches whose transaction failed (not acked)
    ingest_rate_per_s: float = 0.0
    ingest_backlog: int = 0
    # From the fleet database's counters (kept with the batches, so they survive a restart).
    ingest_ahead_of_cursor_total: int = 0  # batches stored but not following on the ack cursor
    ingest_refused_spans_full_total: int = 0  # batches refused: the device's spans were full
    open_alerts: Mapping[str, int] = field(default_factory=dict)  # by severity
    # Telemetry records (or whole batches) refused as out of bounds or over quota, by reason.
    refused: Mapping[str, int] = field(default_factory=dict)
    stalled_workers: Mapping[str, bool] = field(default_factory=dict)  # worker -> stalled
    quota_refused: Mapping[str, int] = field(default_factory=dict)  # messages, by limit


def _line(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        shown = repr(float(value)) if isinstance(value, float) else str(value)
        out.append(f"{name}{labels} {shown}")
    return out


def render_metrics(m: HubMetrics) -> str:
    lines: list[str] = []
    if m.devices_total is not None:
        lines += _line(
            "edgefleet_hub_devices", "gauge", "Enrolled devices.", [("", m.devices_total)]
        )
    if m.devices_online is not None:
        lines += _line(
            "edgefleet_hub_devices_online",
            "gauge",
            "Devices whose last status was online.",
            [("", m.devices_online)],
        )
    lines += _line(
        "edgefleet_hub_telemetry_records_total",
        "counter",
        "Telemetry records stored (first receipt only).",
        [("", m.ingest_records_total)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_duplicates_total",
        "counter",
        "Telemetry records received again and ignored.",
        [("", m.ingest_duplicates_total)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_malformed_total",
        "counter",
        "Telemetry records with a malformed body (stored, acked, not aggregated).",
        [("", m.ingest_malformed_total)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_rejected_batches_total",
        "counter",
        "Telemetry batches refused because the ingest queue was full (not acked).",
        [("", m.ingest_rejected_total)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_failed_batches_total",
        "counter",
        "Telemetry batches whose store transaction failed (not acked).",
        [("", m.ingest_failed_total)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_ahead_of_cursor_batches_total",
        "counter",
        "Telemetry batches that did not follow on the device's ack cursor (stored, acked once"
        " the gap fills).",
        [("", m.ingest_ahead_of_cursor_total)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_spans_full_batches_total",
        "counter",
        "Telemetry batches refused because the device already had the most pending spans"
        " (not acked).",
        [("", m.ingest_refused_spans_full_total)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_ingest_rate",
        "gauge",
        "Telemetry records stored per second, smoothed over about a minute.",
        [("", m.ingest_rate_per_s)],
    )
    lines += _line(
        "edgefleet_hub_telemetry_backlog",
        "gauge",
        "Telemetry batches queued for storing.",
        [("", m.ingest_backlog)],
    )
    reasons = sorted(set(REASONS) | {"store_failed"} | set(m.refused))
    lines += _line(
        "edgefleet_hub_telemetry_refused_total",
        "counter",
        "Telemetry records refused before storing, by reason (bounds, store failure, quota).",
        [(f'{{reason="{r}"}}', m.refused.get(r, 0)) for r in reasons],
    )
    lines += _line(
        "edgefleet_hub_device_quota_refused_total",
        "counter",
        "Telemetry messages dropped unacked because the device was over its quota, by limit.",
        [
            (f'{{limit="{q}"}}', m.quota_refused.get(q, 0))
            for q in sorted(set(QUOTA_LIMITS) | set(m.quota_refused))
        ],
    )
    lines += _line(
        "edgefleet_hub_worker_stalled",
        "gauge",
        "1 when a hub worker thread died or has made no progress for its stall limit.",
        [(f'{{worker="{w}"}}', int(v)) for w, v in sorted(m.stalled_workers.items())],
    )
    severities = sorted(set(SEVERITIES) | set(m.open_alerts))
    lines += _line(
        "edgefleet_hub_alerts_open",
        "gauge",
        "Open fleet alerts by severity.",
        [(f'{{severity="{s}"}}', m.open_alerts.get(s, 0)) for s in severities],
    )
    return "\n".join(lines) + "\n"


def collect(
    worker: IngestWorker | None = None,
    alerts: AlertStore | None = None,
    devices: Callable[[], tuple[int, int]] | None = None,
    refused: Mapping[str, int] | None = None,
    quota_refused: Mapping[str, int] | None = None,
    stalled: Mapping[str, bool] | None = None,
) -> HubMetrics:
    """A snapshot; ``devices`` returns (enrolled, online), e.g. from the hub store."""
    total = online = None
    if devices is not None:
        total, online = devices()
    s = worker.stats if worker is not None else None
    # The ack-cursor counts are bumped inside the store's transaction, not in the worker's
    # in-memory stats, so they are read from the fleet database.
    counters = worker.telemetry.db.counters() if worker is not None else {}
    return HubMetrics(
        devices_total=total,
        devices_online=online,
        ingest_records_total=0 if s is None else s.stored_records,
        ingest_duplicates_total=0 if s is None else s.duplicates,
        ingest_malformed_total=0 if s is None else s.malformed,
        ingest_rejected_total=0 if s is None else s.rejected_full,
        ingest_failed_total=0 if s is None else s.failed_batches,
        ingest_rate_per_s=0.0 if s is None else s.rate_records_per_s,
        ingest_backlog=0 if worker is None else worker.backlog,
        ingest_ahead_of_cursor_total=counters.get("batches_ahead_of_cursor", 0),
        ingest_refused_spans_full_total=counters.get("batches_refused_spans_full", 0),
        open_alerts={} if alerts is None else alerts.open_counts(),
        refused=_refused(worker, refused),
        stalled_workers=dict(stalled)
        if stalled is not None
        else ({} if worker is None else {"fleet-ingest": worker.stalled}),
        quota_refused=dict(quota_refused or {}),
    )


def _refused(worker: IngestWorker | None, refused: Mapping[str, int] | None) -> dict[str, int]:
    out = dict(refused or {})
    if worker is not None and worker.stats.isolated_records:
        out["store_failed"] = out.get("store_failed", 0) + worker.stats.isolated_records
    return out


SCRAPE_TIMEOUT_S = 5.0


class MetricsServer:
    """``GET /metrics`` on ``host:port`` (port 0 picks a free one; see ``.port``)."""

    def __init__(
        self,
        provider: Callable[[], str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        health: Callable[[], list[str]] = list,
    ):
        """``health`` returns the names of stalled workers (empty: healthy)."""
        self.provider = provider
        self.health = health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # A client that connects and sends nothing holds the one serving thread for at
            # most this long.
            timeout = SCRAPE_TIMEOUT_S

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._healthz()
                    return
                if path != "/metrics":
                    self._reply(404, b"not found\n", "text/plain")
                    return
                try:
                    body = outer.provider().encode("utf-8")
                except Exception as e:  # a failing collector must still answer the scrape
                    self._reply(500, f"error: {e}\n".encode(), "text/plain")
                    return
                self._reply(200, body, CONTENT_TYPE)

            def _healthz(self) -> None:
                try:
                    stalled = outer.health()
                except Exception as e:  # a failing check is not a healthy hub
                    self._reply(503, f"error: {e}\n".encode(), "text/plain")
                    return
                if stalled:
                    self._reply(503, f"stalled: {', '.join(stalled)}\n".encode(), "text/plain")
                else:
                    self._reply(200, b"ok\n", "text/plain")

            def do_POST(self) -> None:  # noqa: N802
                self._reply(405, b"method not allowed\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would flood the hub log

        # One thread serves every scrape in turn: a scrape takes milliseconds and Prometheus
        # scrapes one at a time, and the fleet database keeps one connection for this thread
        # instead of opening one for each request's thread.
        self._server = HTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="hub-metrics", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

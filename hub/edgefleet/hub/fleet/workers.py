"""Fleet telemetry inside ``hub serve``: ingest worker, alert monitor, alert sinks, /metrics.

:class:`FleetWorkers` builds the running parts from the ``[fleet]`` section of hub.toml and
the hub store, and starts and stops them in an order that loses nothing:

- ``start``: the ingest worker first (so batches submitted as soon as MQTT delivers them
  are stored), then the webhook sender, the alert monitor and the metrics endpoint;
- once per fleet: with several hubs on one PostgreSQL store they share the fleet tables
  (see ``database``); every hub ingests what it receives, only the holder of the singleton
  lease (``leader``) runs the alert monitor and the fleet maintenance;
- ``stop``: the metrics endpoint, the monitor (an evaluation in progress finishes and
  commits), the ingest worker (stores what is queued; those acks may no longer reach the
  broker, the agents then resend and the duplicates are ignored), the webhook sender, and
  finally the fleet database.

Invariants: nothing here runs in the MQTT network thread except :meth:`submit`, which only
queues; alert sinks never block evaluation (see ``alert_sinks``); a scrape of ``/metrics``
never waits for the ingest worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.core.protocol import TelemetryBatch
from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.fleet.alert_sinks import AlertSink, LogSink, MqttAlertSink, WebhookSink
from edgefleet.hub.fleet.ingest import (
    BatchRecords,
    DeviceInfo,
    DoneCallback,
    FleetTelemetry,
    IngestWorker,
)
from edgefleet.hub.fleet.metrics import MetricsServer, collect, render_metrics
from edgefleet.hub.fleet.monitor import FleetMonitor
from edgefleet.hub.fleet.quotas import DeviceQuotas
from edgefleet.hub.fleet.references import References, bundle_loaders
from edgefleet.hub.fleet.screening import TelemetryScreen
from edgefleet.hub.fleet.settings import fleet_location
from edgefleet.hub.singleton import LEASE

if TYPE_CHECKING:  # config imports the fleet package: no import cycle at run time
    from edgefleet.hub.config import FleetConfig

log = logging.getLogger("edgefleet.hub")


class FleetHubStore(Protocol):
    """What the fleet parts need from the hub store."""

    def find_bundles(self, model: str, version: int) -> list[Any]: ...
    def count_devices(self) -> tuple[int, int]: ...


class FleetWorkers:
    def __init__(
        self,
        config: FleetConfig,
        store_location: Path | str,
        bundle_file: Callable[[str], Path],
        store: FleetHubStore,
        publish: Callable[[str, bytes], None],
        alerts_topic: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.telemetry = FleetTelemetry(fleet_location(store_location), config.settings)
        self.worker = IngestWorker(self.telemetry, queue_size=config.ingest_queue_size, clock=clock)
        self.screen = TelemetryScreen(config.settings.raw_retention_s)
        self.quotas = DeviceQuotas(config.quota_settings())
        self._watched: dict[str, Callable[[], bool]] = {"fleet-ingest": lambda: self.worker.stalled}
        self.references = References(
            *bundle_loaders(store, bundle_file),
            cache=self.telemetry.store,
            clock=clock,
        )
        self.webhook = WebhookSink(config.webhook_url) if config.webhook_url else None
        sinks: list[AlertSink] = [LogSink(), MqttAlertSink(publish, alerts_topic)]
        if self.webhook is not None:
            sinks.append(self.webhook)
        self.monitor = FleetMonitor(self.telemetry, self.references, config.policy, sinks)
        self.metrics: MetricsServer | None = None
        # Whether this hub does the once-per-fleet work now (the service sets it from its
        # lease; alone on a store it always does): the alert monitor and the maintenance
        # of the fleet tables (roll-up, coarsening, retention) run only then. Every hub on
        # a store shares its fleet tables, so the holder sees every hub's windows.
        self.leader: Callable[[], bool] = lambda: True
        # The lease epoch that work carries (None: no fence, a hub alone on its store):
        # its fleet writes are refused once another hub took the lease over.
        self.epoch: Callable[[], int | None] = lambda: None
        # The oldest receipt time maintenance must keep (the service: what an active
        # rollout's gates still read; None: nothing held back).
        self.retention_hold: Callable[[], float | None] = lambda: None
        self.worker.maintains = lambda: self.leader()
        self.worker.retention_hold = lambda: self.retention_hold()
        self.worker.singleton_scope = self.singleton_scope

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()
        if self.webhook is not None:
            self.webhook.start()
        self.monitor.start(
            self.config.monitor_interval_s,
            self.clock,
            lambda: self.leader(),
            scope=self.singleton_scope,
        )

    def singleton_scope(self) -> AbstractContextManager[None]:
        """Where the once-per-fleet work writes: fenced by the lease epoch this hub holds."""
        epoch = self.epoch()
        return nullcontext() if epoch is None else self.telemetry.db.fenced(LEASE, epoch)

    def start_metrics(self) -> None:
        """Open ``/metrics``; the service calls it once it is subscribed, so a scrape
        answering means the hub receives telemetry (a readiness signal)."""
        if self.config.metrics_port:
            host, port = self.config.metrics_host, self.config.metrics_port
            try:
                self.metrics = MetricsServer(
                    self.metrics_text, host, port, health=self.stalled_workers
                ).start()
            except OSError as e:
                self.stop()
                raise HubConfigError(
                    f"fleet.metrics_port: cannot listen on {host}:{port}: {e.strerror or e}"
                ) from e
            log.info("hub: Prometheus metrics on http://%s:%d/metrics", host, self.metrics.port)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued batch is stored (and acked); False on timeout."""
        return self.worker.wait_idle(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        self.monitor.stop(timeout_s)
        self.worker.stop(timeout_s)
        if self.webhook is not None:
            self.webhook.stop()
        self.telemetry.close()

    # -- used by the service -----------------------------------------------------------
    def submit(self, device: DeviceInfo, records: BatchRecords, on_done: DoneCallback) -> bool:
        """Queue a batch for storing; ``on_done`` runs after its commit (False: queue full).

        Pass the decoded batch, not only its records: its ``after_seq`` decides whether
        the ack may move past it (see docs/protocol.md).
        """
        return self.worker.submit(device, records, on_done=on_done)

    def admit(self, device_id: str, size: int) -> bool:
        """A telemetry message of ``size`` bytes within the device's quota (the MQTT
        thread: no decode, no I/O); False: drop it unacked, the device resends later."""
        return self.quotas.admit_message(device_id, size)

    def screened(
        self, device: DeviceInfo, batch: TelemetryBatch, now: float
    ) -> TelemetryBatch | None:
        """``batch`` within the device's record quota and the telemetry bounds (see
        ``quotas`` and ``screening``); None: refused whole, not acked."""
        if not self.quotas.admit_records(device.id, len(batch.records)):
            return None
        return self.screen.screen(device.id, device.profile, batch, now)

    def watch(self, name: str, stalled: Callable[[], bool]) -> None:
        """Report worker ``name`` on /metrics and /healthz; ``stalled()`` says when it is."""
        self._watched[name] = stalled

    def stalled_workers(self) -> list[str]:
        return [name for name, stalled in self._watched.items() if stalled()]

    def metrics_text(self) -> str:
        return render_metrics(
            collect(
                self.worker,
                self.monitor.alerts,
                self.store.count_devices,
                self.screen.refused(),
                self.quotas.refused(),
                {name: stalled() for name, stalled in self._watched.items()},
            )
        )

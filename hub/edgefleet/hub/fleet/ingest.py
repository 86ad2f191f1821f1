"""Telemetry ingest: records in, windows stored exactly once, never in the MQTT thread.

:class:`FleetTelemetry` turns telemetry records into stored rows (one transaction per call,
however many batches it is given). :class:`IngestWorker` is what the hub service uses: the
MQTT network thread only calls :meth:`IngestWorker.submit`, which puts the batch on a
bounded queue and returns at once; a worker thread drains the queue, commits many batches
per transaction — folding every new window into its rollups in that same transaction — and
then runs each batch's ``on_done`` callback (where the service publishes the ack). Between
batches the worker coarsens and prunes in small steps.

Invariants:

- Exactly once: a record is stored at most once per (device, seq) (the store's unique key)
  and acked only after its transaction committed; a record whose batch could not be queued
  or stored is not acked, so the agent sends it again.
- A record whose body is malformed is stored as kind ``malformed`` (so it is acked and
  counted, not resent forever) and never reaches the statistics.
- The ack is the device's contiguous cursor (:class:`~edgefleet.core.protocol.telemetry.
  AckCursor`): it passes a batch only when the batch follows on (its ``after_seq`` is at or
  below the cursor, or absent as from agents without the field), so every seq up to it is
  stored or was merged or dropped on the device on purpose (seqs have gaps by design). A
  batch that does not follow on is stored but not acked past the cursor; when the missing
  batch arrives the cursor jumps over it. Pass the decoded :class:`TelemetryBatch` (not only
  its records) so its ``after_seq`` counts; bare records are acked as from an old agent.
- ``submit`` never blocks and never touches the database.
- The worker thread survives anything one batch or record does: a group commit that fails
  is retried batch by batch, and a batch that fails alone is stored record by record, a
  record that still fails being stored as kind ``refused`` (so the ack can pass it and the
  device drops it). Only a record that cannot even be stored that way leaves its batch
  unacked. Any other exception in the loop is logged and the loop goes on.
- ``stalled`` is true when the thread died or has not come round its loop for
  ``stall_after_s`` (a transaction or maintenance step hanging): /metrics shows it and
  ``/healthz`` answers 503.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.fleet.database import open_fleet_database
from edgefleet.hub.fleet.retention import MaintenanceResult
from edgefleet.hub.fleet.screening import ScreenedWindow
from edgefleet.hub.fleet.settings import FleetSettings
from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.fleet.window_store import DeviceBatch, FleetWindowStore, RecordRow

log = logging.getLogger(__name__)


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class DeviceInfo:
    """What the hub knows about a device when its telemetry arrives."""

    id: str
    group: str | None = None
    profile: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestResult:
    stored: int  # records newly stored (windows, events, malformed)
    duplicates: int  # records already stored before (retransmissions)
    highest_contiguous_seq: int | None  # what to ack
    malformed: int = 0


#: A batch as the ingest takes it: decoded (its ``after_seq`` counts) or bare records.
BatchRecords = TelemetryBatch | Sequence[TelemetryRecord]


def batch_parts(batch: BatchRecords) -> tuple[tuple[TelemetryRecord, ...], int | None]:
    """The records and the ``after_seq`` claim (None for bare records) of a batch."""
    if isinstance(batch, TelemetryBatch):
        return batch.records, batch.after_seq
    return tuple(batch), None


def record_row(record: TelemetryRecord) -> RecordRow:
    """A record as a storable row; never raises for a bad body (it becomes ``malformed``)."""
    if record.kind != "window":
        model = record.body.get("model")
        version = record.body.get("version")
        return RecordRow(
            record.seq,
            record.kind,
            model if isinstance(model, str) else None,
            version if isinstance(version, int) and not isinstance(version, bool) else None,
            # Kept as sent (the decoder bounded its size): a deployment event is the
            # device's install history, and telemetry is stored nowhere else.
            summary=json.dumps(record.body, separators=(",", ":"), sort_keys=True),
        )
    stats = None
    if isinstance(record, ScreenedWindow):  # checked and decoded by the screen already
        summary, drift, stats = record.summary, record.drift_bytes, record.stats
    else:
        try:
            summary = record.window()
            drift = None
            if summary.drift is not None:
                drift = base64.b64decode(summary.drift, validate=True)
        except (ProtocolError, ValueError, binascii.Error) as e:
            log.debug("malformed telemetry window seq %s: %s", record.seq, e)
            return RecordRow(record.seq, "malformed")
    totals = WindowTotals.of_window(summary)
    return RecordRow(
        seq=record.seq,
        kind="window",
        model=summary.model,
        version=summary.version,
        start_s=summary.start_s,
        end_s=summary.end_s,
        requests=summary.requests,
        errors=summary.error_count,
        summary=totals.to_json(),
        drift=drift,
        totals=totals,
        stats=stats,
    )


class FleetTelemetry:
    """The fleet telemetry store: the fleet tables of the hub store's database at
    ``location`` (an SQLite file path or a ``postgresql://`` URL)."""

    def __init__(self, location: Path | str, settings: FleetSettings | None = None) -> None:
        self.settings = settings or FleetSettings()
        self.db = open_fleet_database(location)
        where = self.db.where
        wanted = (self.settings.bucket_s, self.settings.coarse_bucket_s)
        stored = self.db.buckets()
        if stored is None:
            self.db.record_buckets(*wanted)
        elif stored != wanted:
            self.db.close()
            raise HubConfigError(
                f"{where}: fleet database was bucketed with bucket_s={stored[0]}, "
                f"coarse_bucket_s={stored[1]}, not {wanted[0]}/{wanted[1]}: keep those "
                "settings or start a new fleet database"
            )
        self.store = FleetWindowStore(self.db, self.settings)

    def ingest(self, device: DeviceInfo, records: BatchRecords, now: float) -> IngestResult:
        """Store one batch of one device (one transaction)."""
        return self.ingest_many([(device, records)], now)[0]

    def ingest_many(
        self, items: Sequence[tuple[DeviceInfo, BatchRecords]], now: float
    ) -> list[IngestResult]:
        """Store several batches in ONE transaction (the worker's group commit).

        Records already stored are recognised before their bodies are validated and
        decoded, so a retransmitted backlog costs an index lookup, not a second ingest.
        Batches of one device are applied to its ack cursor in the order given.
        """
        batches = []
        for device, batch in items:
            records, after_seq = batch_parts(batch)
            batches.append(
                DeviceBatch(
                    device.id, device.group or "", device.profile, records, after_seq=after_seq
                )
            )
        outcomes = self.store.add(batches, now, record_row)
        return [IngestResult(o.stored, o.duplicates, o.highest_seq, o.malformed) for o in outcomes]

    def maintain(self, now: float, keep_since: float | None = None) -> MaintenanceResult:
        return self.store.maintain(now, keep_since)

    def close(self) -> None:
        self.db.close()


class DeviceLookup(Protocol):
    def __call__(self, device_id: str) -> DeviceInfo | None: ...


DoneCallback = Callable[[IngestResult], None]


@dataclass(frozen=True)
class _Item:
    device: DeviceInfo | str
    batch: BatchRecords
    on_done: DoneCallback | None


@dataclass
class IngestStats:
    """Counters of one worker since it started (Prometheus reads them)."""

    submitted: int = 0
    rejected_full: int = 0
    stored_records: int = 0
    duplicates: int = 0
    malformed: int = 0
    failed_batches: int = 0
    isolated_records: int = 0  # records refused because storing them raised
    loop_errors: int = 0  # unexpected exceptions the worker loop caught and survived
    commits: int = 0
    rate_records_per_s: float = 0.0  # exponentially smoothed over ~a minute


class IngestWorker:
    """A bounded queue drained by one thread into :class:`FleetTelemetry`.

    ``device_lookup`` resolves device ids passed to :meth:`submit` (e.g. from the hub
    store) in the worker thread, cached for ``lookup_ttl_s``; unknown devices are stored
    with no group and an empty profile. Maintenance (roll-up, coarsening, retention) runs in
    this thread in steps of ``maintenance_budget`` windows: one every
    ``maintenance_interval_s`` (between commits if the queue never runs dry), and back to
    back while no batch waits and work is left — only while ``maintains()`` says so: the
    fleet tables are shared by every hub on a PostgreSQL store, so only the holder of the
    once-per-fleet work maintains them (``FleetWorkers`` sets it; alone, always).
    """

    def __init__(
        self,
        telemetry: FleetTelemetry,
        *,
        device_lookup: DeviceLookup | None = None,
        queue_size: int = 2000,
        max_batches_per_commit: int = 256,
        maintenance_interval_s: float = 30.0,
        lookup_ttl_s: float = 60.0,
        stall_after_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if queue_size < 1 or max_batches_per_commit < 1:
            raise ValueError("queue_size and max_batches_per_commit must be positive")
        self.telemetry = telemetry
        self.device_lookup = device_lookup
        self.max_batches = max_batches_per_commit
        self.maintenance_interval_s = maintenance_interval_s
        self.lookup_ttl_s = lookup_ttl_s
        self.clock = clock
        self.stall_after_s = stall_after_s
        self.stats = IngestStats()
        self._heartbeat = time.monotonic()  # the loop's last round (monotonic)
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = 0
        self._idle = threading.Condition()
        self._devices: dict[str, tuple[float, DeviceInfo]] = {}
        self._last_maintenance = 0.0
        self._maintenance_more = False
        self.maintains: Callable[[], bool] = lambda: True
        # The oldest receipt time retention must keep (None: none held back); the hub
        # service holds back what its active rollouts' gates read.
        self.retention_hold: Callable[[], float | None] = lambda: None
        # Where a maintenance step runs: the lease fence of the once-per-fleet work.
        self.singleton_scope: Callable[[], AbstractContextManager[None]] = nullcontext
        self._last_rate_at: float | None = None

    # -- called from any thread ------------------------------------------------------
    def submit(
        self,
        device: DeviceInfo | str,
        records: BatchRecords,
        on_done: DoneCallback | None = None,
    ) -> bool:
        """Queue a batch; False (and nothing queued) when the queue is full.

        ``records``: the decoded :class:`TelemetryBatch` (its ``after_seq`` decides the ack)
        or bare records (acked as from an agent without ``after_seq``).
        """
        batch = records if isinstance(records, TelemetryBatch) else tuple(records)
        try:
            with self._idle:
                self._queue.put_nowait(_Item(device, batch, on_done))
                self.stats.submitted += 1
        except queue.Full:
            self.stats.rejected_full += 1
            return False
        return True

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def stalled(self) -> bool:
        """True when the started thread died or its loop has hung for ``stall_after_s``."""
        thread = self._thread
        if thread is None:
            return False
        if not thread.is_alive():
            return not self._stop.is_set()
        return time.monotonic() - self._heartbeat > self.stall_after_s

    def start(self) -> IngestWorker:
        if self._thread is None:
            self._stop.clear()
            self._heartbeat = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="fleet-ingest", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store what is queued (up to ``timeout_s``), then stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """True once the queue is empty and no batch is being stored."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._queue.qsize() or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    # -- the worker thread -----------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._heartbeat = time.monotonic()
            try:
                if self._round():
                    return
            except Exception:  # the last line of defence: never a dead worker
                self.stats.loop_errors += 1
                log.exception("fleet ingest: unexpected error (the worker goes on)")
                time.sleep(0.1)  # a fault that repeats at once must not spin a core

    def _round(self) -> bool:
        """One round of the loop; True when the worker should end."""
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            if self._stop.is_set():
                return True
            self._maintain(idle=True)
            return False
        items = [first]
        while len(items) < self.max_batches:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._idle:
            self._busy = len(items)
        try:
            self._store(items)
        finally:
            with self._idle:
                self._busy = 0
                self._idle.notify_all()
        if self._stop.is_set() and self._queue.empty():
            return True
        self._maintain(idle=False)
        return False

    def _store(self, items: list[_Item]) -> None:
        now = self.clock()
        resolved = [(self._resolve(item.device, now), item.batch) for item in items]
        results: list[IngestResult | None]
        try:
            results = list(self.telemetry.ingest_many(resolved, now))
            self.stats.commits += 1
        except Exception as e:
            # One bad batch must not cost the others their commit: each on its own.
            log.error("fleet ingest of %d batches failed (%s); storing them one by one",
                      len(items), _short(e))  # fmt: skip
            results = [self._store_alone(device, batch, now) for device, batch in resolved]
        stored = 0
        for item, result in zip(items, results, strict=True):
            if result is None:
                self.stats.failed_batches += 1  # not acked: the agent sends it again
                continue
            self.stats.stored_records += result.stored
            self.stats.duplicates += result.duplicates
            self.stats.malformed += result.malformed
            stored += result.stored
            if item.on_done is not None:
                try:
                    item.on_done(result)
                except Exception:  # a broken callback must not stop ingest
                    log.exception("fleet ingest callback failed")
        self._note_rate(stored, now)

    def _store_alone(
        self, device: DeviceInfo, batch: BatchRecords, now: float
    ) -> IngestResult | None:
        """One batch in its own transaction, else record by record (None: not stored)."""
        try:
            result = self.telemetry.ingest(device, batch, now)
            self.stats.commits += 1
            return result
        except Exception as e:
            log.error("fleet ingest of a batch of %s failed (%s); isolating the bad record",
                      device.id, _short(e))  # fmt: skip
        records, after_seq = batch_parts(batch)
        # (after, r1], (r1, r2], ... claim exactly what (after, rn] claims, so the cursor
        # moves the same way as for the whole batch.
        stored = duplicates = malformed = 0
        highest: int | None = None
        previous = after_seq
        for record in records:
            one = self._store_record(device, record, previous, now)
            if one is None:
                return None
            stored += one.stored
            duplicates += one.duplicates
            malformed += one.malformed
            highest = one.highest_contiguous_seq
            previous = record.seq
        return IngestResult(stored, duplicates, highest, malformed)

    def _store_record(
        self, device: DeviceInfo, record: TelemetryRecord, after_seq: int | None, now: float
    ) -> IngestResult | None:
        for attempt in (record, TelemetryRecord(record.seq, "refused", {"reason": "store_failed"})):
            try:
                result = self.telemetry.ingest(
                    device, TelemetryBatch.of(device.id, [attempt], after_seq=after_seq), now
                )
            except Exception as e:
                log.error("fleet ingest: record %d of %s cannot be stored: %s",
                          record.seq, device.id, _short(e))  # fmt: skip
                continue
            self.stats.commits += 1
            if attempt is not record:
                self.stats.isolated_records += 1
            return result
        return None

    def _note_rate(self, stored: int, now: float) -> None:
        last, self._last_rate_at = self._last_rate_at, now
        if last is None:
            return
        dt = max(now - last, 1e-3)
        alpha = min(1.0, dt / 60.0)
        self.stats.rate_records_per_s += alpha * (stored / dt - self.stats.rate_records_per_s)

    def _resolve(self, device: DeviceInfo | str, now: float) -> DeviceInfo:
        if isinstance(device, DeviceInfo):
            return device
        cached = self._devices.get(device)
        if cached is not None and now - cached[0] < self.lookup_ttl_s:
            return cached[1]
        info = None
        if self.device_lookup is not None:
            try:
                info = self.device_lookup(device)
            except Exception as e:
                log.warning("device lookup for %s failed: %s", device, e)
        info = info or DeviceInfo(device)
        self._devices[device] = (now, info)
        return info

    def _maintain(self, idle: bool) -> None:
        """One maintenance step when due; back to back while idle and work is left.

        Under steady load the queue may never run dry, so a step also runs between
        commits once ``maintenance_interval_s`` has passed.
        """
        now = self.clock()
        due = now - self._last_maintenance >= self.maintenance_interval_s
        if (due or (idle and self._maintenance_more)) and self._maintains_now():
            self._last_maintenance = now
            try:
                with self.singleton_scope():
                    self._maintenance_more = self.telemetry.maintain(
                        now, self.retention_hold()
                    ).more
            except Exception as e:
                self._maintenance_more = False
                log.error("fleet maintenance failed: %s", e)

    def _maintains_now(self) -> bool:
        try:
            return self.maintains()
        except Exception:  # noqa: BLE001 - a failing check must not stop the worker
            log.exception("fleet maintenance: cannot tell whether this hub maintains")
            return False

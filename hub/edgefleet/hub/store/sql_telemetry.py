"""The telemetry tables of the hub store, mixed into :class:`SqlHubStore` (both engines).

Telemetry is deduplicated on ``(device, seq)`` by the primary key: ``add_telemetry``
inserts with ``ON CONFLICT DO NOTHING``, so a record the store holds already, or one a
concurrent writer (another hub) inserts first, is skipped without failing the batch.

Retention: ``prune_telemetry`` deletes records received before a cutoff, a bounded batch
per transaction, and remembers per device the highest seq it deleted
(``telemetry_pruned``); ``add_telemetry`` ignores any record at or below that seq, so a
late retransmission of a deleted record is not stored a second time. The highest seq seen
per device could not serve for this: it may run ahead of a batch that is still missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from edgefleet.hub.store.records import StoredWindow, TelemetryRow
from edgefleet.hub.store.rows import INSERT_CHUNK, Row, multi_row_inserts, to_json

if TYPE_CHECKING:
    from edgefleet.hub.store.schema import Engine

#: One device's batch for :meth:`SqlTelemetryMixin.add_telemetry_many`.
TelemetryBatchRows = tuple[str, Sequence[TelemetryRow], float]


class SqlTelemetryMixin:
    """Telemetry methods of :class:`~edgefleet.hub.store.sql_store.SqlHubStore`.

    Uses the store's query helpers and transactions; not usable on its own.
    """

    if TYPE_CHECKING:
        engine: Engine

        def transaction(self) -> AbstractContextManager[None]: ...

        def _run(self, sql: str, params: Sequence[Any] = ()) -> int: ...

        def _run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> int: ...

        def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

        def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    def add_telemetry(
        self, device_id: str, rows: Sequence[TelemetryRow], received_at: float
    ) -> int:
        return self.add_telemetry_many([(device_id, rows, received_at)])

    def add_telemetry_many(self, batches: Sequence[TelemetryBatchRows]) -> int:
        """Store several devices' batches ``(device, rows, received_at)`` in one
        transaction: one query for the retention marks, multi-row inserts, one commit.

        Rows go in ``(device, seq)`` order, so two hubs inserting overlapping batches take
        the key locks in the same order and cannot deadlock. Returns how many were new.
        """
        if not batches:
            return 0
        with self.transaction():
            devices = sorted({device for device, _, _ in batches})
            pruned: dict[str, int] = {}
            for lo in range(0, len(devices), INSERT_CHUNK):
                some = devices[lo : lo + INSERT_CHUNK]
                marks = ",".join("?" * len(some))
                for r in self._all(
                    f"SELECT device, seq FROM telemetry_pruned WHERE device IN ({marks})", some
                ):
                    pruned[r["device"]] = r["seq"]
            values = sorted(
                (
                    (
                        device_id,
                        row.seq,
                        row.kind,
                        row.model,
                        row.version,
                        received_at,
                        to_json(dict(row.body)),
                    )
                    for device_id, rows, received_at in batches
                    # Retention deleted everything up to the mark: a record at or below it
                    # was stored once already (or, in a batch lost for longer than the
                    # retention, is older than anything kept) and must not come back.
                    for row in rows
                    if device_id not in pruned or row.seq > pruned[device_id]
                ),
                key=lambda value: (value[0], value[1]),
            )
            inserted = 0
            for sql, params in multi_row_inserts(
                "INSERT INTO telemetry", values, " ON CONFLICT DO NOTHING"
            ):
                inserted += max(self._run(sql, params), 0)
            return inserted

    def prune_telemetry(
        self, before: float, *, batch_size: int = 1000, max_rows: int | None = None
    ) -> int:
        """Delete telemetry received before ``before``; returns how many records went.

        Oldest first, ``batch_size`` records per transaction, so the write lock is never
        held for long and other writers get in between batches; stops after ``max_rows``
        (None: until nothing is older). Call it outside a transaction, or every batch joins
        the caller's. Per device the highest deleted seq is remembered in the same
        transaction as the delete (see ``add_telemetry``).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        total = 0
        while max_rows is None or total < max_rows:
            limit = batch_size if max_rows is None else min(batch_size, max_rows - total)
            with self.transaction():
                rows = self._all(
                    "SELECT device, seq FROM telemetry WHERE received_at < ?"
                    " ORDER BY received_at LIMIT ?",
                    (before, limit),
                )
                highest: dict[str, int] = {}
                for r in rows:
                    highest[r["device"]] = max(highest.get(r["device"], r["seq"]), r["seq"])
                self._run_many(
                    "INSERT INTO telemetry_pruned VALUES (?, ?) ON CONFLICT (device) DO UPDATE"
                    f" SET seq = {self.engine.greatest}(telemetry_pruned.seq, excluded.seq)",
                    sorted(highest.items()),
                )
                self._run_many(
                    "DELETE FROM telemetry WHERE device=? AND seq=?",
                    [(r["device"], r["seq"]) for r in rows],
                )
            total += len(rows)
            if len(rows) < limit:
                break
        return total

    def telemetry_windows(
        self,
        model: str,
        versions: Sequence[int],
        device_ids: Sequence[str] | None,
        since: float,
    ) -> Iterator[StoredWindow]:
        if not versions:
            return iter(())
        marks = ",".join("?" * len(versions))
        rows = self._all(
            f"SELECT device, version, received_at, body FROM telemetry WHERE kind='window'"
            f" AND model=? AND version IN ({marks}) AND received_at>=? ORDER BY device, seq",
            (model, *versions, since),
        )
        wanted = set(device_ids) if device_ids is not None else None
        return iter(
            [
                StoredWindow(r["device"], r["version"], r["received_at"], json.loads(r["body"]))
                for r in rows
                if wanted is None or r["device"] in wanted
            ]
        )

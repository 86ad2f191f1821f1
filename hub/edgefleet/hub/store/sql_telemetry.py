"""What the rollout gates read of telemetry, mixed into :class:`SqlHubStore` (both engines).

Telemetry is stored once: in the fleet tables (``fleet_records``, see
:mod:`edgefleet.hub.fleet.database`), which live in the hub store's own database. The
fleet ingest writes a batch's records, its rollups and its ack cursor in one transaction;
the gates, drift, alerts and reports all read those rows. Each window row carries its
operational totals (``summary``, :class:`~edgefleet.hub.fleet.totals.WindowTotals` JSON:
requests, errors, latency histogram, prediction counts), which is what the gates need.
Retention is the fleet's (``[fleet] raw_retention_s``), held back for what an active
rollout's gates still read (:func:`edgefleet.hub.rollout.evaluation.gate_horizon`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.store.records import StoredWindow
from edgefleet.hub.store.rows import Row

if TYPE_CHECKING:
    from edgefleet.hub.store.schema import Engine


class SqlTelemetryMixin:
    """Telemetry reads of :class:`~edgefleet.hub.store.sql_store.SqlHubStore`.

    Uses the store's query helpers; not usable on its own.
    """

    if TYPE_CHECKING:
        engine: Engine

        def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

        def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    _fleet_tables_seen = False

    def _fleet_tables_exist(self) -> bool:
        """Whether the fleet tables were created in this database (by the first hub or
        fleet command that opened it); once they exist they stay, so it is asked once."""
        if not self._fleet_tables_seen:
            self._fleet_tables_seen = (
                self._one(self.engine.has_table, ("fleet_records",)) is not None
            )
        return self._fleet_tables_seen

    def telemetry_windows(
        self,
        model: str,
        versions: Sequence[int],
        device_ids: Sequence[str] | None,
        since: float,
    ) -> Iterator[StoredWindow]:
        if not versions or not self._fleet_tables_exist():
            return iter(())
        marks = ",".join("?" * len(versions))
        rows = self._all(
            "SELECT device, version, received_at, summary FROM fleet_records"
            f" WHERE kind='window' AND model=? AND version IN ({marks}) AND received_at>=?"
            " ORDER BY device, seq",
            (model, *versions, since),
        )
        wanted = set(device_ids) if device_ids is not None else None
        return iter(
            [
                StoredWindow(
                    r["device"],
                    r["version"],
                    r["received_at"],
                    WindowTotals.from_json(r["summary"] or "{}"),
                )
                for r in rows
                if wanted is None or r["device"] in wanted
            ]
        )

"""What one group commit of the ingest reads and writes, in a few statements.

The ingest worker stores many batches per transaction. Read and written batch by batch,
each batch cost a handful of statements — on PostgreSQL a round trip each, all while the
transaction holds the one fleet write lock every hub waits for. Instead
:class:`GroupState` reads, before the first batch, the ack cursors of every device of
the group and the seqs already stored in the ranges its batches cover (three statements
per 200 devices); the batches are applied in memory, in order; :meth:`GroupState.flush`
writes the new records, cursors and spans (at most five statements). The CPU work —
building rows, decoding window statistics — is done before the transaction
(:func:`prepare`), so the lock is held for little more than the statements.

Invariants (what makes the result the same as batch by batch):

- inside the write transaction nobody else inserts (fleet writes are serialised, see
  ``database``), so the seqs read plus those this group adds are exactly what is stored;
- a later batch of a device sees the cursor the earlier batches of the same group left;
- a device without a ``fleet_cursor`` row starts from an empty cursor (spans stored
  without one are ignored, as they always were), and only what changed is written:
  ``contiguous`` when it moved, the spans (deleted and written again) when they changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.drift import WindowStats
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.protocol.telemetry import AckCursor
from edgefleet.hub.fleet.database import FleetConnection, FleetDatabase

#: Devices (or key tuples) per statement: well inside both engines' parameter limits.
CHUNK = 200

WINDOW_COLUMNS = (
    "device", "seq", "kind", "received_at", "model", "version", "grp", "profile", "start_s",
    "end_s", "bucket_s", "requests", "errors", "summary", "drift", "rolled",
)  # fmt: skip
# ``summary`` of a record other than a window holds its body (a deployment event's).
OTHER_COLUMNS = ("device", "seq", "kind", "received_at", "model", "version", "summary")


@dataclass
class DeviceCursor:
    """A device's ack cursor as stored (``loaded``) and as this group has moved it."""

    loaded: AckCursor
    current: AckCursor
    pruned: int  # pruned_through; -1: nothing pruned


@dataclass
class GroupState:
    cursors: dict[str, DeviceCursor] = field(default_factory=dict)
    known: dict[str, set[int]] = field(default_factory=dict)  # stored seqs, per device
    windows: list[tuple[Any, ...]] = field(default_factory=list)  # WINDOW_COLUMNS rows
    others: list[tuple[Any, ...]] = field(default_factory=list)  # OTHER_COLUMNS rows

    @classmethod
    def load(cls, conn: FleetConnection, ranges: dict[str, tuple[int, int] | None]) -> GroupState:
        """Cursors of the devices of ``ranges`` and the seqs stored in each device's
        (lowest, highest) seq range (None: the device's batches hold no records)."""
        state = cls()
        devices = sorted(ranges)
        for chunk in _chunks(devices):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT device, contiguous, pruned_through FROM fleet_cursor"
                f" WHERE device IN ({marks})",
                chunk,
            ).fetchall()
            spans: dict[str, list[tuple[int, int]]] = {}
            for device, after, last in conn.execute(
                "SELECT device, after_seq, last_seq FROM fleet_pending_spans"
                f" WHERE device IN ({marks}) ORDER BY device, after_seq",
                chunk,
            ):
                spans.setdefault(str(device), []).append((int(after), int(last)))
            for device, contiguous, pruned in rows:
                cursor = AckCursor(int(contiguous), tuple(spans.get(str(device), ())))
                state.cursors[str(device)] = DeviceCursor(cursor, cursor, int(pruned))
        for device in devices:
            if device not in state.cursors:
                state.cursors[device] = DeviceCursor(AckCursor(), AckCursor(), -1)
        state.known = stored_seqs(conn, ranges)
        return state

    def flush(self, db: FleetDatabase, conn: FleetConnection) -> None:
        """Write the records, cursors and spans this group produced."""
        db.insert_many(conn, "fleet_records", WINDOW_COLUMNS, self.windows)
        db.insert_many(conn, "fleet_records", OTHER_COLUMNS, self.others)
        moved = [
            (device, c.current.contiguous, c.pruned)
            for device, c in self.cursors.items()
            if c.current.contiguous != c.loaded.contiguous
        ]
        if moved:
            conn.executemany(
                "INSERT INTO fleet_cursor VALUES (?, ?, ?) ON CONFLICT (device)"
                " DO UPDATE SET contiguous = excluded.contiguous",
                moved,
            )
        respanned = [d for d, c in self.cursors.items() if c.current.pending != c.loaded.pending]
        if respanned:
            conn.executemany(
                "DELETE FROM fleet_pending_spans WHERE device = ?", [(d,) for d in respanned]
            )
            rows = [(d, a, b) for d in respanned for a, b in self.cursors[d].current.pending]
            if rows:
                conn.executemany("INSERT INTO fleet_pending_spans VALUES (?, ?, ?)", rows)


def stored_seqs(
    conn: FleetConnection, ranges: dict[str, tuple[int, int] | None]
) -> dict[str, set[int]]:
    """Per device of ``ranges``, the seqs stored within its (lowest, highest) range."""
    known: dict[str, set[int]] = {device: set() for device in ranges}
    wanted = [(d, r) for d, r in sorted(ranges.items()) if r is not None]
    for chunk in _chunks(wanted):
        where = " OR ".join(["(device = ? AND seq BETWEEN ? AND ?)"] * len(chunk))
        params = [v for device, (lo, hi) in chunk for v in (device, lo, hi)]
        for device, seq in conn.execute(
            f"SELECT device, seq FROM fleet_records WHERE {where}", params
        ):
            known[str(device)].add(int(seq))
    return known


def seq_ranges(batches: Sequence[Any]) -> dict[str, tuple[int, int] | None]:
    """Per device, the (lowest, highest) seq its batches hold (None: no records)."""
    out: dict[str, tuple[int, int] | None] = {}
    for batch in batches:
        seqs = [r.seq for r in batch.rows]
        now = out.get(batch.device)
        if not seqs:
            out.setdefault(batch.device, None)
            continue
        lo, hi = min(seqs), max(seqs)
        out[batch.device] = (lo, hi) if now is None else (min(now[0], lo), max(now[1], hi))
    return out


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


@dataclass
class Prepared:
    """Records built and window statistics decoded *before* the write transaction.

    Building a row (validating and decoding a window body) and decoding its statistics is
    most of the CPU of a group commit; done inside the transaction it would hold the fleet
    write lock every hub waits for. :func:`prepare` does it for the records not stored at a
    snapshot read just before; inside the transaction the authoritative check decides what
    is new, and a new record not prepared (retention deleted its row in between) is built
    there as before. A prepared record that another hub stored meanwhile is dropped.
    """

    rows: dict[tuple[str, int], Any] = field(default_factory=dict)
    stats: dict[tuple[str, int], WindowStats] = field(default_factory=dict)

    def row(self, device: str, record: Any, build: Callable[[Any], Any]) -> Any:
        ready = self.rows.pop((device, record.seq), None)
        return ready if ready is not None else build(record)


def prepare(
    db: FleetDatabase,
    batches: Sequence[Any],
    ranges: dict[str, tuple[int, int] | None],
    build: Callable[[Any], Any],
    decode: bool,
) -> Prepared:
    """Build the rows of records not stored yet and (``decode``) decode their statistics."""
    with db.read() as conn:
        known = stored_seqs(conn, ranges)
    ready = Prepared()
    for batch in batches:
        stored = known.get(batch.device, set())
        for record in batch.rows:
            key = (batch.device, record.seq)
            if record.seq not in stored and key not in ready.rows:
                ready.rows[key] = build(record)
    if decode:
        blobs = []
        for key, r in ready.rows.items():
            if r.kind != "window" or not r.drift:
                continue
            if r.stats is not None:  # decoded when the hub screened it
                ready.stats[key] = r.stats
            else:
                blobs.append((key, r.drift))
        decoded = decode_many([bytes(blob) for _, blob in blobs])
        for (key, _), stats in zip(blobs, decoded, strict=True):
            if stats is not None:
                ready.stats[key] = stats
    return ready

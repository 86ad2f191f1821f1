"""Folding windows into rollup rows: exact merges, with the rollups being written kept decoded.

A rollup row is the merge of whole windows for one key ``(level, model, version, bucket,
device, group, profile, profile_id)``: drift statistics merged with ``WindowStats.merge_all``
(exact), operational totals added (counts). :func:`fold` takes windows that are already in
memory (the ingest path: they were just decoded from the wire) or read back from the raw
table (maintenance), groups them by key, and merges each group into its row with one read
and one write per key. :func:`decode_items` decodes the blobs of a whole transaction with
``decode_many`` (one batch per layout: exactly the single-message decoder's result, several
times cheaper per window than decoding them one by one).

Decoding a 64-feature window costs far more than merging it, so :class:`RollupCache` keeps
the rollups the writer touched last in decoded form. An entry is used only while the row
still has the ``windows`` count and ``updated_at`` the entry was written with — any other
writer, a rolled-back transaction, coarsening or retention changes or removes the row, and
the next fold reads it from the database again. The cache is therefore an optimisation that
cannot change a result.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.core.drift import WindowStats
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.errors import DriftError
from edgefleet.hub.fleet.database import FleetConnection
from edgefleet.hub.fleet.settings import FleetSettings
from edgefleet.hub.fleet.totals import WindowTotals

RollupKey = tuple[Any, ...]  # (level, model, version, bucket_s, device, grp, profile, profile_id)

_KEY_WHERE = (
    "level = ? AND model = ? AND version = ? AND bucket_s = ? AND device = ? AND grp = ?"
    " AND profile = ? AND profile_id = ?"
)


@dataclass
class FoldItem:
    """One window to fold: where it belongs and what it holds."""

    model: str
    version: int
    device: str
    group: str
    profile: str
    bucket_s: int
    totals: WindowTotals
    stats: WindowStats | None
    blob: bytes | None = None  # the encoded stats, when ``decode_items`` is to decode them


@dataclass
class _Entry:
    windows: int
    updated_at: float
    totals: WindowTotals
    stats: WindowStats | None


class RollupCache:
    """Decoded rollups by key, least recently used dropped first (bounded memory)."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[RollupKey, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: RollupKey, windows: int, updated_at: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.windows != windows or entry.updated_at != updated_at:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: RollupKey, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def decode(blob: bytes | None) -> tuple[WindowStats | None, int]:
    """A stored or received blob as statistics; (None, 1) when it does not decode."""
    if blob is None:
        return None, 0
    try:
        return WindowStats.from_bytes(bytes(blob)), 0
    except DriftError:
        return None, 1


def decode_items(items: Sequence[FoldItem]) -> int:
    """Decode the blobs of ``items`` into their ``stats``, all at once (one batch per
    layout); returns how many blobs did not decode (their items fold without stats)."""
    todo = [item for item in items if item.stats is None and item.blob is not None]
    bad = 0
    for item, stats in zip(todo, decode_many([bytes(i.blob or b"") for i in todo]), strict=True):
        item.stats, item.blob = stats, None
        bad += stats is None
    return bad


def rollup_keys(item: FoldItem, settings: FleetSettings, now: float) -> list[RollupKey]:
    """The device's rollup and its group+profile's (``device = ''``) for one window.

    A window older than the fine retention goes straight into its coarse (day) bucket.
    """
    if item.bucket_s <= now - settings.fine_retention_s - settings.bucket_s:
        level, bucket = settings.coarse_bucket_s, settings.coarse_bucket_of(item.bucket_s)
    else:
        level, bucket = settings.bucket_s, item.bucket_s
    pid = "" if item.stats is None else item.stats.profile_id
    base = (level, item.model, item.version, bucket)
    return [(*base, who, item.group, item.profile, pid) for who in (item.device, "")]


def fold(
    conn: FleetConnection,
    settings: FleetSettings,
    items: Iterable[FoldItem],
    now: float,
    cache: RollupCache | None = None,
) -> None:
    """Merge ``items`` into their device and group rollups (inside the caller's write).

    A device's new windows are summed once and that sum is added to the group rollup, so
    the totals of a window are added once per window plus once per device, not twice per
    window (``WindowTotals.add`` is associative and commutative: same result).
    """
    by_device: dict[RollupKey, tuple[WindowTotals, list[WindowStats], RollupKey]] = {}
    for item in items:
        item.totals.devices.add(item.device)
        device_key, group_key = rollup_keys(item, settings, now)
        entry = by_device.get(device_key)
        if entry is None:
            entry = by_device[device_key] = (WindowTotals(), [], group_key)
        entry[0].add(item.totals)
        if item.stats is not None:
            entry[1].append(item.stats)
    by_group: dict[RollupKey, tuple[WindowTotals, list[WindowStats]]] = {}
    merges: list[tuple[RollupKey, WindowTotals, Sequence[WindowStats]]] = []
    for device_key, (totals, stats, group_key) in by_device.items():
        merges.append((device_key, totals, stats))
        group = by_group.setdefault(group_key, (WindowTotals(), []))
        group[0].add(totals)
        group[1].extend(stats)
    merges += [(key, totals, stats) for key, (totals, stats) in by_group.items()]
    _merge_rows(conn, merges, now, cache)


def merge_into(
    conn: FleetConnection,
    key: RollupKey,
    parts: Sequence[tuple[WindowTotals, WindowStats | None]],
    now: float,
    cache: RollupCache | None = None,
) -> None:
    """Add ``parts`` to the rollup row ``key`` (created when missing)."""
    totals = WindowTotals()
    for part_totals, _ in parts:
        totals.add(part_totals)
    stats = [s for _, s in parts if s is not None]
    _merge_rows(conn, [(key, totals, stats)], now, cache)


def _merge_rows(
    conn: FleetConnection,
    merges: Sequence[tuple[RollupKey, WindowTotals, Sequence[WindowStats]]],
    now: float,
    cache: RollupCache | None,
) -> None:
    """Add each (key, totals, stats) to its rollup row (created when missing); distinct
    keys. A few statements for all of them, not a few per row: on PostgreSQL every
    statement is a round trip made while holding the fleet write lock."""
    keys = [_normal(key) for key, _, _ in merges]
    heads = _select_rows(conn, "windows, updated_at", keys)
    entries: dict[RollupKey, _Entry] = {}
    misses = []
    for key, head in heads.items():
        entry = None if cache is None else cache.get(key, int(head[0]), float(head[1]))
        if entry is None:
            misses.append(key)
        else:
            entries[key] = entry
    for key, (summary, blob) in _select_rows(conn, "summary, drift", misses).items():
        entries[key] = _Entry(0, 0.0, WindowTotals.from_json(summary), decode(blob)[0])
    inserts, updates = [], []
    for key, (_, new_totals, new_stats) in zip(keys, merges, strict=True):
        totals = WindowTotals()
        windows: list[WindowStats] = []
        entry = entries.get(key)
        if entry is not None:
            totals.add(entry.totals)
            if entry.stats is not None:
                windows.append(entry.stats)
        totals.add(new_totals)
        windows.extend(new_stats)
        merged = WindowStats.merge_all(windows) if len(windows) > 1 else next(iter(windows), None)
        values = (
            totals.windows,
            totals.start_s,
            totals.end_s,
            totals.to_json(),
            None if merged is None else merged.to_bytes(),
            now,
        )
        if key in heads:  # an UPDATE in place costs less than a REPLACE
            updates.append((*values, *key))
        else:
            inserts.append((*key, *values))
        if cache is not None:
            cache.put(key, _Entry(totals.windows, now, totals, merged))
    if inserts:
        conn.executemany("INSERT INTO fleet_rollups VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", inserts)
    if updates:
        conn.executemany(
            "UPDATE fleet_rollups SET windows = ?, start_s = ?, end_s = ?, summary = ?,"
            f" drift = ?, updated_at = ? WHERE {_KEY_WHERE}",
            updates,
        )


_KEY_COLUMNS = "level, model, version, bucket_s, device, grp, profile, profile_id"
_ROWS_PER_SELECT = 100


def _normal(key: RollupKey) -> RollupKey:
    """A key as the database gives it back (so stored and computed keys compare equal)."""
    level, model, version, bucket, device, grp, profile, pid = key
    return (int(level), str(model), int(version), int(bucket), str(device), str(grp),
            str(profile), str(pid))  # fmt: skip


def _select_rows(
    conn: FleetConnection, columns: str, keys: Sequence[RollupKey]
) -> dict[RollupKey, tuple[Any, ...]]:
    """``columns`` of the stored rollups among ``keys``, by (normalised) key."""
    found: dict[RollupKey, tuple[Any, ...]] = {}
    for i in range(0, len(keys), _ROWS_PER_SELECT):
        chunk = keys[i : i + _ROWS_PER_SELECT]
        where = " OR ".join([f"({_KEY_WHERE})"] * len(chunk))
        params = [v for key in chunk for v in key]
        for row in conn.execute(
            f"SELECT {_KEY_COLUMNS}, {columns} FROM fleet_rollups WHERE {where}", params
        ):
            found[_normal(tuple(row[:8]))] = tuple(row[8:])
    return found

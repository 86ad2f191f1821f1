"""Rows of the hub store (either engine) to records and back.

Pure functions, no I/O: each ``*_from_row`` builds a record from a row of the tables
:mod:`edgefleet.hub.store.schema` creates (a ``sqlite3.Row`` or a psycopg dict row: both
index by column name), decoding the JSON columns;
``rollout_device_values`` gives the column values in ``rollout_devices`` order;
``to_json`` is how every JSON column is written (sorted keys, no spaces).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from edgefleet.hub.rollout.gates import InstallStatus
from edgefleet.hub.rollout.machine import RolloutStatus
from edgefleet.hub.rollout.plan import RolloutPlan
from edgefleet.hub.store.records import (
    BundleRecord,
    DeviceRecord,
    DirectiveRecord,
    RolloutDeviceRecord,
    RolloutRecord,
)


class Row(Protocol):
    """A database row read by column name (``sqlite3.Row``, a psycopg ``dict_row``)."""

    def __getitem__(self, key: str) -> Any: ...


#: Rows per multi-row statement: a few thousand parameters, far below both engines' limits.
INSERT_CHUNK = 500


def multi_row_inserts(
    head: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> Iterator[tuple[str, list[Any]]]:
    """``head VALUES (?,..),(?,..) tail`` statements covering ``rows``, ``INSERT_CHUNK`` rows
    each: one round trip per chunk instead of one per row (PostgreSQL's executemany)."""
    for lo in range(0, len(rows), INSERT_CHUNK):
        part = rows[lo : lo + INSERT_CHUNK]
        one = "(" + ",".join("?" * len(part[0])) + ")"
        values = ",".join([one] * len(part))
        yield f"{head} VALUES {values}{tail}", [v for row in part for v in row]


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def device_from_row(row: Row) -> DeviceRecord:
    return DeviceRecord(
        device_id=row["id"],
        profile=row["profile"],
        password_hash=row["password_hash"],
        created_at=row["created_at"],
        group=row["grp"],
        tags=json.loads(row["tags"]),
        last_seen=row["last_seen"],
        online=bool(row["online"]),
        state=json.loads(row["state"]),
        state_at=row["state_at"],
        desired_rev=row["desired_rev"],
    )


def directive_from_row(row: Row) -> DirectiveRecord:
    return DirectiveRecord(
        device_id=row["device"],
        seq=row["seq"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        desired_rev=row["desired_rev"],
        envelope=json.loads(row["envelope"]),
        published_at=row["published_at"],
    )


def bundle_from_row(row: Row) -> BundleRecord:
    return BundleRecord(
        sha256=row["sha256"],
        model=row["model"],
        version=row["version"],
        profile=row["profile"],
        size=row["size"],
        path=row["path"],
        manifest=json.loads(row["manifest"]),
        signer_keyids=tuple(json.loads(row["signers"])),
        published_at=row["published_at"],
    )


def rollout_from_row(row: Row) -> RolloutRecord:
    return RolloutRecord(
        plan=RolloutPlan.from_dict(json.loads(row["plan"])),
        status=RolloutStatus.from_dict(json.loads(row["status"])),
        created_at=row["created_at"],
    )


def rollout_device_values(d: RolloutDeviceRecord) -> tuple[Any, ...]:
    return (
        d.rollout_id,
        d.device_id,
        d.phase,
        d.bundle_sha256,
        d.size,
        d.previous_version,
        d.previous_sha256,
        d.previous_size,
        d.install.value,
        d.assigned_at,
        d.settled_at,
        d.detail,
    )


def rollout_device_from_row(row: Row) -> RolloutDeviceRecord:
    return RolloutDeviceRecord(
        rollout_id=row["rollout"],
        device_id=row["device"],
        phase=row["phase"],
        bundle_sha256=row["bundle_sha256"],
        size=row["size"],
        previous_version=row["previous_version"],
        previous_sha256=row["previous_sha256"],
        previous_size=row["previous_size"],
        install=InstallStatus(row["install"]),
        assigned_at=row["assigned_at"],
        settled_at=row["settled_at"],
        detail=row["detail"],
    )

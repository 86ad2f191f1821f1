"""The hub store's tables for each engine, its schema version and the migrations.

Pure: statements and one planning function, no I/O. The engines run what
:func:`plan_schema` returns inside the transaction that opens the store.

Invariants:

- ``meta.schema`` holds the version a store was last written at; a store newer than
  :data:`SCHEMA_VERSION` is refused (an older hub must not write a newer layout), one
  older than the engine's oldest migratable version is refused too, anything between
  is migrated step by step in one transaction, so a failed migration leaves the store
  at its old version;
- both engines hold the same tables and columns in the same order (``SELECT *`` rows
  and positional ``INSERT``s work on either); PostgreSQL uses 64-bit integers and
  double precision where SQLite is dynamically typed;
- JSON documents are stored as text written by ``rows.to_json`` on both engines, so
  ``hub store migrate`` copies them byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.hub.errors import HubStoreError

SCHEMA_VERSION = 6

# Tables in an order that respects foreign keys (``hub store migrate`` copies in it).
# ``leases`` is not among them: who holds the singleton work is not fleet state.
TABLES = (
    "meta",
    "devices",
    "assignments",
    "directives",
    "bundles",
    "bundle_blobs",
    "rollouts",
    "rollout_devices",
    "rollout_events",
    "counters",
)

_SQLITE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, profile TEXT NOT NULL, grp TEXT, tags TEXT NOT NULL,
    password_hash TEXT NOT NULL, created_at REAL NOT NULL, last_seen REAL,
    online INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '{}', state_at REAL,
    desired_rev INTEGER NOT NULL DEFAULT 0, presence_at REAL);
CREATE TABLE IF NOT EXISTS assignments (
    device TEXT NOT NULL REFERENCES devices(id), model TEXT NOT NULL, body TEXT NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (device, model));
CREATE TABLE IF NOT EXISTS directives (
    device TEXT NOT NULL REFERENCES devices(id), seq INTEGER NOT NULL, issued_at REAL NOT NULL,
    expires_at REAL NOT NULL, desired_rev INTEGER NOT NULL, envelope TEXT NOT NULL,
    published_at REAL, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS bundles (
    sha256 TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, profile TEXT,
    size INTEGER NOT NULL, path TEXT NOT NULL, manifest TEXT NOT NULL, signers TEXT NOT NULL,
    published_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS bundles_model ON bundles (model, version);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, plan TEXT NOT NULL,
    status TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout TEXT NOT NULL REFERENCES rollouts(id), device TEXT NOT NULL, phase INTEGER NOT NULL,
    bundle_sha256 TEXT NOT NULL, size INTEGER NOT NULL, previous_version INTEGER,
    previous_sha256 TEXT, previous_size INTEGER, install TEXT NOT NULL, assigned_at REAL,
    settled_at REAL, detail TEXT NOT NULL DEFAULT '', PRIMARY KEY (rollout, device));
CREATE INDEX IF NOT EXISTS rollout_devices_device ON rollout_devices (device);
CREATE TABLE IF NOT EXISTS rollout_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL, at REAL NOT NULL,
    event TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# The singleton lease (store/sql_lease.py): who does the once-per-fleet work, until when,
# and the fencing epoch that grows with every change of holder.
_SQLITE_LEASES = (
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
    " epoch INTEGER NOT NULL, expires_at REAL NOT NULL)"
)
_POSTGRES_LEASES = (
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
    " epoch BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)"
)

# A bundle's bytes in parts of a fixed size (store/sql_blobs.py), so every hub can serve
# any bundle; a bundle row deleted takes its bytes with it.
_SQLITE_BLOBS = (
    "CREATE TABLE IF NOT EXISTS bundle_blobs ("
    " sha256 TEXT NOT NULL REFERENCES bundles(sha256) ON DELETE CASCADE,"
    " part INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (sha256, part))"
)
_POSTGRES_BLOBS = (
    "CREATE TABLE IF NOT EXISTS bundle_blobs ("
    " sha256 TEXT NOT NULL REFERENCES bundles(sha256) ON DELETE CASCADE,"
    " part INTEGER NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (sha256, part))"
)

_POSTGRES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, profile TEXT NOT NULL, grp TEXT, tags TEXT NOT NULL,
    password_hash TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION, online INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '{}', state_at DOUBLE PRECISION,
    desired_rev BIGINT NOT NULL DEFAULT 0, presence_at DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS assignments (
    device TEXT NOT NULL REFERENCES devices(id), model TEXT NOT NULL, body TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, model));
CREATE TABLE IF NOT EXISTS directives (
    device TEXT NOT NULL REFERENCES devices(id), seq BIGINT NOT NULL,
    issued_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    desired_rev BIGINT NOT NULL, envelope TEXT NOT NULL, published_at DOUBLE PRECISION,
    PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS bundles (
    sha256 TEXT PRIMARY KEY, model TEXT NOT NULL, version BIGINT NOT NULL, profile TEXT,
    size BIGINT NOT NULL, path TEXT NOT NULL, manifest TEXT NOT NULL, signers TEXT NOT NULL,
    published_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS bundles_model ON bundles (model, version);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version BIGINT NOT NULL, plan TEXT NOT NULL,
    status TEXT NOT NULL, state TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout TEXT NOT NULL REFERENCES rollouts(id), device TEXT NOT NULL, phase INTEGER NOT NULL,
    bundle_sha256 TEXT NOT NULL, size BIGINT NOT NULL, previous_version BIGINT,
    previous_sha256 TEXT, previous_size BIGINT, install TEXT NOT NULL,
    assigned_at DOUBLE PRECISION, settled_at DOUBLE PRECISION, detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, device));
CREATE INDEX IF NOT EXISTS rollout_devices_device ON rollout_devices (device);
CREATE TABLE IF NOT EXISTS rollout_events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, rollout TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL, event TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
"""

# Telemetry is stored once, in the fleet tables of the same database (which always held
# every record too, written after this copy): the store's own copy of what the rollout
# gates read goes, with its retention marks.
_DROP_TELEMETRY = ("DROP TABLE IF EXISTS telemetry", "DROP TABLE IF EXISTS telemetry_pruned")

# Statements that take a store from version N-1 to N, per engine.
_SQLITE_MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    # Version 1 stores kept the highest last_seq per device in telemetry_cursor. Nothing
    # ever read it (the acks come from the fleet database's own cursor).
    2: ("DROP TABLE IF EXISTS telemetry_cursor",),
    3: (_SQLITE_LEASES,),
    # When the presence now stored was received: an older status report handled late
    # (by a slower hub) must not overwrite a newer one (see set_presence).
    4: ("ALTER TABLE devices ADD COLUMN presence_at REAL",),
    # Bundle bytes in the store (bundles published before keep only their file until
    # a hub holding it stores them: PublishedBundleStore.store_missing_bytes).
    5: (_SQLITE_BLOBS,),
    6: _DROP_TELEMETRY,
}
# The first PostgreSQL layout is version 2.
_POSTGRES_MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    3: (_POSTGRES_LEASES,),
    4: ("ALTER TABLE devices ADD COLUMN IF NOT EXISTS presence_at DOUBLE PRECISION",),
    5: (_POSTGRES_BLOBS,),
    6: _DROP_TELEMETRY,
}


@dataclass(frozen=True)
class Engine:
    """What differs between the engines' SQL, as data the shared store code reads."""

    name: str
    create: str
    migrations: Mapping[int, tuple[str, ...]]
    oldest: int  # the oldest schema version this engine's store can migrate from
    greatest: str  # the two-argument maximum: SQLite's MAX(a, b), PostgreSQL's GREATEST
    for_update: str  # row lock on a SELECT inside a transaction ("" where BEGIN locks all)
    for_share: str  # shared row lock: held rows cannot be updated until the commit
    now: str  # the database's clock in epoch seconds (one clock for every hub host)
    leases: str
    blobs: str
    has_table: str  # one row when the table named by the one parameter exists


SQLITE = Engine(
    "sqlite",
    _SQLITE,
    _SQLITE_MIGRATIONS,
    1,
    "MAX",
    "",
    "",
    "SELECT (julianday('now') - 2440587.5) * 86400.0 AS now",
    _SQLITE_LEASES,
    _SQLITE_BLOBS,
    "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = ?",
)
POSTGRES = Engine(
    "postgresql",
    _POSTGRES,
    _POSTGRES_MIGRATIONS,
    2,
    "GREATEST",
    " FOR UPDATE",
    " FOR SHARE",
    "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now",
    _POSTGRES_LEASES,
    _POSTGRES_BLOBS,
    "SELECT 1 AS found WHERE to_regclass(?) IS NOT NULL",
)


def create_statements(engine: Engine) -> list[str]:
    return [s.strip() for s in engine.create.split(";") if s.strip()] + [
        engine.leases,
        engine.blobs,
    ]


def plan_schema(engine: Engine, found: int | None, where: str) -> list[str]:
    """The statements that bring a store at version ``found`` (None: new) to the current one.

    Raises ``HubStoreError`` (one line naming ``where``) for a store this hub must not open.
    """
    if found is None or found == SCHEMA_VERSION:
        return []
    if found > SCHEMA_VERSION:
        raise HubStoreError(
            f"{where}: store schema {found} is newer than this hub ({SCHEMA_VERSION});"
            " upgrade edgefleet"
        )
    if found < engine.oldest:
        raise HubStoreError(
            f"{where}: store schema {found} is older than this hub can migrate"
            f" ({engine.oldest}..{SCHEMA_VERSION})"
        )
    steps: list[str] = []
    for version in range(found + 1, SCHEMA_VERSION + 1):
        steps.extend(engine.migrations.get(version, ()))
    return steps

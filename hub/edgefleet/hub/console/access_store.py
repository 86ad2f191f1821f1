"""API tokens, browser sessions, the audit log and alert acknowledgements.

A SQLite file of its own next to the hub store (``hub.db`` -> ``hub.console.db``), in WAL
mode: any number of API processes share it, and its writes never take the hub store's write
lock that the rollout engine needs.

Invariants:

- a token or session secret is never stored, only its SHA-256 (the secret is 32 random
  bytes from :mod:`secrets`, so a fast hash is enough: there is nothing to brute-force);
- a token name is unique among tokens that are not revoked;
- a session belongs to one token: revoking the token ends its sessions;
- the audit log is append-only.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.hub.errors import HubStoreError, HubUsageError

ROLES = ("viewer", "operator", "admin")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT NOT NULL, role TEXT NOT NULL, digest TEXT PRIMARY KEY,
    created_at REAL NOT NULL, expires_at REAL, revoked_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS sessions (
    digest TEXT PRIMARY KEY, token_digest TEXT NOT NULL, csrf TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, token TEXT NOT NULL,
    role TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL,
    action TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS alert_acks (
    alert_id INTEGER PRIMARY KEY, token TEXT NOT NULL, at REAL NOT NULL, note TEXT NOT NULL)
"""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def console_db_path(store_path: Path) -> Path:
    """``hub.db`` -> ``hub.console.db`` (beside the hub store, which holds the fleet tables)."""
    return store_path.with_name(f"{store_path.stem}.console.db")


@dataclass(frozen=True)
class TokenRecord:
    name: str
    role: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class SessionRecord:
    token: TokenRecord
    csrf: str
    expires_at: float


class AccessStore:
    """Tokens, sessions, audit and acknowledgements in ``hub.console.db``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            with self._write() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
        except sqlite3.Error as e:
            raise HubStoreError(f"cannot open console store {path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise HubStoreError(f"console store {self.path}: {e}") from e

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise HubStoreError(f"console store {self.path}: {e}") from e

    # -- tokens ------------------------------------------------------------------------

    def add_token(
        self, name: str, role: str, secret: str, now: float, expires_at: float | None
    ) -> TokenRecord:
        if role not in ROLES:
            raise HubUsageError(f"role must be one of {', '.join(ROLES)}")
        with self._write() as db:
            live = db.execute(
                "SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if live:
                raise HubUsageError(f"a token named {name!r} exists; revoke it first")
            db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                (name, role, digest(secret), now, expires_at),
            )
        return TokenRecord(name, role, now, expires_at, None)

    def token_by_secret(self, secret: str) -> TokenRecord | None:
        rows = self._rows(
            "SELECT name, role, created_at, expires_at, revoked_at FROM tokens WHERE digest = ?",
            (digest(secret),),
        )
        return TokenRecord(*rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        rows = self._rows(
            "SELECT name, role, created_at, expires_at, revoked_at FROM tokens"
            " ORDER BY created_at, name"
        )
        return [TokenRecord(*r) for r in rows]

    def revoke_token(self, name: str, now: float) -> TokenRecord:
        with self._write() as db:
            row = db.execute(
                "SELECT digest FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if row is None:
                raise HubUsageError(f"no live token named {name!r}")
            db.execute("UPDATE tokens SET revoked_at = ? WHERE digest = ?", (now, row[0]))
            db.execute("DELETE FROM sessions WHERE token_digest = ?", (row[0],))
        return next(t for t in self.list_tokens() if t.name == name and t.revoked_at == now)

    # -- sessions ------------------------------------------------------------------------

    def add_session(
        self, token_secret: str, session_secret: str, csrf: str, now: float, expires_at: float
    ) -> None:
        with self._write() as db:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                (digest(session_secret), digest(token_secret), csrf, now, expires_at),
            )

    def session(self, session_secret: str) -> SessionRecord | None:
        rows = self._rows(
            "SELECT t.name, t.role, t.created_at, t.expires_at, t.revoked_at, s.csrf,"
            " s.expires_at FROM sessions s JOIN tokens t ON t.digest = s.token_digest"
            " WHERE s.digest = ?",
            (digest(session_secret),),
        )
        if not rows:
            return None
        r = rows[0]
        return SessionRecord(TokenRecord(*r[:5]), r[5], r[6])

    def end_session(self, session_secret: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM sessions WHERE digest = ?", (digest(session_secret),))

    # -- audit ---------------------------------------------------------------------------

    def audit(
        self, at: float, token: str, role: str, method: str, path: str, status: int, action: str
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO audit (at, token, role, method, path, status, action)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (at, token, role, method, path, status, action),
            )

    def audit_log(self, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        rows = self._rows(
            "SELECT id, at, token, role, method, path, status, action FROM audit"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        total = self._rows("SELECT COUNT(*) FROM audit")[0][0]
        keys = ("id", "at", "token", "role", "method", "path", "status", "action")
        return [dict(zip(keys, r, strict=True)) for r in rows], int(total)

    # -- alert acknowledgements ------------------------------------------------------------

    def acknowledge(self, alert_id: int, token: str, at: float, note: str) -> dict[str, Any]:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO alert_acks VALUES (?, ?, ?, ?)",
                (alert_id, token, at, note[:500]),
            )
        return {"by": token, "at": at, "note": note[:500]}

    def acknowledgements(self) -> dict[int, dict[str, Any]]:
        rows = self._rows("SELECT alert_id, token, at, note FROM alert_acks")
        return {int(a): {"by": t, "at": at, "note": n} for a, t, at, n in rows}

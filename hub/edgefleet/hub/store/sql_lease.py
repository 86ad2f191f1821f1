"""Leases with a fencing epoch: who does a piece of once-per-fleet work, mixed into
:class:`~edgefleet.hub.store.sql_store.SqlHubStore` (both engines).

A lease is a row ``(name, holder, epoch, expires_at)``. ``claim_lease`` renews it for its
holder, hands it to a new holder once it expired (the epoch grows by one), and refuses
everyone else; times come from the database's clock, so hub hosts with skewed clocks
agree on expiry.

Fencing: inside ``with store.fenced(name, epoch):`` every transaction this thread opens
first reads the lease row with a shared lock and is refused (``FencedError``, nothing
written) unless the epoch is still ``epoch``. A takeover updates that row, so it waits
for a fenced transaction in flight to commit, and every fenced transaction after it sees
the new epoch: a leader that was paused (or cut off) and wakes up after another hub took
over cannot write a singleton result any more.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from edgefleet.hub.errors import FencedError
from edgefleet.hub.store.rows import Row

if TYPE_CHECKING:
    from edgefleet.hub.store.schema import Engine


def lease_epoch_query(lock_clause: str) -> str:
    """The statement reading a lease's epoch (``lock_clause``: the engine's shared lock)."""
    return f"SELECT epoch FROM leases WHERE name=?{lock_clause}"


def check_fence(name: str, epoch: int, current: int | None, what: str = "write") -> None:
    """Raise ``FencedError`` unless the lease ``name`` still has the ``epoch`` held."""
    if current != epoch:
        raise FencedError(
            f"lease {name} epoch {epoch} was taken over (now {current}); {what} refused"
        )


class SqlLeaseMixin:
    """Lease methods of the hub store; uses its query helpers and transactions."""

    if TYPE_CHECKING:
        engine: Engine

        def transaction(self) -> Any: ...

        def _run(self, sql: str, params: Sequence[Any] = ()) -> int: ...

        def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    _fence_local: threading.local | None = None

    def db_now(self) -> float:
        row = self._one(self.engine.now)
        assert row is not None
        return float(row["now"])

    def claim_lease(self, name: str, holder: str, ttl_s: float) -> int | None:
        """Renew or take ``name`` for ``holder`` for ``ttl_s``; its epoch, or None if held."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        with self.transaction():
            now = self.db_now()
            row = self._one(
                f"SELECT holder, epoch, expires_at FROM leases WHERE name=?{self.engine.for_update}",
                (name,),
            )
            if row is None:
                inserted = self._run(
                    "INSERT INTO leases VALUES (?, ?, 1, ?) ON CONFLICT DO NOTHING",
                    (name, holder, now + ttl_s),
                )
                return 1 if inserted == 1 else None
            epoch = int(row["epoch"])
            if row["holder"] == holder and row["expires_at"] > now:
                self._run("UPDATE leases SET expires_at=? WHERE name=?", (now + ttl_s, name))
                return epoch
            if row["expires_at"] > now:
                return None
            self._run(
                "UPDATE leases SET holder=?, epoch=?, expires_at=? WHERE name=?",
                (holder, epoch + 1, now + ttl_s, name),
            )
            return epoch + 1

    def release_lease(self, name: str, holder: str) -> None:
        """Let the lease expire now if ``holder`` has it (the next claim takes it over)."""
        with self.transaction():
            self._run("UPDATE leases SET expires_at=0 WHERE name=? AND holder=?", (name, holder))

    def lease_holder(self, name: str) -> tuple[str, int, float] | None:
        row = self._one("SELECT holder, epoch, expires_at FROM leases WHERE name=?", (name,))
        return (row["holder"], int(row["epoch"]), float(row["expires_at"])) if row else None

    @contextmanager
    def fenced(self, name: str, epoch: int) -> Iterator[None]:
        """Transactions this thread opens in the block are refused unless ``epoch`` holds."""
        if self._fence_local is None:
            self._fence_local = threading.local()
        previous = getattr(self._fence_local, "fence", None)
        self._fence_local.fence = (name, epoch)
        try:
            yield
        finally:
            self._fence_local.fence = previous

    def _check_fence(self) -> None:
        """Called by the engines first thing in every outermost transaction."""
        fence = getattr(self._fence_local, "fence", None) if self._fence_local else None
        if fence is None:
            return
        name, epoch = fence
        row = self._one(lease_epoch_query(self.engine.for_share), (name,))
        check_fence(name, epoch, int(row["epoch"]) if row is not None else None)

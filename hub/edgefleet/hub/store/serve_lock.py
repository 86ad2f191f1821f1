"""One ``hub serve`` per SQLite store: an exclusive ``flock`` on ``<store>.serve.lock``.

Two hub services on one SQLite file would each take every device report, sign and
publish every directive and advance every rollout: the second is refused before it
opens the store, with one line naming the pid that holds it (written into the lock
file). The lock dies with its process, so a ``kill -9`` never leaves a stale lock.
Other hub commands (``hub rollout``, ``hub devices``) do not take it: they share the
store with a running service through SQLite's own locking.

On PostgreSQL there is no such lock: several hub processes share one store there.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.core.pid_lock import PidLock
from edgefleet.hub.errors import HubStoreError


def serve_lock_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".serve.lock")


class ServeLock(PidLock):
    """The exclusive lock ``hub serve`` holds on its SQLite store while it runs."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = Path(store_path)
        super().__init__(serve_lock_path(self.store_path))

    def acquire(self) -> ServeLock:
        """Take the lock or raise ``HubStoreError`` naming the pid that has it."""
        try:
            taken = self.try_acquire()
        except OSError as e:
            raise HubStoreError(f"cannot lock {self.path}: {e.strerror or e}") from e
        if not taken:
            pid = self.holder()
            who = f"pid {pid}" if pid is not None else "another process"
            raise HubStoreError(
                f"hub store {self.store_path} is in use by hub serve {who} (lock {self.path});"
                " one hub serve per SQLite store (use [store] url = postgresql://... for several)"
            )
        return self

    def __enter__(self) -> ServeLock:
        return self.acquire()

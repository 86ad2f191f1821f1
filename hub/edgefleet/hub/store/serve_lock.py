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

import fcntl
import os
from pathlib import Path
from types import TracebackType

from edgefleet.hub.errors import HubStoreError


def serve_lock_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".serve.lock")


class ServeLock:
    """The exclusive lock ``hub serve`` holds on its SQLite store while it runs."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = Path(store_path)
        self.path = serve_lock_path(self.store_path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> int | None:
        """The pid written by the process that holds (or last held) the lock."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def acquire(self) -> ServeLock:
        """Take the lock or raise ``HubStoreError`` naming the pid that has it."""
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as e:
            raise HubStoreError(f"cannot open {self.path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder()
            who = f"pid {pid}" if pid is not None else "another process"
            raise HubStoreError(
                f"hub store {self.store_path} is in use by hub serve {who} (lock {self.path});"
                " one hub serve per SQLite store (use [store] url = postgresql://... for several)"
            ) from None
        except OSError as e:
            os.close(fd)
            raise HubStoreError(f"cannot lock {self.path}: {e.strerror or e}") from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ServeLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

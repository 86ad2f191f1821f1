"""An exclusive ``flock`` on a file that names the pid holding it.

Used wherever one process at a time may own something on this machine: the agent's
state folder (``agent.lock``) and a SQLite hub store served by ``hub serve``. The lock
is the ``flock``, not the file: it dies with its process, so a ``kill -9`` never
leaves a stale lock behind, and the pid written into the file is only there to name the
holder in an error message.

OS errors (cannot open, cannot lock) surface as :class:`OSError`; each caller wraps them
in its own package's error, since what a failure means differs (a deployment error on
the agent, a store error on the hub).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class PidLock:
    """The exclusive lock on ``path``; not reentrant across processes, idempotent within one."""

    def __init__(self, path: Path, *, mode: int = 0o640) -> None:
        self.path = Path(path)
        self.mode = mode
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

    def try_acquire(self, *, wait: bool = False) -> bool:
        """Take the lock; False when another process holds it (and ``wait`` is False)."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            raise
        # Written only once the lock is ours: a loser never truncates the holder's pid.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

"""The bounded queue of messages waiting to be handed to the broker.

Invariants:

- Never holds more than ``capacity`` messages: memory on a small device stays bounded
  however long the broker is unreachable.
- FIFO: messages leave in the order they were published, so a newer retained state is
  never overtaken by an older one.
- When full, ``"drop_oldest"`` discards the oldest message (counted in ``dropped``) and
  ``"raise"`` refuses the new one with TransportError, leaving the queue unchanged.
  Dropping the oldest is the default: telemetry is kept in the agent's own buffer until
  acked and status/state are superseded by newer ones, so the newest message is the one
  worth keeping.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from edgefleet.core.errors import TransportError


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    payload: bytes
    retain: bool = False


class Outbox:
    def __init__(self, capacity: int, queue_full: str = "drop_oldest") -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if queue_full not in ("drop_oldest", "raise"):
            raise ValueError("queue_full must be 'drop_oldest' or 'raise'")
        self.capacity = capacity
        self.queue_full = queue_full
        self.dropped = 0
        self._items: deque[OutgoingMessage] = deque()
        self._lock = threading.Lock()

    def put(self, message: OutgoingMessage) -> None:
        with self._lock:
            if len(self._items) >= self.capacity:
                if self.queue_full == "raise":
                    raise TransportError(
                        f"mqtt outgoing queue full ({self.capacity} messages); "
                        f"not sent: {message.topic}"
                    )
                self._items.popleft()
                self.dropped += 1
            self._items.append(message)

    def pop(self) -> OutgoingMessage | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

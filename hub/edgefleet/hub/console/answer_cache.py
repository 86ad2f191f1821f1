"""Answers kept for a while, so a dashboard polling a 10,000-device fleet does not rescan it.

Each answer is *fresh* for ``ttl_s`` seconds; after that, for ``stale_s`` more seconds, the
old answer is still given at once while one background thread computes the new one
(stale-while-revalidate); older answers are recomputed while the caller waits.

Invariants:

- at most one computation per key at a time (a second caller waits for the first, or gets
  the stale answer);
- :meth:`AnswerCache.clear` (called after every write through the console) drops every
  answer, and a computation that started before it never stores its result: after a write,
  the next read is computed from the store as it is now.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class AnswerCache:
    def __init__(self, ttl_s: float, clock: Callable[[], float], *, stale_s: float = 0.0) -> None:
        self.ttl_s, self.stale_s, self.clock = ttl_s, stale_s, clock
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._computing: dict[Any, threading.Lock] = {}
        self._generation = 0
        self._threads: list[threading.Thread] = []

    def _lookup(self, key: Any) -> tuple[float | None, Any, threading.Lock, int]:
        with self._lock:
            hit = self._items.get(key)
            gate = self._computing.setdefault(key, threading.Lock())
            generation = self._generation
        if hit is None:
            return None, None, gate, generation
        return self.clock() - hit[0], hit[1], gate, generation

    def _store(self, key: Any, started: float, value: Any, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._items[key] = (started, value)

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        age, value, gate, generation = self._lookup(key)
        if age is not None and age < self.ttl_s:
            return value
        if age is not None and age < self.ttl_s + self.stale_s:
            if gate.acquire(blocking=False):
                self._behind(key, compute, gate, generation)
            return value
        with gate:
            age, value, _gate, generation = self._lookup(key)
            if age is not None and age < self.ttl_s:
                return value
            started = self.clock()
            value = compute()
            self._store(key, started, value, generation)
        return value

    def get_nowait(self, key: Any, compute: Callable[[], Any]) -> tuple[bool, Any]:
        """``(True, answer)`` when one is held (fresh or stale, refreshed behind as in
        :meth:`get`); else ``(False, None)`` at once, with the answer computed behind."""
        age, value, gate, generation = self._lookup(key)
        if age is not None and age < self.ttl_s + self.stale_s:
            if age >= self.ttl_s and gate.acquire(blocking=False):
                self._behind(key, compute, gate, generation)
            return True, value
        if gate.acquire(blocking=False):
            self._behind(key, compute, gate, generation)
        return False, None

    def _behind(
        self, key: Any, compute: Callable[[], Any], gate: threading.Lock, generation: int
    ) -> None:
        thread = threading.Thread(
            target=self._refresh, args=(key, compute, gate, generation), daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for the background computations; True when none is left running."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout_s)
        return not any(t.is_alive() for t in threads)

    def _refresh(
        self, key: Any, compute: Callable[[], Any], gate: threading.Lock, generation: int
    ) -> None:
        try:
            started = self.clock()
            self._store(key, started, compute(), generation)
        except Exception:  # the stale answer stays; the next caller past stale_s retries
            log.exception("refreshing a cached console answer failed")
        finally:
            gate.release()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._generation += 1

"""Waiting for something another thread or process does: the one polling loop of the tests.

Tests never sleep a fixed time to let a broker deliver, a worker commit or a daemon
start: they poll a predicate until it holds, and fail naming what they waited for. The
poll starts fast (a condition that holds within milliseconds costs milliseconds) and
backs off, so a long wait on a slow subprocess does not burn the shared machine's CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
_FIRST_INTERVAL_S = 0.005
_MAX_INTERVAL_S = 0.1


def wait_until(
    what: str | Callable[[], str],
    predicate: Callable[[], T],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    tick: Callable[[], None] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    ``tick`` runs before each poll, for loops the test drives itself (a device's
    uploader with a fake clock). Raises ``AssertionError`` naming ``what`` after
    ``timeout_s`` seconds; the predicate gets one last look at the deadline. ``what``
    may be a callable, asked only on failure (a daemon's log tail at that moment).
    """
    deadline = time.monotonic() + timeout_s
    interval = _FIRST_INTERVAL_S
    while True:
        if tick is not None:
            tick()
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {described}")
        time.sleep(interval)
        interval = min(interval * 2, _MAX_INTERVAL_S)

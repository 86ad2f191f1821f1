"""A fake clock for code that takes ``now`` (or a ``clock`` callable) as an argument.

Invariant: time never goes backwards; ``advance`` refuses negative steps so a
test cannot fake a clock jump by accident (use ``set`` to say so on purpose).
"""

from __future__ import annotations


class FakeClock:
    """Callable returning the current fake time in epoch seconds.

    >>> clock = FakeClock(1000.0)
    >>> clock.advance(2.5)
    1002.5
    >>> clock()
    1002.5
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        """Same as calling the clock; drop-in for ``time.time``."""
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError(f"cannot advance by a negative amount ({seconds}); use set()")
        self.now += seconds
        return self.now

    def sleep(self, seconds: float) -> None:
        """Drop-in for ``time.sleep`` that returns at once after advancing."""
        self.advance(seconds)

    def set(self, now: float) -> None:
        """Jump to ``now``, backwards included (tests of clock skew)."""
        self.now = float(now)

    def __repr__(self) -> str:
        return f"FakeClock({self.now!r})"

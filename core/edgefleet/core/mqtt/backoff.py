"""Reconnect backoff as an immutable policy value (in the style of urllib3's ``Retry``).

``BackoffPolicy()`` is the policy before the first retry; ``policy.next()`` returns the
policy for the following one and ``policy.reset()`` the one to use after a connection that
stayed up. Invariants (tested with hypothesis):

- ``base_delay_s`` is ``min(max_s, initial_s * multiplier ** attempt)``: never above the
  cap and non-decreasing with ``attempt`` until it reaches the cap.
- ``delay_s(rng)`` lies in ``[base * (1 - jitter), base]``: jitter only shortens the wait,
  so the cap holds, and a fleet of devices that lost the broker together spreads its
  reconnects over that interval instead of stampeding it at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class BackoffPolicy:
    initial_s: float = 0.5
    max_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomised, 0..1
    #: A connection that stayed up this long resets the policy; a shorter one keeps counting,
    #: so a broker that accepts and immediately drops us (e.g. a client-id clash) is not hammered.
    stable_after_s: float = 30.0
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("backoff needs 0 < initial_s <= max_s")
        if self.multiplier < 1.0:
            raise ValueError("backoff multiplier must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be within 0..1")
        if self.stable_after_s < 0:
            raise ValueError("stable_after_s must be >= 0")
        if self.attempt < 0:
            raise ValueError("attempt must be >= 0")

    @property
    def base_delay_s(self) -> float:
        # Compare exponents rather than computing a huge power (overflow after ~1000 attempts).
        if self.multiplier == 1.0:
            return self.initial_s
        delay = self.initial_s
        for _ in range(self.attempt):
            delay *= self.multiplier
            if delay >= self.max_s:
                return self.max_s
        return min(delay, self.max_s)

    def delay_s(self, rng: random.Random | None = None) -> float:
        """The wait before this attempt, with jitter drawn from ``rng``."""
        draw = (rng or random).random()
        base = self.base_delay_s
        return base * (1.0 - self.jitter * draw)

    def next(self) -> BackoffPolicy:
        return replace(self, attempt=self.attempt + 1)

    def reset(self) -> BackoffPolicy:
        return replace(self, attempt=0)

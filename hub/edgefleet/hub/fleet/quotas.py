"""Per-device telemetry quotas at the hub: token buckets, so only the offender slows down.

Every device has three buckets: telemetry messages, bytes and records. A bucket holds at
most ``burst`` tokens and refills at ``rate`` per second; a message takes one message token,
its payload size in byte tokens and (once decoded) its record count in record tokens.
Over quota, the message is **dropped without an ack**: the device keeps the records and
sends them again after its ack timeout, so nothing is lost and an honest device that
merely came back with a backlog is only slowed down, while a flooding one costs the hub
a size check per message instead of a decode and two transactions. (Refusing and acking
would lose an honest device's records; queueing them would let one device fill the queue
every device shares.)

Each hub process enforces ``1 / hub_processes`` of the rates (with shared subscriptions the
broker spreads a device's messages over the processes). A burst is never smaller than one
message of the largest allowed size, or such a message could never pass.

:class:`TokenBucket` is pure (``now`` is an argument, ``take`` returns the new bucket);
:class:`DeviceQuotas` keeps one set per device behind a lock (the MQTT network thread
checks messages and bytes, the inbound worker records).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet.core.protocol.limits import MAX_RECORDS_PER_BATCH, MAX_TELEMETRY_BYTES

LIMITS = ("messages", "bytes", "records")


@dataclass(frozen=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # most tokens held
    tokens: float
    at: float  # when ``tokens`` was right (monotonic seconds)

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, n: float, now: float) -> tuple[TokenBucket, bool]:
        """The bucket after trying to take ``n`` tokens at ``now``, and whether it could."""
        tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        if tokens >= n:
            return TokenBucket(self.rate, self.burst, tokens - n, now), True
        return TokenBucket(self.rate, self.burst, tokens, now), False


@dataclass(frozen=True)
class QuotaSettings:
    """Per-device rates for the whole hub (``[fleet]`` keys of hub.toml)."""

    messages_per_s: float = 2.0
    bytes_per_s: float = 131072.0  # 128 KiB/s
    records_per_s: float = 200.0
    burst_s: float = 30.0  # a bucket holds this many seconds of its rate
    hub_processes: int = 1  # each process enforces 1/hub_processes of the rates
    max_message_bytes: int = MAX_TELEMETRY_BYTES  # the largest telemetry payload

    def __post_init__(self) -> None:
        for name in ("messages_per_s", "bytes_per_s", "records_per_s", "burst_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.hub_processes < 1:
            raise ValueError("hub_processes must be at least 1")

    def bucket(self, limit: str, now: float) -> TokenBucket:
        """A full bucket of ``limit`` for this process's share."""
        rate = {
            "messages": self.messages_per_s,
            "bytes": self.bytes_per_s,
            "records": self.records_per_s,
        }[limit] / self.hub_processes
        floor = {"messages": 1, "bytes": self.max_message_bytes, "records": MAX_RECORDS_PER_BATCH}
        return TokenBucket.full(rate, max(rate * self.burst_s, float(floor[limit])), now)


@dataclass
class _Device:
    buckets: dict[str, TokenBucket] = field(default_factory=dict)


class DeviceQuotas:
    """The buckets of every device that sent telemetry, and what they refused."""

    def __init__(
        self, settings: QuotaSettings, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._refused: Counter[str] = Counter()  # messages refused, by limit

    def admit_message(self, device: str, size: int) -> bool:
        """Take one message and ``size`` bytes of the device's quota (False: over it)."""
        return self._take(device, (("messages", 1), ("bytes", size)))

    def admit_records(self, device: str, records: int) -> bool:
        """Take ``records`` records of the device's quota (False: over it)."""
        return self._take(device, (("records", records),))

    def refused(self) -> dict[str, int]:
        with self._lock:
            return dict(self._refused)

    def _take(self, device: str, costs: tuple[tuple[str, int], ...]) -> bool:
        now = self._monotonic()
        with self._lock:
            state = self._devices.get(device)
            if state is None:
                state = self._devices[device] = _Device()
            taken: dict[str, TokenBucket] = {}
            for limit, n in costs:
                bucket = state.buckets.get(limit) or self.settings.bucket(limit, now)
                after, ok = bucket.take(n, now)
                if not ok:
                    # Nothing is taken from the other buckets either: a refused message
                    # must not spend the device's byte quota.
                    state.buckets[limit] = after
                    self._refused[limit] += 1
                    return False
                taken[limit] = after
            state.buckets.update(taken)
            return True

"""Per-device token buckets: refill, burst floor, shares across hub processes, isolation."""

from __future__ import annotations

import pytest

from edgefleet.core.protocol.limits import MAX_RECORDS_PER_BATCH, MAX_TELEMETRY_BYTES
from edgefleet.hub.fleet.quotas import DeviceQuotas, QuotaSettings, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=4.0, now=0.0)
    for _ in range(4):
        bucket, ok = bucket.take(1, 0.0)
        assert ok
    bucket, ok = bucket.take(1, 0.0)
    assert not ok
    bucket, ok = bucket.take(1, 0.5)  # one token back after half a second
    assert ok
    bucket, _ = bucket.take(0, 100.0)
    assert bucket.tokens == 4.0  # never above the burst


def test_one_device_over_quota_leaves_the_others_alone() -> None:
    clock = Clock()
    quotas = DeviceQuotas(QuotaSettings(messages_per_s=1, burst_s=5), monotonic=clock)
    assert sum(quotas.admit_message("flood", 10) for _ in range(100)) == 5
    assert all(quotas.admit_message(f"d{i}", 10) for i in range(50))
    assert quotas.refused() == {"messages": 95}
    clock.t = 2.0
    assert sum(quotas.admit_message("flood", 10) for _ in range(10)) == 2


def test_a_refused_message_spends_none_of_the_other_quotas() -> None:
    quotas = DeviceQuotas(QuotaSettings(messages_per_s=1, burst_s=1), monotonic=Clock())
    assert quotas.admit_message("d", MAX_TELEMETRY_BYTES)
    assert not quotas.admit_message("d", 1)  # messages empty; bytes untouched
    assert quotas.refused() == {"messages": 1}


def test_bursts_never_below_one_largest_message() -> None:
    tiny = QuotaSettings(bytes_per_s=1, records_per_s=1, burst_s=1)
    assert tiny.bucket("bytes", 0.0).burst == MAX_TELEMETRY_BYTES
    assert tiny.bucket("records", 0.0).burst == MAX_RECORDS_PER_BATCH


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_each_hub_process_enforces_its_share(processes: int) -> None:
    settings = QuotaSettings(records_per_s=10_000, burst_s=10, hub_processes=processes)
    bucket = settings.bucket("records", 0.0)
    assert bucket.rate == 10_000 / processes
    assert bucket.burst == 100_000 / processes

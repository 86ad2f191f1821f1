"""The telemetry bounds: each rule refuses what it should and nothing an agent sends."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from edgefleet.core.drift import ReferenceProfile, WindowStats
from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.core.protocol.bounds import (
    MAX_SAFE_INT,
    REASONS,
    WindowLimits,
    batch_refusal,
    number_problem,
    record_refusal,
)

NOW = 1_800_000_000.0
LIMITS = WindowLimits(NOW, max_age_s=2 * 86400, max_requests_per_s=100)


def body(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "m",
        "version": 1,
        "start_s": NOW - 600,
        "end_s": NOW - 300,
        "requests": 100,
        "errors": {"inference": 10},
        "schema_violations": 2,
        "latency_ms": {"edges": [1.0, 10.0], "counts": [50, 40, 0]},
        "predictions": {"0": 60, "1": 30},
    }
    out.update(changes)
    return out


def refusal(b: dict[str, Any], kind: str = "window") -> str | None:
    found = record_refusal(TelemetryRecord(7, kind, b), LIMITS)
    return None if found is None else found.reason


def test_an_ordinary_window_and_event_pass() -> None:
    assert refusal(body()) is None
    assert refusal({"model": "m", "version": 2, "state": "installed", "at": NOW}, "event") is None


@pytest.mark.parametrize(
    ("name", "changes", "reason"),
    [
        ("requests 2**63", {"requests": 2**63}, "number_out_of_range"),
        ("requests 2**53", {"requests": MAX_SAFE_INT + 1}, "number_out_of_range"),
        ("latency 2**70", {"latency_ms": {"edges": [1.0], "counts": [2**70, 0]}}, "number_out_of_range"),
        ("error count huge", {"errors": {"x": 2**64}}, "number_out_of_range"),
        ("unknown field huge", {"extra": [1, {"deep": -(2**60)}]}, "number_out_of_range"),
        ("start 1e300", {"start_s": 1e300, "end_s": 1e300}, "from_the_future"),
        ("ends in the future", {"end_s": NOW + 301}, "from_the_future"),
        ("older than retention", {"start_s": NOW - 3 * 86400}, "too_old"),
        ("errors above requests", {"errors": {"x": 101}}, "inconsistent_counts"),
        ("schema above errors", {"schema_violations": 11}, "inconsistent_counts"),
        ("latency above requests", {"latency_ms": {"edges": [1.0], "counts": [101, 0]}}, "inconsistent_counts"),
        ("latency below answered", {"latency_ms": {"edges": [1.0], "counts": [80, 0]}}, "inconsistent_counts"),
        ("10**15 requests", {"requests": 10**15, "latency_ms": {"edges": [1.0], "counts": [10**15, 0]}, "errors": {}, "schema_violations": 0}, "rate_exceeded"),
    ],
)  # fmt: skip
def test_each_rule(name: str, changes: dict[str, Any], reason: str) -> None:
    assert reason in REASONS
    assert refusal(body(**changes)) == reason, name


def test_rate_ceiling_is_window_length_times_profile_rate() -> None:
    at_ceiling = body(requests=30_000, errors={}, schema_violations=0,
                      latency_ms={"edges": [1.0], "counts": [30_000, 0]})  # fmt: skip
    assert refusal(at_ceiling) is None  # 300 s x 100/s
    over = {**at_ceiling, "requests": 30_001, "latency_ms": {"edges": [1.0], "counts": [30_001, 0]}}
    assert refusal(over) == "rate_exceeded"


def test_event_numbers_are_bounded_too() -> None:
    event = {"model": "m", "version": 2**63, "state": "installed", "at": NOW}
    assert refusal(event, "event") == "number_out_of_range"


def test_batch_seqs_beyond_the_safe_range_refuse_the_batch() -> None:
    ok = TelemetryBatch.of("d", [TelemetryRecord(MAX_SAFE_INT, "window", body())])
    assert batch_refusal(ok) is None
    bad = TelemetryBatch.of("d", [TelemetryRecord(2**63, "window", body())])
    refused = batch_refusal(bad)
    assert refused is not None and refused.reason == "number_out_of_range"


def test_number_problem_walks_nested_values() -> None:
    assert number_problem({"a": [1, 2.5, "x", None, True]}) is None
    assert number_problem({"a": [1, {"b": float("inf")}]}) is not None
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    assert number_problem(deep) is not None


def test_drift_statistics_are_bounded() -> None:
    rng = np.random.default_rng(3)
    profile = ReferenceProfile.build(rng.normal(size=(500, 3)), ["a", "b", "c"])
    stats = WindowStats.empty(profile, NOW - 600, NOW - 300)
    stats.update(rng.normal(size=(40, 3)))
    honest = base64.b64encode(stats.to_bytes()).decode()
    assert refusal(body(drift=honest)) is None
    # Consistent counts (so the blob decodes), each scaled beyond the safe range.
    stats.ints[stats.layout.counts] *= 2**50
    stats.ints[stats.layout.n] *= 2**50
    stats.rows *= 2**50
    poisoned = base64.b64encode(stats.to_bytes()).decode()
    assert refusal(body(drift=poisoned)) == "drift_out_of_range"
    assert refusal(body(drift="bm90IGEgd2luZG93")) is None  # undecodable: malformed, not here

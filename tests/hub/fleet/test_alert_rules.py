"""The alert state machine and rules as pure functions (no database, no clock)."""

from __future__ import annotations

import pytest

from edgefleet.core.protocol import LatencyHistogram, WindowSummary
from edgefleet.hub.fleet.alerts import (
    FIRED,
    RESOLVED,
    TRANSITIONS,
    AlertPolicy,
    Observation,
    Signal,
    Tracker,
    TrackerState,
    evaluate,
    step,
)
from edgefleet.hub.fleet.totals import WindowTotals

H, M, L, N = Signal.HIGH, Signal.MID, Signal.LOW, Signal.NONE


def test_transition_table_is_total() -> None:
    assert set(TRANSITIONS) == {(s, g) for s in TrackerState for g in Signal}


@pytest.mark.parametrize(
    ("name", "signals", "expected"),
    [
        ("one high is not enough", [H, L, H, L], []),
        ("two highs fire once", [H, H, H, H], [(1, FIRED)]),
        ("no data keeps the run", [H, N, H], [(2, FIRED)]),
        ("mid breaks a pending run", [H, M, H, L], []),
        ("mid keeps a firing alert open", [H, H, M, M, M, L, L], [(1, FIRED), (6, RESOLVED)]),
        ("one low is not enough to resolve", [H, H, L, H, L, L], [(1, FIRED), (5, RESOLVED)]),
        ("no data while resolving keeps the run", [H, H, L, N, L], [(1, FIRED), (4, RESOLVED)]),
        (
            "fires again after resolving",
            [H, H, L, L, H, H],
            [(1, FIRED), (3, RESOLVED), (5, FIRED)],
        ),
        ("nothing but no data", [N, N, N], []),
    ],
)
def test_persistence_and_hysteresis(
    name: str, signals: list[Signal], expected: list[tuple[int, str]]
) -> None:
    policy = AlertPolicy(k_fire=2, k_resolve=2)
    tracker, events = Tracker(), []
    for i, signal in enumerate(signals):
        tracker, event = step(tracker, signal, policy)
        if event is not None:
            events.append((i, event))
    assert events == expected, name


def test_k_of_one_fires_and_resolves_immediately() -> None:
    policy = AlertPolicy(k_fire=1, k_resolve=1)
    tracker, event = step(Tracker(), H, policy)
    assert (tracker.state, event) == (TrackerState.FIRING, FIRED)
    tracker, event = step(tracker, L, policy)
    assert (tracker.state, event) == (TrackerState.OK, RESOLVED)


def totals(requests: int, errors: int = 0, latency_bucket: int = 0) -> WindowTotals:
    edges = (10.0, 100.0, 250.0, 1000.0)
    counts = [0] * 5
    counts[latency_bucket] = requests
    return WindowTotals.of_window(
        WindowSummary(
            "m",
            1,
            0.0,
            60.0,
            requests,
            errors={"internal": errors} if errors else {},
            latency_ms=LatencyHistogram(edges, tuple(counts)),
        )
    )


@pytest.mark.parametrize(
    ("requests", "errors", "signal"),
    [(50, 40, N), (1000, 60, H), (1000, 30, M), (1000, 5, L)],
)
def test_error_rate_rule(requests: int, errors: int, signal: Signal) -> None:
    out = evaluate(Observation(None, totals(requests, errors)), AlertPolicy())
    assert out["error_rate"].signal is signal
    assert out["feature_drift"].signal is N  # no drift statistics: no opinion


# The p95 is the one rule of edgefleet.core.evidence, interpolated in its bucket: all in
# (100, 250] gives 242.5 ms (MID), all in (250, 1000] 962.5 ms, above 1000 its lower edge.
@pytest.mark.parametrize(("bucket", "signal"), [(0, L), (2, M), (3, H), (4, H)])
def test_latency_rule(bucket: int, signal: Signal) -> None:
    out = evaluate(Observation(None, totals(500, latency_bucket=bucket)), AlertPolicy())
    assert out["latency_p95"].signal is signal


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        AlertPolicy(k_fire=0)
    with pytest.raises(ValueError):
        AlertPolicy(scopes=("planet",))
    with pytest.raises(ValueError):
        AlertPolicy(error_rate=0.01, error_rate_clear=0.02)

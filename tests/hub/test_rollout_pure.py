"""The pure rollout parts: selectors, plan, state machine, evidence and gates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.hub.hubkit import stats_of, window

from edgefleet.core.errors import UsageError
from edgefleet.core.protocol import TelemetryRecord
from edgefleet.hub.errors import RolloutStateError
from edgefleet.hub.fleet.ingest import record_row
from edgefleet.hub.rollout import (
    TRANSITIONS,
    DeviceReport,
    Gates,
    GateStatus,
    InstallStatus,
    RolloutEvent,
    RolloutPlan,
    RolloutState,
    RolloutStatus,
    Verdict,
    VersionStats,
    evaluate_phase,
    handle,
    parse_phases,
    prediction_psi,
)
from edgefleet.hub.rollout.plan import device_order, parse_duration_s
from edgefleet.hub.selectors import Selector

# ---------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Dev:
    device_id: str
    group: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    profile: str = "rpi4-arm64"


FLEET = [
    Dev("a", "lab", {"site": "x"}, "rpi5"),
    Dev("b", "lab", {"site": "y"}),
    Dev("c", None, {"site": "x"}),
    Dev("d", "field"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", ["a", "b", "c", "d"]),
        ("group=lab", ["a", "b"]),
        ("tag=site=x", ["a", "c"]),
        ("profile=rpi5", ["a"]),
        ("ids=d,b", ["b", "d"]),
        ("c,a", ["a", "c"]),
    ],
)
def test_selector_matches(text: str, expected: list[str]) -> None:
    selector = Selector.parse(text)
    assert selector.select(FLEET) == expected
    assert Selector.parse(str(selector)) == selector


@pytest.mark.parametrize("text", ["group=", "tag=site", "colour=red", "ids=", "a/b", "+"])
def test_bad_selectors_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        Selector.parse(text)


def test_explicit_ids_must_be_enrolled() -> None:
    with pytest.raises(UsageError, match="zz"):
        Selector.parse("ids=a,zz").select(FLEET)


# ---------------------------------------------------------------- plan


def test_phases_are_cumulative_and_merge_empty_steps() -> None:
    ids = [f"d{i:02d}" for i in range(20)]
    plan = RolloutPlan.build("r1", "m", 2, "all", ids, parse_phases("5%,25%,100%"), Gates())
    assert plan.phase_sizes == (1, 5, 20)
    small = RolloutPlan.build("r1", "m", 2, "all", ids[:3], parse_phases("5%,25%,100%"), Gates())
    assert small.phase_sizes == (1, 3)  # 5% and 25% of 3 are both one device
    counts = RolloutPlan.build("r1", "m", 2, "all", ids, parse_phases("2,10,100%"), Gates())
    assert counts.phase_sizes == (2, 10, 20)
    assert set(counts.devices_of(0)) | set(counts.devices_of(1)) == set(counts.devices_through(1))
    assert all(counts.phase_of(d) == 2 for d in counts.devices_of(2))


def test_device_order_is_stable_and_keyed_by_rollout() -> None:
    ids = [f"d{i:03d}" for i in range(50)]
    assert device_order("r1", ids) == device_order("r1", list(reversed(ids)))
    assert device_order("r1", ids) != device_order("r2", ids)
    assert sorted(device_order("r1", ids)) == ids


def test_plan_round_trips_through_dict() -> None:
    plan = RolloutPlan.build(
        "r1", "m", 2, "group=lab", ["a", "b", "c"], parse_phases("1,100%"), Gates(bake_s=5)
    )
    assert RolloutPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize("text", ["5%,25%", "0%,100%", "abc", "50%,,100%", "10,5,100%", "150%"])
def test_bad_phases(text: str) -> None:
    with pytest.raises(UsageError):
        RolloutPlan.build("r", "m", 1, "all", ["a", "b", "c"], parse_phases(text), Gates())


def test_gate_overrides() -> None:
    gates = Gates().with_overrides(
        ["max-error-rate=2%", "bake=10m", "min_inferences=500", "auto_rollback=false"]
    )
    assert gates.max_error_rate == pytest.approx(0.02)
    assert gates.bake_s == 600
    assert gates.min_inferences == 500
    assert gates.auto_rollback is False
    for bad in ["nope=1", "max_error_rate=2", "bake=soon", "min_devices=0", "max_error_rate"]:
        with pytest.raises(UsageError):
            Gates().with_overrides([bad])


def test_durations() -> None:
    assert parse_duration_s("90") == 90
    assert parse_duration_s("1.5h") == 5400
    with pytest.raises(UsageError):
        parse_duration_s("-3s")


# ---------------------------------------------------------------- state machine

S, E = RolloutState, RolloutEvent


def test_happy_path_through_the_table() -> None:
    status = RolloutStatus()
    status = handle(status, E.START, 10.0, phase_count=3)
    assert (status.state, status.phase, status.phase_started_at) == (S.RUNNING, 0, 10.0)
    status = handle(status, E.PAUSE, 11.0, phase_count=3)
    status = handle(status, E.RESUME, 12.0, phase_count=3)
    assert (status.state, status.phase) == (S.RUNNING, 0)
    status = handle(status, E.ADVANCE, 13.0, phase_count=3)
    status = handle(status, E.ADVANCE, 14.0, phase_count=3)
    assert status.phase == 2 and status.phase_started_at == 14.0
    with pytest.raises(RolloutStateError):
        handle(status, E.ADVANCE, 15.0, phase_count=3)
    status = handle(status, E.COMPLETE, 15.0, phase_count=3)
    assert status.state is S.COMPLETED
    assert handle(status, E.ROLLBACK, 16.0, phase_count=3).state is S.ROLLED_BACK


@pytest.mark.parametrize("state", list(RolloutState))
@pytest.mark.parametrize("event", list(RolloutEvent))
def test_every_pair_is_in_the_table_or_refused(state: RolloutState, event: RolloutEvent) -> None:
    status = RolloutStatus(state=state, phase=0 if state is not S.CREATED else -1)
    if (state, event) not in TRANSITIONS:
        with pytest.raises(RolloutStateError, match=f"cannot {event.value}"):
            handle(status, event, 1.0, phase_count=1)
        return
    if event is E.ADVANCE:  # one phase only: advancing is refused, completing is fine
        with pytest.raises(RolloutStateError):
            handle(status, event, 1.0, phase_count=1)
        return
    assert handle(status, event, 1.0, phase_count=1).state is TRANSITIONS[(state, event)]


def test_rolled_back_is_final() -> None:
    status = RolloutStatus(state=S.ROLLED_BACK, phase=0)
    for event in RolloutEvent:
        with pytest.raises(RolloutStateError):
            handle(status, event, 1.0, phase_count=2)


# ---------------------------------------------------------------- evidence


def test_version_stats_add_exactly() -> None:
    a = stats_of(window("m", 1, requests=100, errors=3, latency_bucket=1))
    b = stats_of(window("m", 1, requests=300, errors=1, latency_bucket=3))
    total = a.merge(b)
    assert (total.requests, total.errors, total.windows) == (400, 4, 2)
    assert total.error_rate == pytest.approx(0.01)
    # 75% of requests sit in (5, 10]: p95 interpolates inside that bucket
    assert total.p95_ms is not None and 5.0 < total.p95_ms <= 10.0
    assert a.merge(b) == b.merge(a)


@pytest.mark.parametrize(
    "fault",
    [
        {"requests": -1},
        {"errors": {"x": "2"}},
        {"latency_ms": {"edges": [2, 1], "counts": [0, 0, 0]}},
        {"latency_ms": {"edges": [1], "counts": [1, 2, 3, 4]}},
        {"predictions": [1, 2]},
    ],
)
def test_malformed_windows_never_reach_the_gates(fault: dict[str, object]) -> None:
    """The fleet ingest stores them as ``malformed``; the gates read window rows only."""
    body = {**window("m", 1, requests=1), **fault}
    assert record_row(TelemetryRecord(1, "window", body)).kind == "malformed"


def test_psi_matches_evidently_zero_handling() -> None:
    assert prediction_psi({"a": 50, "b": 50}, {"a": 50, "b": 50}) == pytest.approx(0.0)
    shifted = prediction_psi({"a": 90, "b": 10}, {"a": 50, "b": 50})
    expected = (0.5 - 0.9) * math.log(0.5 / 0.9) + (0.5 - 0.1) * math.log(0.5 / 0.1)
    assert shifted == pytest.approx(expected)
    one_sided = prediction_psi({"a": 100}, {"a": 50, "b": 50})
    assert one_sided is not None and math.isfinite(one_sided) and one_sided > 1
    assert prediction_psi({}, {"a": 1}) is None


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=8, max_size=8))
def test_merge_is_associative_for_any_counts(counts: list[int]) -> None:
    bodies = [
        {
            **window("m", 1, requests=sum(counts)),
            "latency_ms": {"edges": [1, 2, 5, 10, 20, 50, 100], "counts": counts},
            "predictions": {"x": counts[0]},
        }
        for _ in range(3)
    ]
    a, b, c = (stats_of(x) for x in bodies)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


# ---------------------------------------------------------------- gates

GATES = Gates(
    max_failure_share=0.25,
    max_error_rate=0.05,
    max_latency_p95_ratio=1.5,
    max_prediction_psi=0.2,
    min_devices=2,
    min_inferences=100,
    bake_s=60,
    device_timeout_s=600,
)
PLAN = RolloutPlan.build("r1", "m", 2, "all", ["a", "b", "c", "d"], parse_phases("2,100%"), GATES)
BASELINE = stats_of(window("m", 1, requests=1000, latency_bucket=2))


def report(
    device: str,
    install: InstallStatus = InstallStatus.COMMITTED,
    *,
    online: bool = True,
    requests: int = 100,
    errors: int = 0,
    latency_bucket: int = 2,
    predictions: dict[str, int] | None = None,
    assigned_at: float = 0.0,
    settled_at: float | None = 10.0,
) -> DeviceReport:
    stats = (
        stats_of(
            window(
                "m",
                2,
                requests=requests,
                errors=errors,
                latency_bucket=latency_bucket,
                predictions=predictions,
            )
        )
        if requests
        else VersionStats()
    )
    return DeviceReport(
        device, PLAN.phase_of(device), online, install, assigned_at, settled_at, stats
    )


FIRST = PLAN.devices_of(0)


def good(**kw: object) -> list[DeviceReport]:
    return [report(d, **kw) for d in FIRST]  # type: ignore[arg-type]


def decide(reports: list[DeviceReport], now: float = 100.0, baseline: VersionStats = BASELINE):
    return evaluate_phase(PLAN, reports, now, phase=0, phase_started_at=0.0, baseline=baseline)


def gate(decision, name: str) -> GateStatus:  # type: ignore[no-untyped-def]
    return next(g.status for g in decision.gates if g.name == name)


@pytest.mark.parametrize(
    ("name", "reports", "now", "verdict", "failing"),
    [
        ("all good after bake", good(), 100.0, Verdict.PASS, None),
        ("still baking", good(), 50.0, Verdict.WAIT, "bake_s"),
        ("too few inferences", good(requests=20), 100.0, Verdict.WAIT, "min_inferences"),
        ("error rate too high", good(errors=10), 100.0, Verdict.ABORT, "max_error_rate"),
        (
            "latency regression",
            good(latency_bucket=4),
            100.0,
            Verdict.ABORT,
            "max_latency_p95_ratio",
        ),
        (
            "prediction shift",
            good(predictions={"0": 95, "1": 5}),
            100.0,
            Verdict.ABORT,
            "max_prediction_psi",
        ),
        (
            "one install failed of two",
            [report(FIRST[0]), report(FIRST[1], InstallStatus.FAILED, requests=0)],
            100.0,
            Verdict.ABORT,
            "max_failure_share",
        ),
        (
            "one still installing",
            [
                report(FIRST[0]),
                report(FIRST[1], InstallStatus.INSTALLING, requests=0, settled_at=None),
            ],
            100.0,
            Verdict.WAIT,
            "settled",
        ),
    ],
)
def test_gate_scenarios(
    name: str, reports: list[DeviceReport], now: float, verdict: Verdict, failing: str | None
) -> None:
    decision = decide(reports, now)
    assert decision.verdict is verdict, (name, decision.reason)
    if failing is not None:
        expected = GateStatus.FAIL if verdict is Verdict.ABORT else GateStatus.WAIT
        assert gate(decision, failing) is expected, decision.reason


def test_offline_devices_stay_pending_and_never_count_as_passed() -> None:
    offline = [
        report(FIRST[0]),
        report(FIRST[1], InstallStatus.PENDING, online=False, requests=0, settled_at=None),
    ]
    # Long past the device timeout: an offline device does not time out either.
    decision = decide(offline, now=10_000.0)
    assert decision.verdict is Verdict.WAIT  # min_devices=2 needs two reporting devices
    assert decision.timed_out == ()
    assert decision.counts["offline_pending"] == 1
    assert gate(decision, "min_devices") is GateStatus.WAIT


def test_online_device_that_never_settles_times_out_and_counts_as_failure() -> None:
    stuck = [
        report(FIRST[0]),
        report(FIRST[1], InstallStatus.INSTALLING, requests=0, settled_at=None),
    ]
    assert decide(stuck, now=500.0).verdict is Verdict.WAIT
    decision = decide(stuck, now=700.0)
    assert decision.timed_out == (FIRST[1],)
    assert decision.verdict is Verdict.ABORT
    assert gate(decision, "max_failure_share") is GateStatus.FAIL


def test_no_baseline_makes_comparisons_not_applicable() -> None:
    decision = decide(good(latency_bucket=6), baseline=VersionStats())
    assert gate(decision, "max_latency_p95_ratio") is GateStatus.NOT_APPLICABLE
    assert gate(decision, "max_prediction_psi") is GateStatus.NOT_APPLICABLE
    assert decision.verdict is Verdict.PASS


def test_errors_of_devices_that_failed_probation_still_count() -> None:
    reports = [
        report(FIRST[0]),
        report(FIRST[1], InstallStatus.FAILED, errors=90),
    ]
    lenient = evaluate_phase(
        RolloutPlan.build(
            "r1",
            "m",
            2,
            "all",
            ["a", "b", "c", "d"],
            parse_phases("2,100%"),
            Gates(max_failure_share=1.0, min_devices=1, bake_s=0),
        ),
        reports,
        100.0,
        phase=0,
        phase_started_at=0.0,
    )
    assert lenient.verdict is Verdict.ABORT
    assert gate(lenient, "max_error_rate") is GateStatus.FAIL


def test_bake_counts_from_the_phase_last_commit() -> None:
    late = [report(FIRST[0], settled_at=10.0), report(FIRST[1], settled_at=80.0)]
    assert decide(late, now=120.0).verdict is Verdict.WAIT
    assert decide(late, now=140.0).verdict is Verdict.PASS

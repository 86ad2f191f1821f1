"""One device claiming 10^15 requests decides no rollout (real SQLite store, no MQTT).

Telemetry is written to the hub store directly, past the hub's telemetry bounds, to show
that the gates hold on their own: four honest devices and one liar (``pi-4``) with
``requests = 10**15``. Summed, the liar's numbers decided every gate (pass at 60% honest
errors, abort at 0%, an abort on a baseline it had poisoned); pooled per device they move
nothing, and the decision says how many devices contributed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.hub.test_rollout_engine import GATES, Fleet

from edgefleet.core.evidence import (
    DeviceEvidence,
    EvidenceRule,
    LatencySummary,
    capped_weights,
    pool,
)
from edgefleet.hub.rollout import RolloutEvent

HUGE = 10**15
LIAR = "pi-4"
HONEST = ["pi-0", "pi-1", "pi-2", "pi-3"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "hub.db")
    yield f
    f.store.close()


def start_all(fleet: Fleet, version: int) -> str:
    r = fleet.engine.create(
        "digits", version, "all", 10.0, phases_text="100%", gate_overrides=GATES
    )
    fleet.engine.tick(11.0)
    assert sorted(fleet.moved(r.rollout_id)) == HONEST + [LIAR]
    for d in HONEST + [LIAR]:
        fleet.engine.on_deployment(d, "digits", version, "committed", 12.0,
                                   bundle_sha256=f"{version:02d}" * 32)  # fmt: skip
    return r.rollout_id


def gate_detail(result: object, name: str) -> str:
    decision = result.decision  # type: ignore[attr-defined]
    return next(g.detail for g in decision.gates if g.name == name)


def test_a_liar_claiming_error_free_traffic_cannot_pass_a_failing_version(fleet: Fleet) -> None:
    rollout = start_all(fleet, 2)
    for d in HONEST:
        fleet.telemetry(d, 2, at=12.5, requests=100, errors=60)  # 60% errors
    fleet.telemetry(LIAR, 2, at=12.5, requests=HUGE, errors=0)
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.ABORT, result.decision and result.decision.reason
    assert "max_error_rate" in result.decision.reason
    assert "from 5 device(s)" in gate_detail(result, "max_error_rate")
    assert result.decision.counts["evidence_devices"] == 5
    assert result.decision.new["error_rate"] == pytest.approx(0.6)
    del rollout


def test_a_liar_claiming_only_errors_cannot_abort_a_good_version(fleet: Fleet) -> None:
    rollout = start_all(fleet, 2)
    for d in HONEST:
        fleet.telemetry(d, 2, at=12.5, requests=100, errors=0)
    fleet.telemetry(LIAR, 2, at=12.5, requests=HUGE, errors=HUGE)
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.COMPLETE, result.decision and result.decision.reason
    assert result.decision.new["error_rate"] == 0.0
    del rollout


def test_a_poisoned_baseline_neither_aborts_a_good_version_nor_hides_a_shift(
    fleet: Fleet,
) -> None:
    # The liar reports version 1 predicting only "1", 10^15 times: the baseline poison.
    fleet.telemetry(LIAR, 1, at=5.0, requests=HUGE, predictions={"0": 0, "1": HUGE})
    good = start_all(fleet, 2)
    for d in HONEST + [LIAR]:
        fleet.telemetry(d, 2, at=12.5, requests=100)  # 50/50, as version 1 honestly was
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.COMPLETE, result.decision and result.decision.reason
    psi = next(g for g in result.decision.gates if g.name == "max_prediction_psi")
    assert psi.value is not None and psi.value < 0.2
    del good

    # Version 3 really shifts the predictions on every honest device; the liar claims
    # 10^15 requests of version 3 looking exactly like version 1 did.
    start_all(fleet, 3)
    for d in HONEST:
        fleet.telemetry(d, 3, at=12.5, requests=100, predictions={"0": 95, "1": 5})
    fleet.telemetry(LIAR, 3, at=12.5, requests=HUGE, predictions={"0": HUGE // 2, "1": HUGE // 2})
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.ABORT, result.decision and result.decision.reason
    assert "max_prediction_psi" in result.decision.reason


# -- the rule itself (pure) ---------------------------------------------------------------


def device(name: str, requests: int, errors: int = 0, p95_bucket: float = 5.0) -> DeviceEvidence:
    latency = LatencySummary({(p95_bucket - 1.0, p95_bucket): requests - errors})
    return DeviceEvidence(name, requests, errors, latency, {"a": requests})


def test_pool_trims_one_extreme_device_each_side() -> None:
    honest = [device(f"d{i}", 100, errors=5) for i in range(4)]
    for liar in (device("x", HUGE), device("x", HUGE, errors=HUGE), device("x", 1000, 0, 500.0)):
        pooled = pool([*honest, liar])
        assert pooled.devices == 5
        assert pooled.error_rate == pytest.approx(0.05)
        assert pooled.p95_ms == pytest.approx(4.95)
        assert pooled.requests == 400 + liar.requests  # counts are shown as sent


def test_capped_weights_keep_every_device_within_its_share() -> None:
    weights = capped_weights([1000, 1000, 1000, 1000, HUGE], 0.25)
    assert max(weights) / sum(weights) == pytest.approx(0.25)
    assert weights[:4] == [1000, 1000, 1000, 1000]
    assert capped_weights([10, 1000], 0.25) == [10, 10]  # two devices weigh the same
    assert capped_weights([7, 8, 8, 8, 9], 0.25) == [7, 8, 8, 8, 9]  # nothing to cut


def test_devices_below_the_minimum_do_not_move_rates() -> None:
    rule = EvidenceRule(min_device_requests=10)
    pooled = pool([device("a", 100, 1), device("b", 100, 1), device("tiny", 2, 2)], rule)
    assert pooled.devices == 2 and pooled.error_rate == pytest.approx(0.01)

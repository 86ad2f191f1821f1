"""The prediction-PSI gate's baseline is pooled per device (real SQLite hub store, no MQTT).

Four honest devices and one (``pi-4``) reporting 10^6 previous-version predictions — a
plausible count, within the telemetry bounds. The baseline's prediction shares are pooled
by the evidence rule, so that one device neither poisons the baseline into aborting a good
version nor hides a real shift by claiming the previous version already predicted like the
new one. Summed, it decided both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.hub.test_rollout_engine import Fleet
from tests.hub.test_rollout_evidence_pooling import HONEST, LIAR, start_all

from edgefleet.hub.rollout import RolloutEvent

MILLION = 10**6


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "hub.db")
    yield f
    f.store.close()


def psi_gate(result: object) -> tuple[float | None, str]:
    gate = next(g for g in result.decision.gates if g.name == "max_prediction_psi")  # type: ignore[attr-defined]
    return gate.value, gate.detail


def test_a_million_skewed_baseline_predictions_do_not_abort_a_good_version(
    fleet: Fleet,
) -> None:
    for d in HONEST:
        fleet.telemetry(d, 1, at=5.0, requests=100)  # 50/50
    fleet.telemetry(LIAR, 1, at=5.0, requests=MILLION, predictions={"0": 0, "1": MILLION})
    start_all(fleet, 2)
    for d in [*HONEST, LIAR]:
        fleet.telemetry(d, 2, at=12.5, requests=100)  # 50/50, like version 1 honestly was
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.COMPLETE, result.decision and result.decision.reason
    value, detail = psi_gate(result)
    assert value is not None and value < 0.2
    assert "5 vs 5 device(s)" in detail


def test_a_million_baseline_predictions_cannot_hide_a_shift(fleet: Fleet) -> None:
    for d in HONEST:
        fleet.telemetry(d, 1, at=5.0, requests=100)  # 50/50
    # The odd device claims version 1 already predicted what version 2 will.
    fleet.telemetry(
        LIAR,
        1,
        at=5.0,
        requests=MILLION,
        predictions={"0": 95 * MILLION // 100, "1": MILLION // 20},
    )
    start_all(fleet, 2)
    for d in [*HONEST, LIAR]:
        fleet.telemetry(d, 2, at=12.5, requests=100, predictions={"0": 95, "1": 5})
    [result] = fleet.engine.tick(13.0)
    assert result.event is RolloutEvent.ABORT, result.decision and result.decision.reason
    assert "max_prediction_psi" in result.decision.reason

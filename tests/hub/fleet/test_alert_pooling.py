"""Fleet-scope alerts pool per-device evidence: one device neither raises nor hides them."""

from __future__ import annotations

import json

from tests.hub.fleet.test_alert_rules import totals

from edgefleet.hub.fleet.alerts import (
    AlertPolicy,
    Observation,
    Signal,
    device_evidence,
    evaluate,
)
from edgefleet.hub.fleet.monitor import _Carry, _devices_from_json
from edgefleet.hub.fleet.totals import WindowTotals


def observe(per_device: dict[str, WindowTotals]) -> Observation:
    merged = WindowTotals()
    for t in per_device.values():
        merged.add(t)
    evidence = tuple(device_evidence(d, t) for d, t in per_device.items())
    return Observation(None, merged, devices=evidence)


def test_one_device_full_of_errors_does_not_fire_the_fleet_error_alert() -> None:
    fleet = {f"d{i}": totals(200, errors=1) for i in range(4)}
    fleet["liar"] = totals(100_000, errors=100_000)
    out = evaluate(observe(fleet), AlertPolicy())
    assert out["error_rate"].signal is Signal.LOW
    assert "from 5 device(s)" in out["error_rate"].summary
    # Summed, the liar alone would have fired it.
    summed = evaluate(Observation(None, observe(fleet).totals), AlertPolicy())
    assert summed["error_rate"].signal is Signal.HIGH


def test_one_device_claiming_fast_clean_traffic_does_not_hide_a_slow_fleet() -> None:
    fleet = {f"d{i}": totals(200, latency_bucket=3) for i in range(4)}  # p95 962.5 ms
    fleet["liar"] = totals(1_000_000, latency_bucket=0)
    out = evaluate(observe(fleet), AlertPolicy())
    assert out["latency_p95"].signal is Signal.HIGH


def test_the_carry_keeps_per_device_evidence_across_runs() -> None:
    carry = _Carry("k", "fleet", "*", WindowTotals(), None, None)
    carry.add(None, totals(200, errors=3, latency_bucket=4), 1.0, "a")
    carry.add(None, totals(50), 2.0, "b")
    carry.add(None, totals(50), 3.0, "a")
    record = carry.to_record()
    assert record.totals is not None
    restored = _devices_from_json(json.loads(record.totals)["per_device"])
    assert restored == carry.devices
    assert restored["a"].requests == 250 and restored["a"].errors == 3

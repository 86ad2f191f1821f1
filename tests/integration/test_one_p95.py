"""One p95 for the same requests: agent probation, the hub's rollout gates, fleet alerts and
the drift report all give the same number (core's ``LatencySummary.p95``).

Pure parts only: the agent's window recorder writes its windows to a telemetry buffer file,
the hub side reads the very window bodies the device would upload.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.telemetry import ModelRegistration, TelemetryBuffer, WindowRecorder
from edgefleet.core.evidence import LatencySummary
from edgefleet.core.protocol import WindowSummary
from edgefleet.core.testing.clock import FakeClock
from edgefleet.hub.fleet.alerts import AlertPolicy, Observation, device_evidence, evaluate
from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.rollout import (
    DeviceReport,
    Gates,
    InstallStatus,
    RolloutPlan,
    VersionStats,
    evaluate_phase,
    parse_phases,
)

DEVICE = "cam-1"


def served_requests(tmp_path: Path, latencies_ms: list[float]) -> tuple[float | None, list]:
    """The requests through the agent: its probation p95 and the window bodies it wrote."""
    clock = FakeClock(1_000_000.0)
    buffer = TelemetryBuffer(tmp_path / "telemetry.db", 4 << 20)
    recorder = WindowRecorder(buffer, 60, clock=clock)
    recorder.register_model(ModelRegistration("m", 2, "classification", (0, 1)))
    recorder.start_probation("m", 2)
    X = np.zeros((1, 3), dtype=np.float32)
    for i, latency in enumerate(latencies_ms):
        recorder.record_inference("m", 2, X, np.array([i % 2]), latency, [f"p{i}"])
        clock.advance(0.5)  # the requests span several windows
    clock.advance(120)
    recorder.flush()
    bodies = [r.body for r in buffer.records() if r.kind == "window"]
    return recorder.probation_stats("m", 2).p95_latency_ms, bodies


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probation_gates_alerts_and_reports_agree_on_p95(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    latencies = [float(v) for v in rng.lognormal(mean=3.5, sigma=0.8, size=400)]
    agent_p95, bodies = served_requests(tmp_path, latencies)
    assert len(bodies) > 1  # the hub has to add several windows up

    # Rollout gates: one device's stored windows summed, then pooled (one device: its own
    # p95). They read each window's totals, as stored by the fleet ingest.
    stats = VersionStats.sum(
        VersionStats.from_totals(WindowTotals.of_window(WindowSummary.from_dict(b))) for b in bodies
    )
    gates = Gates(min_devices=1, min_inferences=1, bake_s=0)
    plan = RolloutPlan.build("r", "m", 2, "all", [DEVICE], parse_phases("100%"), gates)
    report = DeviceReport(DEVICE, 0, True, InstallStatus.COMMITTED, 0.0, 0.0, stats)
    gate_p95 = evaluate_phase(plan, [report], 10.0, phase=0, phase_started_at=0.0).new["p95_ms"]

    # Fleet alerts: the same windows as the monitor totals them, pooled per device.
    totals = WindowTotals()
    for body in bodies:
        totals.add(WindowTotals.of_window(WindowSummary.from_dict(body)))
    observation = Observation(None, totals, devices=(device_evidence(DEVICE, totals),))
    alert_p95 = evaluate(observation, AlertPolicy(min_requests=1))["latency_p95"].value

    assert agent_p95 is not None
    assert agent_p95 == gate_p95 == alert_p95 == totals.latency_summary()["p95_ms"]
    # ... and it is the bucketed rule, not a nearest rank over the raw values.
    assert agent_p95 != sorted(latencies)[int(np.ceil(0.95 * len(latencies))) - 1]
    edges = bodies[0]["latency_ms"]["edges"]
    counts = np.sum([b["latency_ms"]["counts"] for b in bodies], axis=0).tolist()
    assert agent_p95 == LatencySummary.from_histogram(edges, counts).p95()

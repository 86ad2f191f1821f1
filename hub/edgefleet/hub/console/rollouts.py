"""Why a rollout waits, and until when: pure, from a status report and ``now``.

:meth:`RolloutEngine.status <edgefleet.hub.rollout.engine.RolloutEngine.status>` gives every
gate's value and threshold; an operator also needs to know what each waiting gate waits
for and when that should arrive. The estimates:

- ``settled``: the online devices still installing time out ``device_timeout_s`` after
  their assignment, so the gate settles by the latest such time at the latest;
- the telemetry gates (``min_devices``, ``min_inferences`` and the error, latency and PSI
  comparisons) wait for inference windows; a device sends one every ``window_s`` of its
  profile, so every committed device should have reported one by its commit time plus its
  window (the case where a device passed probation minutes ago and the gate still reads
  ``0 of 100 inferences``);
- ``bake_s``: the phase's last commit (or its start) plus ``bake_s``.

An estimate in the past is reported as ``overdue``: the evidence should be there and is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TELEMETRY_GATES = frozenset(
    {
        "min_devices",
        "min_inferences",
        "max_error_rate",
        "max_latency_p95_ratio",
        "max_prediction_psi",
    }
)


def explain_waiting(
    detail: Mapping[str, Any],
    window_s: Mapping[str, float | None],
    now: float,
) -> list[dict[str, Any]]:
    """Per waiting gate: what it waits for and the estimated time it should come.

    ``detail`` is a status report (``RolloutEngine.status``); ``window_s`` maps each
    device of the rollout to the telemetry window of its profile (None when unknown).
    """
    decision = detail.get("decision")
    if not decision:
        return []
    gates = detail["gates"]
    phase = detail["phase"]
    moved = [d for d in detail["devices"] if d["assigned_at"] is not None and d["phase"] <= phase]
    out = []
    for gate in decision["gates"]:
        if gate["status"] != "wait":
            continue
        name = gate["name"]
        until: float | None = None
        waits_for = gate["detail"]
        if name == "settled":
            pending = [
                d for d in moved if d["online"] and d["install"] in ("pending", "installing")
            ]
            if pending:
                until = max(d["assigned_at"] for d in pending) + gates["device_timeout_s"]
            waits_for = (
                f"{len(pending)} online device(s) to finish installing "
                f"(or time out after {gates['device_timeout_s']:.0f}s)"
            )
        elif name in TELEMETRY_GATES:
            committed = [d for d in moved if d["install"] == "committed"]
            expected = [
                (d["settled_at"] or d["assigned_at"]) + window
                for d in committed
                if (window := window_s.get(d["device"])) is not None
            ]
            until = max(expected) if expected else None
            windows = sorted({w for w in window_s.values() if w is not None})
            every = ", ".join(f"{w:.0f}s" for w in windows) or "an unknown interval"
            waits_for = (
                f"{gate['detail']}; telemetry from {len(committed)} committed device(s) "
                f"arrives every {every}"
            )
        elif name == "bake_s":
            value = gate["value"] or 0.0
            until = now - value + gates["bake_s"]
        out.append(
            {
                "gate": name,
                "waits_for": waits_for,
                "until": until,
                "overdue": until is not None and until < now,
            }
        )
    return out


def rollout_headline(detail: Mapping[str, Any], waiting: list[dict[str, Any]]) -> str:
    """One line: the state and, while running, the first reason it waits."""
    state = detail["state"]
    if state != "running" or not waiting:
        return f"{state}" + (f" ({detail['reason']})" if detail.get("reason") else "")
    first = waiting[0]
    return f"running, phase {detail['phase']}/{detail['phase_count']}: waiting for {first['waits_for']}"

"""Phase gate evaluation: pure, from device reports and ``now`` to a decision.

A phase **passes** when all of these hold for the devices moved so far
(this phase and the earlier ones):

- no gate failed (see below);
- every *online* moved device has settled (committed, failed or timed out);
  offline devices stay pending: they are never counted as passed and never
  time out, and they do not hold the rollout back once the evidence from the
  others suffices;
- at least ``min(min_devices, moved)`` devices committed the new version and
  reported inference telemetry for it;
- the new version served at least ``min_inferences`` requests;
- ``bake_s`` seconds passed since the phase's last commit (or its start).

A phase is **aborted** as soon as one gate fails:

- install failure share ``(failed + timed out) / moved`` above
  ``max_failure_share``; a device times out when it is online and has not
  settled ``device_timeout_s`` after its assignment;
- once the new version has ``min_inferences`` requests: error rate above
  ``max_error_rate``; p95 latency above ``max_latency_p95_ratio`` times the
  previous version's; prediction PSI against the previous version above
  ``max_prediction_psi``. The two comparisons are ``n/a`` (never blocking)
  when the previous version has fewer than ``min_inferences`` requests on
  record — a first rollout has nothing to compare with.

Error rate, p95 and prediction shares (of the new version and of the baseline alike) are
pooled across devices by :func:`edgefleet.core.evidence.pool`: per-device values, trimmed
and share-capped, so no one device's claims pass or abort a rollout the other devices'
evidence decides otherwise. Each of those gates names how many devices contributed.

Otherwise the decision is **wait**. Nothing here reads a clock or a store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edgefleet.core.evidence import PooledEvidence, pool
from edgefleet.hub.rollout.evidence import VersionStats, prediction_psi
from edgefleet.hub.rollout.plan import RolloutPlan


class InstallStatus(StrEnum):
    PENDING = "pending"  # assigned, nothing heard yet
    INSTALLING = "installing"  # the device reported progress
    COMMITTED = "committed"
    FAILED = "failed"  # rejected, failed or rolled back on the device
    TIMED_OUT = "timed_out"
    ROLLED_BACK = "rolled_back"  # moved back by the hub after an abort


SETTLED = frozenset({InstallStatus.COMMITTED, InstallStatus.FAILED, InstallStatus.TIMED_OUT})
UNSETTLED = frozenset({InstallStatus.PENDING, InstallStatus.INSTALLING})


class Verdict(StrEnum):
    WAIT = "wait"
    PASS = "pass"
    ABORT = "abort"


class GateStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class DeviceReport:
    """What the hub knows about one moved device of the rollout."""

    device_id: str
    phase: int
    online: bool
    install: InstallStatus
    assigned_at: float | None
    settled_at: float | None = None  # when it committed or failed
    new: VersionStats = field(default_factory=VersionStats)


@dataclass(frozen=True)
class GateResult:
    name: str
    status: GateStatus
    value: float | None = None
    threshold: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class PhaseEvaluation:
    verdict: Verdict
    gates: tuple[GateResult, ...]
    timed_out: tuple[str, ...] = ()  # devices that time out as of ``now``
    counts: dict[str, int] = field(default_factory=dict)
    new: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        bad = [g for g in self.gates if g.status is GateStatus.FAIL]
        if bad:
            return "; ".join(f"{g.name}: {g.detail}" for g in bad)
        waiting = [g for g in self.gates if g.status is GateStatus.WAIT]
        if waiting:
            return "waiting for " + "; ".join(f"{g.name} ({g.detail})" for g in waiting)
        return "all gates passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "gates": [g.to_dict() for g in self.gates],
            "timed_out": list(self.timed_out),
            "counts": dict(self.counts),
            "new": self.new,
            "baseline": self.baseline,
        }


def evaluate_phase(
    plan: RolloutPlan,
    device_reports: Sequence[DeviceReport],
    now: float,
    *,
    phase: int,
    phase_started_at: float,
    baseline: PooledEvidence | VersionStats | None = None,
) -> PhaseEvaluation:
    """Decide whether phase ``phase`` passes, waits or aborts (see module doc).

    ``baseline``: the previous versions' evidence pooled across devices (a bare
    :class:`VersionStats` counts as one device's).
    """
    gates = plan.gates
    if baseline is None:
        baseline = PooledEvidence()
    elif isinstance(baseline, VersionStats):
        baseline = pool([baseline.evidence("baseline")], windows=baseline.windows)
    moved = [r for r in device_reports if r.phase <= phase]
    timed_out = tuple(
        r.device_id
        for r in moved
        if r.install in UNSETTLED
        and r.online
        and r.assigned_at is not None
        and now - r.assigned_at >= gates.device_timeout_s
    )
    status = {r.device_id: r.install for r in moved}
    for device_id in timed_out:
        status[device_id] = InstallStatus.TIMED_OUT

    n_moved = len(moved)
    n_failed = sum(
        1 for s in status.values() if s in (InstallStatus.FAILED, InstallStatus.TIMED_OUT)
    )
    committed = [r for r in moved if status[r.device_id] is InstallStatus.COMMITTED]
    online_unsettled = [r for r in moved if status[r.device_id] in UNSETTLED and r.online]
    offline_pending = [r for r in moved if status[r.device_id] in UNSETTLED and not r.online]
    # Every moved device's windows of the new version count as evidence, also
    # from devices that later failed probation: their errors are the point.
    new = pool(
        [r.new.evidence(r.device_id) for r in moved], windows=sum(r.new.windows for r in moved)
    )
    reporting = [r for r in committed if r.new.requests > 0]
    results: list[GateResult] = []

    share = n_failed / n_moved if n_moved else 0.0
    results.append(
        GateResult(
            "max_failure_share",
            GateStatus.FAIL if share > gates.max_failure_share else GateStatus.PASS,
            share,
            gates.max_failure_share,
            f"{n_failed} of {n_moved} moved devices failed or timed out",
        )
    )

    results.append(
        GateResult(
            "settled",
            GateStatus.WAIT if online_unsettled else GateStatus.PASS,
            float(len(online_unsettled)),
            0.0,
            f"{len(online_unsettled)} online device(s) still installing; "
            f"{len(offline_pending)} offline pending",
        )
    )

    need_devices = min(gates.min_devices, n_moved)
    results.append(
        GateResult(
            "min_devices",
            GateStatus.PASS if len(reporting) >= need_devices else GateStatus.WAIT,
            float(len(reporting)),
            float(need_devices),
            f"{len(reporting)} of {need_devices} device(s) committed and reporting",
        )
    )

    enough = new.requests >= max(gates.min_inferences, 1)
    results.append(
        GateResult(
            "min_inferences",
            GateStatus.PASS if new.requests >= gates.min_inferences else GateStatus.WAIT,
            float(new.requests),
            float(gates.min_inferences),
            f"{new.requests} of {gates.min_inferences} inferences on the new version",
        )
    )
    results.append(_error_rate_gate(new, enough, gates.max_error_rate))
    baseline_enough = baseline.requests >= max(gates.min_inferences, 1)
    results.append(
        _latency_gate(new, baseline, enough, baseline_enough, gates.max_latency_p95_ratio)
    )
    results.append(_psi_gate(new, baseline, enough, baseline_enough, gates.max_prediction_psi))

    current_commits = [
        r.settled_at for r in committed if r.phase == phase and r.settled_at is not None
    ]
    bake_start = max([phase_started_at, *current_commits])
    baked = now - bake_start
    results.append(
        GateResult(
            "bake_s",
            GateStatus.PASS if baked >= gates.bake_s else GateStatus.WAIT,
            max(0.0, baked),
            gates.bake_s,
            f"{max(0.0, baked):.0f}s of {gates.bake_s:.0f}s since the phase's last commit",
        )
    )

    if any(g.status is GateStatus.FAIL for g in results):
        verdict = Verdict.ABORT
    elif all(g.status in (GateStatus.PASS, GateStatus.NOT_APPLICABLE) for g in results):
        verdict = Verdict.PASS
    else:
        verdict = Verdict.WAIT
    counts = {
        "moved": n_moved,
        "committed": len(committed),
        "failed": sum(1 for s in status.values() if s is InstallStatus.FAILED),
        "timed_out": sum(1 for s in status.values() if s is InstallStatus.TIMED_OUT),
        "installing": sum(1 for s in status.values() if s is InstallStatus.INSTALLING),
        "pending": sum(1 for s in status.values() if s is InstallStatus.PENDING),
        "offline_pending": len(offline_pending),
        "reporting": len(reporting),
        "evidence_devices": new.devices,
        "baseline_devices": baseline.devices,
    }
    return PhaseEvaluation(
        verdict, tuple(results), timed_out, counts, new.summary(), baseline.summary()
    )


def _error_rate_gate(new: PooledEvidence, enough: bool, limit: float) -> GateResult:
    rate = new.error_rate
    if not enough or rate is None:
        return GateResult(
            "max_error_rate", GateStatus.WAIT, rate, limit, "not enough inferences yet"
        )
    return GateResult(
        "max_error_rate",
        GateStatus.FAIL if rate > limit else GateStatus.PASS,
        rate,
        limit,
        f"error rate {rate:.4f} (limit {limit:g}) over {new.requests} requests"
        f" from {new.devices} device(s)",
    )


def _latency_gate(
    new: PooledEvidence,
    baseline: PooledEvidence,
    enough: bool,
    baseline_enough: bool,
    limit: float,
) -> GateResult:
    name = "max_latency_p95_ratio"
    p_new, p_old = new.p95_ms, baseline.p95_ms
    if not baseline_enough or p_old is None or p_old <= 0:
        return GateResult(
            name, GateStatus.NOT_APPLICABLE, None, limit, "no previous-version latency"
        )
    if not enough or p_new is None:
        return GateResult(name, GateStatus.WAIT, None, limit, "not enough inferences yet")
    ratio = p_new / p_old
    return GateResult(
        name,
        GateStatus.FAIL if ratio > limit or not math.isfinite(ratio) else GateStatus.PASS,
        ratio,
        limit,
        f"p95 {p_new:.2f} ms vs {p_old:.2f} ms previous (ratio {ratio:.2f}, limit {limit:g};"
        f" {new.devices} vs {baseline.devices} device(s))",
    )


def _psi_gate(
    new: PooledEvidence,
    baseline: PooledEvidence,
    enough: bool,
    baseline_enough: bool,
    limit: float,
) -> GateResult:
    name = "max_prediction_psi"
    if not baseline_enough or not baseline.prediction_shares:
        return GateResult(
            name, GateStatus.NOT_APPLICABLE, None, limit, "no previous-version predictions"
        )
    if not enough or not new.prediction_shares:
        return GateResult(name, GateStatus.WAIT, None, limit, "not enough inferences yet")
    psi = prediction_psi(baseline.prediction_shares, new.prediction_shares)
    if psi is None:  # pragma: no cover (both sides checked non-empty above)
        return GateResult(name, GateStatus.WAIT, None, limit, "no predictions")
    return GateResult(
        name,
        GateStatus.FAIL if psi > limit else GateStatus.PASS,
        psi,
        limit,
        f"prediction PSI {psi:.3f} vs previous version (limit {limit:g};"
        f" {new.devices} vs {baseline.devices} device(s))",
    )

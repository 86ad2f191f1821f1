"""Alert rules and the alert state machine (pure: no I/O, no clock; ``now`` is an argument).

An *observation* is what the fleet learned about one scope (the fleet, a group, a profile or
a device of one model version) since the previous scored observation: merged drift
statistics scored against the reference, plus operational totals. Each rule turns it into
a :class:`Signal`:

``HIGH``  at or above the firing threshold       ``MID``   between clear and fire thresholds
``LOW``   below the clear threshold              ``NONE``  not enough data to say

Rules and their defaults (docs/drift.md for the drift thresholds; the rest are ours)::

    feature_drift     HIGH: some feature's verdict is "drift" (PSI >= 0.2 or JS >= 0.1, or
                      W1/std >= 0.1 at n >= 1000, each with p < 0.001); MID: some "warn"
                      (PSI >= 0.1); LOW: every judged feature "no_drift"            warning
    dataset_drift     HIGH: drift share >= 0.5; MID: >= 0.25; LOW below             critical
    prediction_drift  the model output's verdict, as for feature_drift              warning
    accuracy_drop     validation accuracy - live accuracy >= 0.05 (MID >= 0.025),
                      with >= 100 labels                                            critical
    error_rate        errors / requests >= 0.05 (MID >= 0.02), >= 100 requests      critical
    latency_p95       p95 >= 250 ms (MID >= 200 ms), >= 100 requests                warning
    nan_rate          some feature's (NaN + inf) / rows >= 0.05 (MID >= 0.01),
                      >= 100 rows                                                   warning
    out_of_range_rate some numeric feature's values outside the reference range
                      (clipped ones included) / finite values >= 0.05 (MID >= 0.01),
                      >= 100 rows                                                   warning
    unseen_rate       some categorical feature's unseen levels / values >= 0.05
                      (MID >= 0.01), >= 100 rows                                    warning
    missing_feature   some feature has no usable value at all in >= 100 rows
                      (a dead sensor: every value NaN, inf or None)                 critical

A scope holding several devices (fleet, group, profile) judges error rate and p95 from
the per-device evidence pooled by :func:`edgefleet.core.evidence.pool` (extremes trimmed,
each device's weight capped), so one device cannot raise or silence those alerts for the
others; the p95 is the project's one p95 rule (:meth:`LatencySummary.p95`, interpolated
in its bucket). The drift rules judge the scope's devices pooled by the same rule
(:func:`edgefleet.core.drift.pooling.pool_devices`, applied by the monitor): the exact merge
unless one device holds more than its share of the rows.

Persistence and hysteresis, one transition table (:data:`TRANSITIONS`) per (rule, scope):
an alert fires after ``k_fire`` consecutive HIGH observations and resolves after
``k_resolve`` consecutive LOW ones. MID never fires an alert but keeps a firing one open
(the band between the two thresholds is the hysteresis); NONE changes nothing (no data is
not evidence either way). Invariant: an alert key fires at most once until it resolves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from edgefleet.core.drift import DriftReport, DriftThresholds, FeatureScore
from edgefleet.core.evidence import DeviceEvidence, LatencySummary, pool
from edgefleet.hub.fleet.totals import WindowTotals

SCOPE_KINDS = ("fleet", "group", "profile", "device")
FLEET_SCOPE = "*"


class Signal(StrEnum):
    HIGH = "high"
    MID = "mid"
    LOW = "low"
    NONE = "none"


class TrackerState(StrEnum):
    OK = "ok"
    PENDING = "pending"  # HIGH seen, fewer than k_fire times in a row
    FIRING = "firing"
    RESOLVING = "resolving"  # LOW seen, fewer than k_resolve times in a row


class Count(StrEnum):
    ZERO = "zero"
    ONE = "one"
    INC = "inc"
    KEEP = "keep"


_S, _T, _C = Signal, TrackerState, Count
#: (state, signal) -> (next state, what happens to the run counter)
TRANSITIONS: dict[tuple[TrackerState, Signal], tuple[TrackerState, Count]] = {
    (_T.OK, _S.HIGH): (_T.PENDING, _C.ONE),
    (_T.OK, _S.MID): (_T.OK, _C.ZERO),
    (_T.OK, _S.LOW): (_T.OK, _C.ZERO),
    (_T.OK, _S.NONE): (_T.OK, _C.ZERO),
    (_T.PENDING, _S.HIGH): (_T.PENDING, _C.INC),
    (_T.PENDING, _S.MID): (_T.OK, _C.ZERO),
    (_T.PENDING, _S.LOW): (_T.OK, _C.ZERO),
    (_T.PENDING, _S.NONE): (_T.PENDING, _C.KEEP),
    (_T.FIRING, _S.HIGH): (_T.FIRING, _C.ZERO),
    (_T.FIRING, _S.MID): (_T.FIRING, _C.ZERO),
    (_T.FIRING, _S.LOW): (_T.RESOLVING, _C.ONE),
    (_T.FIRING, _S.NONE): (_T.FIRING, _C.ZERO),
    (_T.RESOLVING, _S.HIGH): (_T.FIRING, _C.ZERO),
    (_T.RESOLVING, _S.MID): (_T.FIRING, _C.ZERO),
    (_T.RESOLVING, _S.LOW): (_T.RESOLVING, _C.INC),
    (_T.RESOLVING, _S.NONE): (_T.RESOLVING, _C.KEEP),
}

FIRED, RESOLVED = "fired", "resolved"


@dataclass(frozen=True)
class Tracker:
    state: TrackerState = TrackerState.OK
    count: int = 0


@dataclass(frozen=True)
class AlertPolicy:
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    k_fire: int = 2
    k_resolve: int = 2
    dataset_drift_clear_share: float = 0.25
    accuracy_drop: float = 0.05
    accuracy_drop_clear: float = 0.025
    min_labels: int = 100
    error_rate: float = 0.05
    error_rate_clear: float = 0.02
    min_requests: int = 100
    latency_p95_ms: float = 250.0
    latency_p95_clear_ms: float = 200.0
    nan_rate: float = 0.05
    nan_rate_clear: float = 0.01
    out_of_range_rate: float = 0.05
    out_of_range_rate_clear: float = 0.01
    unseen_rate: float = 0.05
    unseen_rate_clear: float = 0.01
    min_rows: int = 100  # rows of drift statistics before the data-quality rules judge
    scopes: tuple[str, ...] = ("fleet", "group")
    rules: tuple[str, ...] = (
        "feature_drift",
        "dataset_drift",
        "prediction_drift",
        "accuracy_drop",
        "error_rate",
        "latency_p95",
        "nan_rate",
        "out_of_range_rate",
        "unseen_rate",
        "missing_feature",
    )
    stale_after_s: float = 86400.0  # an open alert with no data for this long resolves

    def __post_init__(self) -> None:
        if self.k_fire < 1 or self.k_resolve < 1:
            raise ValueError("k_fire and k_resolve must be at least 1")
        if not 0 < self.dataset_drift_clear_share <= self.thresholds.dataset_drift_share:
            raise ValueError("need 0 < dataset_drift_clear_share <= dataset_drift_share")
        if not 0 < self.accuracy_drop_clear <= self.accuracy_drop:
            raise ValueError("need 0 < accuracy_drop_clear <= accuracy_drop")
        if not 0 < self.error_rate_clear <= self.error_rate <= 1:
            raise ValueError("need 0 < error_rate_clear <= error_rate <= 1")
        if not 0 < self.latency_p95_clear_ms <= self.latency_p95_ms:
            raise ValueError("need 0 < latency_p95_clear_ms <= latency_p95_ms")
        for rule in ("nan_rate", "out_of_range_rate", "unseen_rate"):
            fire, clear = getattr(self, rule), getattr(self, f"{rule}_clear")
            if not 0 < clear <= fire <= 1:  # NaN fails every comparison: refused too
                raise ValueError(f"need 0 < {rule}_clear <= {rule} <= 1")
        if self.min_labels < 1 or self.min_requests < 1 or self.min_rows < 1:
            raise ValueError("min_labels, min_requests and min_rows must be at least 1")
        unknown = set(self.scopes) - set(SCOPE_KINDS)
        if unknown or not self.scopes:
            raise ValueError(f"scopes must be taken from {SCOPE_KINDS}")
        unknown_rules = set(self.rules) - set(RULES)
        if unknown_rules:
            raise ValueError(f"unknown alert rules: {sorted(unknown_rules)}")
        if self.stale_after_s <= 0:
            raise ValueError("stale_after_s must be positive")


@dataclass(frozen=True)
class Observation:
    """What one scope showed since its previous scored observation."""

    report: DriftReport | None
    totals: WindowTotals
    validation: Mapping[str, float] = field(default_factory=dict)
    # Per-device evidence of the same windows (empty: judge the totals as one device's).
    devices: Sequence[DeviceEvidence] = ()


@dataclass(frozen=True)
class RuleOutcome:
    signal: Signal
    value: float | None = None
    summary: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


def step(tracker: Tracker, signal: Signal, policy: AlertPolicy) -> tuple[Tracker, str | None]:
    """Apply one observation's signal; returns the new tracker and ``fired``/``resolved``."""
    state, count_op = TRANSITIONS[(tracker.state, signal)]
    count = {
        Count.ZERO: 0,
        Count.ONE: 1,
        Count.INC: tracker.count + 1,
        Count.KEEP: tracker.count,
    }[count_op]
    if state is TrackerState.PENDING and count >= policy.k_fire:
        return Tracker(TrackerState.FIRING, 0), FIRED
    if state is TrackerState.RESOLVING and count >= policy.k_resolve:
        return Tracker(TrackerState.OK, 0), RESOLVED
    return replace(tracker, state=state, count=count), None


def _verdict_signal(verdicts: list[str]) -> Signal:
    if "drift" in verdicts:
        return Signal.HIGH
    if "warn" in verdicts:
        return Signal.MID
    if "no_drift" in verdicts:
        return Signal.LOW
    return Signal.NONE


def feature_drift(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    if obs.report is None:
        return RuleOutcome(Signal.NONE)
    features = obs.report.features
    signal = _verdict_signal([f.verdict for f in features])
    drifted = {
        f.name: {"psi": f.psi, "js": f.js, "wasserstein": f.wasserstein, "verdict": f.verdict}
        for f in features
        if f.verdict in ("drift", "warn")
    }
    psis = [f.psi for f in features if f.psi is not None]
    names = sorted(n for n, d in drifted.items() if d["verdict"] == "drift")
    summary = f"{len(names)} feature(s) drifted: {', '.join(names[:8])}" if names else ""
    return RuleOutcome(signal, max(psis, default=None), summary, {"features": drifted})


def dataset_drift(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    share = None if obs.report is None else obs.report.drift_share
    if share is None:
        return RuleOutcome(Signal.NONE)
    fire = policy.thresholds.dataset_drift_share
    signal = (
        Signal.HIGH
        if share >= fire
        else Signal.MID
        if share >= policy.dataset_drift_clear_share
        else Signal.LOW
    )
    return RuleOutcome(signal, share, f"{share:.0%} of features drifted (threshold {fire:.0%})")


def prediction_drift(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    score = None if obs.report is None else obs.report.prediction
    if score is None:
        return RuleOutcome(Signal.NONE)
    return RuleOutcome(
        _verdict_signal([score.verdict]),
        score.psi,
        f"prediction distribution {score.verdict} (PSI {score.psi or 0.0:.3f})",
        {"prediction": score.to_dict()},
    )


def _graded(value: float, fire: float, clear: float) -> Signal:
    return Signal.HIGH if value >= fire else Signal.MID if value >= clear else Signal.LOW


def accuracy_drop(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    confusion = obs.totals.confusion
    expected = obs.validation.get("accuracy")
    if confusion is None or expected is None or confusion.n < policy.min_labels:
        return RuleOutcome(Signal.NONE)
    accuracy = confusion.metrics()["accuracy"]
    drop = expected - accuracy
    return RuleOutcome(
        _graded(drop, policy.accuracy_drop, policy.accuracy_drop_clear),
        drop,
        f"accuracy {accuracy:.3f} vs {expected:.3f} at validation ({confusion.n} labels)",
        {"accuracy": accuracy, "validation_accuracy": expected, "labels": confusion.n},
    )


def latency_of(totals: WindowTotals) -> LatencySummary:
    """Every latency histogram of ``totals`` as one summary (edges may differ)."""
    return LatencySummary.of_histograms(totals.latency.items())


def device_evidence(device: str, totals: WindowTotals) -> DeviceEvidence:
    return DeviceEvidence(device, totals.requests, totals.error_count, latency_of(totals))


def error_rate(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    t = obs.totals
    if t.requests < policy.min_requests:
        return RuleOutcome(Signal.NONE)
    pooled = pool(obs.devices) if obs.devices else None
    rate = t.error_count / t.requests if pooled is None else pooled.error_rate
    if rate is None:  # pragma: no cover (requests checked above)
        return RuleOutcome(Signal.NONE)
    devices = f" from {pooled.devices} device(s)" if pooled is not None else ""
    return RuleOutcome(
        _graded(rate, policy.error_rate, policy.error_rate_clear),
        rate,
        f"error rate {rate:.1%} over {t.requests} requests{devices}",
        {"errors": dict(t.errors), "requests": t.requests}
        | ({} if pooled is None else {"devices": pooled.devices}),
    )


def latency_p95(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    latency = latency_of(obs.totals)
    if latency.total < policy.min_requests:
        return RuleOutcome(Signal.NONE)
    pooled = pool(obs.devices) if obs.devices else None
    p95 = latency.p95() if pooled is None else pooled.p95_ms
    if p95 is None:
        return RuleOutcome(Signal.NONE)
    devices = f" from {pooled.devices} device(s)" if pooled is not None else ""
    return RuleOutcome(
        _graded(p95, policy.latency_p95_ms, policy.latency_p95_clear_ms),
        p95,
        f"p95 latency {p95:.4g} ms over {latency.total} requests{devices}",
    )


def _worst_rate(
    obs: Observation, policy: AlertPolicy, rate_of: Callable[[FeatureScore], float | None]
) -> tuple[float, dict[str, float]] | None:
    """The highest per-feature rate and every non-zero one (None: too few rows to judge)."""
    report = obs.report
    if report is None or report.n < policy.min_rows:
        return None
    rates = {f.name: r for f in report.features if (r := rate_of(f)) is not None}
    if not rates:
        return None
    return max(rates.values()), {name: r for name, r in sorted(rates.items()) if r > 0}


def _rate_rule(
    obs: Observation,
    policy: AlertPolicy,
    rule: str,
    what: str,
    rate_of: Callable[[FeatureScore], float | None],
) -> RuleOutcome:
    worst = _worst_rate(obs, policy, rate_of)
    if worst is None:
        return RuleOutcome(Signal.NONE)
    value, rates = worst
    fire, clear = getattr(policy, rule), getattr(policy, f"{rule}_clear")
    top = sorted(rates, key=lambda name: -rates[name])[:8]
    summary = f"{what} up to {value:.1%}: {', '.join(top)}" if top else ""
    return RuleOutcome(_graded(value, fire, clear), value, summary, {"features": rates})


def nan_rate(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    rows = obs.report.n if obs.report is not None else 0
    return _rate_rule(
        obs, policy, "nan_rate", "NaN/inf rate", lambda f: (f.nan + f.inf) / rows if rows else None
    )


def out_of_range_rate(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    # below_min/above_max already count the clipped values (they sit in the outer bins).
    return _rate_rule(
        obs,
        policy,
        "out_of_range_rate",
        "out-of-range rate",
        lambda f: (f.below_min + f.above_max) / f.n if f.kind == "numeric" and f.n else None,
    )


def unseen_rate(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    return _rate_rule(
        obs,
        policy,
        "unseen_rate",
        "unseen-category rate",
        lambda f: f.unseen / f.n if f.kind == "categorical" and f.n else None,
    )


def missing_feature(obs: Observation, policy: AlertPolicy) -> RuleOutcome:
    report = obs.report
    if report is None or report.n < policy.min_rows or not report.features:
        return RuleOutcome(Signal.NONE)
    dead = sorted(f.name for f in report.features if f.n == 0)
    if not dead:
        return RuleOutcome(Signal.LOW, 0.0)
    return RuleOutcome(
        Signal.HIGH,
        float(len(dead)),
        f"{len(dead)} feature(s) with no usable value in {report.n} rows: {', '.join(dead[:8])}",
        {"features": dead, "rows": report.n},
    )


RULES: dict[str, tuple[str, Callable[[Observation, AlertPolicy], RuleOutcome]]] = {
    "feature_drift": ("warning", feature_drift),
    "dataset_drift": ("critical", dataset_drift),
    "prediction_drift": ("warning", prediction_drift),
    "accuracy_drop": ("critical", accuracy_drop),
    "error_rate": ("critical", error_rate),
    "latency_p95": ("warning", latency_p95),
    "nan_rate": ("warning", nan_rate),
    "out_of_range_rate": ("warning", out_of_range_rate),
    "unseen_rate": ("warning", unseen_rate),
    "missing_feature": ("critical", missing_feature),
}


def evaluate(obs: Observation, policy: AlertPolicy) -> dict[str, RuleOutcome]:
    """Every enabled rule's outcome for one observation."""
    return {name: RULES[name][1](obs, policy) for name in policy.rules}


def severity_of(rule: str) -> str:
    return RULES[rule][0]


def alert_key(rule: str, model: str, version: int, scope_kind: str, scope: str) -> str:
    return f"{rule}|{model}|{version}|{scope_kind}|{scope}"

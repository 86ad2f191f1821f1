"""Terminal rendering of fleet drift results and alert lists (plain text, no colour codes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from edgefleet.hub.fleet.aggregate import FleetDriftResult, ScopeResult
from edgefleet.hub.fleet.alert_store import AlertRecord

MAX_FEATURE_ROWS = 30
_ORDER = {"drift": 0, "warn": 1, "no_drift": 2, "insufficient_data": 3}


def _t(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _scope_line(scope: ScopeResult) -> str:
    r = scope.report
    if r is None:
        return f"{scope.windows} windows, {scope.devices} devices, no drift statistics"
    verdict = {True: "DATASET DRIFT", False: "no dataset drift", None: "not enough data"}[
        r.dataset_drift
    ]
    judged = sum(1 for f in r.features if f.verdict != "insufficient_data")
    extended = (
        f" (merged back to {_t(scope.extended_from_s)} to reach the minimum size)"
        if scope.extended_from_s is not None
        else ""
    )
    return (
        f"{scope.windows:,} windows, {scope.devices:,} devices, {r.n:,} rows - drift share "
        f"{_p(r.drift_share)} ({r.n_drifted}/{judged}) - {verdict}{extended}"
    )


def render_drift(result: FleetDriftResult) -> str:
    f = result.fleet
    since = "all time" if result.since_s is None else _t(result.since_s)
    versions = ", ".join(str(v) for v in result.versions)
    out = [
        f"{result.model}:{result.version}  {since} -> {_t(result.until_s)} UTC"
        f"  (versions with telemetry: {versions})",
        f"fleet: {_scope_line(f)}",
    ]
    if result.profile is None:
        out.append("no reference profile for this version: drift scores unavailable")
    if f.report is not None:
        scores = sorted(f.report.features, key=lambda s: (_ORDER.get(s.verdict, 9), -(s.psi or 0)))
        rows = [
            [s.name, s.kind, f"{s.n:,}", _f(s.psi), _f(s.js), _f(s.wasserstein), s.verdict]
            for s in scores[:MAX_FEATURE_ROWS]
        ]
        out += ["", table(["feature", "kind", "n", "PSI", "JS", "W1/std", "verdict"], rows)]
        if len(scores) > MAX_FEATURE_ROWS:
            out.append(f"... {len(scores) - MAX_FEATURE_ROWS} more features (see --json)")
    d: dict[str, Any] = f.to_dict(result.validation)
    pred, q, lat, perf = d["prediction"], d["data_quality"], d["latency"], d["performance"]
    out.append("")
    if pred["verdict"] is not None:
        out.append(f"prediction drift: {pred['verdict']} (PSI {_f(pred['score']['psi'])})")
    out.append(
        f"data quality: NaN {_p(q['nan_rate'])}  out-of-range {_p(q['out_of_range_rate'])}  "
        f"unseen categories {_p(q['unseen_category_rate'])}  schema violations "
        f"{_p(q['schema_violation_rate'])}  errors {_p(q['error_rate'])}"
    )
    if lat["count"]:
        out.append(
            f"latency: p50 {_f(lat['p50_ms'], 1)} ms  p95 {_f(lat['p95_ms'], 1)} ms"
            f"  (validation p95 {_f(lat['validation_p95_ms'], 1)} ms)"
        )
    if perf is not None:
        out.append(
            f"performance: accuracy {_f(perf['accuracy'])} vs validation "
            f"{_f(perf['validation_accuracy'])} (drop {_f(perf['accuracy_drop'])}, "
            f"{perf['labels']:,} labels)"
        )
    if result.groups:
        rows = [
            [
                name,
                f"{g.windows:,}",
                f"{g.devices:,}",
                "-" if g.report is None else f"{g.report.n:,}",
                _p(None if g.report is None else g.report.drift_share),
                ", ".join(g.drifted_features()) or "-",
            ]
            for name, g in sorted(result.groups.items(), key=lambda kv: (not kv[1].drifting, kv[0]))
        ]
        out += [
            "",
            f"by {result.by}:",
            table([str(result.by), "windows", "devices", "rows", "share", "drifted"], rows),
        ]
    return "\n".join(out)


def render_alerts(alerts: Sequence[AlertRecord]) -> str:
    if not alerts:
        return "no alerts"
    rows = [
        [
            str(a.id),
            a.status,
            a.severity,
            a.rule,
            f"{a.model}:{a.version}",
            f"{a.scope_kind}={a.scope}",
            _t(a.opened_at),
            _t(a.resolved_at),
            a.summary,
        ]
        for a in alerts
    ]
    return table(
        ["id", "status", "severity", "rule", "model", "scope", "opened", "resolved", "summary"],
        rows,
    )

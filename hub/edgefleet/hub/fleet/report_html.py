"""The fleet drift report as one self-contained HTML page.

Invariants: the page makes no network request and runs no script — styles are inline, the
charts are inline SVG built here, the favicon is an empty ``data:`` URL, and a
Content-Security-Policy (``default-src 'none'``) makes the browser refuse any fetch that
might slip in — so it opens the same from a mail attachment, a file share or an air-gapped
laptop. Every string that comes from the fleet (model, group and feature names) is
HTML-escaped.

Content: the fleet verdict (windows, devices, rows, dataset drift share), a table of every
feature's scores, reference-vs-current distributions of each drifted (then warned) feature,
drift scores over time, the prediction distribution, data quality, performance from labels
and, with ``--by``, the breakdown.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.core.drift import (
    CategoricalReference,
    FeatureScore,
    NumericReference,
    ReferenceProfile,
    WindowStats,
)
from edgefleet.hub.fleet.aggregate import FleetDriftResult, ScopeResult

MAX_DISTRIBUTION_CHARTS = 12
MAX_TIMELINE_SERIES = 6
REF_COLOR, CUR_COLOR = "#8aa4c8", "#d9534f"
PALETTE = ("#d9534f", "#5b8def", "#f0ad4e", "#5cb85c", "#9b59b6", "#17a2b8")
VERDICT_COLORS = {
    "drift": "#d9534f",
    "warn": "#f0ad4e",
    "no_drift": "#5cb85c",
    "insufficient_data": "#999999",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}.muted{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}.badge{display:inline-block;padding:1px 7px;border-radius:9px;
color:#fff;font-size:12px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
svg text{font-family:system-ui,sans-serif}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _time(t: float | None) -> str:
    if t is None:
        return "–"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _badge(verdict: str | None) -> str:
    if verdict is None:
        return "–"
    color = VERDICT_COLORS.get(verdict, "#999")
    return f'<span class="badge" style="background:{color}">{_e(verdict)}</span>'


# -- charts ---------------------------------------------------------------------------
def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    width: int = 460,
    height: int = 240,
) -> str:
    """Grouped bars of proportions (one group per label, one bar per series)."""
    left, right, top, bottom = 56, 10, 28, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = max((max(values, default=0.0) for _, values, _ in series), default=0.0)
    top_value = top_value if top_value > 0 else 1.0
    n = max(len(labels), 1)
    group_w = plot_w / n
    bar_w = max(group_w * 0.8 / max(len(series), 1), 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{_e(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">'
        f"{top_value:.0%}</text>",
    ]
    for i in range(n):
        for s, (_name, values, color) in enumerate(series):
            v = values[i] if i < len(values) else 0.0
            h = plot_h * v / top_value
            x = left + i * group_w + group_w * 0.1 + s * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{color}"/>'
            )
    step = max(1, math.ceil(n / 10))
    for i in range(0, n, step):
        x = left + i * group_w + group_w / 2
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 12}" font-size="9" text-anchor="end" '
            f'transform="rotate(-35 {x:.1f} {top + plot_h + 12})">{_e(labels[i])}</text>'
        )
    for s, (name, _values, color) in enumerate(series):
        x = width - right - 150 + s * 75
        parts.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14}" y="15" font-size="11">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    title: str,
    times: Sequence[float],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    thresholds: Sequence[tuple[float, str]] = (),
    width: int = 940,
    height: int = 260,
) -> str:
    left, right, top, bottom = 48, 140, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, vs, _ in series for v in vs if v is not None and math.isfinite(v)]
    y_max = max([*values, *(t for t, _ in thresholds), 1e-9]) * 1.1
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    span = (t1 - t0) or 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        return left + plot_w * (t - t0) / span, top + plot_h * (1 - v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{_e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#ccc"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{y_max:.2f}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 8}" font-size="10">{_e(_time(t0))}</text>',
        f'<text x="{left + plot_w}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{_e(_time(t1))}</text>",
    ]
    for value, label in thresholds:
        _, y = xy(t0, value)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#999" '
            'stroke-dasharray="4 3"/>'
            f'<text x="{left + plot_w - 2}" y="{y - 3:.1f}" font-size="9" text-anchor="end" '
            f'fill="#666">{_e(label)}</text>'
        )
    for s, (name, vs, color) in enumerate(series):
        points = [
            xy(t, v) for t, v in zip(times, vs, strict=False) if v is not None and math.isfinite(v)
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>'
            )
        for x, y in points:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>')
        ly = top + 12 + 16 * s
        parts.append(
            f'<rect x="{left + plot_w + 12}" y="{ly - 9}" width="10" height="10" '
            f'fill="{color}"/><text x="{left + plot_w + 26}" y="{ly}" font-size="11">'
            f"{_e(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# -- distributions --------------------------------------------------------------------
def _bin_labels(ref: NumericReference) -> list[str]:
    e = [f"{x:.3g}" for x in ref.edges]
    if not e:
        return ["all"]
    return [f"<{e[0]}", *(f"{a}–{b}" for a, b in zip(e, e[1:], strict=False)), f"≥{e[-1]}"]


def feature_distributions(
    profile: ReferenceProfile, merged: WindowStats, name: str
) -> tuple[list[str], list[float], list[float]] | None:
    """Bin labels, reference proportions and current proportions of one feature."""
    i_num = i_cat = 0
    for ref in profile.features:
        if ref.name == name:
            if isinstance(ref, NumericReference):
                current = merged.numeric_column(i_num).counts
                labels = _bin_labels(ref)
            else:
                assert isinstance(ref, CategoricalReference)
                current = merged.categorical_column(i_cat).counts
                labels = list(ref.bucket_names)
            return labels, _proportions(ref.counts), _proportions(current)
        if isinstance(ref, NumericReference):
            i_num += 1
        else:
            i_cat += 1
    return None


def _proportions(counts: Sequence[int] | np.ndarray) -> list[float]:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return [float(x) for x in (c / total if total > 0 else c)]


def prediction_distributions(
    profile: ReferenceProfile, merged: WindowStats
) -> tuple[list[str], list[float], list[float]] | None:
    out = merged.output_column()
    ref = profile.outputs
    if out is None or ref is None:
        return None
    if isinstance(ref, NumericReference):
        return _bin_labels(ref), _proportions(ref.counts), _proportions(out.counts)
    assert isinstance(ref, CategoricalReference)
    return list(ref.bucket_names), _proportions(ref.counts), _proportions(out.counts)


# -- sections -------------------------------------------------------------------------
def _cards(result: FleetDriftResult) -> str:
    f = result.fleet
    r = f.report
    verdict = (
        "no data"
        if r is None or r.dataset_drift is None
        else ("dataset drift" if r.dataset_drift else "no dataset drift")
    )
    items = [
        ("windows", f"{f.windows:,}"),
        ("devices", f"{f.devices:,}"),
        ("rows", "–" if r is None else f"{r.n:,}"),
        ("drift share", _pct(None if r is None else r.drift_share)),
        ("verdict", verdict),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><span class="muted">{_e(k)}</span><b>{_e(v)}</b></div>'
            for k, v in items
        )
        + "</div>"
    )


def _feature_table(scores: Sequence[FeatureScore]) -> str:
    rows = "".join(
        f'<tr><td class="l">{_e(s.name)}</td><td class="l">{_e(s.kind)}</td><td>{s.n:,}</td>'
        f"<td>{_num(s.psi)}</td><td>{_num(s.js)}</td><td>{_num(s.wasserstein)}</td>"
        f"<td>{_num(s.ks)}</td><td>{_num(s.chi2_pvalue, 4)}</td>"
        f'<td class="l">{_badge(s.verdict)}</td></tr>'
        for s in scores
    )
    return (
        '<table><tr><th class="l">feature</th><th class="l">kind</th><th>n</th><th>PSI</th>'
        '<th>JS</th><th>W1/std</th><th>KS</th><th>χ² p</th><th class="l">verdict</th></tr>'
        f"{rows}</table>"
    )


def _distribution_section(result: FleetDriftResult) -> str:
    f, profile = result.fleet, result.profile
    if f.report is None or f.merged is None or profile is None:
        return "<p class=muted>No drift statistics in range.</p>"
    ranked = sorted(
        (s for s in f.report.features if s.verdict in ("drift", "warn")),
        key=lambda s: (s.verdict != "drift", -(s.psi or 0.0)),
    )[:MAX_DISTRIBUTION_CHARTS]
    if not ranked:
        return "<p class=muted>No feature drifted: nothing to compare.</p>"
    charts = []
    for s in ranked:
        dist = feature_distributions(profile, f.merged, s.name)
        if dist is None:
            continue
        labels, ref, cur = dist
        title = f"{s.name}: PSI {_num(s.psi)} · W1 {_num(s.wasserstein)} ({s.verdict})"
        charts.append(
            '<div class="chart">'
            + bar_chart(title, labels, [("reference", ref, REF_COLOR), ("current", cur, CUR_COLOR)])
            + "</div>"
        )
    return '<div class="charts">' + "".join(charts) + "</div>"


def _timeline_section(result: FleetDriftResult) -> str:
    points = [p for p in result.timeline if p.report is not None]
    if len(points) < 2:
        return "<p class=muted>Not enough time buckets for a chart.</p>"
    times = [(p.start_s + p.end_s) / 2 for p in points]
    fleet = result.fleet.report
    order = sorted(fleet.features if fleet is not None else (), key=lambda s: -(s.psi or 0.0))[
        :MAX_TIMELINE_SERIES
    ]
    series: list[tuple[str, Sequence[float | None], str]] = []
    for i, s in enumerate(order):
        values: list[float | None] = []
        for p in points:
            assert p.report is not None
            values.append(p.report.feature(s.name).psi)
        series.append((s.name, values, PALETTE[i % len(PALETTE)]))
    t = points[0].report.thresholds if points[0].report is not None else None
    marks = [] if t is None else [(t.psi_drift, "PSI drift"), (t.psi_warn, "PSI warn")]
    psi_chart = line_chart("PSI over time (top features)", times, series, marks)
    share = [p.report.drift_share if p.report is not None else None for p in points]
    share_marks = [] if t is None else [(t.dataset_drift_share, "dataset drift")]
    share_chart = line_chart(
        "Share of drifted features over time",
        times,
        [("drift share", share, PALETTE[1])],
        share_marks,
        height=200,
    )
    return f'<div class="chart">{psi_chart}</div><p></p><div class="chart">{share_chart}</div>'


def _prediction_section(result: FleetDriftResult) -> str:
    f, profile = result.fleet, result.profile
    parts = []
    if f.report is not None and f.report.prediction is not None:
        p = f.report.prediction
        parts.append(
            f"<p>Prediction drift: {_badge(p.verdict)} PSI {_num(p.psi)}, JS {_num(p.js)}</p>"
        )
    if profile is not None and f.merged is not None:
        dist = prediction_distributions(profile, f.merged)
        if dist is not None:
            labels, ref, cur = dist
            parts.append(
                '<div class="chart">'
                + bar_chart(
                    "predictions",
                    labels,
                    [("reference", ref, REF_COLOR), ("current", cur, CUR_COLOR)],
                )
                + "</div>"
            )
    return "".join(parts) or "<p class=muted>No prediction statistics.</p>"


def _quality_and_performance(scope: ScopeResult, validation: dict[str, float]) -> str:
    d = scope.to_dict(validation)
    q, perf, lat = d["data_quality"], d["performance"], d["latency"]
    rows = [
        ("NaN / inf rate", _pct(q["nan_rate"])),
        ("out-of-range rate", _pct(q["out_of_range_rate"])),
        ("unseen category rate", _pct(q["unseen_category_rate"])),
        ("schema violation rate", _pct(q["schema_violation_rate"])),
        ("error rate", _pct(q["error_rate"])),
        ("requests", f"{scope.totals.requests:,}"),
        ("latency p50 / p95 (ms)", f"{_num(lat['p50_ms'], 1)} / {_num(lat['p95_ms'], 1)}"),
    ]
    if perf is not None:
        rows += [
            ("labels returned", f"{perf['labels']:,}"),
            ("live accuracy", _num(perf["accuracy"])),
            ("validation accuracy", _num(perf["validation_accuracy"])),
            ("accuracy drop", _num(perf["accuracy_drop"])),
        ]
    else:
        rows.append(("performance", "no labels returned"))
    body = "".join(f'<tr><td class="l">{_e(k)}</td><td>{_e(v)}</td></tr>' for k, v in rows)
    return f"<table>{body}</table>"


def _breakdown(result: FleetDriftResult) -> str:
    if not result.groups:
        return ""
    rows = "".join(
        f'<tr><td class="l">{_e(name)}</td><td>{g.windows:,}</td><td>{g.devices:,}</td>'
        f"<td>{'–' if g.report is None else f'{g.report.n:,}'}</td>"
        f"<td>{_pct(None if g.report is None else g.report.drift_share)}</td>"
        f'<td class="l">{_e(", ".join(g.drifted_features()) or "—")}</td></tr>'
        for name, g in sorted(result.groups.items())
    )
    return (
        f"<h2>By {_e(result.by)}</h2><table><tr><th class='l'>{_e(result.by)}</th>"
        "<th>windows</th><th>devices</th><th>rows</th><th>drift share</th>"
        f"<th class='l'>drifted features</th></tr>{rows}</table>"
    )


def render_html(result: FleetDriftResult, generated_at: float) -> str:
    """The whole page (a str; write it as UTF-8)."""
    f = result.fleet
    title = f"Drift report — {result.model}:{result.version}"
    since = "all time" if result.since_s is None else _time(result.since_s)
    scores = [] if f.report is None else list(f.report.features)
    extra: dict[str, Any] = {}
    if result.profile is None:
        extra["note"] = "<p><b>No reference profile for this version: scores unavailable.</b></p>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="muted">{_e(since)} → {_e(_time(result.until_s))} · generated '
        f"{_e(_time(generated_at))} · versions with telemetry: "
        f"{_e(', '.join(str(v) for v in result.versions))}</p>"
        + extra.get("note", "")
        + _cards(result)
        + "<h2>Features</h2>"
        + (_feature_table(scores) if scores else "<p class=muted>No scores.</p>")
        + "<h2>Reference vs current (drifted features)</h2>"
        + _distribution_section(result)
        + "<h2>Drift over time</h2>"
        + _timeline_section(result)
        + "<h2>Predictions</h2>"
        + _prediction_section(result)
        + "<h2>Data quality and performance</h2>"
        + _quality_and_performance(f, result.validation)
        + _breakdown(result)
        + "</body></html>"
    )

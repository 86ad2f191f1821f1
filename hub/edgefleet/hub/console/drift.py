"""Drift as the operator sees it: a headline that never hides a drifting scope.

The pooled fleet can look clean while a group or two devices drift badly (their windows are
a small share of the pool), and the alert monitor may hold an open drift alert the current
query window does not show. The headline therefore states, in this order:

1. every group and device whose own verdict is drift (from the per-scope queries);
2. every open drift alert (``feature_drift``, ``dataset_drift``, ``prediction_drift``) of
   the model, whatever its scope;
3. only then the pooled fleet's verdict.

A verdict shown as "no drift" while an open drift alert names that scope is a
contradiction: :func:`scope_verdict` turns such a scope into ``alert`` instead.
Pure functions over the ``to_dict()`` of :class:`~edgefleet.hub.fleet.aggregate.FleetDriftResult`
and of :class:`~edgefleet.hub.fleet.alert_store.AlertRecord`; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgefleet.core.drift import ReferenceProfile, WindowStats

DRIFT_RULES = frozenset({"feature_drift", "dataset_drift", "prediction_drift"})


def drift_alerts(alerts: Sequence[Mapping[str, Any]], model: str) -> list[Mapping[str, Any]]:
    return [
        a
        for a in alerts
        if a["status"] == "open" and a["rule"] in DRIFT_RULES and a["model"] == model
    ]


def _alert_scope(alert: Mapping[str, Any]) -> tuple[str, str]:
    kind = alert["scope_kind"]
    return kind, "fleet" if kind == "fleet" else str(alert["scope"])


def scope_verdict(
    kind: str, name: str, scope: Mapping[str, Any], open_drift: Sequence[Mapping[str, Any]]
) -> str:
    """``drift``, ``alert`` (an open alert although this window looks clean), ``no_drift``
    or ``insufficient_data``."""
    if scope.get("drifting"):
        return "drift"
    if any(_alert_scope(a) == (kind, name) for a in open_drift):
        return "alert"
    if scope.get("dataset_drift") is None and not scope.get("features"):
        return "insufficient_data"
    return "no_drift"


def drifting_scopes(
    by_group: Mapping[str, Any] | None,
    by_device: Mapping[str, Any] | None,
    open_drift: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Every group and device that drifts or has an open drift alert, worst first."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, result in (("group", by_group), ("device", by_device)):
        for name, scope in ((result or {}).get("groups") or {}).items():
            if scope.get("drifting"):
                seen[(kind, name)] = {
                    "kind": kind,
                    "name": name,
                    "features": list(scope.get("drifted_features", [])),
                    "drift_share": scope.get("drift_share"),
                    "alerts": [],
                }
    for alert in open_drift:
        kind, name = _alert_scope(alert)
        entry = seen.setdefault(
            (kind, name),
            {"kind": kind, "name": name, "features": [], "drift_share": None, "alerts": []},
        )
        entry["alerts"].append(alert["id"])
        for feature in (alert.get("details") or {}).get("features", {}) or {}:
            if feature not in entry["features"]:
                entry["features"].append(feature)
    order = {"fleet": 0, "group": 1, "profile": 2, "device": 3}
    return sorted(
        seen.values(), key=lambda e: (order.get(e["kind"], 9), -len(e["features"]), e["name"])
    )


def headline(
    fleet: Mapping[str, Any],
    scopes: Sequence[Mapping[str, Any]],
    more: int = 0,
) -> str:
    """One line naming every drifting scope before the pooled verdict (``more``: drifting
    scopes left out of ``scopes``, counted in the "and N more")."""
    pooled = fleet.get("fleet") or {}
    if pooled.get("dataset_drift") is None and not pooled.get("features"):
        pooled_text = "pooled fleet: not enough data"
    else:
        share = pooled.get("drift_share")
        verdict = "DATASET DRIFT" if pooled.get("dataset_drift") else "no dataset drift"
        pooled_text = f"pooled fleet: {verdict}" + (
            f" ({share:.1%} of features)" if isinstance(share, float) else ""
        )
    if not scopes and not more:
        return f"no drift on any group or device; {pooled_text}"
    named = []
    for s in scopes[:6]:
        what = f"{len(s['features'])} feature(s)" if s["features"] else "open alert"
        named.append(f"{s['kind']} {s['name']} ({what})")
    rest = len(scopes) - len(named) + more
    return f"DRIFT on {', '.join(named)}{f' and {rest} more' if rest else ''}; {pooled_text}"


def heatmap(
    result: Mapping[str, Any], open_drift: Sequence[Mapping[str, Any]], kind: str
) -> dict[str, Any]:
    """Feature x scope cells (PSI and verdict) of a per-group or per-device query."""
    scopes = result.get("groups") or {}
    features: list[str] = sorted(
        {f for s in scopes.values() for f in (s.get("features") or {})}
        | set((result.get("fleet") or {}).get("features") or {})
    )
    rows = []
    for name, scope in sorted(scopes.items(), key=lambda kv: (not kv[1].get("drifting"), kv[0])):
        cells = {}
        for feature, score in (scope.get("features") or {}).items():
            cells[feature] = {"psi": score.get("psi"), "verdict": score.get("verdict")}
        rows.append(
            {
                "scope": name,
                "verdict": scope_verdict(kind, name, scope, open_drift),
                "devices": scope.get("devices"),
                "rows": scope.get("rows"),
                "cells": cells,
            }
        )
    return {"kind": kind, "features": features, "rows": rows}


def histograms(profile: ReferenceProfile | None, merged: WindowStats | None) -> dict[str, Any]:
    """Per feature, the reference's bin shares next to the current window's (None when the
    window holds no rows of it): what the dashboard draws as reference vs current."""
    out: dict[str, Any] = {}
    if profile is None:
        return out
    numeric = categorical = 0
    for f in profile.features:
        if f.kind == "numeric":
            current = None if merged is None else merged.numeric_column(numeric).counts
            out[f.name] = {
                "kind": "numeric",
                "edges": list(getattr(f, "edges", ())),
                "reference": _shares(f.counts),
                "current": None if current is None else _shares(current),
            }
            numeric += 1
        else:
            current = None if merged is None else merged.categorical_column(categorical).counts
            out[f.name] = {
                "kind": "categorical",
                "labels": [str(v) for v in getattr(f, "vocabulary", ())] + ["(other)", "(unseen)"],
                "reference": _shares(f.counts),
                "current": None if current is None else _shares(current),
            }
            categorical += 1
    return out


def _shares(counts: Iterable[Any]) -> list[float] | None:
    values = [int(c) for c in counts]
    total = float(sum(values))
    if total <= 0:
        return None
    return [round(c / total, 5) for c in values]

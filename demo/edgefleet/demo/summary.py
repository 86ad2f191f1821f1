"""The demo's final summary: one JSON object (``--json``) or tables for a person.

Every fact comes from what the system reported: device versions and deployment states
from the devices' state reports at the hub, rollout outcomes from the hub's rollout
records, drift verdicts from ``hub drift --by device``, alerts from ``hub alerts``.
:meth:`DemoSummary.checks` compares them with the story the demo tells (every device
ends on v2, v3 is rolled back, drift shows on the drifted devices and only there), so
``make demo`` fails loudly when the system does not behave.

Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.demo.console_probe import ConsoleAccess
from edgefleet.demo.fleet_view import DeviceFacts, RolloutFacts
from edgefleet.demo.training import MODEL_NAME
from edgefleet.demo.workspace import DemoDevice
from edgefleet.hub.commands.common import table

FINAL_VERSION = 2
BROKEN_VERSION = 3
_ALERT_FIELDS = ("rule", "model", "version", "scope_kind", "scope", "severity", "status", "summary")


@dataclass(frozen=True)
class RolloutOutcome:
    rollout: str
    version: int
    outcome: str  # completed | aborted | rolled_back
    phase_sizes: tuple[int, ...]
    reason: str
    devices: Mapping[str, str]  # device -> install status at the end
    history: tuple[tuple[str, str], ...] = ()  # (event, detail), oldest first

    @classmethod
    def of(cls, facts: RolloutFacts) -> RolloutOutcome:
        return cls(
            facts.rollout,
            facts.version,
            facts.state,
            facts.phase_sizes,
            facts.reason,
            dict(facts.installs),
            tuple((event, detail) for _at, event, detail in facts.events),
        )

    @property
    def abort_reason(self) -> str | None:
        """Why the hub aborted (the failed gate), if it did."""
        reasons = [detail for event, detail in self.history if event == "abort"]
        return reasons[-1] if reasons else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout,
            "model": MODEL_NAME,
            "version": self.version,
            "outcome": self.outcome,
            "phase_sizes": list(self.phase_sizes),
            "reason": self.reason,
            "abort_reason": self.abort_reason,
            "devices": dict(sorted(self.devices.items())),
            "history": [{"event": e, "detail": d} for e, d in self.history],
        }


def _verdict(scope: Mapping[str, Any]) -> str:
    if scope.get("drifting"):
        return "drift"
    features = scope.get("features") or {}
    verdicts = {str(f.get("verdict")) for f in features.values() if isinstance(f, Mapping)}
    if not verdicts or verdicts == {"insufficient_data"}:
        return "insufficient_data"
    return "warn" if "warn" in verdicts else "no_drift"


def drift_verdicts(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per device, from ``hub drift MODEL --by device --json``."""
    out: dict[str, dict[str, Any]] = {}
    for name, scope in (result.get("groups") or {}).items():
        if not isinstance(scope, Mapping):
            continue
        out[str(name)] = {
            "verdict": _verdict(scope),
            "rows": scope.get("rows", 0),
            "drifted_features": list(scope.get("drifted_features") or []),
            "drift_share": scope.get("drift_share"),
            "dataset_drift": scope.get("dataset_drift"),
        }
    return out


def render_drift_table(
    verdicts: Mapping[str, Mapping[str, Any]], fleet: Sequence[DemoDevice]
) -> str:
    rows = []
    for d in fleet:
        v = verdicts.get(d.device_id, {})
        features = v.get("drifted_features") or []
        rows.append(
            [
                d.device_id,
                "yes" if d.drifts else "no",
                str(v.get("rows", 0)),
                str(v.get("verdict", "no data")),
                ", ".join(features[:4]) + (" …" if len(features) > 4 else ""),
            ]
        )
    return table(["DEVICE", "INJECTED", "ROWS", "VERDICT", "DRIFTED FEATURES"], rows)


@dataclass
class DemoSummary:
    workdir: str | None
    devices: Sequence[DemoDevice]
    device_facts: Mapping[str, DeviceFacts] = field(default_factory=dict)
    rollouts: list[RolloutOutcome] = field(default_factory=list)
    drift: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    drift_fleet: Mapping[str, Any] = field(default_factory=dict)
    alerts: list[Mapping[str, Any]] = field(default_factory=list)
    traffic: Mapping[str, Any] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    report: str | None = None
    wall_time_s: float | None = None
    console: ConsoleAccess | None = None
    console_devices: list[str] = field(default_factory=list)  # listed by the API, viewer token

    def checks(self) -> dict[str, bool]:
        facts = self.device_facts
        on_final = bool(facts) and all(
            facts.get(d.device_id) is not None and facts[d.device_id].version == FINAL_VERSION
            for d in self.devices
        )
        broken = [r for r in self.rollouts if r.version == BROKEN_VERSION]
        drift_ok = bool(self.drift) and all(
            (self.drift.get(d.device_id, {}).get("verdict") == "drift") == d.drifts
            for d in self.devices
        )
        return {
            "all_devices_on_v2": on_final,
            "v3_rolled_back": bool(broken) and broken[-1].outcome == "rolled_back",
            "drift_on_drifted_devices_only": drift_ok,
            "console_lists_devices": self.console is not None
            and self.console_devices == sorted(d.device_id for d in self.devices),
        }

    def to_dict(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for d in self.devices:
            f = self.device_facts.get(d.device_id)
            devices[d.device_id] = {
                **d.to_dict(),
                "model": MODEL_NAME,
                "version": None if f is None else f.version,
                "previous_version": None if f is None else f.previous_version,
                "state": None if f is None else f.deployment_state,
                "state_reason": None if f is None else f.deployment_reason,
                "online": None if f is None else f.online,
            }
        checks = self.checks()
        return {
            "model": MODEL_NAME,
            "devices": devices,
            "rollouts": [r.to_dict() for r in self.rollouts],
            "drift": {
                "model": MODEL_NAME,
                "version": FINAL_VERSION,
                "by": "device",
                "devices": {
                    d.device_id: {
                        **dict(self.drift.get(d.device_id, {"verdict": "no data"})),
                        "drift_injected": d.drifts,
                    }
                    for d in self.devices
                },
                "fleet": {
                    k: self.drift_fleet.get(k)
                    for k in ("rows", "drifting", "drifted_features", "drift_share")
                },
            },
            "alerts": [{k: a.get(k) for k in _ALERT_FIELDS} for a in self.alerts],
            "report": self.report,
            "workdir": self.workdir,
            "traffic": dict(self.traffic),
            "hub_counters": dict(self.counters),
            "console": None
            if self.console is None
            else {
                "url": self.console.url,
                "token": self.console.token,
                "role": self.console.role,
                "devices_listed": list(self.console_devices),
            },
            "checks": checks,
            "ok": all(checks.values()),
            "wall_time_s": self.wall_time_s,
        }


def render_summary(summary: Mapping[str, Any]) -> str:
    """Tables for a person, from :meth:`DemoSummary.to_dict`."""
    drift = summary["drift"]["devices"]
    device_rows = [
        [
            name,
            str(d["group"]),
            str(d["profile"]),
            "-" if d["version"] is None else f"v{d['version']}",
            str(d["state"] or "-"),
            str(drift.get(name, {}).get("verdict", "-"))
            + (" (injected)" if d["drift_injected"] else ""),
        ]
        for name, d in summary["devices"].items()
    ]
    parts = [
        "Devices",
        table(["DEVICE", "GROUP", "PROFILE", "MODEL", "DEPLOYMENT", "DRIFT"], device_rows),
        "",
        "Rollouts",
        table(
            ["ROLLOUT", "VERSION", "PHASES", "OUTCOME", "REASON"],
            [
                [
                    r["rollout"],
                    f"v{r['version']}",
                    " → ".join(str(s) for s in r["phase_sizes"]),
                    r["outcome"],
                    (r["abort_reason"] or r["reason"] or "")[:70],
                ]
                for r in summary["rollouts"]
            ],
        ),
        "",
        "Alerts",
    ]
    if summary["alerts"]:
        parts.append(
            table(
                ["RULE", "VERSION", "SCOPE", "SEVERITY", "STATUS", "SUMMARY"],
                [
                    [
                        str(a["rule"]),
                        f"v{a['version']}",
                        f"{a['scope_kind']}={a['scope']}",
                        str(a["severity"]),
                        str(a["status"]),
                        str(a["summary"] or "")[:60],
                    ]
                    for a in summary["alerts"]
                ],
            )
        )
    else:
        parts.append("none")
    checks = summary["checks"]
    parts += [
        "",
        "Story checks: " + ", ".join(f"{name} {'✓' if ok else '✗'}" for name, ok in checks.items()),
    ]
    console = summary.get("console")
    if console:
        parts.append(
            f"Fleet console (served while the demo ran): {console['url']}, "
            f"{console['role']} token {console['token']}"
        )
    if summary["report"]:
        parts.append(f"HTML drift report: {summary['report']}")
    if summary["workdir"]:
        parts.append(f"Work directory kept: {summary['workdir']}")
    if summary["wall_time_s"] is not None:
        parts.append(f"Wall time: {summary['wall_time_s']:.0f} s")
    return "\n".join(parts)

"""``edgefleet hub rollout``: create, status, pause, resume, abort, rollback."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.profiles import load_profile
from edgefleet.hub.commands.common import config_option, hub_store, table
from edgefleet.hub.console.service import FleetConsole
from edgefleet.hub.errors import HubUsageError
from edgefleet.hub.rollout.plan import DEFAULT_PHASES
from edgefleet.hub.rollout.timing import PhaseTiming, phase_timing


def _model_version(text: str) -> tuple[str, int]:
    model, sep, version = text.rpartition(":")
    if not sep or not model:
        raise HubUsageError(f"expected MODEL:VERSION, got {text!r}")
    try:
        number = int(version.lstrip("v"))
    except ValueError as e:
        raise HubUsageError(f"invalid version in {text!r}: expected an integer") from e
    return model, number


@click.group()
def rollout() -> None:
    """Staged rollouts with install and inference gates."""


@rollout.command()
@click.argument("model_version", metavar="MODEL:VERSION")
@click.option(
    "--to", "selector", required=True, help="all | group=G | tag=K=V | profile=P | ids=A,B"
)
@click.option("--phases", default=DEFAULT_PHASES, show_default=True, help="Percent or counts.")
@click.option(
    "--gate",
    "gates",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a gate, e.g. max_error_rate=0.02, bake=10m, min_inferences=500 (repeatable).",
)
@click.option("--id", "rollout_id", default=None, help="Rollout id (default: generated).")
@config_option
@json_option
def create(
    model_version: str,
    selector: str,
    phases: str,
    gates: tuple[str, ...],
    rollout_id: str | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Plan a rollout; the running hub starts it on its next tick."""
    model, version = _model_version(model_version)
    with hub_store(config_path) as (config, store):
        result = FleetConsole(config, store).create_rollout(
            model, version, selector, phases=phases, gates=gates, rollout_id=rollout_id
        )
        record = store.get_rollout(result["rollout"])
        if record is not None:
            known = store.device_profiles()
            profiles = [p for p in map(known.get, record.plan.devices) if p is not None]
            timing = phase_timing(record.plan, profiles, _profile_window_s)
            result = {**result, "timing": timing.to_dict()}
    warning = _lookback_warning(
        result["gates"]["baseline_lookback_s"], config.fleet.settings.raw_retention_s
    )
    if warning:
        click.echo(f"warning: rollout {result['rollout']}: {warning}", err=True)
    emit(as_json, result, _render_created)


def _lookback_warning(lookback_s: float, retention_s: float) -> str | None:
    """Why the gates' baseline may be shorter than asked for, or None.

    Retention holds back only from the moment a rollout exists: telemetry that arrived
    more than ``retention_s`` before it was created may already be gone.
    """
    if lookback_s <= retention_s:
        return None
    return (
        f"gate baseline_lookback_s ({lookback_s:.0f} s) exceeds fleet.raw_retention_s "
        f"({retention_s:.0f} s); telemetry older than that may already be deleted, so the "
        f"baseline may cover only the last {retention_s:.0f} s"
    )


def _profile_window_s(name: str) -> float:
    # A profile the hub cannot load (a device's own file) adds no window: the estimate
    # is a lower bound either way.
    try:
        return float(load_profile(name).window_s)
    except EdgefleetError:
        return 0.0


def _render_created(r: dict[str, Any]) -> str:
    sizes = " -> ".join(str(s) for s in r["phase_sizes"])
    t = r["timing"]
    return (
        f"created rollout {r['rollout']}: {r['model']}:{r['version']} to {r['selector']} "
        f"({r['devices']} devices; phases {sizes})\n"
        + PhaseTiming(
            t["window_s"], t["bake_s"], t["min_inferences"], t["phases"], tuple(t["profiles"])
        ).describe()
    )


@rollout.command()
@click.argument("rollout_id", required=False)
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until it finishes.")
@click.option(
    "--interval", type=click.FloatRange(min=0.5, max=3600), default=5.0, show_default=True
)
@config_option
@json_option
def status(
    rollout_id: str | None, watch: bool, interval: float, config_path: Path | None, as_json: bool
) -> None:
    """Show all rollouts, or one rollout per phase and per device, and why it waits."""
    with hub_store(config_path) as (config, store):
        console = FleetConsole(config, store)
        if rollout_id is None:
            result: dict[str, Any] = {"rollouts": console.rollouts()}
            emit(as_json, result, _render_list)
            return
        while True:
            detail = console.rollout(rollout_id)
            if watch and not as_json and sys.stdout.isatty():
                click.clear()
            emit(as_json, detail, _render_detail)
            if not watch or detail["state"] not in WATCHED_STATES:
                return
            time.sleep(interval)
            if not as_json:
                click.echo("")


#: ``--watch`` returns once the rollout leaves these states.
WATCHED_STATES = frozenset({"created", "running", "paused"})


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _render_list(r: dict[str, Any]) -> str:
    if not r["rollouts"]:
        return "no rollouts"
    return table(
        ["ROLLOUT", "MODEL", "STATE", "PHASE", "DEVICES", "UPDATED", "REASON"],
        [
            [
                x["rollout"],
                f"{x['model']}:{x['version']}",
                x["state"],
                f"{x['phase'] or '-'}/{x['phase_count']}",
                str(x["devices"]),
                _when(x["updated_at"]),
                x["reason"][:60],
            ]
            for x in r["rollouts"]
        ],
    )


def _render_detail(r: dict[str, Any]) -> str:
    lines = [
        f"rollout {r['rollout']}: {r['model']}:{r['version']} to {r['selector']}",
        f"state {r['state']}, phase {r['phase'] or '-'}/{r['phase_count']}"
        + (f" ({r['reason']})" if r["reason"] else ""),
    ]
    if r.get("waiting"):
        lines.append("waiting for:")
        for w in r["waiting"]:
            until = "" if w["until"] is None else f" (expected by {_when(w['until'])}"
            until += "; overdue)" if w["overdue"] else (")" if until else "")
            lines.append(f"  {w['gate']}: {w['waits_for']}{until}")
    lines.append("")
    for p in r["phases"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(p["counts"].items()))
        marker = "*" if p["current"] else " "
        lines.append(
            f"{marker} phase {p['phase']}: {p['devices']} devices "
            f"(cumulative {p['cumulative_devices']}): {counts}"
        )
    decision = r.get("decision")
    if decision:
        lines += ["", f"gates: {decision['verdict']} ({decision['reason']})"]
        for g in decision["gates"]:
            value = "-" if g["value"] is None else f"{g['value']:.4g}"
            lines.append(f"  {g['status']:>4}  {g['name']:<22} {value:>10}  {g['detail']}")
    lines += [
        "",
        table(
            ["DEVICE", "PHASE", "ONLINE", "INSTALL", "DETAIL"],
            [
                [
                    d["device"],
                    str(d["phase"]),
                    "yes" if d["online"] else "no",
                    d["install"],
                    (d["detail"] or "")[:60],
                ]
                for d in r["devices"]
            ],
        ),
    ]
    if r["events"]:
        lines += ["", "history:"]
        lines += [f"  {_when(e['at'])}  {e['event']:<9} {e['detail']}" for e in r["events"]]
    return "\n".join(lines)


def _action(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("rollout_id")
    @click.option("--reason", default=None, help="Recorded in the rollout history.")
    @config_option
    @json_option
    def command(
        rollout_id: str, reason: str | None, config_path: Path | None, as_json: bool
    ) -> None:
        with hub_store(config_path) as (config, store):
            result = FleetConsole(config, store).rollout_action(rollout_id, name, reason)
        emit(as_json, result, lambda r: f"rollout {r['rollout']} is now {r['state']}")

    return command


rollout.add_command(_action("pause", "Stop assigning new devices; devices already moved stay."))
rollout.add_command(_action("resume", "Continue a paused rollout."))
rollout.add_command(
    _action("abort", "Halt the rollout; devices already moved stay unless rolled back.")
)
rollout.add_command(
    _action("rollback", "Send every device this rollout moved back to its previous version.")
)

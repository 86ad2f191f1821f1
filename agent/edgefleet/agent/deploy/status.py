"""What ``edgefleet agent status`` reports, read from the state directory.

Reads only: slot files, stored manifests (display, unverified), ``deploy.json``,
``endpoint.json`` and the telemetry buffer's counters. Works whether or not
the daemon runs and never imports onnxruntime.
"""

from __future__ import annotations

import json
from typing import Any

from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.deploy.layout import lock_is_held_elsewhere
from edgefleet.agent.deploy.not_served import not_served_reason
from edgefleet.agent.deploy.record import DeployStateFile
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.deploy.store import ExtractedBundleStore
from edgefleet.agent.errors import TelemetryBufferError


def _bundle(store: ExtractedBundleStore, sha: str | None) -> dict[str, Any] | None:
    if sha is None:
        return None
    info = store.describe(sha)
    return {"version": info.get("version"), "bundle_sha256": sha, "stored": store.has(sha)}


def _telemetry(ctx: AgentContext) -> dict[str, Any] | None:
    if not ctx.layout.telemetry_db.exists():
        return None
    try:
        try:
            buffer = ctx.open_buffer(readonly=True)
        except TelemetryBufferError:
            buffer = ctx.open_buffer()
        try:
            stats = buffer.stats()
        finally:
            buffer.close()
    except TelemetryBufferError as e:
        return {"error": str(e)}
    data = stats.to_dict()
    data["backlog_records"] = stats.records
    data["backlog_bytes"] = stats.body_bytes
    return data


def collect_status(ctx: AgentContext) -> dict[str, Any]:
    layout = ctx.layout
    store = ExtractedBundleStore(layout)
    state = DeployStateFile(layout.deploy_file).load()
    running = lock_is_held_elsewhere(layout)
    endpoint = None
    if running:
        try:
            endpoint = json.loads((layout.root / "endpoint.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            endpoint = None
    models = []
    names = set(SlotTable(layout).models()) | set(state.models)
    slots = SlotTable(layout)
    for name in sorted(names):
        pointers = slots.get(name)
        last = state.models.get(name)
        entry: dict[str, Any] = {
            "name": name,
            "active": _bundle(store, pointers.active),
            "previous": _bundle(store, pointers.previous),
            "last_deployment": last,
            "serving": pointers.active is not None,
        }
        if pointers.active is None:
            last = last or {}
            entry["not_served"] = not_served_reason(
                kind=last.get("kind"),
                version=last.get("version"),
                state=last.get("state"),
                reason=last.get("reason"),
            )
        models.append(entry)
    current = state.current
    return {
        "device_id": ctx.config.device_id,
        "profile": ctx.profile.name,
        "state_dir": str(layout.root),
        "agent_running": running,
        "endpoint": endpoint,
        "models": models,
        "deployment": None if current is None else current.to_dict(),
        "history": list(state.history[-10:]),
        "telemetry": _telemetry(ctx),
    }

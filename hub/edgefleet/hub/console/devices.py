"""Devices and groups as the operator sees them: pure views over store records.

Every function takes the records (and ``now``) as arguments and does no I/O, so the CLI,
the API and the dashboard show the same fields computed by the same rules:

- a device's *refusal* is the ``directive_error`` of its last state report: the reason it
  would not apply the hub's directive (bad signature, unknown key, expired ...); a device
  with one is in state ``refusing`` whatever its presence;
- *current* versions come from the device's own state report (active slot), *desired* ones
  from the hub's assignments; a device whose desired version differs from its current one
  is ``updating`` unless it refuses;
- *directive lag*: the hub's latest directive sequence number against the one the device
  last reported applying.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.hub.errors import HubUsageError
from edgefleet.hub.store import DesiredAssignment, DeviceRecord, DirectiveHead

#: What ``state=`` filters on (see :func:`device_state`).
DEVICE_STATES = ("refusing", "updating", "in_sync", "unassigned")
MAX_PAGE = 500


@dataclass(frozen=True)
class DeviceFilter:
    """Filters of a device listing; None means "any"."""

    group: str | None = None
    profile: str | None = None
    online: bool | None = None
    state: str | None = None
    model: str | None = None
    search: str | None = None  # substring of the device id

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in DEVICE_STATES:
            raise HubUsageError(f"state must be one of {', '.join(DEVICE_STATES)}")


@dataclass(frozen=True)
class PageRequest:
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise HubUsageError(f"limit must be between 1 and {MAX_PAGE}")
        if self.offset < 0:
            raise HubUsageError("offset must not be negative")


def current_models(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model, what the device reports running and deploying (hostile input: checked)."""
    out: dict[str, dict[str, Any]] = {}
    models = state.get("models")
    if not isinstance(models, list):
        return out
    for entry in models:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        raw_active = entry.get("active")
        raw_deployment = entry.get("deployment")
        active: Mapping[str, Any] = raw_active if isinstance(raw_active, Mapping) else {}
        deployment: Mapping[str, Any] = (
            raw_deployment if isinstance(raw_deployment, Mapping) else {}
        )
        version = active.get("version")
        reason = deployment.get("reason")
        out[entry["name"]] = {
            "version": version
            if isinstance(version, int) and not isinstance(version, bool)
            else None,
            "deployment": deployment.get("state")
            if isinstance(deployment.get("state"), str)
            else None,
            "reason": reason if isinstance(reason, str) else None,
        }
    return out


def refusal(state: Mapping[str, Any]) -> str | None:
    """The reason the device refused the hub's directive, from its last state report."""
    error = state.get("directive_error")
    return error[:1024] if isinstance(error, str) and error else None


def device_state(
    current: Mapping[str, Mapping[str, Any]],
    desired: Mapping[str, DesiredAssignment],
    refused: str | None,
) -> str:
    """One word for the device: refusing, updating, in_sync or unassigned."""
    if refused:
        return "refusing"
    if not desired:
        return "unassigned"
    for model, assignment in desired.items():
        if current.get(model, {}).get("version") != assignment.version:
            return "updating"
    return "in_sync"


def device_summary(
    device: DeviceRecord,
    desired: Mapping[str, DesiredAssignment],
    directive: DirectiveHead | None,
) -> dict[str, Any]:
    """The row of a device listing (no password hash, no full state document)."""
    current = current_models(device.state)
    refused = refusal(device.state)
    reported_seq = device.state.get("directive_seq")
    if isinstance(reported_seq, bool) or not isinstance(reported_seq, int):
        reported_seq = None
    return {
        "device": device.device_id,
        "profile": device.profile,
        "group": device.group,
        "tags": dict(device.tags),
        "online": device.online,
        "last_seen": device.last_seen,
        "state": device_state(current, desired, refused),
        "refusal": refused,
        "revoked": is_revoked(device),
        "models": current,
        "desired": {m: a.version for m, a in sorted(desired.items())},
        "directive": {
            "latest_seq": None if directive is None else directive.seq,
            "published_at": None if directive is None else directive.published_at,
            "device_seq": reported_seq,
            "behind": directive is not None
            and (reported_seq is None or reported_seq < directive.seq),
        },
    }


def matches(row: Mapping[str, Any], f: DeviceFilter) -> bool:
    if f.group is not None and (row["group"] or "") != f.group:
        return False
    if f.profile is not None and row["profile"] != f.profile:
        return False
    if f.online is not None and row["online"] != f.online:
        return False
    if f.state is not None and row["state"] != f.state:
        return False
    if f.model is not None and f.model not in row["models"] and f.model not in row["desired"]:
        return False
    return not (f.search and f.search.lower() not in row["device"].lower())


def page(rows: Sequence[dict[str, Any]], request: PageRequest) -> dict[str, Any]:
    return {
        "items": list(rows[request.offset : request.offset + request.limit]),
        "total": len(rows),
        "limit": request.limit,
        "offset": request.offset,
    }


def group_summaries(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per group: devices, online, states, and how many devices run each model version."""
    return tally_summaries((row, 1) for row in rows)


def tally_summaries(tallies: Iterable[tuple[Mapping[str, Any], int]]) -> list[dict[str, Any]]:
    """:func:`group_summaries` over (row, number of devices with that row) pairs."""
    groups: dict[str, dict[str, Any]] = {}
    for row, n in tallies:
        name = row["group"] or ""
        g = groups.setdefault(
            name, {"group": name or None, "devices": 0, "online": 0, "states": {}, "versions": {}}
        )
        g["devices"] += n
        g["online"] += n * int(row["online"])
        g["states"][row["state"]] = g["states"].get(row["state"], 0) + n
        for model, m in row["models"].items():
            key = f"{model}:{m['version']}" if m["version"] is not None else f"{model}:-"
            g["versions"][key] = g["versions"].get(key, 0) + n
    return [groups[k] for k in sorted(groups)]


def tally_row(group: str | None, online: bool, state: Mapping[str, Any]) -> dict[str, Any]:
    """The fields :func:`tally_summaries` reads, for a device without assignments."""
    current = current_models(state)
    return {
        "group": group,
        "online": online,
        "state": device_state(current, {}, refusal(state)),
        "models": current,
    }


#: A password hash no password matches (mosquitto's hashes start with ``$``): the device's
#: broker account is closed, and the broker files leave it out.
REVOKED_HASH = "!revoked"


def is_revoked(device: DeviceRecord) -> bool:
    return device.password_hash.startswith("!")

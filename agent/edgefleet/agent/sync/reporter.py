"""What the device tells the hub: status (online/offline), state, and events.

- Status is retained; the MQTT last will publishes ``Status(online=False)`` retained
  when the device vanishes, and a clean stop publishes it itself (a clean DISCONNECT
  does not fire the will).
- State is retained and rebuilt from the files every tick by :func:`build_state`
  (pure); :class:`StateReporter` publishes it when it differs from the last one
  published (the ``at`` field aside) and again after every connect, because a broker
  restarted without persistence has forgotten retained messages.
- Events (a refused assignment, a refused directive, a finished download) go into
  the telemetry buffer as ``event`` records, so they survive restarts and reach the
  hub at least once through the uploader, like the deployment driver's own events.

Deployment info per model, first match wins (:data:`_DEPLOYMENT_SOURCES`): the
deployment the driver is running; the sync's own download; the sync's newest ledger
entry that is with the driver (``queued``), waiting for disk space
(``failed_disk_full``), failed or refused; the driver's last outcome for the model.
Phase names are the shared vocabulary of
:mod:`edgefleet.core.protocol.deployment_phases`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from edgefleet.agent.deploy.not_served import reason_without_active
from edgefleet.agent.sync.deployer import Progress
from edgefleet.agent.sync.reconcile import (
    DOWNLOADING,
    FAILED,
    HANDED,
    REFUSED,
    WAITING,
    InstalledModel,
    LedgerEntry,
)
from edgefleet.core.mqtt import MqttTransport, Will
from edgefleet.core.protocol import (
    DeploymentInfo,
    DeviceState,
    ModelState,
    SlotInfo,
    Status,
    Topics,
    encode_json,
)
from edgefleet.core.protocol.deployment_phases import TERMINAL_PHASES, DeploymentPhase

log = logging.getLogger("edgefleet.agent.sync")


class EventSink(Protocol):
    def append(self, kind: str, body: Mapping[str, Any]) -> int: ...


def last_will(topics: Topics, device_id: str) -> Will:
    return Will(topics.status(device_id), encode_json(Status(online=False)), retain=True)


@dataclass(frozen=True)
class DownloadView:
    bundle_sha256: str
    fraction: float


def _slot(sha: str | None, version: int | None) -> SlotInfo | None:
    if sha is None:
        return None
    return SlotInfo(version=version if version is not None else 0, bundle_sha256=sha)


@dataclass(frozen=True)
class _Facts:
    """What the state report knows about one model's deployments."""

    model: str
    progress: Progress | None
    entries: tuple[LedgerEntry, ...]  # this model's ledger entries, oldest first
    download: DownloadView | None
    last: Mapping[str, Any] | None


def _reason(value: object) -> str | None:
    return value[:1024] or None if isinstance(value, str) else None


def _running(f: _Facts) -> DeploymentInfo | None:
    """The deployment the driver is running, when it is this model's."""
    p = f.progress
    if p is None:
        return None
    mine = next((e for e in f.entries if e.request_id == p.request_id), None)
    # A deployment that has not read its manifest yet names no model: the ledger does.
    if (p.model is None and mine is None) or (p.model is not None and p.model != f.model):
        return None
    sha = p.bundle_sha256 or getattr(mine, "bundle_sha256", None)
    version = p.version if p.version is not None else getattr(mine, "version", None)
    if sha is None or version is None:
        return None
    return DeploymentInfo(
        state=p.state,
        version=version,
        bundle_sha256=sha,
        rollout_id=getattr(mine, "rollout_id", None),
        reason=p.reason,
        at=p.at,
    )


def _downloading(f: _Facts) -> DeploymentInfo | None:
    """The sync's own download of a bundle for this model."""
    d = f.download
    if d is None:
        return None
    entry = next(
        (
            e
            for e in reversed(f.entries)
            if e.state == DOWNLOADING and e.bundle_sha256 == d.bundle_sha256
        ),
        None,
    )
    if entry is None:
        return None
    return DeploymentInfo(
        state=DeploymentPhase.DOWNLOADING.value,
        version=entry.version,
        bundle_sha256=entry.bundle_sha256,
        rollout_id=entry.rollout_id,
        at=entry.updated_at,
        progress=round(d.fraction, 4),
    )


# Ledger state -> (the phase reported for it, whether the entry's reason goes along).
# ``failed`` and ``refused`` report the deployment's own terminal phase when known.
_LEDGER_REPORTS: Mapping[str, tuple[DeploymentPhase, bool]] = {
    HANDED: (DeploymentPhase.QUEUED, False),  # with the driver, not started (or not read back)
    WAITING: (DeploymentPhase.FAILED_DISK_FULL, True),  # retried after a backoff
    FAILED: (DeploymentPhase.FAILED, True),
    REFUSED: (DeploymentPhase.REJECTED, True),
}


def _settled_by_sync(f: _Facts) -> DeploymentInfo | None:
    """The newest ledger entry that is queued, waiting for space, failed or refused."""
    entry = next((e for e in reversed(f.entries) if e.state in _LEDGER_REPORTS), None)
    if entry is None:
        return None
    phase, with_reason = _LEDGER_REPORTS[entry.state]
    state = phase.value
    if entry.state in (FAILED, REFUSED) and entry.result:
        state = entry.result
    return DeploymentInfo(
        state=state,
        version=entry.version,
        bundle_sha256=entry.bundle_sha256,
        rollout_id=entry.rollout_id,
        reason=_reason(entry.reason) if with_reason else None,
        at=entry.updated_at,
    )


def _last_outcome(f: _Facts) -> DeploymentInfo | None:
    """The driver's outcome of the last deployment of this model (from ``deploy.json``)."""
    last = f.last
    if last is None:
        return None
    sha, version, state = last.get("bundle_sha256"), last.get("version"), last.get("state")
    if not (isinstance(sha, str) and isinstance(version, int) and isinstance(state, str)):
        return None
    at, rollout_id = last.get("finished_at"), last.get("rollout_id")
    return DeploymentInfo(
        state=state,
        version=version,
        bundle_sha256=sha,
        rollout_id=rollout_id if isinstance(rollout_id, str) else None,
        reason=_reason(last.get("reason")),
        at=float(at) if isinstance(at, int | float) else None,
    )


#: Where a model's deployment info comes from, first match wins (see the module docstring).
_DEPLOYMENT_SOURCES: tuple[Callable[[_Facts], DeploymentInfo | None], ...] = (
    _running,
    _downloading,
    _settled_by_sync,
    _last_outcome,
)


def _deployment(
    model: str,
    progress: Progress | None,
    ledger: Iterable[LedgerEntry],
    download: DownloadView | None,
    last: Mapping[str, Any] | None,
) -> DeploymentInfo | None:
    """The one deployment reported for ``model``: the first source in the table that has one."""
    entries = tuple(sorted((e for e in ledger if e.model == model), key=lambda e: e.updated_at))
    facts = _Facts(model, progress, entries, download, last)
    for source in _DEPLOYMENT_SOURCES:
        info = source(facts)
        if info is not None:
            return info
    return None


def build_state(
    *,
    device_id: str,
    agent_version: str,
    profile: str,
    now: float,
    installed: Mapping[str, InstalledModel],
    progress: Progress | None,
    ledger: Iterable[LedgerEntry],
    download: DownloadView | None,
    last_outcomes: Mapping[str, Mapping[str, Any]],
    directive_models: Iterable[str] = (),
    directive_seq: int | None = None,
    directive_error: str | None = None,
) -> DeviceState:
    """The state report from everything the sync knows (pure)."""
    entries = list(ledger)
    names = set(installed) | set(last_outcomes) | set(directive_models)
    names |= {e.model for e in entries}
    if progress is not None and progress.model is not None:
        names.add(progress.model)
    models = []
    for name in sorted(names):
        current = installed.get(name, InstalledModel())
        try:
            deployment = _deployment(name, progress, entries, download, last_outcomes.get(name))
            if current.active_sha is None and deployment is not None:
                # A first install that did not hold: the hub learns that nothing serves.
                deployment = replace(deployment, reason=reason_without_active(deployment))
            models.append(
                ModelState(
                    name=name,
                    active=_slot(current.active_sha, current.active_version),
                    previous=_slot(current.previous_sha, current.previous_version),
                    deployment=deployment,
                )
            )
        except ValueError as e:  # a name the protocol cannot carry: leave it out, say so
            log.warning("state report leaves out model %r: %s", name, e)
    return DeviceState(
        device=device_id,
        agent_version=agent_version,
        profile=profile,
        at=now,
        models=tuple(models[:64]),
        directive_seq=directive_seq,
        directive_error=None if directive_error is None else directive_error[:1024],
    )


#: Deployment states after which nothing more happens (the hub settles rollouts on these).
TERMINAL_DEPLOYMENT_STATES = frozenset(p.value for p in TERMINAL_PHASES)
# ... and a device stuck for lack of space: the hub must learn that at once too.
_REPORTED_AT_ONCE = TERMINAL_DEPLOYMENT_STATES | {DeploymentPhase.FAILED_DISK_FULL.value}


def _urgent(state: DeviceState) -> tuple[Any, ...]:
    """What the hub must learn at once: slots, finished deployments, a full disk,
    directive refusals.

    Everything else (the directive seq, a deployment in progress, download progress)
    may wait for the next periodic report.
    """
    models = []
    for m in state.models:
        d = m.deployment
        finished = None
        if d is not None and d.state in _REPORTED_AT_ONCE:
            finished = (d.state, d.version, d.bundle_sha256, d.reason)
        if m.active is not None or m.previous is not None or finished is not None:
            models.append((m.name, m.active, m.previous, finished))
    return (tuple(models), state.directive_error)


class StateReporter:
    """Publishes status and state (retained) and remembers what it last sent.

    A state whose slots, finished deployments or directive refusal differ from the last
    one published goes out at once; other changes (a deployment in progress, download
    progress, the directive seq) at most every ``progress_interval_s``: thousands of
    devices working through a rollout must not flood the hub with retained states that
    only say "still busy".
    """

    def __init__(
        self,
        transport: MqttTransport,
        topics: Topics,
        device_id: str,
        *,
        progress_interval_s: float = 5.0,
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.device_id = device_id
        self.progress_interval_s = progress_interval_s
        self._last_urgent: tuple[Any, ...] | None = None
        self._last_full: dict[str, Any] | None = None
        self._last_at = float("-inf")
        self.published = 0

    def online(self, now: float, agent_version: str) -> None:
        status = Status(online=True, at=now, agent_version=agent_version)
        self.transport.publish(self.topics.status(self.device_id), encode_json(status), True)

    def offline(self, now: float) -> None:
        status = Status(online=False, at=now)
        self.transport.publish(self.topics.status(self.device_id), encode_json(status), True)

    def forget(self) -> None:
        """Publish the next state whatever it is (after a reconnect)."""
        self._last_urgent = None
        self._last_full = None
        self._last_at = float("-inf")

    def report(self, state: DeviceState) -> bool:
        """Publish ``state`` if it says something new; True when it was published."""
        full = state.to_dict()
        full.pop("at", None)
        if full == self._last_full:
            return False
        urgent = _urgent(state)
        if urgent == self._last_urgent and state.at - self._last_at < self.progress_interval_s:
            return False
        self.transport.publish(self.topics.state(self.device_id), encode_json(state), True)
        self._last_urgent, self._last_full, self._last_at = urgent, full, state.at
        self.published += 1
        return True


def event_body(
    model: str,
    state: str,
    now: float,
    *,
    version: int | None = None,
    reason: str | None = None,
    rollout_id: str | None = None,
    bundle_sha256: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A telemetry ``event`` body (the DeploymentEvent shape, plus ``source``)."""
    body: dict[str, Any] = {
        "model": model,
        "version": version,
        "state": state,
        "reason": None if reason is None else reason[:4096],
        "at": now,
        "source": "sync",
    }
    if rollout_id is not None:
        body["rollout_id"] = rollout_id
    if bundle_sha256 is not None:
        body["bundle_sha256"] = bundle_sha256
    body.update(extra or {})
    return body


def record_event(sink: EventSink | None, body: Mapping[str, Any]) -> None:
    """Store an event for the uploader; a failing buffer is logged, never raised."""
    if sink is None:
        return
    try:
        sink.append("event", body)
    except Exception:
        log.exception("could not record sync event %s", body.get("state"))

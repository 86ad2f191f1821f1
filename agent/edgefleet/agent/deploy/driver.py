"""The deployment driver: runs the machine of :mod:`machine` with real side effects.

Shape (mender's client): for each state one step function does that state's
side effects and ends by firing one event; :meth:`DeploymentDriver._fire`
asks the transition table for the next state and persists it to
``deploy.json`` BEFORE the next step starts. A crash therefore always leaves
a persisted state whose step can be redone from its start; every step is
idempotent. :meth:`DeploymentDriver.resume` maps the persisted state to the
recovery step (``machine.recovery_for``), counting resumes after unclean stops
so a step that keeps killing the agent is eventually given up.

Steps and their side effects:

===============  ==============================================================
downloading      fetch the bundle into ``downloads/ID.efb`` (rename from the
                 inbox, or copy a local file); refuse a declared size over budget
verifying        verify signatures, hashes and budget while extracting into
                 ``staging/ID`` (in this process, or in a child process when
                 the driver has a ``checker``: the daemon's); check profile,
                 arch, onnxruntime, version
staged           move ``staging/ID`` to ``bundles/SHA`` (content-addressed)
activating       load the new version (with the manifest ``verifying`` accepted;
                 verified again only after a restart), switch the slot pointers
                 (active=new, previous=old active), serve it
probation        smoke set, then live requests (``evaluate_probation``)
rolling_back     switch the pointers back to ``restore_slots``, serve that
terminal         delete downloads, staging, inbox copies and unreferenced bundles
===============  ==============================================================

The first three (no pointer moves yet) live in :mod:`edgefleet.agent.deploy.intake`,
which reports how each ended; the live phase of probation is counted and judged by
:class:`edgefleet.agent.deploy.probation.ProbationWatch`. This module persists every
transition, activates, serves, rolls back and cleans up.

Inference never stops: the old version serves until the new one is loaded,
and a failed new version is replaced by the old one. Every persisted state
becomes a telemetry event.

A test hook pauses the process (SIGSTOP) right after a state is persisted
(``EDGEFLEET_TEST_PAUSE_AT=verifying``) or right after that state's side
effects (``verifying+``), so crash tests can kill the real process there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.config import ProbationSettings
from edgefleet.agent.deploy.atomic_files import remove_path
from edgefleet.agent.deploy.health import Verdict, run_smoke
from edgefleet.agent.deploy.hooks import (
    PAUSE_ENV,
    EventSink,
    Loader,
    ProbationTap,
    ServingPort,
    describe_error,
    event_body,
    no_pause,
    pause_hook_from_env,
)
from edgefleet.agent.deploy.inbox import discard, new_request_id
from edgefleet.agent.deploy.intake import BundleChecker, BundleIntake, StepOutcome
from edgefleet.agent.deploy.layout import StateLayout
from edgefleet.agent.deploy.machine import (
    TERMINAL_STATES,
    Event,
    Resume,
    State,
    handle,
    recovery_for,
)
from edgefleet.agent.deploy.probation import ProbationWatch
from edgefleet.agent.deploy.record import DeploymentRecord, DeployState, DeployStateFile
from edgefleet.agent.deploy.slots import SlotPointers, SlotTable
from edgefleet.agent.deploy.store import ExtractedBundleStore, sweep_leftovers
from edgefleet.agent.errors import (
    DeploymentError,
    ModelNotFoundError,
)
from edgefleet.core.profiles import DeviceProfile

if TYPE_CHECKING:
    from edgefleet.agent.model.served import ServedModel
    from edgefleet.core.trust import TrustStore

log = logging.getLogger("edgefleet.agent.deploy")


class DeploymentDriver:
    """Drives installs and rollbacks for one state directory (the lock holder only)."""

    def __init__(
        self,
        layout: StateLayout,
        *,
        profile: DeviceProfile,
        trust: TrustStore | None = None,
        settings: ProbationSettings,
        loader: Loader,
        onnxruntime_version: str,
        serving: ServingPort | None = None,
        tap: ProbationTap | None = None,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        pause: Callable[[str], None] = no_pause,
        checker: BundleChecker | None = None,
    ) -> None:
        if trust is None and checker is None:
            raise ValueError("DeploymentDriver needs a trust store or a bundle checker")
        layout.ensure()
        self.layout = layout
        self.profile = profile
        self.trust = trust
        self.checker = checker
        self.settings = settings
        self.loader = loader
        self.onnxruntime_version = onnxruntime_version
        self.serving = serving
        self.tap = tap
        self.events = events
        self.clock = clock
        self.pause = pause
        self.slots = SlotTable(layout)
        self.store = ExtractedBundleStore(layout)
        self.intake = BundleIntake(
            layout,
            profile=profile,
            store=self.store,
            slots=self.slots,
            onnxruntime_version=onnxruntime_version,
            trust=trust,
            checker=checker,
        )
        self._file = DeployStateFile(layout.deploy_file)
        self._state = self._file.load()
        self._loaded: dict[str, ServedModel] = {}  # what this process activated, by model
        self.probation = ProbationWatch(settings, tap)

    # --- state ------------------------------------------------------------------
    @property
    def state(self) -> DeployState:
        return self._state

    @property
    def current(self) -> DeploymentRecord | None:
        return self._state.current

    @property
    def live(self) -> bool:
        """Live probation needs traffic: only a serving daemon can finish it."""
        return self.serving is not None and self.tap is not None

    def _save(self, state: DeployState) -> None:
        self._file.save(state)
        self._state = state

    def _emit(self, record: DeploymentRecord) -> None:
        if self.events is None:
            return
        try:
            self.events(event_body(record))
        except Exception:  # telemetry trouble never blocks a deployment
            log.exception("could not record deployment event")

    def _fire(self, event: Event, reason: str | None = None, **changes: Any) -> DeploymentRecord:
        record = self._state.current
        if record is None:
            raise DeploymentError(f"deployment event {event.value} with nothing in progress")
        nxt = handle(record.state, event)
        if (
            nxt is State.ROLLING_BACK
            and "restore_slots" not in changes
            and record.restore_slots is None
        ):
            changes["restore_slots"] = record.from_slots or SlotPointers()
        moved = record.moved(nxt, self.clock(), reason, **changes)
        self._save(self._state.with_current(moved))
        log.info(
            "deployment %s: %s -> %s%s",
            moved.id,
            record.state.value,
            nxt.value,
            f" ({reason})" if reason else "",
        )
        self._emit(moved)
        self.pause(nxt.value)
        return moved

    # --- starting work --------------------------------------------------------
    def _require_idle(self) -> None:
        current = self._state.current
        if current is not None:
            raise DeploymentError(
                f"deployment {current.id} is in progress ({current.state.value}); try again later"
            )

    def submit_install(
        self,
        source: Path,
        *,
        size: int | None = None,
        source_is_inbox: bool = False,
        allow_downgrade: bool = False,
        rollout_id: str | None = None,
        deployment_id: str | None = None,
    ) -> DeploymentRecord:
        self._require_idle()
        now = self.clock()
        state = handle(State.IDLE, Event.INSTALL_REQUESTED)
        record = DeploymentRecord(
            id=deployment_id or new_request_id(now),
            kind="install",
            state=state,
            started_at=now,
            updated_at=now,
            source=str(source),
            source_is_inbox=source_is_inbox,
            size=size,
            allow_downgrade=allow_downgrade,
            rollout_id=rollout_id,
            transitions=({"state": state.value, "at": now},),
        )
        self._save(self._state.with_current(record))
        log.info("deployment %s: install of %s requested", record.id, source)
        self._emit(record)
        self.pause(state.value)
        return record

    def submit_rollback(
        self, model: str, *, deployment_id: str | None = None, rollout_id: str | None = None
    ) -> DeploymentRecord:
        self._require_idle()
        pointers = self.slots.get(model)
        if pointers.active is None:
            raise ModelNotFoundError(f"model {model!r} is not installed")
        if pointers.previous is None or not self.store.has(pointers.previous):
            raise DeploymentError(f"model {model!r} has no previous version to go back to")
        now = self.clock()
        state = handle(State.IDLE, Event.ROLLBACK_REQUESTED)
        previous = pointers.previous
        record = DeploymentRecord(
            id=deployment_id or new_request_id(now),
            kind="rollback",
            state=state,
            started_at=now,
            updated_at=now,
            model=model,
            version=self.store.version_of(previous),
            bundle_sha256=previous,
            from_slots=pointers,
            restore_slots=SlotPointers(previous, None),
            rollout_id=rollout_id,
            reason=f"rollback of {model} requested",
            transitions=({"state": state.value, "at": now},),
        )
        self._save(self._state.with_current(record))
        log.info("deployment %s: rollback of %s requested", record.id, model)
        self._emit(record)
        self.pause(state.value)
        return record

    def refuse(
        self,
        deployment_id: str,
        kind: str,
        reason: str,
        model: str | None = None,
        *,
        rollout_id: str | None = None,
    ) -> None:
        """Remember a request that could not even start (shown by ``status``)."""
        now = self.clock()
        record = DeploymentRecord(
            id=deployment_id,
            kind=kind,
            state=State.FAILED,
            started_at=now,
            updated_at=now,
            model=model,
            rollout_id=rollout_id,
            reason=reason,
            transitions=({"state": State.FAILED.value, "at": now, "reason": reason},),
        )
        self._emit(record)
        self._save(self._state.finished(record))

    # --- recovery --------------------------------------------------------------
    def resume(self) -> DeploymentRecord | None:
        """After a start: sweep crash leftovers and pick up the persisted deployment."""
        record = self._state.current
        if record is None:
            self._sweep(None)
            return None
        attempts = record.attempts if record.clean_stop else record.attempts + 1
        record = replace(record, attempts=attempts, clean_stop=False, probation_started_at=None)
        self._save(self._state.with_current(record))
        decision = recovery_for(record.state, attempts, self.settings.max_attempts)
        log.warning(
            "resuming deployment %s in state %s (restart %d): %s",
            record.id,
            record.state.value,
            attempts,
            decision.reason,
        )
        self._sweep(record)
        if decision.event is not None:
            self._fire(decision.event, reason=decision.reason)
        elif decision.action is Resume.NOTHING:
            pass
        return self._state.current

    def suspend(self) -> None:
        """A graceful stop: the next start resumes without counting a crash."""
        record = self._state.current
        if record is not None and not record.terminal:
            self._save(self._state.with_current(replace(record, clean_stop=True)))
        if (
            record is not None
            and record.model is not None
            and record.version is not None
            and self.tap is not None
        ):
            self.tap.stop_probation(record.model, record.version)

    def _sweep(self, record: DeploymentRecord | None) -> None:
        removed = sweep_leftovers(
            self.layout,
            None if record is None else record.id,
            None if record is None else record.bundle_sha256,
        )
        if removed:
            log.info("removed %d crash leftovers", removed)

    # --- running ---------------------------------------------------------------
    def run(self) -> State:
        """Step until the deployment ends or waits for probation traffic or time."""
        while (record := self._state.current) is not None:
            self._step(record)
            if self._state.current is record:
                break  # waiting: nothing changed
        current = self._state.current
        return State.IDLE if current is None else current.state

    def _step(self, record: DeploymentRecord) -> None:
        if record.state in TERMINAL_STATES:
            self._finish(record)
            return
        intake: dict[State, Callable[[DeploymentRecord], StepOutcome]] = {
            State.DOWNLOADING: self.intake.download,
            State.VERIFYING: self.intake.verify,
            State.STAGED: self.intake.stage,
        }
        take_in = intake.get(record.state)
        if take_in is not None:
            outcome = take_in(record)
            if outcome.pause_point is not None:
                self.pause(outcome.pause_point)
            self._fire(outcome.event, reason=outcome.reason, **outcome.changes)
            return
        steps: dict[State, Callable[[DeploymentRecord], None]] = {
            State.ACTIVATING: self._activate,
            State.PROBATION: self._probation,
            State.ROLLING_BACK: self._roll_back,
        }
        steps[record.state](record)

    def _activate(self, record: DeploymentRecord) -> None:
        assert record.model is not None and record.bundle_sha256 is not None
        before = record.from_slots or SlotPointers()
        try:
            loaded = self._load_new(record.bundle_sha256)
        except Exception as e:  # any load failure means: keep the old version
            self._fire(Event.ACTIVATION_FAILED, reason=f"cannot load the new version: {e}")
            return
        self.slots.switch(record.model, SlotPointers(record.bundle_sha256, before.active))
        self.pause("activating+")
        if self.live:
            self.probation.count_from_activation(record.model, record.version or 0)
        self._serve(record.model, loaded)
        self.probation.running = False
        self._fire(Event.ACTIVATED, probation_started_at=None)

    def _load_new(self, sha256: str) -> Any:
        """Load the version being installed: with the manifest its verifying step accepted
        when this process ran that step (the bundle is verified once per install), else
        through the loader's full checks (after a restart)."""
        manifest = self.intake.take_verified(sha256)
        load_verified = getattr(self.loader, "load_verified", None)
        if manifest is not None and load_verified is not None:
            return load_verified(sha256, manifest)
        return self.loader(sha256)

    def _probation(self, record: DeploymentRecord) -> None:
        assert record.model is not None and record.bundle_sha256 is not None
        model = record.model
        version = record.version or 0
        watch = self.probation
        if not watch.running:
            loaded = self._loaded.get(record.model)
            if loaded is None and self.serving is not None and hasattr(self.serving, "find"):
                loaded = self.serving.find(record.model)  # loaded at start-up already
            if loaded is None or getattr(loaded, "bundle_sha256", None) != record.bundle_sha256:
                try:
                    loaded = self.loader(record.bundle_sha256)
                except Exception as e:
                    watch.stop_counting(model, version)
                    self._fire(Event.PROBATION_FAILED, reason=f"cannot load the new version: {e}")
                    return
                self._serve(record.model, loaded)
            if self.settings.smoke:
                smoke_path = getattr(getattr(loaded, "manifest", None), "smoke_path", "smoke.npz")
                failure = run_smoke(
                    loaded, self.layout.bundle_dir(record.bundle_sha256), smoke_path
                )
                if failure is not None:
                    watch.stop_counting(model, version)
                    self._fire(Event.PROBATION_FAILED, reason=failure)
                    return
            self.pause("probation+")
            if not self.live:
                # Without a serving daemon there is no traffic: pass now only when
                # no live phase is configured, else the daemon finishes probation.
                if watch.without_traffic(self.clock()).verdict is Verdict.PASS:
                    self._fire(
                        Event.PROBATION_PASSED,
                        reason="smoke set passed; no live probation configured",
                    )
                return
            watch.start_live(model, version)
            record = replace(record, probation_started_at=self.clock())
            self._save(self._state.with_current(record))
        started = record.probation_started_at or self.clock()
        report = watch.judge(model, version, started, self.clock())
        if report.verdict is Verdict.PASS:
            self._fire(Event.PROBATION_PASSED, reason=report.reason)
        elif report.verdict is Verdict.FAIL:
            self._fire(Event.PROBATION_FAILED, reason=report.reason)

    def _roll_back(self, record: DeploymentRecord) -> None:
        assert record.model is not None
        restore = record.restore_slots or SlotPointers()
        self.slots.switch(record.model, restore)
        self.pause("rolling_back+")
        if self.serving is not None:
            if restore.active is None:
                self._serve(record.model, None)
            else:
                try:
                    self._serve(record.model, self.loader(restore.active))
                except Exception as e:
                    # Double fault: the version we go back to does not load either.
                    # Keep serving whatever is loaded rather than nothing.
                    log.error("cannot load %s after rollback: %s", record.model, e)
        self._fire(Event.RESTORED)

    def _finish(self, record: DeploymentRecord) -> None:
        remove_path(self.layout.download_path(record.id))
        self.store.clear_staging(record.id)
        discard(self.layout, record.id)
        self._save(self._state.finished(record))
        self.store.collect(self.slots.referenced())
        log.info(
            "deployment %s finished: %s%s",
            record.id,
            record.state.value,
            f" ({record.reason})" if record.reason else "",
        )

    def _serve(self, model: str, loaded: ServedModel | None) -> None:
        if loaded is None:
            self._loaded.pop(model, None)
        else:
            self._loaded[model] = loaded
        if self.serving is not None:
            self.serving.swap(model, loaded)


__all__ = [
    "PAUSE_ENV",
    "BundleChecker",
    "DeploymentDriver",
    "EventSink",
    "Loader",
    "ProbationTap",
    "ServingPort",
    "describe_error",
    "event_body",
    "no_pause",
    "pause_hook_from_env",
]

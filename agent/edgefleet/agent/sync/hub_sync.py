"""``HubSync``: the agent's side of the hub protocol, on one worker thread.

Threads: the MQTT client's network thread only decodes nothing and enqueues every
inbound message and connection change; one worker thread does everything else in
order — directives, chunks, acks, and a tick every ``tick_s`` that looks at the
deployment driver, the download, the telemetry buffer and the state report. The
serving path shares nothing with it but the telemetry buffer (which has its own
lock), so inference never waits on the hub, the broker or a download.

Order of work for a directive (DESIGN.md §4, §5):

1. :func:`~edgefleet.agent.sync.directives.judge` accepts, ignores (a redelivery of
   the retained directive) or rejects it; a rejection is reported (event + state)
   and changes nothing else.
2. An accepted directive is persisted, then :func:`~edgefleet.agent.sync.reconcile.next_action`
   picks one step: refuse, download, hand the finished file to the driver, or a
   rollback to the previous slot.
3. The download pulls windows of chunks (:mod:`edgefleet.agent.sync.download`),
   resumes after reconnects and restarts, and checks the whole file's size and
   sha256 against the directive before anything is handed over.
4. The driver's outcome (read from ``deploy.json``) settles the ledger entry; the
   driver's own events and the sync's events reach the hub through the telemetry
   uploader.

Every failure inside the worker is logged and the worker carries on: the sync never
takes the agent down.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgefleet.agent.deploy.atomic_files import atomic_write_json, remove_path
from edgefleet.agent.errors import AgentError
from edgefleet.agent.sync.deployer import Deployer
from edgefleet.agent.sync.directives import AcceptedDirective, DirectiveFile, judge
from edgefleet.agent.sync.download import BundleDownload, DownloadMismatchError
from edgefleet.agent.sync.reconcile import (
    DONE,
    DOWNLOADING,
    FAILED,
    HANDED,
    REFUSED,
    Action,
    Key,
    LedgerEntry,
    Step,
    key_of,
    next_action,
    prune,
    wanted,
)
from edgefleet.agent.sync.reporter import (
    DownloadView,
    EventSink,
    StateReporter,
    build_state,
    event_body,
    record_event,
)
from edgefleet.agent.sync.settings import SyncSettings
from edgefleet.agent.sync.uploader import LeasingBuffer, TelemetryUploader
from edgefleet.core.directive import Assignment
from edgefleet.core.errors import ProtocolError
from edgefleet.core.mqtt import InboundMessage, MqttTransport
from edgefleet.core.protocol import TopicKind, Topics, decode_ack, decode_chunk, encode_json
from edgefleet.core.trust import TrustStore

log = logging.getLogger("edgefleet.agent.sync")

PAUSE_ENV = "EDGEFLEET_TEST_SYNC_PAUSE_AT"
_STOP = object()


class SyncBuffer(LeasingBuffer, EventSink, Protocol):
    """The telemetry buffer as the sync uses it (``TelemetryBuffer`` fits)."""


def agent_version() -> str:
    try:
        return importlib.metadata.version("edgefleet")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def no_pause(point: str) -> None:
    return None


def pause_hook_from_env() -> Callable[[str], None]:
    """Crash-test hook: ``EDGEFLEET_TEST_SYNC_PAUSE_AT=chunks:N`` SIGSTOPs the process
    right after the N-th new chunk of a download reached the part file."""
    target = os.environ.get(PAUSE_ENV)
    if not target:
        return no_pause

    def pause(point: str) -> None:
        if point == target:
            sys.stderr.write(f"edgefleet: test pause at {point}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    return pause


@dataclass(frozen=True)
class _Inbound:
    kind: str  # a TopicKind value, "connected" or "disconnected"
    payload: bytes = b""
    session_present: bool = False


class HubSync:
    """Directives in, bundles down, status/state/events/telemetry up."""

    def __init__(
        self,
        settings: SyncSettings,
        transport: MqttTransport,
        trust: TrustStore,
        deployer: Deployer,
        buffer: SyncBuffer | None,
        sync_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        pause: Callable[[str], None] = no_pause,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.trust = trust
        self.deployer = deployer
        self.buffer = buffer
        self.sync_dir = Path(sync_dir)
        self.clock = clock
        self.pause = pause
        self.topics = Topics(settings.topic_root)
        self.device_id = settings.device_id
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self._directive_file = DirectiveFile(self.sync_dir / "directive.json")
        self._ledger_path = self.sync_dir / "ledger.json"
        self.accepted: AcceptedDirective | None = self._directive_file.load()
        self.ledger: dict[Key, LedgerEntry] = self._load_ledger()
        self.download: BundleDownload | None = None
        self.directive_error: str | None = None
        self._rejected_digests: set[str] = set()
        self._expiry_reported: int | None = None
        self.counts: Counter[str] = Counter()
        self.reporter = StateReporter(transport, self.topics, self.device_id)
        self.uploader: TelemetryUploader | None = (
            None
            if buffer is None
            else TelemetryUploader(
                buffer,
                transport,
                self.topics,
                self.device_id,
                ack_timeout_s=settings.ack_timeout_s,
                max_bytes=settings.telemetry_batch_bytes,
            )
        )
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._new_chunks = 0
        self._started = False
        self._link_up = False  # set by the worker when it handled the connect
        self._quiet_until: float | None = None  # no chunk requests before this
        self.idle = threading.Event()  # set while nothing is left to do (tests, bench)

    # --- lifecycle --------------------------------------------------------------
    def start(self, *, threaded: bool = True) -> None:
        """Subscribe, connect and start the worker; returns at once (never blocks on the hub).

        ``threaded=False`` starts no worker: the caller runs :meth:`drain` and
        :meth:`tick` itself (deterministic unit tests, many devices in one process).
        """
        if self._thread is not None or self._started:
            raise AgentError("hub sync already started")
        self._started = True
        for kind in (TopicKind.DESIRED, TopicKind.CHUNK, TopicKind.ACK):
            topic = self.topics.device(self.device_id, kind)
            self.transport.subscribe(topic, self._enqueue_for(kind.value))
        self.transport.on_connect(
            lambda present: self._queue.put(_Inbound("connected", session_present=present))
        )
        self.transport.on_disconnect(lambda: self._queue.put(_Inbound("disconnected")))
        if threaded:
            self._thread = threading.Thread(target=self._run, name="edgefleet-sync", daemon=True)
            self._thread.start()
        self.transport.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the worker, say offline (a clean disconnect fires no will), disconnect."""
        self._stopping.set()
        self._queue.put(_STOP)
        worker_gone = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            worker_gone = not self._thread.is_alive()
            self._thread = None
        download = self.download
        if download is not None and worker_gone and not download.finished:
            # Chunks received since the last persist would otherwise be fetched again.
            try:
                download.persist()
            except OSError as e:
                log.warning("download progress not saved at stop: %s", e)
            download.close()
        try:
            if self.transport.connected:
                self.reporter.offline(self.clock())
                self.transport.flush(min(2.0, timeout_s))
        finally:
            self.transport.stop()

    def _enqueue_for(self, kind: str) -> Callable[[InboundMessage], None]:
        def handler(message: InboundMessage) -> None:
            self._queue.put(_Inbound(kind, message.payload))

        return handler

    # --- worker -------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                self._guard(self._handle, item)
            if time.monotonic() >= next_tick:
                self._guard(self.tick)
                next_tick = time.monotonic() + self.settings.tick_s

    def drain(self, max_items: int = 100_000) -> int:
        """Handle everything queued now, on the calling thread; returns how many."""
        handled = 0
        while handled < max_items:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                break
            self._guard(self._handle, item)
            handled += 1
        return handled

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.counts["worker_errors"] += 1
            log.exception("hub sync: %s failed; carrying on", getattr(fn, "__name__", fn))

    def _handle(self, item: _Inbound) -> None:
        now = self.clock()
        if item.kind == TopicKind.DESIRED:
            self.on_desired(item.payload, now)
        elif item.kind == TopicKind.CHUNK:
            self.on_chunk(item.payload, now)
        elif item.kind == TopicKind.ACK:
            self.on_ack(item.payload, now)
        elif item.kind == "connected":
            self.on_connected(item.session_present, now)
        elif item.kind == "disconnected":
            self.on_disconnected()

    # --- inbound ------------------------------------------------------------------
    def on_connected(self, session_present: bool, now: float) -> None:
        self._link_up = True
        self.reporter.online(now, self.settings.agent_version)
        self.reporter.forget()
        if session_present:
            # The broker kept our session: chunks the hub sent while we were away (or
            # dead) are on their way. Take those first and ask for more only once they
            # stop coming, or they would be fetched twice.
            self._quiet_until = now + self.settings.resume_quiet_s
        elif self.download is not None:
            # Requests sent before the broker lost our session will never be answered.
            self.download.forget_outstanding()
        if self.uploader is not None:
            self.uploader.on_disconnect()
        self.tick(now)

    def on_disconnected(self) -> None:
        self._link_up = False
        if self.uploader is not None:
            self.uploader.on_disconnect()

    def on_desired(self, payload: bytes, now: float) -> None:
        verdict = judge(payload, self.trust, self.device_id, self.accepted, now)
        if verdict.kind == "accepted":
            assert verdict.accepted is not None
            self._directive_file.save(verdict.accepted)  # before acting on it
            self.accepted = verdict.accepted
            self.directive_error = None
            self._expiry_reported = None
            keep = [key_of(a) for a in wanted(self.accepted.directive)]
            pruned = prune(self.ledger, keep)
            if pruned != self.ledger:
                self.ledger = pruned
                self._save_ledger()
            log.info(
                "directive seq %d accepted: %s",
                self.accepted.seq,
                ", ".join(f"{a.model}:{a.version}" for a in self.accepted.directive.assignments)
                or "no assignments",
            )
            self._advance(now)  # the next tick reports the new state
        elif verdict.kind == "rejected":
            self.counts["directives_rejected"] += 1
            self.directive_error = verdict.reason
            if verdict.digest not in self._rejected_digests:
                self._rejected_digests.add(verdict.digest or "")
                log.warning(
                    "directive rejected (still serving what is installed): %s", verdict.reason
                )
                record_event(
                    self.buffer, event_body("", "directive_rejected", now, reason=verdict.reason)
                )
            self._report(now)

    def on_chunk(self, payload: bytes, now: float) -> None:
        download = self.download
        try:
            frame = decode_chunk(payload)
            if download is None or download.finished:
                self.counts["chunks_unexpected"] += 1
                return
            new = download.accept(frame)
        except ProtocolError as e:
            self.counts["chunks_malformed"] += 1
            log.info("hub sync: %s", e)
            return
        if self._quiet_until is not None:
            self._quiet_until = max(self._quiet_until, now + self.settings.resume_quiet_s)
        if not new:
            return
        self._new_chunks += 1
        self.pause(f"chunks:{self._new_chunks}")
        if download.complete:
            self._finish_download(download, now)
        else:
            self._request_chunks(now)

    def on_ack(self, payload: bytes, now: float) -> None:
        try:
            ack = decode_ack(payload)
        except ProtocolError as e:
            self.counts["acks_malformed"] += 1
            log.info("hub sync: %s", e)
            return
        if self.uploader is not None:
            self.uploader.on_ack(ack, now)

    # --- periodic -------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self._settle_handed(now)
        self._advance(now)
        if self.download is not None and not self.download.finished:
            self._request_chunks(now)
        if self.uploader is not None:
            self.uploader.pump(now)
        self._report(now)

    def _settle_handed(self, now: float) -> None:
        changed = False
        for key, entry in list(self.ledger.items()):
            if entry.state != HANDED or entry.request_id is None:
                continue
            outcome = self.deployer.outcome(entry.request_id)
            if outcome is None:
                continue
            state = DONE if outcome.succeeded else FAILED
            self.ledger[key] = entry.moved(state, now, result=outcome.state, reason=outcome.reason)
            changed = True
            log.info(
                "deployment %s of %s:%d ended %s",
                entry.request_id,
                entry.model,
                entry.version,
                outcome.state,
            )
        if changed:
            self._save_ledger()

    def _directive_in_force(self, now: float) -> AcceptedDirective | None:
        accepted = self.accepted
        if accepted is None:
            return None
        if accepted.expired(now):
            # Freeze protection: an expired directive starts nothing new; say so.
            self.directive_error = (
                f"directive seq {accepted.seq} expired at {accepted.directive.expires_at:.0f}; "
                "waiting for a fresh one"
            )
            if self._expiry_reported != accepted.seq:
                self._expiry_reported = accepted.seq
                log.warning("%s", self.directive_error)
                record_event(
                    self.buffer,
                    event_body("", "directive_expired", now, reason=self.directive_error),
                )
            return None
        return accepted

    def _advance(self, now: float) -> None:
        """Take steps toward the directive until one has to wait."""
        accepted = self._directive_in_force(now)
        directive = None if accepted is None else accepted.directive
        for _ in range(16):  # each REFUSE settles one assignment; bound the loop anyway
            downloaded = {self.download.sha} if self.download and self.download.finished else set()
            action = next_action(
                directive,
                self.deployer.installed(),
                self.ledger,
                deployer_idle=self.deployer.idle(),
                downloaded=downloaded,
                max_bundle_bytes=self.settings.max_bundle_bytes,
            )
            self._drop_unwanted_download(action)
            if action is None or action.step is Step.WAIT:
                break
            if not self._perform(action, now):
                break
        if self._busy():
            self.idle.clear()
        else:
            self.idle.set()

    def _busy(self) -> bool:
        if any(e.state in (DOWNLOADING, HANDED) for e in self.ledger.values()):
            return True
        return self.uploader is not None and self.uploader.in_flight is not None

    def _drop_unwanted_download(self, action: Action | None) -> None:
        download = self.download
        if download is None:
            return
        if action is not None and action.assignment.bundle_sha256 == download.sha:
            return
        log.info("dropping the download of %s: no longer wanted", download.sha[:12])
        download.discard()
        self.download = None

    def _perform(self, action: Action, now: float) -> bool:
        """Do one step; True when the next step may be looked at right away."""
        a = action.assignment
        key = key_of(a)
        entry = self.ledger.get(key)
        if action.step is Step.REFUSE:
            self._settle(a, REFUSED, now, result="rejected", reason=action.reason)
            log.warning("assignment %s:%d refused: %s", a.model, a.version, action.reason)
            record_event(self.buffer, self._event(a, "rejected", now, action.reason))
            return True
        if action.step is Step.DOWNLOAD:
            self._start_download(a, entry, now)
            return False
        if action.step is Step.ROLLBACK:
            request_id = self.deployer.submit_rollback(a.model, now=now)
            self._settle(a, HANDED, now, request_id=request_id)
            log.info(
                "%s:%d is the previous slot: rollback requested (%s)",
                a.model,
                a.version,
                request_id,
            )
            return False
        if action.step is Step.INSTALL:
            download = self.download
            assert download is not None and download.finished
            request_id = self.deployer.submit_install(
                download.final_path, allow_downgrade=a.allow_downgrade, now=now
            )
            self._settle(a, HANDED, now, request_id=request_id)
            download.discard()  # the inbox holds its own copy now
            self.download = None
            log.info("%s:%d handed to the deployment driver (%s)", a.model, a.version, request_id)
            return False
        return False

    def _settle(self, a: Assignment, state: str, now: float, **changes: Any) -> None:
        entry = self.ledger.get(key_of(a))
        if entry is None:
            entry = LedgerEntry.start(a, state, now, **changes)
        else:
            entry = entry.moved(state, now, **changes)
        self.ledger[key_of(a)] = entry
        self._save_ledger()

    def _event(self, a: Assignment, state: str, now: float, reason: str | None) -> dict[str, Any]:
        return event_body(
            a.model,
            state,
            now,
            version=a.version,
            reason=reason,
            rollout_id=a.rollout_id,
            bundle_sha256=a.bundle_sha256,
        )

    # --- downloads ----------------------------------------------------------------------
    def _start_download(self, a: Assignment, entry: LedgerEntry | None, now: float) -> None:
        if self.download is not None and self.download.sha == a.bundle_sha256:
            return
        s = self.settings
        self.download = BundleDownload(
            self.sync_dir / "downloads",
            a.bundle_sha256,
            a.size,
            chunk_size=s.chunk_size,
            window_bytes=s.window_bytes,
            request_timeout_s=s.request_timeout_s,
            persist_every=s.persist_every_chunks,
        )
        resumed = self.download.resumed_chunks > 0 or self.download.finished
        if not self.download.complete:
            # Ask first, write the ledger while the chunks travel: on a slow SD card the
            # fsyncs would otherwise delay every download start.
            self._request_chunks(now)
        if entry is None or entry.state != DOWNLOADING:
            attempts = (entry.attempts if entry else 0) + (0 if resumed else 1)
            self._settle(a, DOWNLOADING, now, attempts=max(1, attempts))
        log.info(
            "downloading %s:%d (%s, %d bytes)%s",
            a.model,
            a.version,
            a.bundle_sha256[:12],
            a.size,
            f", resuming with {self.download.resumed_chunks} chunks held" if resumed else "",
        )
        if self.download.finished:
            self._advance(now)
        elif self.download.complete:
            self._finish_download(self.download, now)

    def _request_chunks(self, now: float) -> None:
        download = self.download
        if download is None or not self._link_up:
            return
        if self._quiet_until is not None:
            if now < self._quiet_until:
                return
            self._quiet_until = None
        while (request := download.next_request(now)) is not None:
            self.transport.publish(self.topics.fetch(self.device_id), encode_json(request))
            self.counts["fetches"] += 1

    def _finish_download(self, download: BundleDownload, now: float) -> None:
        entry = next(
            (
                e
                for e in self.ledger.values()
                if e.bundle_sha256 == download.sha and e.state == DOWNLOADING
            ),
            None,
        )
        assignment = self._assignment_for(download.sha)
        try:
            download.finish()
        except DownloadMismatchError as e:
            self.download = None
            attempts = entry.attempts if entry else 1
            if assignment is None:
                return
            if attempts < self.settings.max_download_attempts:
                log.warning("%s; fetching it again (attempt %d)", e, attempts + 1)
                record_event(self.buffer, self._event(assignment, "download_failed", now, str(e)))
                self._settle(assignment, DOWNLOADING, now, attempts=attempts + 1)
                self._start_download(assignment, self.ledger[key_of(assignment)], now)
                return
            log.error("%s; giving up on this bundle", e)
            self._settle(assignment, FAILED, now, result="rejected", reason=str(e))
            record_event(self.buffer, self._event(assignment, "rejected", now, str(e)))
            self._report(now)
            return
        summary = download.summary()
        log.info(
            "downloaded %s: %d bytes received for %d (%d duplicate)",
            download.sha[:12],
            summary["received_bytes"],
            summary["size"],
            summary["duplicate_bytes"],
        )
        if assignment is not None:
            record_event(
                self.buffer,
                self._event(assignment, "downloaded", now, None) | {"transfer": summary},
            )
        self._advance(now)

    def _assignment_for(self, sha: str) -> Assignment | None:
        if self.accepted is None:
            return None
        return next(
            (a for a in self.accepted.directive.assignments if a.bundle_sha256 == sha), None
        )

    # --- reporting ----------------------------------------------------------------------
    def state_report(self, now: float) -> Any:
        accepted = self.accepted
        download = self.download
        return build_state(
            device_id=self.device_id,
            agent_version=self.settings.agent_version,
            profile=self.settings.profile,
            now=now,
            installed=self.deployer.installed(),
            progress=self.deployer.in_progress(),
            ledger=self.ledger.values(),
            download=None if download is None else DownloadView(download.sha, download.fraction),
            last_outcomes=self.deployer.last_outcomes(),
            directive_models=[a.model for a in wanted(accepted.directive)] if accepted else [],
            directive_seq=None if accepted is None else accepted.seq,
            directive_error=self.directive_error,
        )

    def _report(self, now: float) -> None:
        if not self.transport.connected:
            return
        self.reporter.report(self.state_report(now))

    # --- ledger file ----------------------------------------------------------------------
    def _load_ledger(self) -> dict[Key, LedgerEntry]:
        try:
            data = json.loads(self._ledger_path.read_text(encoding="utf-8"))
            entries = [LedgerEntry.from_dict(d) for d in data.get("entries", [])]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("%s unreadable (%s); starting with an empty ledger", self._ledger_path, e)
            remove_path(self._ledger_path)
            return {}
        return {e.key: e for e in entries}

    def _save_ledger(self) -> None:
        atomic_write_json(
            self._ledger_path, {"entries": [e.to_dict() for e in self.ledger.values()]}
        )


def sync_summary(sync: HubSync) -> Mapping[str, Any]:
    """Counters and where things stand (``agent status`` may show this)."""
    return {
        "directive_seq": None if sync.accepted is None else sync.accepted.seq,
        "directive_error": sync.directive_error,
        "download": None if sync.download is None else sync.download.summary(),
        "counts": dict(sync.counts),
    }

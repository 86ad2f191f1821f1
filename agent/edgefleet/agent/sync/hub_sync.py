"""``HubSync``: the agent's side of the hub protocol, on one worker thread.

Threads: the MQTT client's network thread only puts every inbound message and
connection change on a queue; one worker thread does everything else in order — directives, chunks, acks, and a tick every ``tick_s`` that looks at the
deployment driver, the download, the telemetry buffer and the state report. The
serving path shares nothing with it but the telemetry buffer (which has its own
lock), so inference never waits on the hub, the broker or a download.

Order of work for a directive:

1. :func:`~edgefleet.agent.sync.directives.judge` accepts, ignores (a redelivery of
   the retained directive) or rejects it; a rejection is reported (event + state)
   and changes nothing else.
2. An accepted directive is persisted, then :func:`~edgefleet.agent.sync.reconcile.next_action`
   picks one step: refuse, download, hand the finished file to the driver, or a
   rollback to the previous slot.
3. The download pulls windows of chunks (:mod:`edgefleet.agent.sync.download`),
   resumes after reconnects and restarts, and checks the whole file's size and
   sha256 against the directive before anything is handed over.
4. The deployment thread's outcome (a ticket of the in-process deployment queue,
   whose resolution wakes this worker) settles the ledger entry; the driver's own
   events and the sync's events reach the hub through the telemetry uploader.

Every failure inside the worker is logged and the worker carries on: the sync never
takes the agent down.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.agent.errors import AgentError
from edgefleet.agent.sync.checker import DirectiveChecker, as_checker
from edgefleet.agent.sync.convergence import Convergence
from edgefleet.agent.sync.deployer import Deployer
from edgefleet.agent.sync.directives import AcceptedDirective, DirectiveFile, judge
from edgefleet.agent.sync.download import BundleDownload
from edgefleet.agent.sync.reconcile import Key, LedgerEntry, wanted
from edgefleet.agent.sync.reporter import (
    EventSink,
    StateReporter,
    build_state,
    event_body,
    record_event,
)
from edgefleet.agent.sync.settings import SyncSettings
from edgefleet.agent.sync.uploader import LeasingBuffer, TelemetryUploader
from edgefleet.core.errors import ProtocolError
from edgefleet.core.mqtt import InboundMessage, MqttTransport
from edgefleet.core.protocol import (
    DeviceState,
    FetchRequest,
    ResyncRequest,
    TopicKind,
    Topics,
    decode_ack,
    decode_chunk,
    encode_json,
)

if TYPE_CHECKING:
    from edgefleet.core.trust import TrustStore

log = logging.getLogger("edgefleet.agent.sync")

# A directive whose check could not run is checked again after RECHECK_MIN_S,
# doubling up to RECHECK_MAX_S while the checks keep failing to run.
RECHECK_MIN_S = 5.0
RECHECK_MAX_S = 300.0

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
    kind: str  # a TopicKind value, "connected", "disconnected" or "wake"
    payload: bytes = b""
    session_present: bool = False


class HubSync:
    """Directives in, bundles down, status/state/events/telemetry up."""

    def __init__(
        self,
        settings: SyncSettings,
        transport: MqttTransport,
        trust: TrustStore | DirectiveChecker,
        deployer: Deployer,
        buffer: SyncBuffer | None,
        sync_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        pause: Callable[[str], None] = no_pause,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.checker = as_checker(trust)
        self.deployer = deployer
        self.buffer = buffer
        self.sync_dir = Path(sync_dir)
        self.clock = clock
        self.pause = pause
        self.topics = Topics(settings.topic_root)
        self.device_id = settings.device_id
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self._directive_file = DirectiveFile(self.sync_dir / "directive.json")
        self.accepted: AcceptedDirective | None = self._directive_file.load()
        self.convergence = Convergence(
            settings,
            deployer,
            buffer,
            self.sync_dir,
            send_fetch=self._send_fetch,
            may_request=self._may_request,
        )
        if self.accepted is not None:
            self.convergence.directive = self.accepted.directive
        self.directive_error: str | None = None
        self._rejected_digests: set[str] = set()
        self._expiry_reported: int | None = None
        # A directive whose check could not run yet (the verification child did not
        # start): checked again at _recheck_at, waiting longer after each failure so a
        # broken install does not spawn a child every tick.
        self._unchecked: bytes | None = None
        self._recheck_at = 0.0
        self._recheck_delay_s = 0.0
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
        if worker_gone:
            self.convergence.close()
        try:
            if self.transport.connected:
                self.reporter.offline(self.clock())
                self.transport.flush(min(2.0, timeout_s))
        finally:
            self.transport.stop()

    def wake(self) -> None:
        """Look at deployments, downloads and the state report now (any thread may call)."""
        self._queue.put(_Inbound("wake"))

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
        elif item.kind == "wake":
            self.tick(now)

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
        else:
            # Requests sent before the broker lost our session will never be answered.
            self.convergence.forget_outstanding()
        if self.uploader is not None:
            self.uploader.on_disconnect()
        if self.accepted is None:
            # Fresh state: a retained directive may be an old one (a broker restored from
            # an older snapshot); ask the hub for the current one instead of trusting it.
            self.transport.publish(self.topics.resync(self.device_id), encode_json(ResyncRequest()))
        self.tick(now)

    def on_disconnected(self) -> None:
        self._link_up = False
        if self.uploader is not None:
            self.uploader.on_disconnect()

    def on_desired(self, payload: bytes, now: float) -> None:
        retry = payload == self._unchecked
        self._unchecked = None
        verdict = judge(payload, self.checker, self.device_id, self.accepted, now)
        if verdict.kind != "deferred":
            self._recheck_delay_s = 0.0
        if verdict.kind == "accepted":
            assert verdict.accepted is not None
            self._directive_file.save(verdict.accepted)  # before acting on it
            self.accepted = verdict.accepted
            self.directive_error = None
            self._expiry_reported = None
            self.convergence.adopt(verdict.accepted.directive)
            log.info(
                "directive seq %d accepted: %s",
                verdict.accepted.seq,
                ", ".join(f"{a.model}:{a.version}" for a in verdict.accepted.directive.assignments)
                or "no assignments",
            )
            self.convergence.advance(now, in_force=True)  # the next tick reports it
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
        elif verdict.kind == "deferred":
            # Nothing accepted: keep serving, and check the same payload again later.
            self.counts["directives_unchecked"] += 1
            self._unchecked = payload
            self._recheck_delay_s = min(
                RECHECK_MAX_S, max(RECHECK_MIN_S, 2 * self._recheck_delay_s)
            )
            self._recheck_at = now + self._recheck_delay_s
            self.directive_error = verdict.reason
            if not retry:
                log.warning(
                    "directive not checked (still serving what is installed): %s",
                    verdict.reason,
                )
            self._report(now)

    def on_chunk(self, payload: bytes, now: float) -> None:
        try:
            new = self.convergence.accept(decode_chunk(payload), now)
        except ProtocolError as e:
            self.counts["chunks_malformed"] += 1
            log.info("hub sync: %s", e)
            return
        if self._quiet_until is not None:
            self._quiet_until = max(self._quiet_until, now + self.settings.resume_quiet_s)
        if new:
            self._new_chunks += 1
            self.pause(f"chunks:{self._new_chunks}")

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
        if self._unchecked is not None and now >= self._recheck_at:
            self.on_desired(self._unchecked, now)
        self.convergence.settle_handed(now)
        self.convergence.advance(now, in_force=self._in_force(now))
        self.convergence.request_chunks(now)
        if self.uploader is not None:
            self.uploader.pump(now)
        self._report(now)
        busy = self.convergence.busy or (
            self.uploader is not None and self.uploader.in_flight is not None
        )
        if busy:
            self.idle.clear()
        else:
            self.idle.set()

    def _in_force(self, now: float) -> bool:
        """False once the accepted directive expired (freeze protection: say so, start nothing)."""
        accepted = self.accepted
        if accepted is None or not accepted.expired(now):
            return True
        self.directive_error = (
            f"directive seq {accepted.seq} expired at {accepted.directive.expires_at:.0f}; "
            "waiting for a fresh one"
        )
        if self._expiry_reported != accepted.seq:
            self._expiry_reported = accepted.seq
            log.warning("%s", self.directive_error)
            record_event(
                self.buffer, event_body("", "directive_expired", now, reason=self.directive_error)
            )
        return False

    def _may_request(self, now: float) -> bool:
        if not self._link_up:
            return False
        if self._quiet_until is not None:
            if now < self._quiet_until:
                return False
            self._quiet_until = None
        return True

    def _send_fetch(self, request: FetchRequest) -> None:
        self.transport.publish(self.topics.fetch(self.device_id), encode_json(request))

    # --- reporting ----------------------------------------------------------------------
    def state_report(self, now: float) -> DeviceState:
        accepted = self.accepted
        return build_state(
            device_id=self.device_id,
            agent_version=self.settings.agent_version,
            profile=self.settings.profile,
            now=now,
            installed=self.deployer.installed(),
            progress=self.deployer.in_progress(),
            ledger=self.convergence.ledger.values(),
            download=self.convergence.download_view(),
            last_outcomes=self.deployer.last_outcomes(),
            directive_models=[a.model for a in wanted(accepted.directive)] if accepted else [],
            directive_seq=None if accepted is None else accepted.seq,
            directive_error=self.directive_error,
        )

    def _report(self, now: float) -> None:
        if self.transport.connected:
            self.reporter.report(self.state_report(now))

    # --- views (tests, status) ---------------------------------------------------------
    @property
    def ledger(self) -> dict[Key, LedgerEntry]:
        return self.convergence.ledger

    @property
    def download(self) -> BundleDownload | None:
        return self.convergence.download

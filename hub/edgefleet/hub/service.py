"""``hub serve``: the MQTT side of the hub.

Threads share one :class:`HubStore` (its own lock serialises them):

- the MQTT network thread only sorts messages: it checks topic and size,
  decodes fetch requests and queues them for the chunk worker, and queues
  status, state and telemetry for the inbound worker. It never waits on
  SQLite, so chunk frames keep flowing while devices report;
- the inbound worker handles status, state and telemetry in arrival order
  (one thread, one FIFO queue: a device's messages are handled in the order
  it sent them): status and state update the device (presence from the LWT,
  last seen, deployment progress for the rollout engine); telemetry batches
  update their devices' last seen, feed their deployment events to the rollout
  engine and go to the fleet ingest worker;
- the fleet ingest worker (:mod:`edgefleet.hub.fleet.workers`) stores
  telemetry in the fleet database, many batches per transaction, and only
  then publishes each batch's ack; the fleet monitor evaluates alerts in a
  thread of its own;
- the chunk worker (:mod:`edgefleet.hub.chunk_server`) answers fetch requests
  from the bundle store (files kept open, each device's assigned bundles cached
  until its assignments change), waiting for room in the client's outgoing queue
  (back pressure instead of dropping frames);
- the tick thread runs the rollout engine, signs and re-signs directives and
  publishes them retained, and saves the counters.

Telemetry is stored once: the fleet tables (in the hub store's database) hold each
``(device, seq)`` once, written with its rollups and the device's ack cursor in
one transaction, and the rollout gates, drift, alerts and reports all read those
rows. The ack follows that commit; a crash or a full ingest queue before it means
no ack, and the agent resends the batch, which is then recognised as stored.
Retention is the fleet maintenance's, held back (``FleetWorkers.retention_hold``)
for what an active rollout's gates still read.

Invariants: nothing a device sends can stop the service — every failure in a
handler is logged and counted (``malformed.<kind>``, ``oversized.<kind>``,
``unknown_device``, ``fetch_denied``...); a device is only served bundles its
current assignments name; a directive is marked published only after the
broker acknowledged it, so after a crash it is published again. A message is
acknowledged to the broker once it is queued for the inbound worker: a hub
killed with messages queued loses them (telemetry is resent for want of an
ack; a state or status report is superseded by the device's next one).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.canonical import canonical_json
from edgefleet.core.errors import EdgefleetError, ProtocolError
from edgefleet.core.mqtt.interface import InboundMessage, MqttTransport
from edgefleet.core.protocol import (
    Ack,
    FetchRequest,
    TopicKind,
    Topics,
    decode_fetch,
    decode_resync,
    decode_state,
    decode_status,
    decode_telemetry,
    encode_json,
)
from edgefleet.core.protocol.telemetry import EVENT, TelemetryBatch
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.chunk_server import ChunkServer
from edgefleet.hub.config import HubConfig
from edgefleet.hub.directives import DirectiveIssuer, ResyncAnswers
from edgefleet.hub.fleet.ingest import DeviceInfo, IngestResult
from edgefleet.hub.fleet.workers import FleetWorkers
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.rollout.evaluation import gate_horizon
from edgefleet.hub.rollout.machine import ACTIVE_STATES
from edgefleet.hub.singleton import LEASE, SingletonWork
from edgefleet.hub.store import DeviceRecord, DirectiveRecord, HubStore

log = logging.getLogger("edgefleet.hub")

# Status, state and telemetry waiting for the inbound worker. When full the network
# thread waits up to INBOUND_PUT_TIMEOUT_S (back pressure on the broker), then drops
# the message and counts it: telemetry is resent (no ack), status/state come again.
INBOUND_BACKLOG = 10_000
INBOUND_PUT_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 5.0
# The inbound worker counts as stalled (/healthz 503) after this long without a round.
INBOUND_STALL_S = 120.0
# On stop: how long queued telemetry may take to be stored and acked before the MQTT
# client goes (later batches are still stored, but their acks are lost: agents resend).
DRAIN_TIMEOUT_S = 5.0
# Inbound messages the worker takes off its queue at once: the telemetry among them
# touches its devices in one hub-store transaction instead of one per message, which on
# PostgreSQL is most of what a message cost.
INBOUND_GROUP = 64
# On start: how long to wait for the broker's SUBACKs before opening /metrics regardless.
SUBSCRIBE_WAIT_S = 10.0


@dataclass(frozen=True)
class _Inbound:
    device_id: str
    kind: TopicKind
    payload: bytes
    received_at: float  # taken off the socket: orders status and state between hubs


@dataclass(frozen=True)
class _Screened:
    """A telemetry batch decoded and screened, waiting for its group's store write."""

    device: DeviceRecord
    info: DeviceInfo
    batch: TelemetryBatch
    at: float


class HubService:
    """The running hub: inbound worker, chunk worker and tick loop around one MQTT client."""

    def __init__(
        self,
        config: HubConfig,
        store: HubStore,
        transport: MqttTransport,
        signing_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.transport = transport
        self.clock = clock
        self.topics = Topics(config.broker.topic_root)
        self.bundles = PublishedBundleStore(config.store.bundles_dir, store)
        self.engine = RolloutEngine(store)
        self.issuer = DirectiveIssuer(store, signing_key, config.directives)
        self.singleton = SingletonWork(
            store, config.service.tick_s, shared=not config.store.is_sqlite
        )
        self._tick_lock = threading.Lock()
        self.fleet = FleetWorkers(
            config.fleet,
            config.store.location,
            self.bundles.local_path,  # drift references: any hub finds any bundle's
            store,
            transport.publish,
            self.topics.alerts(),
            clock=clock,
        )
        self.fleet.leader = self.singleton.holds
        self.fleet.epoch = lambda: self.singleton.epoch if self.singleton.shared else None
        # Telemetry is stored once: fleet retention keeps what active rollouts' gates read.
        self.fleet.retention_hold = lambda: gate_horizon(store.list_rollouts(ACTIVE_STATES))
        self._counts: Counter[str] = Counter()
        self._unsaved: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._inbound: queue.Queue[_Inbound] = queue.Queue(maxsize=INBOUND_BACKLOG)
        self._inbound_stop = threading.Event()
        self._inbound_thread: threading.Thread | None = None
        self._inbound_deadline = 0.0
        self._inbound_beat = time.monotonic()  # the inbound loop's last round
        self.fleet.watch("hub-inbound", self._inbound_stalled)
        # Devices seen by the inbound worker (its thread only). A device's id, group,
        # profile and tags are fixed at enrollment and devices are never removed, so the
        # handlers' view of a known device cannot go stale; unknown ids are asked again.
        self._devices: dict[str, DeviceRecord] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.chunks = ChunkServer(
            store,
            self.bundles,
            transport,
            self.topics,
            self._stop,
            count=self.count,
            tally=self.tally,
        )
        # Set on every connect: a broker restarted without persistence lost the retained
        # directives, one restored from an older snapshot holds old ones (and our session,
        # so session_present says nothing): publish every device's latest again.
        self._republish = threading.Event()
        self.resync = ResyncAnswers(store)
        self._wake_tick = threading.Event()  # set by stop() and by a connect without session
        self._handlers: dict[TopicKind, Callable[[DeviceRecord, bytes], None]] = {
            TopicKind.STATUS: self._on_status,
            TopicKind.STATE: self._on_state,
            TopicKind.TELEMETRY: self._on_telemetry,
            TopicKind.RESYNC: self._on_resync,
        }

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self.singleton.claim_client_id(self.config.broker.client_id)  # before the broker
        self.fleet.start()
        for topic_filter in self.topics.hub_subscriptions(self.config.broker.shared_subscriptions):
            self.transport.subscribe(topic_filter, self.handle)
        self.transport.on_connect(self._on_connect)
        self._inbound_stop.clear()
        self._inbound_thread = threading.Thread(
            target=self._inbound_loop, name="hub-inbound", daemon=True
        )
        self._inbound_thread.start()
        self.transport.start()
        for name, target in (
            ("chunks", self.chunks.run),
            ("tick", self._tick_loop),
            ("bundle-bytes", self._store_missing_bundle_bytes),
        ):
            thread = threading.Thread(target=target, name=f"hub-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        # On the hub's first connection the broker holds no session for it yet: device
        # messages published before the SUBACKs are dropped. /metrics answers only once
        # the subscriptions stand (or after the wait, with the broker unreachable).
        if not self.transport.wait_subscribed(SUBSCRIBE_WAIT_S):
            log.warning(
                "hub: not subscribed after %.0f s; serving /metrics anyway", SUBSCRIBE_WAIT_S
            )
        try:
            self.fleet.start_metrics()
        except Exception:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake_tick.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()
        # Handle what is queued (telemetry reaches the ingest worker, state the store)
        # while the client is still up; the worker ends once the queue is empty.
        self._inbound_deadline = time.monotonic() + min(timeout_s, DRAIN_TIMEOUT_S)
        self._inbound_stop.set()
        if self._inbound_thread is not None:
            self._inbound_thread.join(min(timeout_s, DRAIN_TIMEOUT_S))
            self._inbound_thread = None
        # Store and ack what is queued while the client can still send the acks.
        if self.fleet.drain(min(timeout_s, DRAIN_TIMEOUT_S)):
            self.transport.flush(min(timeout_s, FLUSH_TIMEOUT_S))
        try:
            self.singleton.release()  # another hub takes over at its next tick
            self.singleton.release_client_id()
        except Exception:
            log.exception("hub: releasing the singleton work failed")
        self.transport.stop()
        self.fleet.stop(timeout_s)
        self.bundles.close()
        self._save_counters()

    def _on_connect(self, session_present: bool) -> None:
        # Even with session_present: see _republish above.
        self._republish.set()
        self._wake_tick.set()  # restore the retained directives now, not a tick later

    def wait_ready(self, timeout_s: float) -> bool:
        return self.transport.wait_subscribed(timeout_s)

    # -- counters ------------------------------------------------------------------

    def count(self, name: str, n: int = 1, detail: str = "", exc_info: bool = False) -> bool:
        """Count a problem (malformed payload, refused request...) and log it, with
        ``detail`` (and the traceback with ``exc_info``), the first few times and then
        every power of two: a device sending 20,000 bad messages a second costs a
        handful of lines, not 20,000. Returns whether this one was logged."""
        total = self.tally(name, n)
        if total > 5 and total & (total - 1):
            return False
        suffix = f": {detail}" if detail else ""
        log.warning("hub: %s (%d so far)%s", name, total, suffix, exc_info=exc_info)
        return True

    def tally(self, name: str, n: int = 1) -> int:
        """Count normal traffic (records stored, chunks sent) without logging."""
        with self._count_lock:
            self._counts[name] += n
            self._unsaved[name] += n
            return self._counts[name]

    @property
    def counters(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self._counts)

    def _save_counters(self) -> None:
        with self._count_lock:
            pending, self._unsaved = self._unsaved, Counter()
        try:
            with self.store.transaction():
                for name, n in pending.items():
                    self.store.bump_counter(name, n)
        except EdgefleetError:
            log.exception("hub: cannot save counters")
            with self._count_lock:
                self._unsaved.update(pending)

    # -- inbound -----------------------------------------------------------------

    def handle(self, message: InboundMessage) -> None:
        """Sort one inbound message onto a worker's queue (the MQTT thread); never raises."""
        try:
            device_id, kind = self.topics.parse(message.topic, side="device")
        except ProtocolError as e:
            self.count("malformed.topic")
            log.debug("hub: %s", e)
            return
        if kind is not TopicKind.FETCH and kind not in self._handlers:
            self.count(f"unexpected.{kind.value}")
            return
        if len(message.payload) > self.config.service.max_payload_bytes:
            self.count(f"oversized.{kind.value}")
            return
        if kind is TopicKind.FETCH:
            self._on_fetch(device_id, message.payload)
            return
        if kind is TopicKind.TELEMETRY and not self.fleet.admit(device_id, len(message.payload)):
            return  # over the device's quota: dropped unacked, the device resends later
        try:
            self._inbound.put(
                _Inbound(device_id, kind, message.payload, self.clock()),
                timeout=INBOUND_PUT_TIMEOUT_S,
            )
        except queue.Full:
            self.count(f"inbound_overload.{kind.value}")

    def _inbound_stalled(self) -> bool:
        thread = self._inbound_thread
        if thread is None or self._inbound_stop.is_set():
            return False
        return not thread.is_alive() or time.monotonic() - self._inbound_beat > INBOUND_STALL_S

    def _inbound_loop(self) -> None:
        while True:
            self._inbound_beat = time.monotonic()
            try:
                group = [self._inbound.get(timeout=0.1)]
            except queue.Empty:
                if self._inbound_stop.is_set():
                    return
                continue
            while len(group) < INBOUND_GROUP:
                try:
                    group.append(self._inbound.get_nowait())
                except queue.Empty:
                    break
            self._dispatch_group(group)
            if self._inbound_stop.is_set() and time.monotonic() > self._inbound_deadline:
                return  # still flooded when stopping: the rest is resent or superseded

    def _dispatch_group(self, group: list[_Inbound]) -> None:
        """Handle queued messages in order; consecutive telemetry is stored together."""
        screened: list[_Screened] = []
        for item in group:
            if item.kind is not TopicKind.TELEMETRY:
                self._store_telemetry(screened)  # a status or state keeps its place
                screened = []
            self.dispatch(item.device_id, item.kind, item.payload, screened, item.received_at)
        self._store_telemetry(screened)

    def dispatch(
        self,
        device_id: str,
        kind: TopicKind,
        payload: bytes,
        screened: list[_Screened] | None = None,
        received_at: float | None = None,
    ) -> None:
        """Handle one status, state or telemetry message (the inbound worker); never raises.

        With ``screened`` a telemetry batch is only decoded and screened onto it: the
        caller stores the list with :meth:`_store_telemetry`. ``received_at`` (default:
        now) is when the message came off the socket: presence and state are stored only
        if nothing received later is stored already.
        """
        handler = self._handlers[kind]
        try:
            device = self._devices.get(device_id)
            if device is None:
                device = self.store.get_device(device_id)
                if device is None:
                    self.count("unknown_device")
                    return
                self._devices[device_id] = device
            if screened is not None and kind is TopicKind.TELEMETRY:
                screened.extend(self._screen_telemetry(device, payload))
            elif kind is TopicKind.STATUS:
                self._on_status(device, payload, received_at)
            elif kind is TopicKind.STATE:
                self._on_state(device, payload, received_at)
            else:
                handler(device, payload)
        except ProtocolError as e:
            self.count(f"malformed.{kind.value}", detail=f"from {device_id}: {e}")
        except EdgefleetError as e:
            self.count(f"failed.{kind.value}", detail=f"from {device_id}: {e}")
        except Exception:
            self.count(f"failed.{kind.value}", detail=f"from {device_id}", exc_info=True)

    # Every hub handles the status and state reports its share of the broker delivers,
    # each stamped when it came off the socket. The store keeps a report only if no
    # later-received one is stored (the comparison is in the UPDATE), so a hub that is
    # slow to handle the last will of an old connection ("offline", no timestamp in it)
    # cannot overwrite the "online" of the device's new connection another hub stored.
    def _on_status(
        self, device: DeviceRecord, payload: bytes, received_at: float | None = None
    ) -> None:
        if payload == b"":
            return  # a cleared retained message says nothing
        status = decode_status(payload)
        at = self.clock() if received_at is None else received_at
        if not self.store.set_presence(device.device_id, status.online, at):
            self.tally("presence.stale")

    def _on_state(
        self, device: DeviceRecord, payload: bytes, received_at: float | None = None
    ) -> None:
        if payload == b"":
            return
        device_id = device.device_id
        state = decode_state(payload)
        if state.device != device_id:
            raise ProtocolError(f"state names device {state.device!r} on {device_id}'s topic")
        now = self.clock() if received_at is None else received_at
        report = state.to_dict()
        if not self.store.set_device_state(device_id, report, now):
            self.tally("state.stale")
            return
        self.engine.on_device_state(device_id, report, now)

    def _on_telemetry(self, device: DeviceRecord, payload: bytes) -> None:
        self._store_telemetry(self._screen_telemetry(device, payload))

    def _screen_telemetry(self, device: DeviceRecord, payload: bytes) -> list[_Screened]:
        """The batch decoded and screened ([] when refused whole); raises ProtocolError."""
        device_id = device.device_id
        batch = decode_telemetry(payload)
        if batch.device != device_id:
            raise ProtocolError(f"telemetry names device {batch.device!r} on {device_id}'s topic")
        now = self.clock()
        info = DeviceInfo(device_id, device.group, device.profile, device.tags)
        screened = self.fleet.screened(info, batch, now)  # numbers bounded before any store
        if screened is None:
            return []  # refused whole (seqs out of range, record quota): not acked, counted
        return [_Screened(device, info, screened, now)]

    def _store_telemetry(self, screened: Sequence[_Screened]) -> None:
        """Note the screened batches' devices as seen (one transaction), then hand each
        batch to the rollout engine (its events) and the fleet ingest (which stores it and
        acks it); never raises. A failed write leaves every batch of the group unacked:
        the devices resend."""
        if not screened:
            return
        try:
            with self.store.transaction():
                self.store.touch_devices([(s.device.device_id, s.at) for s in screened])
        except EdgefleetError as e:
            self.count("failed.telemetry", len(screened), detail=str(e))
            return
        except Exception:
            self.count("failed.telemetry", len(screened), exc_info=True)
            return
        for item in screened:
            try:
                self._after_store(item)
            except EdgefleetError as e:
                self.count("failed.telemetry", detail=f"from {item.device.device_id}: {e}")
            except Exception:
                self.count(
                    "failed.telemetry", detail=f"from {item.device.device_id}", exc_info=True
                )

    def _after_store(self, item: _Screened) -> None:
        device_id, batch, info, now = item.device.device_id, item.batch, item.info, item.at
        for record in batch.records:
            if record.kind != EVENT:
                continue
            try:
                event = record.event()
            except ProtocolError:
                self.count("malformed.telemetry_record")
                continue
            self.engine.on_deployment(
                device_id,
                event.model,
                event.version,
                event.state,
                now,
                reason=event.reason,
                rollout_id=event.rollout_id,
                bundle_sha256=event.bundle_sha256,
                kind=_event_kind(record.body),
            )
        ack_topic = self.topics.ack(device_id)

        def on_done(result: IngestResult) -> None:  # the ingest worker, after its commit
            self.tally("telemetry.records", result.stored)
            if result.duplicates:
                self.tally("telemetry.duplicates", result.duplicates)
            if result.malformed:
                self.count("telemetry.malformed_windows", result.malformed)
            if result.highest_contiguous_seq is not None:
                self.transport.publish(ack_topic, encode_json(Ack(result.highest_contiguous_seq)))

        if not self.fleet.submit(info, batch, on_done):
            # Not acked: the agent sends the batch again.
            self.count("telemetry.fleet_backlog_full")

    def _on_fetch(self, device_id: str, payload: bytes) -> None:
        try:
            request = decode_fetch(payload)
        except ProtocolError as e:
            self.count("malformed.fetch", detail=f"from {device_id}: {e}")
            return
        if not self.chunks.submit(device_id, request):
            self.count("fetch_overload")  # the device asks again after its timeout

    def serve_fetch(self, device_id: str, request: FetchRequest) -> int:
        """Publish the requested chunks now; returns how many frames were queued."""
        return self.chunks.serve_fetch(device_id, request)

    def _store_missing_bundle_bytes(self) -> None:
        """Once at start: put into the store the bytes of bundles recorded before the
        store held bundle bytes, from this hub's files, so every hub can serve them; and
        remove temporary files a dead hub left in the folder."""
        try:
            self.bundles.remove_stale_temporaries(time.time())
            stored, missing = self.bundles.store_missing_bytes()
        except EdgefleetError as e:
            self.count("failed.bundle_bytes", detail=str(e))
            return
        if stored:
            log.info("hub: stored the bytes of %d bundle(s) in the hub store", len(stored))
        for sha256 in missing:
            log.warning(
                "hub: bundle %s has no bytes in the hub store and no file here;"
                " only a hub holding its file can serve it (or publish it again)",
                sha256[:16],
            )

    # -- tick ------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        interval = self.config.service.tick_s
        while not self._stop.is_set():
            self._wake_tick.clear()
            self.tick()
            self._wake_tick.wait(interval)

    def tick(self) -> None:
        """One round of rollouts, directives and counters; never raises.

        Rollouts and directives are once-per-fleet work: with several hubs on
        one store only the lease holder does them, fenced by its epoch (singleton.py).
        """
        with self._tick_lock:  # the tick thread and a caller's tick() must not interleave
            self._tick()

    def _tick(self) -> None:
        now = self.clock()
        try:
            leader, epoch = self.singleton.claim(self.transport.connected)
        except Exception:
            leader, epoch = False, None
            self.count("failed.lease")
            log.exception("hub: claiming the singleton work failed")

        def fence() -> AbstractContextManager[None]:  # a fresh one per block: single use
            return self.store.fenced(LEASE, epoch) if epoch is not None else nullcontext()

        try:
            if leader:
                with fence():
                    self.engine.tick(now)
        except Exception:
            self.count("failed.rollout_tick")
            log.exception("hub: rollout tick failed")
        try:
            self.chunks.forget_changed_assignments()
        except Exception:
            self.count("failed.fetch_cache")
            log.exception("hub: checking assignments for the chunk server failed")
        try:
            if leader:
                with fence():
                    self.issuer.due(now)
                    self.publish_directives()
        except Exception:
            self.count("failed.directives")
            log.exception("hub: directive publication failed")
        self._save_counters()

    def publish_directives(self) -> int:
        """Publish every recorded, unpublished directive retained; mark them once acked.

        After a connect without a session every device's latest directive is
        published again (agents ignore a directive they already accepted).
        """
        if not self.transport.connected:
            return 0
        republish = self._republish.is_set()
        self._republish.clear()
        pending = self.issuer.latest() if republish else self.issuer.unpublished()
        for record in pending:
            self._send_directive(record)
        if pending and self._wait_acked(FLUSH_TIMEOUT_S):
            at = self.clock()
            for record in pending:
                self.store.mark_directive_published(record.device_id, record.seq, at)
            self.tally("directives.published", len(pending))
            return len(pending)
        if republish:
            self._republish.set()  # not acknowledged: try the whole set again
        return 0

    def _send_directive(self, record: DirectiveRecord) -> None:
        self.chunks.remember_assigned(record)
        self.transport.publish(
            self.topics.desired(record.device_id),
            canonical_json(dict(record.envelope)),
            retain=True,
        )

    def _on_resync(self, device: DeviceRecord, payload: bytes) -> None:
        request = decode_resync(payload)
        record = self.resync.answer(device.device_id, request.known_seq, self.clock())
        if record is not None:
            self._send_directive(record)
            self.tally("directives.resync")

    def _wait_acked(self, timeout_s: float) -> bool:
        """Wait until every message queued so far is acknowledged by the broker.

        Unlike ``transport.flush`` this does not wait for what is queued later: chunk
        frames keep coming while directives are published, and the outgoing queue is FIFO,
        so the messages queued up to now are acknowledged once the broker acknowledged
        that many more messages.
        """
        first = self.transport.stats
        target = first.published + first.queued + first.inflight
        # The client moves a message from its queue to the in-flight set outside the
        # snapshot's lock: with an empty queue the message in between may be ours, so
        # then one more ack, or an idle client, is needed.
        in_transit = 1 if first.queued == 0 else 0
        deadline = time.monotonic() + timeout_s
        while True:
            time.sleep(0.005)
            now = self.transport.stats
            if now.published >= target + in_transit:
                return True
            if now.published >= target and now.queued == 0 and now.inflight == 0:
                return True
            if time.monotonic() > deadline or self._stop.is_set():
                return False


def _event_kind(body: Mapping[str, Any]) -> str | None:
    """The driver's deployment kind ("install", "rollback") of a raw event body."""
    kind = body.get("kind")
    return kind if isinstance(kind, str) else None

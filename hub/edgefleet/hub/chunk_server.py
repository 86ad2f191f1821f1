"""The hub's chunk server: answers devices' fetch requests with chunk frames.

The MQTT network thread decodes a fetch request and hands it to :meth:`ChunkServer.submit`;
one chunk worker thread (:meth:`ChunkServer.run`) takes requests off the queue in order
and publishes the frames, waiting for room in the client's outgoing queue (back pressure
instead of dropping frames).

Invariants: a device is only served bundles its current assignments name. The
per-device cache of assigned bundles may list fewer bundles than the store (a new
assignment is looked up before a fetch is refused) but never keeps one the device lost:
the service's tick drops every device whose ``desired_rev`` moved
(:meth:`ChunkServer.forget_changed_assignments`). Nothing is looked up per frame: bundle
files stay open, bundle sizes never change (a bundle is named by the hash of its bytes),
and encoded frames are cached, least recently used dropped first, so every device
fetching a bundle gets the same bytes. Counting stays with the service: the server is
given its ``count`` (problems, logged) and ``tally`` (traffic) callables. A bundle
missing from this hub's folder is materialised from the hub store on its first chunk read
(the worker waits for it); one whose stored bytes do not match its sha256 is counted as
``bundle_corrupt`` and never served.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.core.errors import EdgefleetError, ProtocolError
from edgefleet.core.mqtt.interface import MqttTransport
from edgefleet.core.protocol import ChunkPlan, FetchRequest, Topics, encode_chunk
from edgefleet.core.protocol.limits import MAX_WINDOW_BYTES
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.errors import CorruptBundleError
from edgefleet.hub.store import DirectiveRecord, HubStore

log = logging.getLogger("edgefleet.hub")

# Chunk frames wait while the client's outgoing queue holds more than this.
QUEUE_HIGH_WATER = 256
FETCH_BACKLOG = 1024
# Encoded chunk frames kept for the next device fetching the same bundle.
FRAME_CACHE_BYTES = 32 << 20


@dataclass(frozen=True)
class _Fetch:
    device_id: str
    request: FetchRequest


@dataclass(frozen=True)
class _Allowed:
    """The bundles a device may fetch, as of its ``desired_rev``."""

    desired_rev: int
    bundles: frozenset[str]


class ChunkServer:
    """The fetch queue, its worker, and the caches that keep the chunk path free of lookups."""

    def __init__(
        self,
        store: HubStore,
        bundles: PublishedBundleStore,
        transport: MqttTransport,
        topics: Topics,
        stop: threading.Event,
        *,
        count: Callable[..., object],
        tally: Callable[[str, int], object],
    ) -> None:
        self.store = store
        self.bundles = bundles
        self.transport = transport
        self.topics = topics
        self._stop = stop  # the service's: set once, ends the worker and any frame wait
        self._count = count
        self._tally = tally
        self._fetches: queue.Queue[_Fetch] = queue.Queue(maxsize=FETCH_BACKLOG)
        # Per device, the bundles its assignments name; dropped by the tick when the
        # device's desired_rev moved, refreshed from the store on a miss.
        self._allowed: dict[str, _Allowed] = {}
        self._allowed_lock = threading.Lock()
        self._bundle_sizes: dict[str, int] = {}
        # Encoded chunk frames, least recently used dropped first (the chunk worker only).
        self._frames: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._frame_bytes = 0

    def submit(self, device_id: str, request: FetchRequest) -> bool:
        """Queue a request for the worker (any thread); False when the backlog is full."""
        try:
            self._fetches.put_nowait(_Fetch(device_id, request))
        except queue.Full:
            return False
        return True

    def run(self) -> None:
        """The chunk worker: serve queued requests until the stop event is set; never raises."""
        while not self._stop.is_set():
            try:
                fetch = self._fetches.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.serve_fetch(fetch.device_id, fetch.request)
            # Logged by count(), rate-limited: a flood of bad fetches stays a few lines.
            except ProtocolError as e:
                self._count("malformed.fetch", detail=f"from {fetch.device_id}: {e}")
            except CorruptBundleError as e:
                self._count("bundle_corrupt", detail=f"fetch from {fetch.device_id}: {e}")
            except EdgefleetError as e:
                self._count("failed.fetch", detail=f"from {fetch.device_id}: {e}")
            except Exception:
                self._count("failed.fetch", detail=f"from {fetch.device_id}", exc_info=True)

    def serve_fetch(self, device_id: str, request: FetchRequest) -> int:
        """Publish the requested chunks; returns how many frames were queued."""
        sha = request.bundle_sha256
        allowed = self._allowed_bundles(device_id, sha)
        if allowed is None:
            self._count("unknown_device")
            return 0
        if sha not in allowed:
            self._count("fetch_denied", detail=f"{device_id} asked for bundle {sha[:12]}")
            return 0
        size = self._bundle_size(sha)
        if size is None:
            self._count("fetch_unknown_bundle")
            return 0
        try:
            plan = ChunkPlan(size, request.chunk_size, MAX_WINDOW_BYTES)
        except ValueError as e:
            raise ProtocolError(f"fetch: {e}", side="device") from e
        indexes = plan.check_request(request)
        topic = self.topics.chunk(device_id)
        sent = 0
        room = 0  # frames that may be queued before the outgoing queue is looked at again
        for index in indexes:
            while room <= 0 and not self._stop.is_set():
                room = QUEUE_HIGH_WATER - self.transport.stats.queued
                if room <= 0:
                    time.sleep(0.005)
            if self._stop.is_set():
                break
            self.transport.publish(topic, self._frame(plan, sha, index))
            room -= 1
            sent += 1
        self._tally("chunks.sent", sent)
        return sent

    def _frame(self, plan: ChunkPlan, sha: str, index: int) -> bytes:
        """The encoded frame of one chunk; every device fetching a bundle gets the same bytes."""
        key = (sha, plan.chunk_size, index)
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            return frame
        data = self.bundles.read_range(sha, plan.offset(index), plan.length(index))
        frame = encode_chunk(plan.frame(sha, index, data))
        self._frames[key] = frame
        self._frame_bytes += len(frame)
        while self._frame_bytes > FRAME_CACHE_BYTES:
            _, old = self._frames.popitem(last=False)
            self._frame_bytes -= len(old)
        return frame

    def _allowed_bundles(self, device_id: str, sha: str) -> frozenset[str] | None:
        """The bundles ``device_id`` may fetch (None: no such device).

        Served from the cache; a bundle the cache does not list is looked up in the store
        before it is refused, so a new assignment is served at once. A removed assignment
        is forgotten by the next tick (it compares each device's ``desired_rev``).
        """
        with self._allowed_lock:
            cached = self._allowed.get(device_id)
        if cached is not None and sha in cached.bundles:
            return cached.bundles
        device = self.store.get_device(device_id)
        if device is None:
            return None
        bundles = frozenset(a.bundle_sha256 for a in self.store.get_assignments(device_id).values())
        with self._allowed_lock:
            self._allowed[device_id] = _Allowed(device.desired_rev, bundles)
        return bundles

    def _bundle_size(self, sha: str) -> int | None:
        # A bundle record never changes: its name is the hash of its bytes.
        size = self._bundle_sizes.get(sha)
        if size is None:
            bundle = self.store.get_bundle(sha)
            if bundle is None:
                return None
            size = self._bundle_sizes[sha] = bundle.size
        return size

    def remember_assigned(self, record: DirectiveRecord) -> None:
        """Prime the cache with what a directive assigns, before devices ask.

        A rollout start sends a fetch from every device within moments; without this
        each first fetch would query the store while state reports hold it.
        """
        try:
            body = record.envelope["directive"]
            bundles = frozenset(str(a["bundle_sha256"]) for a in body["assignments"])
        except (KeyError, TypeError):
            return  # the store will be asked on the first fetch
        with self._allowed_lock:
            self._allowed[record.device_id] = _Allowed(record.desired_rev, bundles)

    def forget_changed_assignments(self) -> None:
        """Drop each cached device whose ``desired_rev`` moved (the tick thread)."""
        with self._allowed_lock:
            if not self._allowed:
                return
        revs = {i: head.desired_rev for i, head in self.store.device_heads().items()}
        with self._allowed_lock:
            for device_id, cached in list(self._allowed.items()):
                if revs.get(device_id) != cached.desired_rev:
                    del self._allowed[device_id]

"""In-memory stand-ins for unit tests of the hub sync's logic.

- :class:`FakeHub` plays the hub on a :class:`MemoryBroker`: it publishes signed
  directives (retained), answers fetch requests with chunk frames of bundles it was
  given, and acks telemetry batches. Every chunk it sends is counted per bundle.
- :class:`FakeDeployer` plays the deployment driver: installs commit (or end the way
  the test says) when the test calls :meth:`FakeDeployer.finish`, or at once.

Integration tests use the real hub service, a real mosquitto and the real daemon.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.sync import DeployOutcome, Progress, SyncSettings
from edgefleet.agent.sync.reconcile import InstalledModel
from edgefleet.core.canonical import canonical_json
from edgefleet.core.directive import Assignment, Directive, sign_directive
from edgefleet.core.mqtt import InboundMessage, MqttSettings
from edgefleet.core.protocol import (
    Ack,
    ChunkPlan,
    Topics,
    decode_fetch,
    decode_state,
    decode_telemetry,
    encode_json,
)
from edgefleet.core.protocol.limits import MAX_WINDOW_BYTES
from edgefleet.core.testing.memory_mqtt import MemoryBroker, MemoryMqttClient
from edgefleet.core.trust import TrustStore

DEVICE = "dev-1"


def settings(**overrides: Any) -> SyncSettings:
    values: dict[str, Any] = {
        "device_id": DEVICE,
        "profile": "x86_64-gateway",
        "agent_version": "test",
        "max_bundle_bytes": 1 << 20,
        "chunk_size": 1024,
        "window_bytes": 4096,
    }
    values.update(overrides)
    return SyncSettings(**values)


def device_client(broker: MemoryBroker, device_id: str = DEVICE) -> MemoryMqttClient:
    from edgefleet.agent.sync.reporter import last_will

    return MemoryMqttClient(
        MqttSettings(
            host="memory",
            client_id=device_id,
            lwt=last_will(Topics(), device_id),
            clean_session=False,
        ),
        broker,
    )


@dataclass
class Bundle:
    model: str
    version: int
    data: bytes

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def assignment(self, rollout_id: str = "r-1", **kw: Any) -> Assignment:
        return Assignment(self.model, self.sha, self.version, self.size, rollout_id, **kw)


def bundle(model: str = "iris", version: int = 1, size: int = 10_000, seed: int = 0) -> Bundle:
    blob = hashlib.sha256(f"{model}{version}{seed}".encode()).digest() * (size // 32 + 1)
    return Bundle(model, version, blob[:size])


class FakeHub:
    """A hub on the memory broker: directives, chunk serving, telemetry acks."""

    def __init__(self, broker: MemoryBroker, *, device_id: str = DEVICE) -> None:
        self.broker = broker
        self.device_id = device_id
        self.topics = Topics()
        self.key = Ed25519PrivateKey.generate()
        self.trust = TrustStore.from_keys(hub_keys=[self.key.public_key()])
        self.bundles: dict[str, bytes] = {}
        self.chunks_sent: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.fetches: list[Any] = []
        self.serving = True  # False: fetch requests go unanswered
        self.serve_limit: int | None = None  # stop answering after this many chunks in all
        self.auto_ack = True
        self.telemetry: list[Any] = []
        self.seq = 0
        self.client = MemoryMqttClient(
            MqttSettings(host="memory", client_id="hub", clean_session=False), broker
        )
        self.client.subscribe(self.topics.fetch(device_id), self._on_fetch)
        self.client.subscribe(self.topics.telemetry(device_id), self._on_telemetry)
        self.client.start()

    def add(self, b: Bundle, *, served: bytes | None = None) -> None:
        """Serve ``b`` (or ``served`` in its place: a hub with a corrupted store)."""
        self.bundles[b.sha] = b.data if served is None else served

    def directive(
        self,
        *assignments: Assignment,
        seq: int | None = None,
        device: str | None = None,
        issued_at: float | None = None,
        ttl_s: float = 3600.0,
        key: Ed25519PrivateKey | None = None,
    ) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        now = time.time() if issued_at is None else issued_at
        d = Directive(device or self.device_id, seq, now, now + ttl_s, tuple(assignments))
        return canonical_json(sign_directive(d, key or self.key))

    def publish_directive(self, payload: bytes) -> None:
        self.client.publish(self.topics.desired(self.device_id), payload, retain=True)

    def _on_fetch(self, message: InboundMessage) -> None:
        request = decode_fetch(message.payload)
        self.fetches.append(request)
        if not self.serving:
            return
        data = self.bundles.get(request.bundle_sha256)
        if data is None:
            return
        plan = ChunkPlan(len(data), request.chunk_size, MAX_WINDOW_BYTES)
        for index in plan.check_request(request):
            if self.serve_limit is not None and sum(self.chunks_sent.values()) >= self.serve_limit:
                return
            payload = data[plan.offset(index) : plan.offset(index) + plan.length(index)]
            frame = plan.frame(request.bundle_sha256, index, payload)
            self.chunks_sent[request.bundle_sha256] += 1
            self.bytes_sent[request.bundle_sha256] += len(payload)
            self.client.publish(self.topics.chunk(self.device_id), frame.encode())

    def _on_telemetry(self, message: InboundMessage) -> None:
        batch = decode_telemetry(message.payload)
        self.telemetry.append(batch)
        if self.auto_ack:
            self.client.publish(self.topics.ack(self.device_id), encode_json(Ack(batch.last_seq)))

    def state(self) -> Any:
        raw = self.broker.retained(self.topics.state(self.device_id))
        return None if raw is None else decode_state(raw)

    def events(self) -> list[dict[str, Any]]:
        return [dict(r.body) for b in self.telemetry for r in b.records if r.kind == "event"]


@dataclass
class FakeDeployer:
    """The deployment driver's interface, in memory; installs end when told to."""

    catalogue: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # sha -> model, version
    models: dict[str, InstalledModel] = field(default_factory=dict)
    auto: str | None = "committed"  # end every request at once like this; None: wait
    requests: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, DeployOutcome] = field(default_factory=dict)
    received: dict[str, bytes] = field(default_factory=dict)  # request id -> file bytes
    running: str | None = None

    def installed(self) -> Mapping[str, InstalledModel]:
        return dict(self.models)

    def idle(self) -> bool:
        return self.running is None

    def submit_install(
        self, path: Path, *, allow_downgrade: bool, now: float, rollout_id: str | None = None
    ) -> str:
        data = Path(path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        request_id = f"req-{len(self.requests) + 1}"
        self.requests.append(
            {
                "id": request_id,
                "kind": "install",
                "sha": sha,
                "allow_downgrade": allow_downgrade,
                "rollout_id": rollout_id,
            }
        )
        self.received[request_id] = data
        self.running = request_id
        if self.auto is not None:
            self.finish(self.auto)
        return request_id

    def submit_rollback(self, model: str, *, now: float, rollout_id: str | None = None) -> str:
        request_id = f"req-{len(self.requests) + 1}"
        self.requests.append(
            {"id": request_id, "kind": "rollback", "model": model, "rollout_id": rollout_id}
        )
        self.running = request_id
        if self.auto is not None:
            self.finish("rolled_back")
        return request_id

    def finish(self, state: str, reason: str | None = None) -> None:
        """End the running request in ``state`` (committed moves the slots)."""
        assert self.running is not None
        request = next(r for r in self.requests if r["id"] == self.running)
        if request["kind"] == "install" and state == "committed":
            model, version = self.catalogue[request["sha"]]
            before = self.models.get(model, InstalledModel())
            self.models[model] = InstalledModel(
                request["sha"], version, before.active_sha, before.active_version
            )
        if request["kind"] == "rollback" and state == "rolled_back":
            before = self.models[request["model"]]
            self.models[request["model"]] = InstalledModel(
                before.previous_sha, before.previous_version
            )
        self.outcomes[self.running] = DeployOutcome(self.running, request["kind"], state, reason)
        self.running = None

    def outcome(self, request_id: str) -> DeployOutcome | None:
        return self.outcomes.get(request_id)

    def in_progress(self) -> Progress | None:
        return None

    def last_outcomes(self) -> Mapping[str, Mapping[str, Any]]:
        return {}

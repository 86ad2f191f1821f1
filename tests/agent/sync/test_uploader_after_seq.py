"""TelemetryUploader and the hub's ack rule: ``after_seq``, lost batches, a hub behind.

Real parts: the telemetry buffer (SQLite in a temp dir) and the hub's rule
(``AckCursor``). The wire is a list the test delivers from, drops or replays; the hub is
the rule plus a dict of stored seqs. The same flows over mosquitto with the fleet store
are in tests/hub/fleet/test_ack_cursor_mosquitto.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.sync.uploader import TelemetryUploader
from edgefleet.agent.telemetry.buffer import TelemetryBuffer
from edgefleet.core.protocol import Ack, TelemetryBatch, Topics, decode_telemetry
from edgefleet.core.protocol.telemetry import AckCursor

DEVICE = "pi-t"
TIMEOUT_S = 15.0


@dataclass
class Wire:
    """The device's transport: publishes land here until the test delivers them."""

    connected: bool = True
    sent: list[TelemetryBatch] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert topic == Topics().telemetry(DEVICE)
        self.sent.append(decode_telemetry(payload))


@dataclass
class Hub:
    cursor: AckCursor = field(default_factory=AckCursor)
    stored: Counter[int] = field(default_factory=Counter)

    def receive(self, batch: TelemetryBatch) -> Ack:
        for r in batch.records:
            if r.seq not in self.stored:
                self.stored[r.seq] += 1
        self.cursor = self.cursor.receive(batch.after_seq, batch.last_seq)
        assert self.cursor.contiguous is not None
        return Ack(self.cursor.contiguous)


@dataclass
class Rig:
    path: Path
    buffer: TelemetryBuffer
    wire: Wire
    hub: Hub
    uploader: TelemetryUploader
    now: float = 1000.0
    taken: int = 0  # batches on the wire already delivered or lost

    def add(self, n: int) -> list[int]:
        return [
            self.buffer.append("event", {"model": "m", "state": "x", "at": 1.0, "pad": "p" * 300})
            for _ in range(n)
        ]

    def send(self) -> TelemetryBatch | None:
        before = len(self.wire.sent)
        self.uploader.pump(self.now)
        return self.wire.sent[-1] if len(self.wire.sent) > before else None

    def deliver(self, batch: TelemetryBatch) -> None:
        """The hub gets ``batch`` and its ack comes back (which may send the next one)."""
        self.uploader.on_ack(self.hub.receive(batch), self.now)

    def next_on_wire(self) -> TelemetryBatch:
        """The oldest batch the wire has not delivered or lost yet (taken off the wire)."""
        batch = self.wire.sent[self.taken]
        self.taken += 1
        return batch

    def run(self, max_batches: int = 100) -> None:
        """Deliver everything on the wire and whatever that sends, until all is quiet."""
        self.send()
        while self.taken < len(self.wire.sent):
            assert self.taken < max_batches, "the uploader does not stop sending"
            self.deliver(self.next_on_wire())

    def restart(self) -> None:
        self.buffer.close()
        self.buffer = TelemetryBuffer(self.path, 1 << 20, first_seq=1)
        self.uploader = uploader(self.buffer, self.wire)


def uploader(buffer: TelemetryBuffer, wire: Wire) -> TelemetryUploader:
    transport: Any = wire  # publish() and connected: all the uploader uses
    return TelemetryUploader(
        buffer, transport, Topics(), DEVICE, ack_timeout_s=TIMEOUT_S, max_bytes=2000
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    path = tmp_path / "telemetry.db"
    buffer = TelemetryBuffer(path, 1 << 20, first_seq=1)
    wire = Wire()
    r = Rig(path, buffer, wire, Hub(), uploader(buffer, wire))
    yield r
    r.buffer.close()


def test_the_first_batch_claims_nothing_and_later_ones_claim_the_acked_seq(rig: Rig) -> None:
    seqs = rig.add(12)
    rig.run()
    batches = rig.wire.sent
    assert len(batches) > 2  # 2000-byte batches: several
    assert batches[0].after_seq is None
    for before, batch in zip(batches, batches[1:], strict=False):
        assert batch.after_seq == before.last_seq
    assert sorted(rig.hub.stored) == seqs and set(rig.hub.stored.values()) == {1}
    assert rig.buffer.records() == []


def test_a_lost_batch_is_sent_again_from_the_lowest_unacked_record(rig: Rig) -> None:
    rig.add(12)
    rig.send()
    first = rig.next_on_wire()
    rig.deliver(first)
    lost = rig.next_on_wire()  # the ack of the first sent the second: lost on the way
    assert lost.first_seq == first.last_seq + 1
    rig.add(3)
    assert rig.send() is None  # one batch in flight: nothing newer overtakes it
    rig.now += TIMEOUT_S
    again = rig.send()
    assert again is not None and again.first_seq == lost.first_seq
    assert again.after_seq == first.last_seq
    rig.run()
    assert sorted(rig.hub.stored) == list(range(1, 16))
    assert set(rig.hub.stored.values()) == {1}
    assert rig.buffer.records() == []
    assert rig.hub.cursor == AckCursor(15)


def test_a_hub_behind_the_device_gets_the_batch_again_at_once_with_a_lower_claim(
    rig: Rig,
) -> None:
    rig.add(12)
    rig.run()
    acked = rig.hub.cursor.contiguous
    assert acked == 12
    # The fleet database came back from an older copy: the hub holds up to 5 only.
    rig.hub.cursor = AckCursor(5)
    rig.add(4)
    sent = len(rig.wire.sent)
    rig.run()
    claims = [b.after_seq for b in rig.wire.sent[sent:]]
    assert claims[:2] == [12, 5]  # refused once, then claims the hub's own ack
    assert rig.uploader.claims_lowered == 1
    assert rig.hub.cursor == AckCursor(16) and rig.buffer.records() == []


def test_an_old_ack_below_the_batch_waits_for_the_timeout(rig: Rig) -> None:
    rig.add(12)
    rig.send()
    first = rig.next_on_wire()
    rig.deliver(first)
    second = rig.wire.sent[-1]
    assert second.after_seq == first.last_seq
    # A late copy of the first ack: at the claim, below the batch. Nothing is resent.
    rig.uploader.on_ack(Ack(first.last_seq), rig.now)
    assert rig.wire.sent[-1] is second and rig.uploader.claims_lowered == 0
    rig.now += TIMEOUT_S
    rig.run()
    assert rig.buffer.records() == []


def test_after_a_restart_the_first_batch_claims_the_persisted_ack(rig: Rig) -> None:
    rig.add(12)
    rig.send()
    first = rig.next_on_wire()
    rig.deliver(first)
    in_flight = rig.next_on_wire()  # lost with the agent
    rig.restart()  # killed with a batch in flight, its ack never came
    again = rig.send()
    assert again is not None
    assert (again.first_seq, again.after_seq) == (in_flight.first_seq, first.last_seq)
    rig.run()
    assert rig.buffer.records() == [] and set(rig.hub.stored.values()) == {1}
    assert sorted(rig.hub.stored) == list(range(1, 13))


def test_a_hub_that_never_takes_the_batch_is_not_flooded(rig: Rig) -> None:
    rig.add(12)
    rig.run()
    rig.add(2)

    class StuckHub(Hub):
        def receive(self, batch: TelemetryBatch) -> Ack:
            return Ack(0)  # answers, never stores (a broken hub)

    rig.hub = StuckHub()
    sent = len(rig.wire.sent)
    for _ in range(5):
        rig.run(max_batches=len(rig.wire.sent) + 10)
        rig.now += TIMEOUT_S
    # Per ack timeout: the batch, then once more claiming the hub's ack; no storm.
    assert len(rig.wire.sent) - sent <= 2 * 5
    assert len(rig.buffer.records()) == 2  # nothing deleted without a real ack

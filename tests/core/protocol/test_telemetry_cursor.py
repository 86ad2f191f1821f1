"""``after_seq`` on the wire and the hub's ack rule (:class:`AckCursor`), without I/O.

The property test plays a sender that follows the protocol (lowest unacked record first or
several batches in flight, each with an honest ``after_seq``), a network that loses,
duplicates and reorders batches and acks, and a hub that stores records and acks what its
cursor says. Whatever the network does, the hub never acks a seq it neither stored nor the
device gave up, and once the network delivers again everything ends stored and acked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord, decode_telemetry, encode_json
from edgefleet.core.protocol.telemetry import AckCursor


def _records(*seqs: int) -> list[TelemetryRecord]:
    return [TelemetryRecord(s, "event", {"n": s}) for s in seqs]


# -- the field on the wire ------------------------------------------------------------


def test_after_seq_round_trips_and_is_left_out_when_none() -> None:
    batch = TelemetryBatch.of("pi", _records(5, 7), after_seq=3)
    assert decode_telemetry(encode_json(batch)) == batch
    plain = TelemetryBatch.of("pi", _records(5, 7))
    assert "after_seq" not in json.loads(encode_json(plain))
    assert decode_telemetry(encode_json(plain)).after_seq is None


def test_a_batch_from_an_agent_without_the_field_decodes_with_none() -> None:
    old = {"v": 1, "device": "pi", "first_seq": 1, "last_seq": 1,
           "records": [{"seq": 1, "kind": "event", "body": {}}]}  # fmt: skip
    assert decode_telemetry(json.dumps(old).encode()).after_seq is None
    old["after_seq"] = None
    assert decode_telemetry(json.dumps(old).encode()).after_seq is None


@pytest.mark.parametrize(
    ("after_seq", "problem"),
    [
        (5, "below first_seq"),
        (9, "below first_seq"),
        (-1, "after_seq"),
        ("3", "integer"),
        (True, "integer"),
    ],  # fmt: skip
)
def test_an_after_seq_that_does_not_precede_the_batch_is_the_devices_error(
    after_seq: object, problem: str
) -> None:
    raw = {"v": 1, "device": "pi", "first_seq": 5, "last_seq": 6, "after_seq": after_seq,
           "records": [{"seq": 5, "kind": "event", "body": {}},
                       {"seq": 6, "kind": "event", "body": {}}]}  # fmt: skip
    with pytest.raises(ProtocolError, match=problem) as info:
        decode_telemetry(json.dumps(raw).encode())
    assert info.value.side == "device"


def test_pack_counts_after_seq_in_the_size() -> None:
    records = [TelemetryRecord(i, "event", {"pad": "x" * 100}) for i in range(10**12, 10**12 + 40)]
    for after in (None, 10**12 - 1):
        batch = TelemetryBatch.pack("pi", records, max_bytes=2000, after_seq=after)
        assert batch is not None and batch.after_seq == after
        assert len(encode_json(batch)) <= 2000
        grown = TelemetryBatch.of("pi", records[: len(batch.records) + 1], after_seq=after)
        assert len(encode_json(grown)) > 2000


# -- the cursor, case by case ---------------------------------------------------------


@dataclass(frozen=True)
class Step:
    after_seq: int | None
    last_seq: int
    ack: int | None  # contiguous after the step
    pending: tuple[tuple[int, int], ...] = ()


CASES = {
    "first batch": [Step(None, 10, 10)],
    "unknown device with a claim": [Step(7, 10, 10)],
    "follows on": [Step(None, 10, 10), Step(10, 20, 20)],
    "follows on after a gap the device made": [Step(None, 10, 10), Step(10, 25, 25)],
    "old agent (no after_seq) keeps the old rule": [Step(None, 10, 10), Step(None, 30, 30)],
    "lost batch, then the next": [Step(None, 10, 10), Step(20, 30, 10, ((20, 30),))],
    "the lost batch comes: jump": [
        Step(None, 10, 10), Step(20, 30, 10, ((20, 30),)), Step(10, 20, 30)],
    "two lost, filled from the back": [
        Step(None, 10, 10), Step(30, 40, 10, ((30, 40),)), Step(20, 30, 10, ((20, 40),)),
        Step(10, 20, 40)],
    "two holes, one filled": [
        Step(None, 10, 10), Step(20, 30, 10, ((20, 30),)), Step(40, 50, 10, ((20, 30), (40, 50))),
        Step(10, 20, 30, ((40, 50),))],
    "a late duplicate never lowers": [Step(None, 10, 10), Step(10, 20, 20), Step(None, 10, 20)],
    "a resend covering a pending span": [
        Step(None, 10, 10), Step(20, 30, 10, ((20, 30),)), Step(10, 35, 35)],
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_cursor_cases(name: str) -> None:
    cursor = AckCursor()
    for step in CASES[name]:
        cursor = cursor.receive(step.after_seq, step.last_seq)
        assert (cursor.contiguous, cursor.pending) == (step.ack, step.pending), step


def test_covers_says_what_the_hub_holds_or_the_device_gave_up() -> None:
    cursor = AckCursor(10, ((20, 30),))
    assert [s for s in range(0, 35) if cursor.covers(s)] == [*range(0, 11), *range(21, 31)]
    assert not AckCursor().covers(0)


# -- the cursor under loss, duplication and reordering --------------------------------


@dataclass
class Sender:
    """A device that keeps the protocol: ``after_seq`` is the highest seq below the batch
    with no unacked record left in between, and only one batch is in flight until the
    first ack (a hub without a cursor for the device takes any batch as following on)."""

    records: list[int]  # every seq it ever produced, increasing, with gaps
    known: bool  # the hub holds a cursor for this device (it acked before)
    acked: int = 0
    pending: list[int] = field(default_factory=list)
    in_flight_through: int = 0  # highest seq sent since the last resend from the bottom

    def __post_init__(self) -> None:
        self.pending = list(self.records)

    def next_batch(self, size: int, from_bottom: bool) -> TelemetryBatch | None:
        if from_bottom:
            self.in_flight_through = self.acked
        elif not self.known and self.in_flight_through > 0:
            return None
        unsent = [s for s in self.pending if s > self.in_flight_through]
        if not unsent:
            return None
        chosen = unsent[:size]
        # Honest: nothing unacked between this and the first record (everything unacked
        # below was sent in batches still in flight, up to in_flight_through).
        below = [s for s in self.pending if s < chosen[0]]
        after = below[-1] if below else (self.acked or None)
        self.in_flight_through = chosen[-1]
        return TelemetryBatch.of("pi", _records(*chosen), after_seq=after)

    def on_ack(self, highest: int) -> None:
        self.known = True
        self.acked = max(self.acked, highest)
        self.pending = [s for s in self.pending if s > highest]


@dataclass
class Hub:
    cursor: AckCursor = field(default_factory=AckCursor)
    stored: dict[int, int] = field(default_factory=dict)  # seq -> times stored

    def receive(self, batch: TelemetryBatch) -> int | None:
        for r in batch.records:
            if r.seq not in self.stored:  # dedupe on (device, seq)
                self.stored[r.seq] = 1
        self.cursor = self.cursor.receive(batch.after_seq, batch.last_seq)
        return self.cursor.contiguous


@st.composite
def seq_lists(draw: st.DrawFn) -> list[int]:
    gaps = draw(st.lists(st.integers(1, 4), min_size=1, max_size=40))
    seqs, s = [], 0
    for g in gaps:
        s += g
        seqs.append(s)
    return seqs


@settings(max_examples=400, deadline=None)
@given(
    known=st.booleans(),
    seqs=seq_lists(),
    actions=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "send",
                    "send",
                    "resend",
                    "deliver",
                    "deliver",
                    "lose",
                    "dup",
                    "ack",
                    "ack",
                    "lose_ack",
                ]
            ),  # fmt: skip
            st.integers(1, 6),
            st.integers(0, 50),
        ),
        max_size=80,
    ),
)
def test_loss_duplication_and_reordering_never_ack_what_is_not_stored(
    known: bool, seqs: list[int], actions: list[tuple[str, int, int]]
) -> None:
    # A known device: the hub acked up to 0 before (seqs start at 1).
    sender, hub = Sender(seqs, known), Hub(AckCursor(0) if known else AckCursor())
    wire: list[TelemetryBatch] = []
    acks: list[int] = []

    def check(ack: int | None) -> None:
        if ack is not None:
            missing = [s for s in seqs if s <= ack and s not in hub.stored]
            assert not missing, f"acked {ack} without {missing}"

    for action, size, pick in actions:
        if action in ("send", "resend"):
            batch = sender.next_batch(size, from_bottom=action == "resend")
            if batch is not None:
                wire.append(batch)
        elif action in ("deliver", "lose", "dup") and wire:
            batch = wire.pop(pick % len(wire))  # any order
            if action == "dup":
                wire.append(batch)
            if action != "lose":
                ack = hub.receive(batch)
                check(ack)
                if ack is not None:
                    acks.append(ack)
        elif action in ("ack", "lose_ack") and acks:
            ack = acks.pop(pick % len(acks))
            if action == "ack":
                sender.on_ack(ack)
    # The network heals: what is in flight arrives, the sender resends from its lowest
    # unacked record until everything is acked. Each round acks at least one more record.
    for batch in wire:
        check(hub.receive(batch))
    for ack in acks:
        sender.on_ack(ack)
    for _ in range(len(seqs) + 1):
        batch = sender.next_batch(6, from_bottom=True)
        if batch is None:
            break
        ack = hub.receive(batch)
        check(ack)
        assert ack is not None
        sender.on_ack(ack)
    assert sender.pending == []
    assert set(hub.stored) == set(seqs)
    assert hub.cursor == AckCursor(seqs[-1])


def test_a_hub_behind_the_devices_acks_is_caught_up_by_a_lower_claim() -> None:
    # The hub's database came back from an older copy: it acks 10, the device had 30
    # acked. A batch claiming after_seq=30 waits; the same batch resent claiming the
    # hub's own cursor (the device holds nothing below it) follows on.
    cursor = AckCursor(10).receive(30, 40)
    assert cursor.contiguous == 10
    cursor = cursor.receive(10, 40)
    assert cursor == AckCursor(40)

"""Telemetry upload: lease records from the buffer, publish a batch, delete on the hub's ack.

At-least-once on the wire, exactly-once at the hub (it dedupes on (device, seq)):

- One batch is in flight at a time: the buffer hands out one lease, the batch holds
  the longest prefix of it that fits one message, and the next lease is taken only
  after the hub acked (or the ack timed out).
- Records leave the buffer only through ``buffer.ack(highest_seq)`` when an
  :class:`~edgefleet.core.protocol.Ack` arrives; the buffer clamps the ack to what it
  ever handed out, so a confused hub cannot delete unsent records.
- A batch not acked within ``ack_timeout_s``, and every batch in flight when the
  connection drops, is released and sent again (same seqs; the hub drops duplicates).
  "Again" means a new lease: it starts at the lowest unacked record in the buffer, never
  at the batch that happened to be in flight, so nothing below it can be skipped.
- Every batch carries ``after_seq`` (see ``edgefleet.core.protocol.telemetry``): the
  highest seq the hub has acked to this device (the lease's ``covers_from - 1``; absent
  while nothing was ever acked). The hub acks past a batch only when the batch follows on
  from what it holds. Since a batch always starts at the lowest unacked record, any lower
  ``after_seq`` is honest too: when the hub acks less than the in-flight batch claims (its
  database came back from an older copy, or the ack is an old one), the batch is sent again
  at once claiming that ack, which the hub takes. Each such resend claims strictly less
  than the one before, so it cannot go on forever; otherwise an ack below the batch waits
  for the ack timeout as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from edgefleet.agent.telemetry.buffer import Lease
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.mqtt import MqttTransport
from edgefleet.core.protocol import Ack, TelemetryBatch, TelemetryRecord, Topics, encode_json

log = logging.getLogger("edgefleet.agent.sync")


class LeasingBuffer(Protocol):
    def lease(
        self, now: float, *, max_records: int = ..., max_bytes: int = ...
    ) -> Lease | None: ...

    def ack(self, highest_seq: int) -> int: ...

    def release_lease(self) -> None: ...


@dataclass(frozen=True)
class InFlight:
    first_seq: int
    last_seq: int
    records: int
    sent_at: float
    after_seq: int | None = None


class TelemetryUploader:
    """Moves buffered telemetry to the hub; every method runs on the sync worker."""

    def __init__(
        self,
        buffer: LeasingBuffer,
        transport: MqttTransport,
        topics: Topics,
        device_id: str,
        *,
        ack_timeout_s: float,
        max_bytes: int,
    ) -> None:
        self.buffer = buffer
        self.transport = transport
        self.topic = topics.telemetry(device_id)
        self.device_id = device_id
        self.ack_timeout_s = ack_timeout_s
        self.max_bytes = max_bytes
        self.in_flight: InFlight | None = None
        # The last ack heard (not persisted: after a restart the buffer's acked seq is
        # claimed first, and a hub behind it says so with its next ack).
        self.hub_ack: int | None = None
        self.batches_sent = 0
        self.records_acked = 0
        self.resends = 0
        self.claims_lowered = 0  # batches sent again at once because the hub is behind

    def pump(self, now: float) -> bool:
        """Send the next batch if none is in flight; True when one was published."""
        if not self.transport.connected:
            return False
        if self.in_flight is not None:
            if now - self.in_flight.sent_at < self.ack_timeout_s:
                return False
            log.info(
                "telemetry %d..%d not acked after %.0f s; sending again",
                self.in_flight.first_seq,
                self.in_flight.last_seq,
                self.ack_timeout_s,
            )
            self.resends += 1
            self._release()
        try:
            lease = self.buffer.lease(now, max_bytes=self.max_bytes)
        except EdgefleetError as e:
            log.error("telemetry lease failed: %s", e)
            return False
        if lease is None:
            return False
        records = [TelemetryRecord(r.seq, r.kind, r.body) for r in lease.records]
        try:
            batch = TelemetryBatch.pack(self.device_id, records, after_seq=self._claim(lease))
        except ValueError as e:
            log.error("telemetry batch cannot be built: %s", e)
            self.buffer.release_lease()
            return False
        assert batch is not None
        self.transport.publish(self.topic, encode_json(batch))
        self.in_flight = InFlight(
            batch.first_seq, batch.last_seq, len(batch.records), now, batch.after_seq
        )
        self.batches_sent += 1
        return True

    def _claim(self, lease: Lease) -> int | None:
        """``after_seq`` for a batch of ``lease``: what the hub acked, or less if it says so.

        The lease starts at the lowest unacked record, so nothing unacked lies below it:
        every value up to ``covers_from - 1`` (the buffer's acked seq) is an honest claim.
        """
        claim = lease.covers_from - 1
        if self.hub_ack is not None:
            claim = min(claim, self.hub_ack)
        return claim if claim > 0 else None

    def on_ack(self, ack: Ack, now: float) -> int:
        """The hub stored everything up to ``ack.highest_seq``; returns records deleted."""
        try:
            deleted = self.buffer.ack(ack.highest_seq)
        except EdgefleetError as e:
            log.error("telemetry ack %d not applied: %s", ack.highest_seq, e)
            return 0
        self.records_acked += deleted
        self.hub_ack = ack.highest_seq
        flight = self.in_flight
        if flight is not None and ack.highest_seq >= flight.last_seq:
            # The batch may have carried only a prefix of its lease: release the rest
            # so it goes out now rather than when the lease expires.
            self._release()
            self.pump(now)
        elif (
            flight is not None
            and flight.after_seq is not None
            and ack.highest_seq < flight.after_seq
        ):
            # The hub holds less than this batch claims it acked: it will not take the
            # batch as following on. Send it again claiming the hub's own ack (strictly
            # lower than this claim, so this cannot repeat forever).
            log.warning(
                "telemetry: hub acked %d, below the %d it acked before; sending %d.. again",
                ack.highest_seq,
                flight.after_seq,
                flight.first_seq,
            )
            self.claims_lowered += 1
            self._release()
            self.pump(now)
        return deleted

    def on_disconnect(self) -> None:
        """Whatever was in flight is sent again after the reconnect."""
        self._release()

    def _release(self) -> None:
        self.in_flight = None
        try:
            self.buffer.release_lease()
        except EdgefleetError as e:
            log.error("telemetry lease not released: %s", e)

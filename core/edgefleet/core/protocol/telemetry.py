"""Telemetry batches (device -> hub) and the typed record bodies inside them.

A batch carries records with strictly increasing ``seq`` numbers; the hub stores them
deduplicated on (device, seq) and answers with :class:`~edgefleet.core.protocol.messages.Ack`.
Which seq the hub may ack is decided by :class:`AckCursor` (pure, no I/O), from each batch's
``after_seq``.

Invariants:

- Seqs have gaps on purpose (the device merges and drops records before sending them), so
  the hub cannot tell a gap from a lost batch by looking at seqs. ``after_seq`` says it: the
  sender claims that it will never send a record with a seq in ``(after_seq, first_seq)``
  (those were acked, merged or dropped), i.e. the batch follows on from ``after_seq``.
  ``None`` (absent on the wire, as from agents older than the field) claims that for every
  seq below ``first_seq``: such a batch always follows on, which is the behaviour from
  before the field existed.
- :class:`AckCursor` acks only seqs the hub stored or the device gave up on purpose: it
  advances when a batch follows on from its cursor and otherwise remembers the batch's span
  ``(after_seq, last_seq]`` until the batches before it arrive, then jumps over it.

- Decoding a batch validates the envelope (device, seqs, record kinds, bodies are objects)
  but not the bodies themselves: a body is checked when it is read through
  :meth:`TelemetryRecord.window` or :meth:`TelemetryRecord.event`. One bad record therefore
  cannot block the batch forever (the agent would resend it until acked); the hub stores
  and acks the batch and counts the bad record. Unknown kinds are accepted the same way so
  a newer agent can add kinds.
- Latency histograms: ``counts`` has ``len(edges) + 1`` buckets; bucket ``i`` counts
  latencies ``<= edges[i]`` and ``> edges[i-1]``; the last bucket counts ``> edges[-1]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol.fields import PROTOCOL_VERSION, FieldReader, dump_json
from edgefleet.core.protocol.limits import (
    MAX_RECORD_KIND_LENGTH,
    MAX_RECORDS_PER_BATCH,
    MAX_TELEMETRY_BYTES,
)
from edgefleet.core.protocol.messages import DEVICE, build

WINDOW = "window"
EVENT = "event"
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_MAX_BUCKETS = 256


@dataclass(frozen=True)
class LatencyHistogram:
    """Latency in milliseconds, bucketed by upper ``edges`` (see module docstring)."""

    edges: tuple[float, ...] = ()
    counts: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError("latency_ms.counts must have len(edges) + 1 entries")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("latency_ms.edges must be strictly increasing")
        if any(c < 0 for c in self.counts):
            raise ValueError("latency_ms.counts must be non-negative")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "counts": list(self.counts)}

    @classmethod
    def read(cls, r: FieldReader) -> LatencyHistogram:
        edges = r.items("edges", max_items=_MAX_BUCKETS)
        counts = r.items("counts", max_items=_MAX_BUCKETS + 1)
        checked_edges = tuple(r.check_number(f"edges[{i}]", e, None) for i, e in enumerate(edges))
        checked_counts = tuple(
            r.check_integer(f"counts[{i}]", c, 0, None) for i, c in enumerate(counts)
        )
        return build(r.what, r.side, lambda: cls(checked_edges, checked_counts))


@dataclass(frozen=True)
class WindowSummary:
    """Body of a ``window`` record: one model version's inference over one time window."""

    model: str
    version: int
    start_s: float
    end_s: float
    requests: int
    errors: Mapping[str, int] = field(default_factory=dict)
    schema_violations: int = 0
    latency_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    predictions: Mapping[str, int] = field(default_factory=dict)
    drift: str | None = None  # base64 of WindowStats.to_bytes()
    confusion: Mapping[str, Any] | None = None  # ConfusionCounts.to_dict()

    def __post_init__(self) -> None:
        if self.end_s < self.start_s:
            raise ValueError("end_s must not be before start_s")
        if self.requests < 0 or self.schema_violations < 0:
            raise ValueError("counts must be non-negative")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "requests": self.requests,
            "errors": dict(self.errors),
            "schema_violations": self.schema_violations,
            "latency_ms": self.latency_ms.to_dict(),
            "predictions": dict(self.predictions),
            "drift": self.drift,
            "confusion": None if self.confusion is None else dict(self.confusion),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> WindowSummary:
        r = FieldReader(data, what="telemetry window", side=side)
        latency_raw = r.opt_obj("latency_ms")
        latency = (
            LatencyHistogram()
            if latency_raw is None
            else LatencyHistogram.read(r.nested("latency_ms", latency_raw))
        )
        return build(
            r.what,
            side,
            lambda: cls(
                model=r.text("model", max_len=128),
                version=r.integer("version", minimum=0),
                start_s=r.number("start_s", minimum=0.0),
                end_s=r.number("end_s", minimum=0.0),
                requests=r.integer("requests", minimum=0),
                errors=r.count_map("errors"),
                schema_violations=r.opt_integer("schema_violations", minimum=0) or 0,
                latency_ms=latency,
                predictions=r.count_map("predictions", max_items=4096),
                drift=r.opt_text("drift", max_len=MAX_TELEMETRY_BYTES),
                confusion=r.opt_obj("confusion"),
            ),
        )


@dataclass(frozen=True)
class DeploymentEvent:
    """Body of an ``event`` record: a deployment step or refusal on the device."""

    model: str
    version: int | None
    state: str
    at: float
    reason: str | None = None
    rollout_id: str | None = None
    bundle_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "at": self.at,
        }
        if self.rollout_id is not None:
            out["rollout_id"] = self.rollout_id
        if self.bundle_sha256 is not None:
            out["bundle_sha256"] = self.bundle_sha256
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> DeploymentEvent:
        r = FieldReader(data, what="telemetry event", side=side)
        return cls(
            model=r.text("model", max_len=128),
            version=r.opt_integer("version", minimum=0),
            state=r.text("state", max_len=64),
            at=r.number("at", minimum=0.0),
            reason=r.opt_text("reason", max_len=4096),
            rollout_id=r.opt_text("rollout_id", max_len=128),
            bundle_sha256=r.opt_sha256("bundle_sha256"),
        )


@dataclass(frozen=True)
class TelemetryRecord:
    """One buffered record: ``kind`` "window" or "event" (others tolerated), a JSON body."""

    seq: int
    kind: str
    body: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise ValueError("seq must be >= 0")
        if len(self.kind) > MAX_RECORD_KIND_LENGTH or not _KIND.fullmatch(self.kind):
            raise ValueError(f"invalid record kind {self.kind[:40]!r}")

    @classmethod
    def of_window(cls, seq: int, summary: WindowSummary) -> TelemetryRecord:
        return cls(seq, WINDOW, summary.to_dict())

    @classmethod
    def of_event(cls, seq: int, event: DeploymentEvent) -> TelemetryRecord:
        return cls(seq, EVENT, event.to_dict())

    def window(self, *, side: str = DEVICE) -> WindowSummary:
        """The body as a WindowSummary; ProtocolError if it is not a valid one."""
        if self.kind != WINDOW:
            raise ProtocolError(f"record {self.seq}: kind is {self.kind!r}, not 'window'", side)
        return WindowSummary.from_dict(self.body, side=side)

    def event(self, *, side: str = DEVICE) -> DeploymentEvent:
        """The body as a DeploymentEvent; ProtocolError if it is not a valid one."""
        if self.kind != EVENT:
            raise ProtocolError(f"record {self.seq}: kind is {self.kind!r}, not 'event'", side)
        return DeploymentEvent.from_dict(self.body, side=side)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "body": dict(self.body)}


@dataclass(frozen=True)
class TelemetryBatch:
    """Records ``first_seq .. last_seq`` (strictly increasing, not necessarily contiguous).

    ``after_seq``: the sender will never send a record with a seq in
    ``(after_seq, first_seq)``; None claims it for every seq below ``first_seq`` (see the
    module docstring).
    """

    device: str
    first_seq: int
    last_seq: int
    records: tuple[TelemetryRecord, ...]
    v: int = PROTOCOL_VERSION
    after_seq: int | None = None

    def __post_init__(self) -> None:
        if self.after_seq is not None and not 0 <= self.after_seq < self.first_seq:
            raise ValueError("after_seq must be >= 0 and below first_seq")
        if not self.records:
            raise ValueError("a batch holds at least one record")
        if len(self.records) > MAX_RECORDS_PER_BATCH:
            raise ValueError(f"more than {MAX_RECORDS_PER_BATCH} records")
        seqs = [r.seq for r in self.records]
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
            raise ValueError("record seqs must be strictly increasing")
        if self.first_seq != seqs[0] or self.last_seq != seqs[-1]:
            raise ValueError("first_seq/last_seq must match the first and last record")

    @classmethod
    def of(
        cls, device: str, records: Sequence[TelemetryRecord], *, after_seq: int | None = None
    ) -> TelemetryBatch:
        return cls(device, records[0].seq, records[-1].seq, tuple(records), after_seq=after_seq)

    @classmethod
    def pack(
        cls,
        device: str,
        records: Sequence[TelemetryRecord],
        *,
        max_bytes: int = MAX_TELEMETRY_BYTES,
        max_records: int = MAX_RECORDS_PER_BATCH,
        after_seq: int | None = None,
    ) -> TelemetryBatch | None:
        """The longest prefix of ``records`` whose encoded batch fits ``max_bytes``.

        None when ``records`` is empty. A single record that alone is too large is a bug in
        the producer and raises ValueError rather than blocking the buffer silently.
        """
        if not records:
            return None
        chosen: list[TelemetryRecord] = []
        # Envelope overhead measured once; each record adds its own JSON plus a comma.
        size = len(dump_json(cls.of(device, records[:1], after_seq=after_seq).to_dict())) - len(
            dump_json(records[0].to_dict())
        )
        for record in records[:max_records]:
            extra = len(dump_json(record.to_dict())) + (1 if chosen else 0)
            if size + extra > max_bytes:
                break
            chosen.append(record)
            size += extra
        if not chosen:
            raise ValueError(f"telemetry record {records[0].seq} alone exceeds {max_bytes} bytes")
        return cls.of(device, chosen, after_seq=after_seq)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "device": self.device,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "records": [r.to_dict() for r in self.records],
        }
        if self.after_seq is not None:
            out["after_seq"] = self.after_seq
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> TelemetryBatch:
        r = FieldReader(data, what="telemetry", side=side)
        v = r.version()
        device = r.text("device", max_len=64)
        first_seq = r.integer("first_seq", minimum=0)
        last_seq = r.integer("last_seq", minimum=0)
        after_seq = r.opt_integer("after_seq", minimum=0)
        records: list[TelemetryRecord] = []
        for i, raw in enumerate(r.items("records", max_items=MAX_RECORDS_PER_BATCH)):
            rr = r.nested(f"records[{i}]", raw)
            seq = rr.integer("seq", minimum=0)
            kind = rr.text("kind", max_len=MAX_RECORD_KIND_LENGTH)
            body = rr.obj("body")
            records.append(build(rr.what, side, partial(TelemetryRecord, seq, kind, body)))
        return build(
            "telemetry",
            side,
            lambda: cls(device, first_seq, last_seq, tuple(records), v, after_seq),
        )


#: At most this many separate spans wait beyond a device's cursor (see :class:`AckCursor`).
MAX_PENDING_SPANS = 64


@dataclass(frozen=True)
class AckCursor:
    """What a hub may ack for one device: pure, persisted by the hub after every batch.

    ``contiguous``: every seq up to it is stored at the hub or was given up by the device on
    purpose (None: nothing known yet). ``pending``: disjoint spans ``(after, last]``, sorted,
    all above ``contiguous``, whose records are stored but which do not follow on from
    ``contiguous`` yet: a batch before them is missing (lost in transit, or still coming).

    Rules (``receive``):

    - a batch follows on when the cursor is None (a device the hub has no cursor for, or a
      hub that lost its database: the records below were acked before or are gone), when
      its ``after_seq`` is None (a first batch, or an agent without the field: the
      behaviour from before the field), or when ``after_seq <= contiguous``. Then
      ``contiguous`` becomes ``max(contiguous, last_seq)`` and jumps over every pending
      span that now follows on;
    - otherwise its span joins ``pending`` (merged with spans it overlaps or touches) and
      ``contiguous`` stays: the hub acks only that, and the device resends from its lowest
      unacked record.

    ``contiguous`` never goes down, so a late duplicate of an old batch changes nothing.
    """

    contiguous: int | None = None
    pending: tuple[tuple[int, int], ...] = ()

    def follows(self, after_seq: int | None) -> bool:
        """True when a batch with this ``after_seq`` follows on from the cursor."""
        return self.contiguous is None or after_seq is None or after_seq <= self.contiguous

    def receive(self, after_seq: int | None, last_seq: int) -> AckCursor:
        """The cursor after a batch ``(after_seq, last_seq]`` was stored."""
        if self.follows(after_seq):
            start = last_seq if self.contiguous is None else max(self.contiguous, last_seq)
            return AckCursor(start, self.pending).settled()
        assert after_seq is not None
        return AckCursor(self.contiguous, _merge_span(self.pending, (after_seq, last_seq)))

    def settled(self) -> AckCursor:
        """Jump over pending spans that follow on from ``contiguous``; drop covered ones."""
        if self.contiguous is None:
            return self
        cursor = self.contiguous
        left: list[tuple[int, int]] = []
        for after, last in sorted(self.pending):
            if after <= cursor:
                cursor = max(cursor, last)
            else:
                left.append((after, last))
        return AckCursor(cursor, tuple(span for span in left if span[1] > cursor))

    def covers(self, seq: int) -> bool:
        """True when ``seq`` is at or below ``contiguous`` or inside a pending span."""
        if self.contiguous is not None and seq <= self.contiguous:
            return True
        return any(after < seq <= last for after, last in self.pending)


def _merge_span(
    spans: tuple[tuple[int, int], ...], span: tuple[int, int]
) -> tuple[tuple[int, int], ...]:
    # (a1, l1] and (a2, l2] that overlap or touch (a2 <= l1 and a1 <= l2) are one span: every
    # seq in their union was stored or given up by the device.
    after, last = span
    kept: list[tuple[int, int]] = []
    for a, b in spans:
        if a <= last and after <= b:
            after, last = min(after, a), max(last, b)
        else:
            kept.append((a, b))
    kept.append((after, last))
    return tuple(sorted(kept))

"""Telemetry batches (device -> hub) and the typed record bodies inside them.

A batch carries records with strictly increasing ``seq`` numbers; the hub stores them
deduplicated on (device, seq) and answers with :class:`~edgefleet.core.protocol.messages.Ack`.

Invariants:

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

import math
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

    def quantile(self, q: float) -> float | None:
        """Upper edge of the bucket holding quantile ``q`` (None when empty).

        Above the last edge the answer is ``inf``: the histogram cannot say more.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be within 0..1")
        total = self.total
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total - 1e-9))
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return self.edges[i] if i < len(self.edges) else float("inf")
        return float("inf")

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
        if len(self.kind) > MAX_RECORD_KIND_LENGTH or not _KIND.match(self.kind):
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
    """Records ``first_seq .. last_seq`` (strictly increasing, not necessarily contiguous)."""

    device: str
    first_seq: int
    last_seq: int
    records: tuple[TelemetryRecord, ...]
    v: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
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
    def of(cls, device: str, records: Sequence[TelemetryRecord]) -> TelemetryBatch:
        return cls(device, records[0].seq, records[-1].seq, tuple(records))

    @classmethod
    def pack(
        cls,
        device: str,
        records: Sequence[TelemetryRecord],
        *,
        max_bytes: int = MAX_TELEMETRY_BYTES,
        max_records: int = MAX_RECORDS_PER_BATCH,
    ) -> TelemetryBatch | None:
        """The longest prefix of ``records`` whose encoded batch fits ``max_bytes``.

        None when ``records`` is empty. A single record that alone is too large is a bug in
        the producer and raises ValueError rather than blocking the buffer silently.
        """
        if not records:
            return None
        chosen: list[TelemetryRecord] = []
        # Envelope overhead measured once; each record adds its own JSON plus a comma.
        size = len(dump_json(cls.of(device, records[:1]).to_dict())) - len(
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
        return cls.of(device, chosen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "device": self.device,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> TelemetryBatch:
        r = FieldReader(data, what="telemetry", side=side)
        v = r.version()
        device = r.text("device", max_len=64)
        first_seq = r.integer("first_seq", minimum=0)
        last_seq = r.integer("last_seq", minimum=0)
        records: list[TelemetryRecord] = []
        for i, raw in enumerate(r.items("records", max_items=MAX_RECORDS_PER_BATCH)):
            rr = r.nested(f"records[{i}]", raw)
            seq = rr.integer("seq", minimum=0)
            kind = rr.text("kind", max_len=MAX_RECORD_KIND_LENGTH)
            body = rr.obj("body")
            records.append(build(rr.what, side, partial(TelemetryRecord, seq, kind, body)))
        return build("telemetry", side, lambda: cls(device, first_seq, last_seq, tuple(records), v))

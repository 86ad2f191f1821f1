"""JSON control messages: round trips, tolerance of unknown fields, validation and limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.core.protocol.strategies import (
    acks,
    device_states,
    events,
    fetch_requests,
    statuses,
    telemetry_batches,
    window_summaries,
)

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol import (
    Ack,
    DeviceState,
    FetchRequest,
    Status,
    TelemetryBatch,
    TelemetryRecord,
    WindowSummary,
    decode_ack,
    decode_desired,
    decode_fetch,
    decode_state,
    decode_status,
    decode_telemetry,
    encode_json,
)
from edgefleet.core.protocol.limits import MAX_STATUS_BYTES, MAX_TELEMETRY_BYTES

SHA = "ab" * 32


@given(statuses)
def test_status_round_trip(msg: Status) -> None:
    assert decode_status(encode_json(msg)) == msg


@settings(max_examples=40)
@given(device_states)
def test_state_round_trip(msg: DeviceState) -> None:
    assert decode_state(encode_json(msg)) == msg


@given(fetch_requests())
def test_fetch_round_trip(msg: FetchRequest) -> None:
    decoded = decode_fetch(encode_json(msg))
    assert decoded == msg
    assert decoded.indexes() == msg.indexes()


@given(acks)
def test_ack_round_trip(msg: Ack) -> None:
    assert decode_ack(encode_json(msg)) == msg


@settings(max_examples=40)
@given(telemetry_batches())
def test_telemetry_round_trip_including_typed_bodies(batch: TelemetryBatch) -> None:
    decoded = decode_telemetry(encode_json(batch))
    assert decoded == batch
    for original, record in zip(batch.records, decoded.records, strict=True):
        if record.kind == "window":
            assert record.window() == original.window()
        else:
            assert record.event() == original.event()


@settings(max_examples=40)
@given(window_summaries(), events)
def test_bodies_round_trip_through_records(summary: WindowSummary, event: object) -> None:
    assert TelemetryRecord.of_window(1, summary).window() == summary
    assert TelemetryRecord.of_event(2, event).event() == event  # type: ignore[arg-type]


@given(statuses, st.dictionaries(st.from_regex(r"\Ax_[a-z]{1,8}\Z"), st.integers() | st.text()))
def test_unknown_fields_are_ignored(msg: Status, extra: dict[str, Any]) -> None:
    data = {**msg.to_dict(), **extra}
    assert decode_status(json.dumps(data).encode()) == msg


def _payload(obj: Any) -> bytes:
    return json.dumps(obj).encode()


STATE = {"v": 1, "device": "pi", "agent_version": "0.1", "profile": "rpi4", "at": 1.0}

INVALID = [
    ("status: missing v", decode_status, {"online": True}, "missing field 'v'"),
    ("status: newer major version", decode_status, {"v": 2, "online": True}, "unsupported version"),
    ("status: v is bool", decode_status, {"v": True, "online": True}, "integer"),
    ("status: online not bool", decode_status, {"v": 1, "online": 1}, "true or false"),
    ("status: NaN-free numbers", decode_status, {"v": 1, "online": True, "at": -1}, ">= 0"),
    (
        "state: duplicate models",
        decode_state,
        {**STATE, "models": [{"name": "m"}, {"name": "m"}]},
        "unique",
    ),
    (
        "state: bad slot sha",
        decode_state,
        {**STATE, "models": [{"name": "m", "active": {"version": 1, "bundle_sha256": "x"}}]},
        "bundle_sha256",
    ),
    (
        "state: progress > 1",
        decode_state,
        {
            **STATE,
            "models": [
                {
                    "name": "m",
                    "deployment": {"state": "s", "version": 1, "bundle_sha256": SHA, "progress": 2},
                }
            ],
        },
        "progress",
    ),
    (
        "fetch: window too big",
        decode_fetch,
        {"v": 1, "bundle_sha256": SHA, "chunk_size": 65536, "first": 0, "count": 17},
        "window",
    ),
    (
        "fetch: chunk too small",
        decode_fetch,
        {"v": 1, "bundle_sha256": SHA, "chunk_size": 1, "first": 0, "count": 1},
        "chunk_size",
    ),
    (
        "fetch: bitmap length",
        decode_fetch,
        {
            "v": 1,
            "bundle_sha256": SHA,
            "chunk_size": 65536,
            "first": 0,
            "count": 9,
            "bitmap": "gA==",
        },
        "bitmap",
    ),
    (
        "fetch: empty bitmap",
        decode_fetch,
        {
            "v": 1,
            "bundle_sha256": SHA,
            "chunk_size": 65536,
            "first": 0,
            "count": 8,
            "bitmap": "AA==",
        },
        "no chunk",
    ),
    (
        "fetch: padding bits",
        decode_fetch,
        {
            "v": 1,
            "bundle_sha256": SHA,
            "chunk_size": 65536,
            "first": 0,
            "count": 4,
            "bitmap": "gQ==",
        },
        "padding",
    ),
    (
        "fetch: bad base64",
        decode_fetch,
        {"v": 1, "bundle_sha256": SHA, "chunk_size": 65536, "first": 0, "count": 4, "bitmap": "!!"},
        "base64",
    ),
    (
        "fetch: sha uppercase",
        decode_fetch,
        {"v": 1, "bundle_sha256": SHA.upper(), "chunk_size": 65536, "first": 0, "count": 1},
        "bundle_sha256",
    ),
    (
        "telemetry: empty",
        decode_telemetry,
        {"v": 1, "device": "pi", "first_seq": 1, "last_seq": 1, "records": []},
        "at least one",
    ),
    (
        "telemetry: seq order",
        decode_telemetry,
        {
            "v": 1,
            "device": "pi",
            "first_seq": 2,
            "last_seq": 1,
            "records": [
                {"seq": 2, "kind": "event", "body": {}},
                {"seq": 1, "kind": "event", "body": {}},
            ],
        },
        "increasing",
    ),
    (
        "telemetry: first_seq lies",
        decode_telemetry,
        {
            "v": 1,
            "device": "pi",
            "first_seq": 0,
            "last_seq": 1,
            "records": [{"seq": 1, "kind": "event", "body": {}}],
        },
        "first_seq",
    ),
    (
        "telemetry: body not object",
        decode_telemetry,
        {
            "v": 1,
            "device": "pi",
            "first_seq": 1,
            "last_seq": 1,
            "records": [{"seq": 1, "kind": "event", "body": []}],
        },
        "body",
    ),
    (
        "telemetry: bad kind",
        decode_telemetry,
        {
            "v": 1,
            "device": "pi",
            "first_seq": 1,
            "last_seq": 1,
            "records": [{"seq": 1, "kind": "Bad Kind", "body": {}}],
        },
        "kind",
    ),
    ("ack: negative", decode_ack, {"v": 1, "highest_seq": -1}, ">= 0"),
    ("desired: no signatures", decode_desired, {"directive": {}}, "signatures"),
]


@pytest.mark.parametrize(("case", "decoder", "obj", "needle"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_messages_say_what_is_wrong(case: str, decoder: Any, obj: Any, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        decoder(_payload(obj))


@pytest.mark.parametrize(
    ("decoder", "side"),
    [
        (decode_status, "device"),
        (decode_state, "device"),
        (decode_fetch, "device"),
        (decode_telemetry, "device"),
        (decode_ack, "hub"),
        (decode_desired, "hub"),
    ],
)
def test_errors_name_the_sending_side(decoder: Any, side: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decoder(b"[1, 2]")
    assert info.value.side == side
    assert str(info.value).startswith(f"{side} broke the protocol")


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xfe", b"NaN", b'{"v": 1, "online": true, "at": NaN}', b"[" * 100_000, b"1" * 5000],
    ids=["empty", "not utf-8", "nan", "nan field", "deep nesting", "huge int"],
)
def test_malformed_json_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_status(payload if len(payload) <= MAX_STATUS_BYTES else payload[:MAX_STATUS_BYTES])
    with pytest.raises(ProtocolError):
        decode_telemetry(payload)


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = b'{"v": 1, "online": true, "pad": "' + b"x" * MAX_STATUS_BYTES + b'"}'
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_status(big)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_telemetry(b" " * (MAX_TELEMETRY_BYTES + 1))


def test_record_bodies_are_checked_when_read_not_when_the_batch_decodes() -> None:
    batch = {
        "v": 1,
        "device": "pi",
        "first_seq": 1,
        "last_seq": 3,
        "records": [
            {"seq": 1, "kind": "window", "body": {"model": "m"}},
            {"seq": 2, "kind": "future_kind", "body": {"x": 1}},
            {
                "seq": 3,
                "kind": "event",
                "body": {
                    "model": "m",
                    "version": 2,
                    "state": "committed",
                    "reason": None,
                    "at": 5.0,
                },
            },
        ],
    }
    decoded = decode_telemetry(_payload(batch))
    assert [r.seq for r in decoded.records] == [1, 2, 3]
    with pytest.raises(ProtocolError, match="version") as info:
        decoded.records[0].window()
    assert info.value.side == "device"
    with pytest.raises(ProtocolError, match="not 'event'"):
        decoded.records[1].event()
    assert decoded.records[2].event().state == "committed"


def test_pack_takes_the_longest_prefix_that_fits() -> None:
    records = [TelemetryRecord(i, "event", {"pad": "x" * 100}) for i in range(1, 51)]
    batch = TelemetryBatch.pack("pi", records, max_bytes=2000)
    assert batch is not None
    assert len(encode_json(batch)) <= 2000
    grown = TelemetryBatch.of("pi", records[: len(batch.records) + 1])
    assert len(encode_json(grown)) > 2000
    assert TelemetryBatch.pack("pi", []) is None
    with pytest.raises(ValueError, match="alone exceeds"):
        TelemetryBatch.pack("pi", records, max_bytes=50)


def test_fetch_for_indexes_is_compact() -> None:
    contiguous = FetchRequest.for_indexes(SHA, 65536, [5, 3, 4])
    assert (contiguous.first, contiguous.count, contiguous.bitmap) == (3, 3, None)
    holes = FetchRequest.for_indexes(SHA, 65536, [0, 9])
    assert (holes.first, holes.count) == (0, 10)
    assert holes.bitmap == bytes([0x80, 0x40])
    assert holes.indexes() == (0, 9)

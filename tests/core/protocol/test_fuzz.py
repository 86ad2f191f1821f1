"""Decoders fed random and mutated bytes raise ProtocolError and nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.core.protocol.strategies import (
    acks,
    chunk_frames,
    device_states,
    fetch_requests,
    statuses,
    telemetry_batches,
)

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol import DECODERS, TopicKind, decode, encode_chunk, encode_json

ALL = sorted(DECODERS.items())


def _only_protocol_errors(decoder: Callable[[bytes], object], payload: bytes) -> None:
    try:
        decoder(payload)
    except ProtocolError:
        pass


@pytest.mark.parametrize(("kind", "decoder"), ALL, ids=[k.value for k, _ in ALL])
@settings(max_examples=150)
@given(payload=st.binary(max_size=2048))
def test_random_bytes(kind: TopicKind, decoder: Callable[[bytes], object], payload: bytes) -> None:
    _only_protocol_errors(decoder, payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize(("kind", "decoder"), ALL, ids=[k.value for k, _ in ALL])
@settings(max_examples=80)
@given(value=json_values)
def test_random_json(kind: TopicKind, decoder: Callable[[bytes], object], value: object) -> None:
    _only_protocol_errors(decoder, json.dumps(value).encode())


VALID = {
    TopicKind.STATUS: statuses.map(encode_json),
    TopicKind.STATE: device_states.map(encode_json),
    TopicKind.FETCH: fetch_requests().map(encode_json),
    TopicKind.TELEMETRY: telemetry_batches().map(encode_json),
    TopicKind.ACK: acks.map(encode_json),
    TopicKind.CHUNK: chunk_frames().map(encode_chunk),
}


@pytest.mark.parametrize("kind", sorted(VALID), ids=[k.value for k in sorted(VALID)])
@settings(max_examples=50)
@given(data=st.data())
def test_mutated_valid_payloads(kind: TopicKind, data: st.DataObject) -> None:
    payload = bytearray(data.draw(VALID[kind]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            payload[position] ^= data.draw(st.integers(1, 255))
        elif action == "delete" and len(payload) > 1:
            del payload[position]
        else:
            payload.insert(position, data.draw(st.integers(0, 255)))
    _only_protocol_errors(lambda p: decode(kind, p), bytes(payload))


@settings(max_examples=50)
@given(value=json_values)
def test_mutated_fields_of_valid_messages(value: object) -> None:
    for kind, strategy_payload in (
        (
            TopicKind.FETCH,
            {"v": 1, "bundle_sha256": "ab" * 32, "chunk_size": 1024, "first": 0, "count": 1},
        ),
        (TopicKind.ACK, {"v": 1, "highest_seq": 3}),
    ):
        for key in strategy_payload:
            mutated = {**strategy_payload, key: value}
            _only_protocol_errors(lambda p, k=kind: decode(k, p), json.dumps(mutated).encode())


def test_unknown_kind() -> None:
    with pytest.raises(ProtocolError):
        decode("reboot", b"{}")

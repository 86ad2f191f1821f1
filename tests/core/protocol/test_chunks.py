"""Chunk frames, chunk geometry, the window planner and resumable download progress."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.core.protocol.strategies import chunk_frames

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol import (
    HEADER_SIZE,
    ChunkFrame,
    ChunkPlan,
    DownloadProgress,
    chunk_span,
    decode_chunk,
    encode_chunk,
    total_chunks,
)
from edgefleet.core.protocol.limits import MAX_WINDOW_BYTES, MIN_CHUNK_SIZE

SHA = "cd" * 32


@given(chunk_frames())
def test_frame_round_trip(frame: ChunkFrame) -> None:
    wire = encode_chunk(frame)
    assert len(wire) == HEADER_SIZE + len(frame.payload)
    assert decode_chunk(wire) == frame


def _frame_bytes(**overrides: object) -> bytes:
    fields = {
        "magic": b"EFCK",
        "version": 1,
        "flags": 0,
        "header_len": HEADER_SIZE,
        "digest": bytes.fromhex(SHA),
        "index": 0,
        "total": 2,
        "chunk_size": 512,
        "payload": b"p" * 512,
    }
    fields.update(overrides)
    payload = fields["payload"]
    assert isinstance(payload, bytes)
    header = struct.pack(
        ">4sBBH32sIIIII",
        fields["magic"],
        fields["version"],
        fields["flags"],
        fields["header_len"],
        fields["digest"],
        fields["index"],
        fields["total"],
        fields["chunk_size"],
        fields.get("payload_len", len(payload)),
        fields.get("crc", zlib.crc32(payload)),
    )
    return header + bytes(fields.get("extra_header", b"")) + payload  # type: ignore[arg-type]


def test_hand_built_frame_decodes() -> None:
    frame = decode_chunk(_frame_bytes())
    assert (frame.bundle_sha256, frame.index, frame.total, frame.chunk_size) == (SHA, 0, 2, 512)


def test_longer_future_header_and_unknown_flags_are_tolerated() -> None:
    wire = _frame_bytes(header_len=HEADER_SIZE + 8, extra_header=b"\0" * 8, flags=0x80)
    assert decode_chunk(wire).payload == b"p" * 512


BAD_FRAMES = [
    ("bad magic", {"magic": b"XXXX"}, "magic"),
    ("future version", {"version": 2}, "version"),
    ("header too short", {"header_len": 10}, "header length"),
    ("crc mismatch", {"crc": 1}, "crc32"),
    ("payload_len lies", {"payload_len": 100}, "payload_len"),
    ("index beyond total", {"index": 2}, "index"),
    ("zero total", {"total": 0, "index": 0}, "total"),
    ("short middle chunk", {"payload": b"p" * 100}, "must be 512"),
    ("payload over chunk size", {"total": 1, "payload": b"p" * 600}, "not within"),
    ("empty last chunk", {"index": 1, "payload": b""}, "not within"),
    ("chunk size too small", {"chunk_size": 8, "total": 1, "payload": b"p"}, "chunk_size"),
]


@pytest.mark.parametrize(
    ("case", "overrides", "needle"), BAD_FRAMES, ids=[c for c, _, _ in BAD_FRAMES]
)
def test_bad_frames_are_hub_protocol_errors(
    case: str, overrides: dict[str, object], needle: str
) -> None:
    with pytest.raises(ProtocolError, match=needle) as info:
        decode_chunk(_frame_bytes(**overrides))
    assert info.value.side == "hub"


@given(chunk_frames(), st.data())
def test_any_single_bit_flip_in_the_frame_is_detected_or_harmless(
    frame: ChunkFrame, data: st.DataObject
) -> None:
    wire = bytearray(encode_chunk(frame))
    bit = data.draw(st.integers(0, len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    try:
        decoded = decode_chunk(bytes(wire))
    except ProtocolError:
        return
    # Only header fields the crc does not cover can survive a flip; the payload never does.
    assert decoded.payload == frame.payload


@given(st.integers(1, 10**9), st.integers(MIN_CHUNK_SIZE, 2**20))
def test_chunk_spans_tile_the_file(size: int, chunk_size: int) -> None:
    n = total_chunks(size, chunk_size)
    first = chunk_span(size, chunk_size, 0)
    last = chunk_span(size, chunk_size, n - 1)
    assert first[0] == 0
    assert last[0] + last[1] == size
    assert 0 < last[1] <= chunk_size
    assert (n - 1) * chunk_size + last[1] == size


plans = st.builds(
    lambda size, chunk, window_chunks: ChunkPlan(
        size, chunk, min(MAX_WINDOW_BYTES, chunk * window_chunks)
    ),
    size=st.integers(1, 50 * 65536),
    chunk=st.sampled_from([512, 4096, 65536, 2**20]),
    window_chunks=st.integers(1, 32),
)


@given(plans, st.data())
def test_plan_never_requests_a_held_chunk_and_respects_the_window(
    plan: ChunkPlan, data: st.DataObject
) -> None:
    total = plan.total_chunks
    held = data.draw(st.sets(st.integers(0, total - 1)))
    outstanding = data.draw(st.sets(st.integers(0, total - 1)))
    window = plan.next_window(held, outstanding)
    assert not set(window) & held
    assert not set(window) & outstanding
    in_flight = len(window) + len(outstanding - held)
    assert in_flight * plan.chunk_size <= plan.window_bytes or not window
    assert window == sorted(window)
    request = plan.request(SHA, held, outstanding)
    if window:
        assert request is not None and list(request.indexes()) == window
    else:
        assert request is None


@given(plans)
def test_plan_with_nothing_held_asks_for_the_first_full_window(plan: ChunkPlan) -> None:
    window = plan.next_window(set())
    assert window == list(range(min(plan.window_chunks, plan.total_chunks)))
    assert plan.next_window(set(range(plan.total_chunks))) == []


def _serve(
    progress: DownloadProgress,
    data: bytes,
    request_indexes: tuple[int, ...],
    rng: random.Random,
    drop: float,
) -> int:
    """Deliver the requested chunks (some lost); returns how many were delivered."""
    plan = progress.plan
    delivered = 0
    for index in request_indexes:
        if rng.random() < drop:
            continue
        offset, length = chunk_span(plan.size, plan.chunk_size, index)
        frame = decode_chunk(
            plan.frame(progress.bundle_sha256, index, data[offset : offset + length]).encode()
        )
        progress.accept(frame)
        delivered += 1
    return delivered


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40 * 4096),
    st.sampled_from([512, 4096]),
    st.integers(1, 8),
    st.floats(0, 0.5),
    st.integers(0, 2**32),
)
def test_download_completes_despite_losses_and_resumes_without_refetching(
    size: int, chunk_size: int, window_chunks: int, drop: float, seed: int
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    sha = hashlib.sha256(data).hexdigest()
    progress = DownloadProgress(
        sha,
        size,
        chunk_size=chunk_size,
        window_bytes=chunk_size * window_chunks,
        request_timeout_s=5,
    )
    file = bytearray(size)
    now = 0.0
    requested: list[int] = []
    restarted = False
    while not progress.complete:
        now += 1.0
        request = progress.next_request(now)
        if request is not None:
            assert not set(request.indexes()) & progress.held
            assert len(progress.outstanding) * chunk_size <= progress.plan.window_bytes
            requested.extend(request.indexes())
            _serve(progress, data, request.indexes(), rng, drop)
        for index in progress.held:
            offset, length = chunk_span(size, chunk_size, index)
            file[offset : offset + length] = data[offset : offset + length]
        if not restarted and progress.fraction >= 0.5:
            # Reboot: only the persisted record survives; nothing held may be asked for again.
            held_before = progress.held
            progress = DownloadProgress.from_dict(progress.to_dict(), request_timeout_s=5)
            assert progress.held == held_before
            restarted = True
            requested_after = len(requested)
            held_at_restart = held_before
        assert now < 10_000, "download did not converge"
    assert bytes(file) == data
    if restarted:
        assert not set(requested[requested_after:]) & held_at_restart


def test_steady_download_sends_one_fetch_per_half_window() -> None:
    size = 64 * 65536
    progress = DownloadProgress(SHA, size, chunk_size=65536, window_bytes=16 * 65536)
    first = progress.next_request(0.0)
    assert first is not None and first.indexes() == tuple(range(16))
    payload = b"x" * 65536
    for index in range(7):
        assert progress.accept(progress.plan.frame(SHA, index, payload))
        assert progress.next_request(0.1) is None  # less than half the window free
    assert progress.accept(progress.plan.frame(SHA, 7, payload))
    refill = progress.next_request(0.2)
    assert refill is not None and refill.indexes() == tuple(range(16, 24))


def test_timed_out_requests_are_asked_for_again() -> None:
    progress = DownloadProgress(
        SHA, 4 * 1024, chunk_size=1024, window_bytes=4 * 1024, request_timeout_s=10
    )
    assert progress.next_request(0.0) is not None
    assert progress.next_request(5.0) is None
    again = progress.next_request(10.0)
    assert again is not None and again.indexes() == (0, 1, 2, 3)


def test_accept_ignores_other_bundles_counts_duplicates_and_refuses_bad_geometry() -> None:
    progress = DownloadProgress(SHA, 3000, chunk_size=1024)
    frame = progress.plan.frame(SHA, 2, b"z" * (3000 - 2048))
    assert progress.accept(frame) is True
    assert progress.accept(frame) is False
    assert progress.duplicates == 1
    assert progress.accept(ChunkFrame("ee" * 32, 0, 1, 1024, b"q")) is False
    with pytest.raises(ProtocolError, match="geometry") as info:
        progress.accept(ChunkFrame(SHA, 0, 5, 1024, b"q" * 1024))
    assert info.value.side == "hub"
    with pytest.raises(ProtocolError, match="expected"):
        progress.accept(ChunkFrame(SHA, 2, 3, 1024, b"q" * 10))


def test_hub_side_request_check() -> None:
    plan = ChunkPlan(10 * 1024, 1024, 8 * 1024)
    assert plan.check_request(plan.request(SHA, set()) or pytest.fail()) == tuple(range(8))
    beyond = plan.request(SHA, set(range(8)))
    assert beyond is not None
    with pytest.raises(ProtocolError, match="beyond") as info:
        ChunkPlan(9 * 1024, 1024).check_request(beyond)
    assert info.value.side == "device"
    with pytest.raises(ProtocolError, match="chunk_size"):
        ChunkPlan(10 * 1024, 2048).check_request(beyond)


@pytest.mark.parametrize(
    "damage",
    [
        {"held": "not base64!"},
        {"held": "AAAAAAAA"},
        {"size": 0},
        {"chunk_size": 10},
        {"bundle_sha256": "x"},
        {"window_bytes": 2**30},
    ],
)
def test_damaged_progress_records_are_refused(damage: dict[str, object]) -> None:
    record = DownloadProgress(SHA, 5000, chunk_size=1024).to_dict()
    record.update(damage)
    with pytest.raises(ProtocolError):
        DownloadProgress.from_dict(record)

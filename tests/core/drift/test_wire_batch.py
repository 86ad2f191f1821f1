"""Batch decoding gives exactly what decoding one message at a time gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.core.drift import ReferenceProfile, WindowStats
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.errors import DriftError


def _one(data: bytes) -> WindowStats | None:
    try:
        return WindowStats.from_bytes(data)
    except DriftError:
        return None


def _assert_same(batch: list[WindowStats | None], blobs: list[bytes]) -> None:
    assert len(batch) == len(blobs)
    for got, blob in zip(batch, blobs, strict=True):
        want = _one(blob)
        if want is None:
            assert got is None
        else:
            assert got is not None and got.same_as(want)


def _windows(profile: ReferenceProfile, seed: int, n: int) -> list[bytes]:
    """Windows of varied sizes: empty ones, NaNs and infs, 1- to 2-byte counts."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w = WindowStats.empty(profile, start_s=float(i), end_s=None if i % 3 else i + 1.0)
        rows = [0, 1, 7, 300, 70_000][i % 5]
        if rows:
            X = rng.normal(size=(rows, len(profile.features))) * (1 + i)
            X[0, 0] = np.nan
            if rows > 1:
                X[1, -1] = np.inf
            w.update(X.astype(np.float32) if i % 2 else X)
            if profile.outputs is not None:
                w.update_outputs(rng.integers(0, 3, rows))
        out.append(w.to_bytes())
    return out


@pytest.fixture(scope="module")
def plain_profile() -> ReferenceProfile:
    rng = np.random.default_rng(3)
    return ReferenceProfile.build(rng.normal(size=(3000, 5)), [f"x{i}" for i in range(5)])


def test_batches_of_mixed_layouts_decode_like_single_messages(mixed_profile, plain_profile) -> None:
    blobs = _windows(mixed_profile, 1, 12) + _windows(plain_profile, 2, 9)
    order = np.random.default_rng(0).permutation(len(blobs))
    blobs = [blobs[i] for i in order]
    _assert_same(decode_many(blobs), blobs)


def test_a_bad_message_spoils_only_itself(mixed_profile) -> None:
    blobs = _windows(mixed_profile, 4, 10)
    blobs[3] = blobs[3][:-1]  # truncated
    blobs[5] = blobs[5] + b"\x00"  # trailing byte
    blobs[7] = b"EFDW"
    result = decode_many(blobs)
    assert [i for i, w in enumerate(result) if w is None] == [3, 5, 7]
    _assert_same(result, blobs)


def test_bytes_like_inputs_and_empty_batch(mixed_profile) -> None:
    blobs = _windows(mixed_profile, 5, 3)
    assert decode_many([]) == []
    _assert_same(decode_many([bytearray(blobs[0]), memoryview(blobs[1]), blobs[2]]), blobs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2000), st.binary(max_size=8)), max_size=4)
)
def test_corrupted_batches_decode_like_single_messages(mixed_profile, edits) -> None:
    blobs = _windows(mixed_profile, 6, 6)
    for which, at, junk in edits:
        data = blobs[which]
        at %= len(data) + 1
        blobs[which] = data[:at] + junk + data[at + len(junk) :]
    _assert_same(decode_many(blobs), blobs)


def test_long_batches_go_in_chunks_and_a_bad_message_spoils_only_itself(plain_profile) -> None:
    blobs = _windows(plain_profile, 7, 8) * 20  # 160 messages: three chunks
    blobs[100] = blobs[100][:-3]
    result = decode_many(blobs)
    assert [i for i, w in enumerate(result) if w is None] == [100]
    _assert_same(result, blobs)

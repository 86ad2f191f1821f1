"""BundleDownload: windows, persistence, resume without refetching, hash checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.agent.sync.fakes import Bundle, bundle

from edgefleet.agent.sync.download import BundleDownload, DownloadMismatchError
from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol import ChunkFrame, ChunkPlan

CHUNK, WINDOW = 1024, 4096


def open_download(directory: Path, b: Bundle, **kw: object) -> BundleDownload:
    options: dict[str, object] = {
        "chunk_size": CHUNK,
        "window_bytes": WINDOW,
        "request_timeout_s": 10.0,
        "persist_every": 2,
    }
    options.update(kw)
    return BundleDownload(directory, b.sha, b.size, **options)  # type: ignore[arg-type]


def frames(b: Bundle, data: bytes | None = None) -> list[ChunkFrame]:
    data = b.data if data is None else data
    plan = ChunkPlan(len(data), CHUNK, WINDOW)
    return [
        plan.frame(b.sha, i, data[plan.offset(i) : plan.offset(i) + plan.length(i)])
        for i in range(plan.total_chunks)
    ]


def test_a_whole_download_checks_the_hash_and_renames(tmp_path: Path) -> None:
    b = bundle(size=10_000)
    d = open_download(tmp_path, b)
    asked: list[int] = []
    now = 0.0
    while (request := d.next_request(now)) is not None or not d.complete:
        if request is None:
            break
        asked += request.indexes()
        # Never more outstanding than the window allows.
        assert len(d.progress.outstanding) * CHUNK <= WINDOW
        for i in request.indexes():
            assert d.accept(frames(b)[i])
    assert d.complete and sorted(asked) == list(range(10))
    path = d.finish()
    assert path.read_bytes() == b.data
    assert not d.part_path.exists() and not d.record_path.exists()


def test_after_a_crash_held_chunks_are_not_asked_for_again(tmp_path: Path) -> None:
    b = bundle(size=10_000)
    d = open_download(tmp_path, b, persist_every=2)
    request = d.next_request(0.0)
    assert request is not None
    for i in request.indexes()[:3]:  # chunks 0,1 persisted; chunk 2 not yet
        d.accept(frames(b)[i])
    d.close()  # a kill -9: nothing else is written
    again = open_download(tmp_path, b)
    assert again.progress.held == frozenset({0, 1})
    assert again.resumed_chunks == 2
    wanted: list[int] = []
    now = 0.0
    while (request := again.next_request(now)) is not None:
        wanted += request.indexes()
        for i in request.indexes():
            again.accept(frames(b)[i])
    assert 0 not in wanted and 1 not in wanted
    assert 2 in wanted  # received but never persisted: fetched again
    assert again.finish().read_bytes() == b.data


def test_an_unpersisted_tail_is_at_most_half_a_window(tmp_path: Path) -> None:
    b = bundle(size=20_000)
    window_chunks = WINDOW // CHUNK
    d = open_download(tmp_path, b, persist_every=window_chunks // 2)
    received = 0
    now = 0.0
    while received < 7 and (request := d.next_request(now)) is not None:
        for i in request.indexes():
            if received < 7:
                d.accept(frames(b)[i])
                received += 1
    d.close()
    held_after = open_download(tmp_path, b).progress.held
    assert 7 - len(held_after) < window_chunks // 2 + 1


def test_duplicates_and_other_bundles_are_ignored(tmp_path: Path) -> None:
    b, other = bundle(size=5000), bundle(version=9, size=5000)
    d = open_download(tmp_path, b)
    d.next_request(0.0)
    assert d.accept(frames(b)[0])
    assert not d.accept(frames(b)[0])
    assert not d.accept(frames(other)[1])
    assert d.duplicate_bytes == CHUNK
    assert d.progress.held == frozenset({0})


def test_a_frame_with_the_wrong_geometry_is_the_hub_s_fault(tmp_path: Path) -> None:
    b = bundle(size=5000)
    d = open_download(tmp_path, b)
    bigger = ChunkPlan(9000, CHUNK, WINDOW).frame(b.sha, 0, b"x" * CHUNK)
    with pytest.raises(ProtocolError, match="hub broke the protocol"):
        d.accept(bigger)
    assert not d.progress.held


def test_a_hash_mismatch_deletes_everything(tmp_path: Path) -> None:
    b = bundle(size=5000)
    d = open_download(tmp_path, b)
    forged = bytes(reversed(b.data))
    now = 0.0
    while (request := d.next_request(now)) is not None:
        for i in request.indexes():
            d.accept(frames(b, forged)[i])
    with pytest.raises(DownloadMismatchError, match="bundle hash mismatch"):
        d.finish()
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_progress_record_starts_over(tmp_path: Path) -> None:
    b = bundle(size=5000)
    d = open_download(tmp_path, b)
    d.next_request(0.0)
    d.accept(frames(b)[0])
    d.accept(frames(b)[1])
    d.close()
    record = json.loads(d.record_path.read_text())
    record["progress"]["held"] = "!!"
    d.record_path.write_text(json.dumps(record))
    again = open_download(tmp_path, b)
    assert again.progress.held == frozenset()


def test_another_chunk_size_starts_over(tmp_path: Path) -> None:
    b = bundle(size=5000)
    d = open_download(tmp_path, b)
    d.next_request(0.0)
    d.accept(frames(b)[0])
    d.accept(frames(b)[1])
    d.close()
    again = open_download(tmp_path, b, chunk_size=512)
    assert again.progress.held == frozenset()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(list(range(10))), restart_after=st.integers(0, 10), dup=st.booleans())
def test_any_arrival_order_and_a_restart_still_check_the_right_hash(
    tmp_path_factory: pytest.TempPathFactory, order: list[int], restart_after: int, dup: bool
) -> None:
    """The sha256 hashed while chunks arrive in order plus what finish reads back is the file's."""
    directory = tmp_path_factory.mktemp("dl")
    b = bundle(size=10_000)
    d = open_download(directory, b, persist_every=1)
    all_frames = frames(b)
    for n, i in enumerate(order):
        if n == restart_after:
            d.close()
            d = open_download(directory, b, persist_every=1)  # held chunks come back from disk
        d.accept(all_frames[i])
        if dup:
            d.accept(all_frames[i])  # a duplicate is not hashed twice
    assert d.complete
    assert d.finish().read_bytes() == b.data


def test_a_chunk_forged_in_order_is_still_a_mismatch(tmp_path: Path) -> None:
    b = bundle(size=5000)
    d = open_download(tmp_path, b)
    forged = frames(b, b.data[:1024] + bytes(1024) + b.data[2048:])
    for frame in forged:
        d.accept(frame)
    with pytest.raises(DownloadMismatchError):
        d.finish()

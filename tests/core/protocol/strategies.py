"""Hypothesis strategies producing valid protocol messages."""

from __future__ import annotations

from hypothesis import strategies as st

from edgefleet.core.protocol import (
    Ack,
    ChunkFrame,
    DeploymentEvent,
    DeploymentInfo,
    DeviceState,
    FetchRequest,
    LatencyHistogram,
    ModelState,
    SlotInfo,
    Status,
    TelemetryBatch,
    TelemetryRecord,
    WindowSummary,
)
from edgefleet.core.protocol.limits import MAX_FETCH_SPAN, MAX_WINDOW_BYTES, MIN_CHUNK_SIZE

sha256s = st.binary(min_size=32, max_size=32).map(bytes.hex)
device_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,30}\Z")
short_text = st.text(max_size=40)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
versions = st.integers(min_value=0, max_value=2**31)

statuses = st.builds(
    Status,
    online=st.booleans(),
    at=st.none() | times,
    agent_version=st.none() | st.text(max_size=20),
)

slots = st.builds(
    SlotInfo, version=versions, bundle_sha256=sha256s, slot=st.none() | st.sampled_from(["a", "b"])
)
deployments = st.builds(
    DeploymentInfo,
    state=st.sampled_from(["downloading", "staged", "health_check", "committed", "failed"]),
    version=versions,
    bundle_sha256=sha256s,
    rollout_id=st.none() | names,
    reason=st.none() | short_text,
    at=st.none() | times,
    progress=st.none() | st.floats(min_value=0, max_value=1),
)
model_states = st.builds(
    ModelState,
    name=names,
    active=st.none() | slots,
    previous=st.none() | slots,
    deployment=st.none() | deployments,
)
device_states = st.builds(
    DeviceState,
    device=device_ids,
    agent_version=st.text(min_size=1, max_size=10),
    profile=names,
    at=times,
    models=st.lists(model_states, max_size=4, unique_by=lambda m: m.name).map(tuple),
    directive_seq=st.none() | st.integers(min_value=0, max_value=2**40),
    directive_error=st.none() | short_text,
)


@st.composite
def fetch_requests(draw: st.DrawFn) -> FetchRequest:
    chunk_size = draw(st.integers(min_value=MIN_CHUNK_SIZE, max_value=MAX_WINDOW_BYTES))
    per_window = MAX_WINDOW_BYTES // chunk_size
    first = draw(st.integers(min_value=0, max_value=10**6))
    offsets = draw(
        st.lists(
            # A request spans at most MAX_FETCH_SPAN chunks (small chunks make
            # per_window larger than that).
            st.integers(min_value=0, max_value=min(4 * per_window, MAX_FETCH_SPAN - 1)),
            min_size=1,
            max_size=min(per_window, MAX_FETCH_SPAN),
            unique=True,
        )
    )
    return FetchRequest.for_indexes(draw(sha256s), chunk_size, [first + o for o in offsets])


acks = st.builds(Ack, highest_seq=st.integers(min_value=0, max_value=2**53))

histograms = st.lists(
    st.floats(min_value=0.01, max_value=1e5, allow_nan=False), max_size=10, unique=True
).flatmap(
    lambda edges: st.builds(
        LatencyHistogram,
        edges=st.just(tuple(sorted(edges))),
        counts=st.lists(
            st.integers(0, 10**6), min_size=len(edges) + 1, max_size=len(edges) + 1
        ).map(tuple),
    )
)
count_maps = st.dictionaries(st.text(max_size=10), st.integers(0, 10**6), max_size=5)


@st.composite
def window_summaries(draw: st.DrawFn) -> WindowSummary:
    start = draw(times)
    return WindowSummary(
        model=draw(names),
        version=draw(versions),
        start_s=start,
        end_s=start + draw(st.floats(min_value=0, max_value=86400)),
        requests=draw(st.integers(0, 10**9)),
        errors=draw(count_maps),
        schema_violations=draw(st.integers(0, 10**6)),
        latency_ms=draw(histograms),
        predictions=draw(count_maps),
        drift=draw(st.none() | st.binary(max_size=64).map(lambda b: b.hex())),
        confusion=draw(st.none() | st.just({"labels": [0, 1], "matrix": [[1, 0], [0, 1]]})),
    )


events = st.builds(
    DeploymentEvent,
    model=names,
    version=st.none() | versions,
    state=st.sampled_from(["downloading", "rejected", "committed", "rolled_back"]),
    at=times,
    reason=st.none() | short_text,
    rollout_id=st.none() | names,
    bundle_sha256=st.none() | sha256s,
)


@st.composite
def telemetry_batches(draw: st.DrawFn) -> TelemetryBatch:
    seqs = sorted(draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=4, unique=True)))
    records = []
    for seq in seqs:
        if draw(st.booleans()):
            records.append(TelemetryRecord.of_window(seq, draw(window_summaries())))
        else:
            records.append(TelemetryRecord.of_event(seq, draw(events)))
    return TelemetryBatch.of(draw(device_ids), records)


@st.composite
def chunk_frames(draw: st.DrawFn) -> ChunkFrame:
    chunk_size = draw(st.integers(min_value=MIN_CHUNK_SIZE, max_value=4096))
    total = draw(st.integers(min_value=1, max_value=2**20))
    index = draw(st.integers(min_value=0, max_value=total - 1))
    if index < total - 1:
        payload = draw(st.binary(min_size=chunk_size, max_size=chunk_size))
    else:
        payload = draw(st.binary(min_size=1, max_size=chunk_size))
    return ChunkFrame(draw(sha256s), index, total, chunk_size, payload)

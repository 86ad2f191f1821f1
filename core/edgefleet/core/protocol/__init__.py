"""The edgefleet wire protocol: topics, messages, codecs and chunk planning (sans-IO).

Both the agent and the hub use only this package to build topics and (de)serialise
payloads; nothing here touches a socket or a clock. See docs/protocol.md.
"""

from __future__ import annotations

from edgefleet.core.protocol.chunks import (
    HEADER_SIZE,
    ChunkFrame,
    ChunkPlan,
    DownloadProgress,
    chunk_span,
    total_chunks,
)
from edgefleet.core.protocol.codec import (
    DECODERS,
    decode,
    decode_ack,
    decode_chunk,
    decode_desired,
    decode_fetch,
    decode_resync,
    decode_state,
    decode_status,
    decode_telemetry,
    encode_chunk,
    encode_json,
)
from edgefleet.core.protocol.fields import PROTOCOL_VERSION
from edgefleet.core.protocol.limits import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_WINDOW_BYTES,
    MAX_CHUNK_SIZE,
    MAX_WINDOW_BYTES,
)
from edgefleet.core.protocol.messages import (
    Ack,
    DeploymentInfo,
    DeviceState,
    FetchRequest,
    ModelState,
    ResyncRequest,
    SlotInfo,
    Status,
)
from edgefleet.core.protocol.telemetry import (
    DeploymentEvent,
    LatencyHistogram,
    TelemetryBatch,
    TelemetryRecord,
    WindowSummary,
)
from edgefleet.core.protocol.topics import (
    DEFAULT_ROOT,
    ParsedTopic,
    TopicKind,
    Topics,
    device_id_problem,
    validate_device_id,
)

__all__ = [
    "DECODERS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_ROOT",
    "DEFAULT_WINDOW_BYTES",
    "HEADER_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_WINDOW_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "ChunkFrame",
    "ChunkPlan",
    "DeploymentEvent",
    "DeploymentInfo",
    "DeviceState",
    "DownloadProgress",
    "FetchRequest",
    "LatencyHistogram",
    "ModelState",
    "ResyncRequest",
    "ParsedTopic",
    "SlotInfo",
    "Status",
    "TelemetryBatch",
    "TelemetryRecord",
    "TopicKind",
    "Topics",
    "WindowSummary",
    "chunk_span",
    "decode",
    "decode_ack",
    "decode_chunk",
    "decode_desired",
    "decode_fetch",
    "decode_resync",
    "decode_state",
    "decode_status",
    "decode_telemetry",
    "device_id_problem",
    "encode_chunk",
    "encode_json",
    "total_chunks",
    "validate_device_id",
]

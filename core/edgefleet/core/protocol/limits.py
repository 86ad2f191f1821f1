"""Size limits of the wire protocol, in one place so both sides agree.

Every decoder refuses a payload above its limit before parsing it. The numbers are sized
for Raspberry Pi Zero class devices: nothing a peer sends can make the receiver hold more
than about one chunk window in memory per message.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# JSON control messages (bytes of the encoded payload).
MAX_STATUS_BYTES = 4 * KIB
MAX_STATE_BYTES = 256 * KIB
MAX_DESIRED_BYTES = 256 * KIB
MAX_FETCH_BYTES = 16 * KIB
MAX_TELEMETRY_BYTES = 1 * MIB
MAX_ACK_BYTES = 1 * KIB

# Chunked bundle transfer.
MIN_CHUNK_SIZE = 256
DEFAULT_CHUNK_SIZE = 64 * KIB
MAX_CHUNK_SIZE = 1 * MIB
DEFAULT_WINDOW_BYTES = 1 * MIB
MAX_WINDOW_BYTES = 1 * MIB
#: Largest span (first..last index) one fetch request may cover; bounds the bitmap size.
MAX_FETCH_SPAN = 16384
#: Largest bundle the chunk frame can describe (u32 chunk count, but kept sane).
MAX_TOTAL_CHUNKS = 1 << 24

# Telemetry batches.
MAX_RECORDS_PER_BATCH = 10_000
MAX_RECORD_KIND_LENGTH = 32

"""Decoding many encoded windows at once (the hub's ingest path).

:func:`decode_many` gives exactly what :func:`~edgefleet.core.drift.wire.decode_window`
gives for each message — the same statistics bit for bit, and ``None`` where it would
raise :class:`~edgefleet.core.errors.DriftError` — but does the numeric work once per
batch instead of once per window: messages of the same layout have their sections
gathered into 2-D arrays, widened, checked and scattered by a fixed number of numpy calls
whatever the batch size. Only the few header bytes of each message are read in Python.

Invariants:

- Every check of the single-message decoder is made, on the whole batch. When any check
  fails for any message of a group, the whole group falls back to the single-message
  decoder, so errors are attributed to exactly the messages that cause them.
- The windows returned for one group share their arrays' memory row by row (each window
  owns one row); nothing else holds those arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.core.drift.limits import out_of_range
from edgefleet.core.drift.window import WindowStats
from edgefleet.core.drift.wire import (
    _DTYPES,
    _F64,
    _HEAD,
    _OUTPUT_NAMES,
    MAGIC,
    VERSIONS,
    _layout,
    _Plan,
    _Reader,
    decode_window,
)
from edgefleet.core.errors import DriftError

_CHUNK = 64  # messages decoded together (arrays of ~1 MB at 64 features)


class _Head:
    """What the header of one message says, and where its sections start."""

    __slots__ = (
        "pid",
        "start_s",
        "end_s",
        "rows",
        "output_rows",
        "plan",
        "widths",
        "starts",
        "floats",
    )

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEAD.size:
            raise DriftError("malformed window: truncated")
        magic, version, flags, output_code, pid = _HEAD.unpack_from(data)
        if magic != MAGIC or version not in VERSIONS:
            raise DriftError("not a drift window of a known version")
        if flags & ~0b11 or output_code not in _OUTPUT_NAMES:
            raise DriftError("malformed window: unknown flags")
        r = _Reader(data, _HEAD.size)
        self.pid = pid
        self.start_s = _F64.unpack_from(data, r.skip(8))[0] if flags & 1 else None
        self.end_s = _F64.unpack_from(data, r.skip(8))[0] if flags & 2 else None
        self.rows, self.output_rows, k_num, k_cat = r.small_uints(4)
        if k_num + k_cat > len(data):
            raise DriftError("malformed window: more columns than bytes")
        self.plan = plan = _layout(r, k_num, k_cat, _OUTPUT_NAMES[output_code])
        lay = plan.layout
        self.widths: list[int] = []
        self.starts: list[int] = []
        for count in (lay.n_bins, lay.n_buckets, 4 * lay.k_num, lay.k_cat):
            width = r.width()
            self.widths.append(width)
            self.starts.append(r.skip(count * width))
        if version >= 2:  # clipped per numeric column
            width = r.width()
            self.widths.append(width)
            self.starts.append(r.skip(lay.k_num * width))
        else:  # version 1: no clipped section, read as all zero
            self.widths.append(0)
            self.starts.append(r.pos)
        self.floats = r.pos


def decode_many(blobs: Sequence[bytes]) -> list[WindowStats | None]:
    """Each message decoded (``None`` where ``decode_window`` would raise DriftError)."""
    out: list[WindowStats | None] = [None] * len(blobs)
    groups: dict[int, tuple[_Plan, list[int], list[_Head]]] = {}
    blobs = [b if isinstance(b, bytes) else _as_bytes(b) for b in blobs]
    for i, blob in enumerate(blobs):
        try:
            head = _Head(blob)
        except DriftError:
            continue  # decode_window raises for it too
        group = groups.setdefault(id(head.plan), (head.plan, [], []))
        group[1].append(i)
        group[2].append(head)
    for plan, all_indexes, all_heads in groups.values():
        # Chunks keep the 2-D arrays small enough to stay in cache.
        for at in range(0, len(all_indexes), _CHUNK):
            indexes = all_indexes[at : at + _CHUNK]
            _decode_chunk(plan, blobs, indexes, all_heads[at : at + _CHUNK], out)
    return out


def _decode_chunk(
    plan: _Plan,
    blobs: Sequence[bytes],
    indexes: Sequence[int],
    heads: Sequence[_Head],
    out: list[WindowStats | None],
) -> None:
    data = [blobs[i] for i in indexes]
    windows: Sequence[WindowStats | None]
    try:
        windows = _decode_group(plan, data, heads)
    except DriftError:
        windows = [_decode_one(d) for d in data]
    for i, w in zip(indexes, windows, strict=True):
        out[i] = w


def _as_bytes(blob: Any) -> bytes:
    return bytes(blob) if isinstance(blob, bytearray | memoryview) else b""


def _decode_one(data: bytes) -> WindowStats | None:
    try:
        return decode_window(data)
    except DriftError:
        return None


def _section(
    data: Sequence[bytes], heads: Sequence[_Head], which: int, count: int, out: np.ndarray
) -> None:
    """Section ``which`` of every message into ``out`` (one row per message)."""
    by_width: dict[int, list[int]] = {}
    for i, h in enumerate(heads):
        by_width.setdefault(h.widths[which], []).append(i)
    for width, rows in by_width.items():
        if width == 0:
            out[rows] = 0
            continue
        size = count * width
        raw = b"".join(
            memoryview(data[i])[heads[i].starts[which] : heads[i].starts[which] + size]
            for i in rows
        )
        values = np.frombuffer(raw, dtype=_DTYPES[width]).reshape(len(rows), count)
        if width == 8 and values.size and int(values.max()) >= 1 << 62:
            raise DriftError("malformed window: count out of range")
        out[rows] = values


def _floats(data: Sequence[bytes], heads: Sequence[_Head], counts: list[int]) -> np.ndarray:
    """Every message's float section, concatenated in message order."""
    bitmaps: list[bytes] = []
    f32: list[memoryview] = []
    f64: list[memoryview] = []
    for blob, head, count in zip(data, heads, counts, strict=True):
        start = head.floats
        n_bytes = (count + 7) // 8
        bitmap = blob[start : start + n_bytes]
        if len(bitmap) != n_bytes or (count % 8 and bitmap[-1] >> (count % 8)):
            raise DriftError("malformed window: bad float bitmap")
        n32 = int.from_bytes(bitmap, "little").bit_count()
        at32 = start + n_bytes
        at64 = at32 + 4 * n32
        if at64 + 8 * (count - n32) != len(blob):
            raise DriftError("malformed window: truncated or trailing bytes")
        view = memoryview(blob)
        bitmaps.append(bitmap)
        f32.append(view[at32:at64])
        f64.append(view[at64:])
    padded = np.asarray([8 * len(b) for b in bitmaps])
    bits = np.unpackbits(np.frombuffer(b"".join(bitmaps), dtype=np.uint8), bitorder="little")
    offset = np.arange(bits.size) - np.repeat(np.cumsum(padded) - padded, padded)
    exact = bits[offset < np.repeat(np.asarray(counts), padded)].view(bool)
    values = np.empty(exact.size, dtype=np.float64)
    values[exact] = np.frombuffer(b"".join(f32), dtype="<f4")
    values[~exact] = np.frombuffer(b"".join(f64), dtype="<f8")
    if not np.isfinite(values).all():
        raise DriftError("malformed window: non-finite statistic")
    return values


def _decode_group(plan: _Plan, data: Sequence[bytes], heads: Sequence[_Head]) -> list[WindowStats]:
    lay = plan.layout
    n_msg, k = len(heads), lay.k_num
    ints = np.empty((n_msg, lay.n_ints), dtype=np.int64)
    _section(data, heads, 0, lay.n_bins, ints[:, lay.counts])
    _section(data, heads, 1, lay.n_buckets, ints[:, lay.buckets])
    _section(data, heads, 2, 4 * k, ints[:, lay.nan.start : lay.above.stop])
    _section(data, heads, 3, lay.k_cat, ints[:, lay.cat_nan])
    _section(data, heads, 4, k, ints[:, lay.clipped])
    counts = ints[:, lay.counts]
    if k:
        ints[:, lay.n] = np.add.reduceat(counts, lay.bin_starts, axis=1)
    n = ints[:, lay.n]
    nonempty = counts > 0
    filled = n > 0
    s = np.count_nonzero(nonempty, axis=1)
    m = np.count_nonzero(filled, axis=1)
    values = _floats(data, heads, (s + 3 * m).tolist())
    # Each message's floats are: sums of its non-empty bins, then m2, min, max of its
    # filled columns; label every value with its kind to split them in one pass.
    kinds = np.repeat(np.tile(np.arange(4), n_msg), np.stack((s, m, m, m), axis=1).ravel())
    adds = np.zeros((n_msg, lay.n_adds))
    sums = adds[:, lay.sums]
    sums[nonempty] = values[kinds == 0]
    m2 = np.zeros((n_msg, k))
    mins = np.full((n_msg, k), np.inf)
    maxs = np.full((n_msg, k), -np.inf)
    m2[filled] = values[kinds == 1]
    mins[filled] = values[kinds == 2]
    maxs[filled] = values[kinds == 3]
    if (m2 < 0).any() or (mins[filled] > maxs[filled]).any():
        raise DriftError("malformed window: inconsistent moments")
    if out_of_range(counts, sums, n, m2, mins, maxs):
        raise DriftError("malformed window: statistic beyond the safe range")
    rows = np.asarray([h.rows for h in heads], dtype=np.int64)
    output_rows = np.asarray([h.output_rows for h in heads], dtype=np.int64)
    _check_totals(plan, rows, output_rows, ints)
    if k:
        adds[:, lay.totals] = np.add.reduceat(sums, lay.bin_starts, axis=1)
    return [
        WindowStats(
            h.pid.hex(),
            lay,
            ints[i],
            adds[i],
            m2[i],
            mins[i],
            maxs[i],
            rows=h.rows,
            output_rows=h.output_rows,
            start_s=h.start_s,
            end_s=h.end_s,
        )
        for i, h in enumerate(heads)
    ]


def _check_totals(plan: _Plan, rows: np.ndarray, output_rows: np.ndarray, ints: Any) -> None:
    """``wire._check_totals`` for every message at once."""
    lay = plan.layout
    if lay.k_num:
        seen = ints[:, lay.n] + ints[:, lay.nan] + ints[:, lay.inf]
        k = plan.rows_columns
        if (
            (seen[:, :k] != rows[:, None]).any()
            or (ints[:, lay.clipped] > ints[:, lay.n]).any()
            or (k < lay.k_num and (seen[:, k] != output_rows).any())
            or (ints[:, lay.below] > ints[:, plan.first_bins]).any()
            or (ints[:, lay.above] > ints[:, plan.last_bins]).any()
        ):
            raise DriftError("malformed window: numeric counts do not add up")
    if lay.k_cat:
        buckets = ints[:, lay.buckets]
        seen = np.add.reduceat(buckets, lay.bucket_starts, axis=1) + ints[:, lay.cat_nan]
        k = plan.rows_cat_columns
        if (seen[:, :k] != rows[:, None]).any() or (
            k < lay.k_cat and (seen[:, k] != output_rows).any()
        ):
            raise DriftError("malformed window: categorical counts do not add up")

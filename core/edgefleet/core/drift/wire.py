"""Compact, exact binary encoding of :class:`WindowStats` for telemetry.

Layout (all little-endian)::

    magic "EFDW" | version u8 (2; 1 is still read) | flags u8 (bit 0: start_s, bit 1: end_s)
    output u8 (0 none, 1 score/numeric, 2 class/categorical)
    profile_id   32 raw bytes (the SHA-256 behind the hex id)
    [start_s f64] [end_s f64]
    U(4)          rows, output_rows, k_num, k_cat
    U(k_num)      bins per numeric column        U(k_cat)  buckets per categorical column
    U(sum bins)   bin counts                     U(sum buckets)  bucket counts
    U(4 k_num)    nan, inf, below, above per numeric column
    U(k_cat)      NaN/None per categorical column
    U(k_num)      clipped per numeric column (version 2 only; version 1 means all zero)
    F(...)        sums of non-empty bins, then m2, min, max of non-empty numeric columns

Version 2 (the drift window v2 contract) adds the per-column count of finite values
clipped to the safe range (:mod:`.limits`) and a rule for both versions: every float
statistic is finite and within what clipped inputs can produce, and no column has more
clipped values than values. Everything else a v2 window carries was already in v1:
per-column NaN and ±inf counts (numeric) and NaN/None counts (categorical), below/above
the reference range, and categorical buckets ``vocabulary..., other, unseen`` whose
levels (numbers or strings) live in the reference profile, not on the wire. Per-sample
summaries of tensor inputs (one small vector of per-channel statistics per sample) are
ordinary numeric columns named by the profile; nothing here limits their number beyond
the byte count of the message. A v1 window decodes to a window whose ``clipped`` counts
are zero; ``encode_window(w, version=1)`` still writes v1 when nothing was clipped.

``U(m)`` is an unsigned-integer section: one width byte ``w`` in {0, 1, 2, 4, 8}
then ``m`` integers of ``w`` bytes, ``w`` being the smallest width that holds
the largest value (``w = 0``: all zero, no bytes). ``F`` is a float section: a
bitmap with one bit per value marking those exactly representable as float32
(they take 4 bytes), the others take 8. Empty bins and empty columns cost no
float bytes (their sums are 0, min/max are +-inf). Per-column finite counts
and totals are recomputed from the bins on decode.

Decoding reproduces every count and every float bit for bit, so merging
decoded windows equals merging the originals. A numeric feature with 20 bins
and float32 inputs costs about 204 bytes in a 1,000-row window (one-byte
counts) and 224 bytes at 10,000 rows (two-byte counts); see docs/drift.md.
:mod:`.wire_batch` decodes many messages at once with exactly this decoder's results.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.core.drift.layout import (
    OUTPUT_CATEGORICAL,
    OUTPUT_NONE,
    OUTPUT_NUMERIC,
    WindowLayout,
)
from edgefleet.core.drift.limits import out_of_range
from edgefleet.core.drift.window import WindowStats
from edgefleet.core.errors import DriftError

MAGIC = b"EFDW"
VERSION = 2  # what encode_window writes
VERSIONS = (1, 2)  # what the decoders read
_HEAD = struct.Struct("<4sBBB32s")
_F64 = struct.Struct("<d")
_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}
_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}  # struct codes of the widths
_OUTPUT_CODES = {OUTPUT_NONE: 0, OUTPUT_NUMERIC: 1, OUTPUT_CATEGORICAL: 2}
_OUTPUT_NAMES = {v: k for k, v in _OUTPUT_CODES.items()}
# Bounds from ReferenceProfile.build (n_bins <= 255, max_categories <= 1024): a
# forged layout cannot make the decoder allocate much more than the message.
_MAX_BINS, _MAX_BUCKETS = 256, 1026
_LAYOUTS: OrderedDict[tuple[bytes, bytes, str], _Plan] = OrderedDict()


def _put_uints(out: bytearray, values: np.ndarray) -> None:
    top = int(values.max()) if values.size else 0
    if values.size and int(values.min()) < 0:
        raise DriftError("negative count in window statistics")
    if top == 0:
        out.append(0)
        return
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    out.append(width)
    out += values.astype(_DTYPES[width]).tobytes()


def _put_floats(out: bytearray, values: np.ndarray) -> None:
    with np.errstate(over="ignore"):  # values beyond float32 range simply stay float64
        as32 = values.astype(np.float32)
    exact = as32.astype(np.float64) == values
    out += np.packbits(exact, bitorder="little").tobytes()
    out += as32[exact].astype("<f4").tobytes()
    out += values[~exact].astype("<f8").tobytes()


def encode_window(w: WindowStats, version: int = VERSION) -> bytes:
    if version not in VERSIONS:
        raise DriftError(f"unsupported drift window version {version}")
    if version == 1 and w.ints[w.layout.clipped].any():
        raise DriftError("a window with clipped values needs drift window version 2")
    try:
        pid = bytes.fromhex(w.profile_id)
    except ValueError as e:
        raise DriftError("profile_id is not a hex SHA-256") from e
    if len(pid) != 32:
        raise DriftError("profile_id is not a hex SHA-256")
    lay = w.layout
    flags = (w.start_s is not None) | (w.end_s is not None) << 1
    out = bytearray(_HEAD.pack(MAGIC, version, flags, _OUTPUT_CODES[lay.output], pid))
    if w.start_s is not None:
        out += _F64.pack(w.start_s)
    if w.end_s is not None:
        out += _F64.pack(w.end_s)
    _put_uints(out, np.array([w.rows, w.output_rows, lay.k_num, lay.k_cat], dtype=np.int64))
    _put_uints(out, np.array(lay.bins, dtype=np.int64))
    _put_uints(out, np.array(lay.sizes, dtype=np.int64))
    ints = w.ints
    counts = ints[lay.counts]
    _put_uints(out, counts)
    _put_uints(out, ints[lay.buckets])
    _put_uints(out, ints[lay.nan.start : lay.above.stop])
    _put_uints(out, ints[lay.cat_nan])
    if version >= 2:
        _put_uints(out, ints[lay.clipped])
    filled = ints[lay.n] > 0
    floats = (w.adds[lay.sums][counts > 0], w.m2[filled], w.mins[filled], w.maxs[filled])
    _put_floats(out, np.concatenate(floats))
    return bytes(out)


@dataclass(frozen=True)
class _Plan:
    """What decoding a layout needs besides the layout, computed once per layout."""

    layout: WindowLayout
    first_bins: np.ndarray  # index of each numeric column's first bin
    last_bins: np.ndarray  # ... and of its last bin
    rows_columns: int  # numeric columns that count every row (the score output does not)
    rows_cat_columns: int  # categorical columns that count every row (likewise)


def _plan(layout: WindowLayout) -> _Plan:
    starts = layout.bin_starts
    return _Plan(
        layout,
        starts.copy(),
        starts + np.asarray(layout.bins, dtype=np.intp) - 1,
        layout.k_num - (layout.output == OUTPUT_NUMERIC),
        layout.k_cat - (layout.output == OUTPUT_CATEGORICAL),
    )


class _Reader:
    """Cursor over the message; numpy reads straight from it (no slicing copies)."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data)

    def skip(self, n: int) -> int:
        start = self.pos
        end = start + n
        if n < 0 or end > self.end:
            raise DriftError("malformed window: truncated")
        self.pos = end
        return start

    def width(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise DriftError("malformed window: truncated")
        self.pos = pos + 1
        width = self.data[pos]
        if width and width not in _DTYPES:
            raise DriftError(f"malformed window: bad integer width {width}")
        return width

    def raw_uints(self, count: int) -> tuple[int, bytes]:
        width = self.width()
        if width == 0:
            return 0, b""
        start = self.skip(count * width)
        return width, self.data[start : self.pos]

    def uints_into(self, out: np.ndarray) -> None:
        """Read ``out.size`` integers of the section into ``out`` (int64, widened in place)."""
        width = self.width()
        count = out.size
        if width == 0:
            out[:] = 0
            return
        start = self.skip(count * width)
        values = np.frombuffer(self.data, dtype=_DTYPES[width], count=count, offset=start)
        if width == 8 and count and int(values.max()) >= 1 << 62:
            raise DriftError("malformed window: count out of range")
        out[:] = values

    def small_uints(self, count: int) -> list[int]:
        width = self.width()
        if width == 0:
            return [0] * count
        start = self.skip(count * width)
        values = list(struct.unpack_from(f"<{count}{_CODES[width]}", self.data, start))
        if max(values, default=0) >= 1 << 62:
            raise DriftError("malformed window: count out of range")
        return values

    def floats(self, count: int) -> np.ndarray:
        n_bytes = (count + 7) // 8
        start = self.skip(n_bytes)
        if count % 8 and self.data[start + n_bytes - 1] >> (count % 8):
            raise DriftError("malformed window: stray bits in the float bitmap")
        packed = np.frombuffer(self.data, dtype=np.uint8, count=n_bytes, offset=start)
        exact = np.unpackbits(packed, count=count, bitorder="little").view(bool)
        n32 = int(np.count_nonzero(exact))
        at32 = self.skip(4 * n32)
        at64 = self.skip(8 * (count - n32))
        if n32 == count:
            values = np.frombuffer(self.data, "<f4", n32, at32).astype(np.float64)
        else:
            values = np.empty(count, dtype=np.float64)
            values[exact] = np.frombuffer(self.data, "<f4", n32, at32)
            values[~exact] = np.frombuffer(self.data, "<f8", count - n32, at64)
        if not np.isfinite(values).all():
            raise DriftError("malformed window: non-finite statistic")
        return values


def _layout(r: _Reader, k_num: int, k_cat: int, output: str) -> _Plan:
    bin_width, bin_raw = r.raw_uints(k_num)
    size_width, size_raw = r.raw_uints(k_cat)
    key = (bytes((bin_width,)) + bin_raw, bytes((size_width,)) + size_raw, output)
    plan = _LAYOUTS.get(key)
    if plan is not None:
        return plan
    bins = np.frombuffer(bin_raw, dtype=_DTYPES[bin_width]) if bin_width else np.zeros(k_num)
    sizes = np.frombuffer(size_raw, dtype=_DTYPES[size_width]) if size_width else np.zeros(k_cat)
    if ((bins < 1) | (bins > _MAX_BINS)).any() or ((sizes < 2) | (sizes > _MAX_BUCKETS)).any():
        raise DriftError("malformed window: bad layout")
    plan = _plan(WindowLayout(tuple(int(b) for b in bins), tuple(int(s) for s in sizes), output))
    _LAYOUTS[key] = plan
    while len(_LAYOUTS) > 64:
        _LAYOUTS.popitem(last=False)
    return plan


def _check_totals(plan: _Plan, rows: int, output_rows: int, ints: np.ndarray) -> None:
    """Every row is counted exactly once per column; below/above sit inside the outer bins."""
    lay = plan.layout
    if lay.k_num:
        seen = ints[lay.n] + ints[lay.nan] + ints[lay.inf]
        k = plan.rows_columns
        if (
            (seen[:k] != rows).any()
            or (ints[lay.clipped] > ints[lay.n]).any()
            or (k < lay.k_num and int(seen[k]) != output_rows)
            or (ints[lay.below] > ints[plan.first_bins]).any()
            or (ints[lay.above] > ints[plan.last_bins]).any()
        ):
            raise DriftError("malformed window: numeric counts do not add up")
    if lay.k_cat:
        buckets = ints[lay.buckets]
        seen = np.add.reduceat(buckets, lay.bucket_starts) + ints[lay.cat_nan]
        k = plan.rows_cat_columns
        if (seen[:k] != rows).any() or (k < lay.k_cat and int(seen[k]) != output_rows):
            raise DriftError("malformed window: categorical counts do not add up")


def decode_window(data: bytes | bytearray | memoryview) -> WindowStats:
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise DriftError("window bytes expected")
        data = bytes(data)
    if len(data) < _HEAD.size:
        raise DriftError("malformed window: truncated")
    magic, version, flags, output_code, pid = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise DriftError("not a drift window (bad magic)")
    if version not in VERSIONS:
        raise DriftError(f"unsupported drift window version {version}")
    if flags & ~0b11 or output_code not in _OUTPUT_NAMES:
        raise DriftError("malformed window: unknown flags")
    r = _Reader(data, _HEAD.size)
    start_s = _F64.unpack_from(data, r.skip(8))[0] if flags & 1 else None
    end_s = _F64.unpack_from(data, r.skip(8))[0] if flags & 2 else None
    rows, output_rows, k_num, k_cat = r.small_uints(4)
    if k_num + k_cat > len(data):
        raise DriftError("malformed window: more columns than bytes")
    plan = _layout(r, k_num, k_cat, _OUTPUT_NAMES[output_code])
    lay = plan.layout
    # Sections go straight into their place in the window's flat int array.
    ints = np.empty(lay.n_ints, dtype=np.int64)
    r.uints_into(ints[lay.counts])
    r.uints_into(ints[lay.buckets])
    r.uints_into(ints[lay.nan.start : lay.above.stop])
    r.uints_into(ints[lay.cat_nan])
    if version >= 2:
        r.uints_into(ints[lay.clipped])
    else:
        ints[lay.clipped] = 0
    counts = ints[lay.counts]
    if k_num:
        ints[lay.n] = np.add.reduceat(counts, lay.bin_starts)
    n = ints[lay.n]
    nonempty = counts > 0
    s = int(np.count_nonzero(nonempty))
    m = int(np.count_nonzero(n))
    floats = r.floats(s + 3 * m)
    if r.pos != len(data):
        raise DriftError("malformed window: trailing bytes")
    adds = np.zeros(lay.n_adds)
    sums = adds[lay.sums]
    if s == lay.n_bins:
        sums[:] = floats[:s]
    else:
        sums[nonempty] = floats[:s]
    if m == k_num:  # every column saw a value: no scatter
        m2 = floats[s : s + m]
        mins = floats[s + m : s + 2 * m]
        maxs = floats[s + 2 * m :]
        bad = (m2 < 0).any() or (mins > maxs).any()
    else:
        filled = n > 0
        m2 = np.zeros(k_num)
        mins = np.full(k_num, np.inf)
        maxs = np.full(k_num, -np.inf)
        m2[filled] = floats[s : s + m]
        mins[filled] = floats[s + m : s + 2 * m]
        maxs[filled] = floats[s + 2 * m :]
        bad = (m2 < 0).any() or (mins[filled] > maxs[filled]).any()
    if bad:
        raise DriftError("malformed window: inconsistent moments")
    if out_of_range(counts, sums, n, m2, mins, maxs):
        raise DriftError("malformed window: statistic beyond the safe range")
    _check_totals(plan, rows, output_rows, ints)
    if k_num:
        adds[lay.totals] = np.add.reduceat(sums, lay.bin_starts)
    return WindowStats(
        pid.hex(),
        lay,
        ints,
        adds,
        m2,
        mins,
        maxs,
        rows=rows,
        output_rows=output_rows,
        start_s=start_s,
        end_s=end_s,
    )

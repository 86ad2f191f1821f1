"""Compact, exact binary encoding of :class:`WindowStats` for telemetry.

Layout (all little-endian)::

    magic "EFDW" | version u8 (=1) | flags u8 (bit 0: start_s, bit 1: end_s)
    profile_id   32 raw bytes (the SHA-256 behind the hex id)
    [start_s f64] [end_s f64]
    U(6)         rows, output_rows, k_numeric, k_categorical, k_out_numeric, k_out_categorical
    U(k_num)     bins per numeric feature        U(k_cat) buckets per categorical feature
    U(k_on)      bins of a score output          U(k_oc)  buckets of a class output
    numeric block (features), categorical block (features), numeric block (output),
    categorical block (output)

    numeric block:      U(sum bins) counts | U(4k) nan, inf, below, above | F(...) floats
    categorical block:  U(sum buckets) counts | U(k) nan

``U(m)`` is an unsigned-integer section: one width byte ``w`` in {0, 1, 2, 4, 8}
then ``m`` integers of ``w`` bytes, ``w`` being the smallest width holding the
largest value (``w = 0`` means all zero and costs nothing). ``F`` is a float
section over ``sums`` of non-empty bins, then ``m2``, ``min``, ``max`` of
non-empty columns: a bitmap (1 bit per value) marks values that are exactly
representable as float32; those take 4 bytes, the rest 8. Empty bins and empty
columns cost no float bytes (their sums are 0, min/max are ±inf).

Decoding reproduces every count and float bit for bit, so merging decoded
windows equals merging the originals. For a numeric feature with 20 bins and
float32 inputs this is about 200 bytes (20 one-byte counts while bins hold
< 256 values, 20 sums × 8, M2 × 8, min and max × 4, 3 bytes of bitmap, one
layout byte); docs/drift.md has measured figures.
"""

from __future__ import annotations

import struct

import numpy as np

from edgefleet.core.drift.blocks import CategoricalBlock, NumericBlock
from edgefleet.core.drift.window import WindowStats
from edgefleet.core.errors import DriftError

MAGIC = b"EFDW"
VERSION = 1
_WIDTHS = {0: None, 1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


def _put_uints(out: bytearray, values: np.ndarray) -> None:
    top = int(values.max()) if values.size else 0
    if values.size and int(values.min()) < 0:
        raise DriftError("negative count in window statistics")
    width = (
        0 if top == 0 else 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    )
    out.append(width)
    dtype = _WIDTHS[width]
    if dtype is not None:
        out += values.astype(dtype).tobytes()


def _put_floats(out: bytearray, values: np.ndarray) -> None:
    as32 = values.astype(np.float32)
    exact = as32.astype(np.float64) == values
    out += np.packbits(exact, bitorder="little").tobytes()
    out += as32[exact].astype("<f4").tobytes()
    out += values[~exact].astype("<f8").tobytes()


def _put_numeric(out: bytearray, block: NumericBlock) -> None:
    _put_uints(out, block.counts)
    _put_uints(out, np.concatenate([block.nan, block.inf, block.below, block.above]))
    filled = block.n() > 0
    _put_floats(
        out,
        np.concatenate(
            [block.sums[block.counts > 0], block.m2[filled], block.min[filled], block.max[filled]]
        ),
    )


def _put_categorical(out: bytearray, block: CategoricalBlock) -> None:
    _put_uints(out, block.counts)
    _put_uints(out, block.nan)


def encode_window(w: WindowStats) -> bytes:
    try:
        pid = bytes.fromhex(w.profile_id)
    except ValueError as e:
        raise DriftError("profile_id is not a hex SHA-256") from e
    if len(pid) != 32:
        raise DriftError("profile_id is not a hex SHA-256")
    flags = (w.start_s is not None) | (w.end_s is not None) << 1
    out = bytearray(MAGIC)
    out += bytes((VERSION, flags))
    out += pid
    if w.start_s is not None:
        out += struct.pack("<d", w.start_s)
    if w.end_s is not None:
        out += struct.pack("<d", w.end_s)
    header = [w.rows, w.output_rows, w.numeric.k, w.categorical.k]
    header += [w.output_numeric.k, w.output_categorical.k]
    _put_uints(out, np.array(header, dtype=np.int64))
    for layout in (w.numeric.bins, w.categorical.sizes, w.output_numeric.bins):
        _put_uints(out, layout)
    _put_uints(out, w.output_categorical.sizes)
    _put_numeric(out, w.numeric)
    _put_categorical(out, w.categorical)
    _put_numeric(out, w.output_numeric)
    _put_categorical(out, w.output_categorical)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DriftError("malformed window: truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uints(self, count: int) -> np.ndarray:
        width = self.take(1)[0]
        if width not in _WIDTHS:
            raise DriftError(f"malformed window: bad integer width {width}")
        dtype = _WIDTHS[width]
        if dtype is None:
            return np.zeros(count, dtype=np.int64)
        raw = np.frombuffer(self.take(count * width), dtype=dtype)
        if width == 8 and raw.size and int(raw.max()) >= 1 << 62:
            raise DriftError("malformed window: count out of range")
        return raw.astype(np.int64)

    def floats(self, count: int) -> np.ndarray:
        nbytes = (count + 7) // 8
        packed = np.frombuffer(self.take(nbytes), dtype=np.uint8)
        bits = np.unpackbits(packed, bitorder="little")
        if bits[count:].any():
            raise DriftError("malformed window: stray bits in float bitmap")
        exact = bits[:count].astype(bool)
        n32 = int(exact.sum())
        values = np.empty(count, dtype=np.float64)
        values[exact] = np.frombuffer(self.take(4 * n32), dtype="<f4")
        values[~exact] = np.frombuffer(self.take(8 * (count - n32)), dtype="<f8")
        if np.isnan(values).any():
            raise DriftError("malformed window: NaN statistic")
        return values


def _read_numeric(r: _Reader, bins: np.ndarray) -> NumericBlock:
    block = NumericBlock.empty(bins)
    k = block.k
    block.counts = r.uints(int(bins.sum()))
    small = r.uints(4 * k)
    block.nan, block.inf, block.below, block.above = (small[i * k : (i + 1) * k] for i in range(4))
    filled = block.n() > 0
    nonempty = block.counts > 0
    m = int(filled.sum())
    values = r.floats(int(nonempty.sum()) + 3 * m)
    s = int(nonempty.sum())
    block.sums[nonempty] = values[:s]
    block.m2[filled] = values[s : s + m]
    block.min[filled] = values[s + m : s + 2 * m]
    block.max[filled] = values[s + 2 * m :]
    if (block.m2 < 0).any() or (block.min[filled] > block.max[filled]).any():
        raise DriftError("malformed window: inconsistent moments")
    return block


def _read_categorical(r: _Reader, sizes: np.ndarray) -> CategoricalBlock:
    counts = r.uints(int(sizes.sum()))
    return CategoricalBlock(sizes, counts, r.uints(sizes.size))


def decode_window(data: bytes) -> WindowStats:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DriftError("window bytes expected")
    r = _Reader(bytes(data))
    if bytes(r.take(4)) != MAGIC:
        raise DriftError("not a drift window (bad magic)")
    version, flags = r.take(2)
    if version != VERSION:
        raise DriftError(f"unsupported drift window version {version}")
    if flags & ~0b11:
        raise DriftError("malformed window: unknown flags")
    profile_id = bytes(r.take(32)).hex()
    start_s = struct.unpack("<d", r.take(8))[0] if flags & 1 else None
    end_s = struct.unpack("<d", r.take(8))[0] if flags & 2 else None
    rows, output_rows, k_num, k_cat, k_on, k_oc = (int(v) for v in r.uints(6))
    if k_num + k_cat > len(data) or k_on + k_oc > 1:
        raise DriftError("malformed window: bad layout")
    bins, sizes, out_bins, out_sizes = r.uints(k_num), r.uints(k_cat), r.uints(k_on), r.uints(k_oc)
    # Bounds from ReferenceProfile.build (n_bins <= 255, max_categories <= 1024) keep a
    # forged layout from allocating more than ~1000 counts per byte received.
    if ((bins < 1) | (bins > 256)).any() or ((out_bins < 1) | (out_bins > 256)).any():
        raise DriftError("malformed window: bad bin layout")
    if ((sizes < 2) | (sizes > 1026)).any() or ((out_sizes < 2) | (out_sizes > 1026)).any():
        raise DriftError("malformed window: bad bucket layout")
    window = WindowStats(
        profile_id,
        _read_numeric(r, bins),
        _read_categorical(r, sizes),
        _read_numeric(r, out_bins),
        _read_categorical(r, out_sizes),
        rows=rows,
        output_rows=output_rows,
        start_s=start_s,
        end_s=end_s,
    )
    if r.pos != len(r.data):
        raise DriftError("malformed window: trailing bytes")
    return window

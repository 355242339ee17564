"""Baseline codec: zigzag, LEB128 varints, brotli.

The scheme of the original request with brotli in place of bz2; kept as the
yardstick and fallback. Stream: the brotli-compressed concatenation of the
varints of ``zigzag(v) = (v << 1) ^ (v >> 63)``.
"""
from __future__ import annotations

import brotli
import numpy as np

from ..brotli_bounded import decompress_limited
from ..errors import PatchFormatError
from . import register
from .base import Codec, LayerInfo


def zigzag(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    return ((z >> np.uint64(1)).astype(np.int64)) ^ -((z & np.uint64(1)).astype(np.int64))


def leb128(z: np.ndarray) -> bytes:
    """Vectorised LEB128 of unsigned 64-bit values."""
    z = z.astype(np.uint64)
    nbytes = np.ones(len(z), np.int64)
    for k in range(1, 10):
        nbytes += (z >> np.uint64(7 * k)) > 0
    out = np.zeros(int(nbytes.sum()), np.uint8)
    starts = np.concatenate(([0], np.cumsum(nbytes)[:-1]))
    for k in range(10):
        sel = nbytes > k
        if not sel.any():
            break
        byte = ((z[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        more = (nbytes[sel] > k + 1).astype(np.uint8) << 7
        out[starts[sel] + k] = byte | more
    return out.tobytes()


def unleb128(data: bytes, count: int) -> np.ndarray:
    """Decode exactly ``count`` varints that fill ``data`` exactly."""
    b = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if len(ends) != count or (count and ends[-1] != len(b) - 1) or (count == 0 and len(b)):
        raise PatchFormatError(f"varint stream holds {len(ends)} values, expected {count}")
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    lengths = ends - starts + 1
    if count and lengths.max() > 10:
        raise PatchFormatError("varint longer than 10 bytes")
    out = np.zeros(count, np.uint64)
    for k in range(int(lengths.max()) if count else 0):
        sel = lengths > k
        out[sel] |= (b[starts[sel] + k] & np.uint64(0x7F)).astype(np.uint64) << np.uint64(7 * k)
    return out


@register
class VarintBrotli(Codec):
    codec_id = "varint-brotli"
    context = frozenset()

    def __init__(self, quality: int = 9):
        self.quality = quality

    def encode(self, values: np.ndarray, info: LayerInfo) -> bytes:
        return brotli.compress(leb128(zigzag(values)), quality=self.quality, lgwin=24)

    def decode(self, data: bytes, count: int, info: LayerInfo) -> np.ndarray:
        return unzigzag(unleb128(decompress_limited(data, 10 * count), count))

    def get_config(self) -> dict:
        return {"id": self.codec_id, "quality": self.quality}

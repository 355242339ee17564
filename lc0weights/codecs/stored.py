"""Raw storage: residuals as fixed-width little-endian integers, no modelling.

Used when nothing else is smaller (noise-like data, tiny layers). Stream: one
byte giving the width w in {1, 2, 4, 8}, then ``count`` signed w-byte integers.
"""
from __future__ import annotations

import numpy as np

from ..errors import PatchFormatError
from . import register
from .base import Codec, LayerInfo

_DTYPES = {1: "<i1", 2: "<i2", 4: "<i4", 8: "<i8"}


@register
class Stored(Codec):
    codec_id = "stored"
    context = frozenset()

    def encode(self, values: np.ndarray, info: LayerInfo) -> bytes:
        values = values.astype(np.int64)
        lo, hi = (int(values.min()), int(values.max())) if len(values) else (0, 0)
        width = next(w for w in (1, 2, 4, 8)
                     if -(1 << (8 * w - 1)) <= lo and hi < (1 << (8 * w - 1)))
        return bytes([width]) + values.astype(_DTYPES[width]).tobytes()

    def decode(self, data: bytes, count: int, info: LayerInfo) -> np.ndarray:
        if not data or data[0] not in _DTYPES or len(data) != 1 + data[0] * count:
            raise PatchFormatError("stored section has the wrong width or length")
        return np.frombuffer(data, _DTYPES[data[0]], count, 1).astype(np.int64)

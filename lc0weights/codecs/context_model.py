"""Codec ``cm1``: binary context mixing over the kernels of :mod:`lc0weights.kernels`.

Each residual is binarised (magnitude class walk, sign, mantissa bits) and
every decision is predicted from adaptive estimators whose contexts are the
already coded neighbours, the base weight and the base's own last step
(``info.history``), both measured in residual units (``info.scale``).

Stream: one version byte (2), then the arithmetic coder's bytes (none for an
empty layer). The value count is not stored: the patch declares it. Version 1
coded the low mantissa bits one binary decision at a time; it is not read.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import PatchFormatError
from . import register
from .base import Codec, LayerInfo

VERSION = 2
MAX_MAGNITUDE = 1 << 62


NO_FEATURE = np.zeros(0, np.int32)      # the kernels read an absent feature as zeros


def float_bits(x: np.ndarray | None, count: int) -> np.ndarray:
    """The float32 bit patterns of x as int32, or an empty array (all zeros to the
    kernels) when x is absent or misfits."""
    if x is None or count == 0:
        return NO_FEATURE
    x = np.ascontiguousarray(np.asarray(x, np.float32).ravel())
    if len(x) != count:
        return NO_FEATURE
    return x.view(np.int32)


def scale_key(scale: float) -> int:
    """Twice the binary exponent of float32(scale) plus its top mantissa bit."""
    bits = int(np.array([scale if scale and np.isfinite(scale) and scale > 0 else 1.0],
                        np.float32).view(np.int32)[0])
    return bits >> 22


def layer_geometry(info: LayerInfo) -> tuple[int, int]:
    """(elements per output channel, elements per kernel) from the inferred shape."""
    shape = tuple(int(s) for s in (info.shape or ()))
    if len(shape) >= 2 and all(s > 0 for s in shape) and int(np.prod(shape)) == info.count:
        row = int(np.prod(shape[1:]))
        kernel = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        return max(row, 1), max(kernel, 1)
    return max(info.count, 1), 1


@register
class ContextModel(Codec):
    codec_id = "cm1"

    def _features(self, info: LayerInfo, total: int):
        count = min(info.count, total) if info.count else total
        scale = float(info.scale) if info.scale else 0.0
        hbits = float_bits(info.history, count)
        bbits = float_bits(info.base, count)
        row, _ = layer_geometry(info)
        return hbits, bbits, scale_key(scale), count, row

    def encode(self, values: np.ndarray, info: LayerInfo) -> bytes:
        values = np.ascontiguousarray(values, np.int64)
        if len(values) and int(np.abs(values).max()) >= MAX_MAGNITUDE or (
                len(values) and values.min() == np.iinfo(np.int64).min):
            raise ValueError("cm1 codes residuals of magnitude below 2^62")
        hbits, bbits, key, count, row = self._features(info, len(values))
        buf = np.zeros(1024 + len(values), np.uint8)      # grown by the kernel if short
        buf, used = kernels.encode_layer(values, hbits, bbits, key, count, row, buf,
                                         *kernels.fresh_tables(),
                                         kernels.SQUASH, kernels.STRETCH, kernels.RATE)
        return bytes([VERSION]) + buf[:used].tobytes()

    def decode(self, data: bytes, count: int, info: LayerInfo) -> np.ndarray:
        if not data or data[0] != VERSION:
            raise PatchFormatError(
                f"cm1 stream version {data[0] if data else 'missing'}, expected {VERSION}")
        body = np.frombuffer(data, np.uint8, offset=1)
        # No bound of count by the stream length: a well-predicted layer (all zeros, say)
        # takes a handful of bytes. The patch bounds count by the declared net size.
        if count < 0:
            raise PatchFormatError(f"cm1 section declares {count} values")
        if count == 0:
            if len(body):
                raise PatchFormatError(f"cm1 section holds {len(body)} bytes for no values")
            return np.zeros(0, np.int64)
        values = np.zeros(count, np.int64)
        hbits, bbits, key, main, row = self._features(info, count)
        used, status = kernels.decode_layer(values, hbits, bbits, key, main, row, body, len(body),
                                            *kernels.fresh_tables(),
                                            kernels.SQUASH, kernels.STRETCH, kernels.RATE)
        if status == 1:
            raise PatchFormatError("cm1 section is truncated or corrupt (read past its end)")
        if status == 2:
            raise PatchFormatError(
                f"cm1 section has {len(body) - used} bytes left after its last value")
        return values

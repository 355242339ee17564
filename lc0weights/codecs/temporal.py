"""Codec ``cm2``: ``cm1``'s context model over a signed temporal prediction.

On a run that publishes averaged weights (SWA), a net's step points the same
way as the base's own last step (``info.history``), so each residual is
predicted from it and only the prediction error is coded:

    hq   = rint(16 * history / scale)              float64, then int64, |hq| <= 2^40
    p16  = (slope * hq + 2^11) >> 12               the prediction in 1/16 units
    pred = (p16 + 8) >> 4                          rounded to whole units
    e    = v - pred                                coded with the cm1 kernels

``slope`` is the encoder's least-squares fit of the residuals on the history
in 12-bit fixed point, one per stream (a layer, or each chunk of a chunked
layer), carried in the stream. Everything after ``hq``
is integer arithmetic; ``hq`` itself is one IEEE multiply by a power of two,
one division and a rint, which every machine rounds alike. The kernels see
the history as their first feature (magnitude and sign contexts, as in cm1)
and, in place of the base weight, the prediction's rounding remainder
``p16 - 16 pred`` (in -8..7) as a float32 pattern whose kernel bucket is
``|remainder|`` and whose sign is the remainder's: where the prediction falls
between two units, that tells which of the two the value takes. Escape values
(after ``info.count``) are not predicted.

Stream: one mode byte. Mode 0: no prediction, then exactly cm1's coded bytes
(the model of cm1 with the base weight as context); used without a history,
when the fitted slope rounds to zero, or when it is below 1/2 and coding
without prediction is smaller. Mode 1: the slope as a zigzag LEB128
varint (|slope| < 2^16), then the kernels' bytes for the errors.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import PatchFormatError
from . import register
from .base import Codec, LayerInfo
from .context_model import (MAX_MAGNITUDE, NO_FEATURE, float_bits, layer_geometry,
                            scale_key)

SLOPE_BITS = 12
MAX_SLOPE = 1 << 16            # slopes of 16 and more are not meaningful
HISTORY_FRACTION = 16          # history units per residual unit
MAX_HISTORY = 1 << 40          # keeps slope * hq far inside int64
MODE_PLAIN, MODE_PREDICTED = 0, 1
# Below this slope (steps that barely persist, as on plain SGD runs) the encoder also
# codes the layer without prediction and keeps the smaller stream.
UNSURE_SLOPE = 1 << (SLOPE_BITS - 1)


def history_units(history: np.ndarray | None, scale: float, count: int) -> np.ndarray | None:
    """The history in 1/16 residual units, int64; None when it cannot be used. The
    numpy statement of what the compiled kernels compute (the tests hold them equal)."""
    if history is None or count == 0 or len(history) != count:
        return None
    if not (scale > 0 and np.isfinite(scale)):
        return None
    x = np.asarray(history, np.float32).astype(np.float64)
    x *= float(HISTORY_FRACTION)             # exact: a power of two
    x /= scale                               # one correctly rounded division
    np.nan_to_num(x, copy=False, nan=0.0, posinf=MAX_HISTORY, neginf=-MAX_HISTORY)
    np.clip(x, -MAX_HISTORY, MAX_HISTORY, out=x)
    np.rint(x, out=x)
    return x.astype(np.int64)


def _usable(history, scale: float, count: int):
    """The history as contiguous float32, or None when it cannot be used."""
    if history is None or count == 0 or len(history) != count or not (scale > 0 and np.isfinite(scale)):
        return None
    return np.ascontiguousarray(history, np.float32)


def _units(history, scale: float, count: int) -> np.ndarray | None:
    """history_units computed by the compiled kernel (same integers, one pass)."""
    h = _usable(history, scale, count)
    if h is None:
        return None
    out = np.empty(count, np.int64)
    kernels.history_units(h, float(scale), out)
    return out


def _predict(history, scale: float, slope: int, key: int, count: int):
    """(prediction, remainder patterns) in one compiled pass; the patterns are absent
    (empty) for a scale no float32 layer has."""
    low = key - kernels.BUCKET_ZERO
    pred, rembits = np.empty(count, np.int64), np.zeros(count, np.int32)
    kernels.history_prediction(_usable(history, scale, count), float(scale), slope, low, pred, rembits)
    return pred, (rembits if 1 <= low and low + 8 < (1 << 9) else NO_FEATURE)


def prediction(hq: np.ndarray, slope: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction in whole units, rounding remainder in 1/16 units, -8..7); numpy
    statement of the compiled kernel's."""
    p16 = (hq * slope + (1 << (SLOPE_BITS - 1))) >> SLOPE_BITS
    pred = (p16 + HISTORY_FRACTION // 2) >> 4
    return pred, p16 - pred * HISTORY_FRACTION


def fit_slope(values: np.ndarray, hq: np.ndarray) -> int:
    """Least-squares slope of values on hq / 16, in 12-bit fixed point (encoder only)."""
    h = hq.astype(np.float64) / HISTORY_FRACTION
    hh = float(np.sum(h * h))            # plain sums: no BLAS threads for one layer
    if not hh > 0:
        return 0
    slope = float(np.sum(values * h)) / hh
    return int(np.clip(np.rint(slope * (1 << SLOPE_BITS)), -MAX_SLOPE + 1, MAX_SLOPE - 1))


def remainder_bits(remainder: np.ndarray, key: int) -> np.ndarray:
    """Float32 patterns (as int32) the kernels bucket as |remainder|, signed like it;
    numpy statement of the compiled kernel's."""
    low = key - kernels.BUCKET_ZERO
    if low < 1 or low + 8 >= (1 << 9):
        return NO_FEATURE                    # a scale no float32 layer has
    mag = np.abs(remainder)
    bits = np.where(mag == 0, 0, (low + mag) << 22)
    bits |= np.where(remainder < 0, np.int64(-1) << 31, 0)
    return bits.astype(np.int32)


def _varint(z: int) -> bytes:
    out = bytearray()
    while True:
        out.append((z & 0x7F) | (0x80 if z > 0x7F else 0))
        z >>= 7
        if not z:
            return bytes(out)


def _read_slope(data: bytes) -> tuple[int, int]:
    z, shift, pos = 0, 0, 1
    while True:
        if pos >= len(data) or shift > 14:
            raise PatchFormatError("cm2 slope is truncated or too long")
        z |= (data[pos] & 0x7F) << shift
        pos += 1
        shift += 7
        if not data[pos - 1] & 0x80:
            break
    slope = (z >> 1) ^ -(z & 1)
    if not -MAX_SLOPE < slope < MAX_SLOPE:
        raise PatchFormatError(f"cm2 slope {slope} out of range")
    return slope, pos


def _run(values, hbits, bbits, key, count, row, body=None):
    """Encode (body None) or decode into values with the cm1 kernels."""
    if body is None:
        buf = np.zeros(1024 + len(values), np.uint8)
        buf, used = kernels.encode_layer(values, hbits, bbits, key, count, row, buf,
                                         *kernels.fresh_tables(),
                                         kernels.SQUASH, kernels.STRETCH, kernels.RATE)
        return buf[:used].tobytes()
    used, status = kernels.decode_layer(values, hbits, bbits, key, count, row, body, len(body),
                                        *kernels.fresh_tables(),
                                        kernels.SQUASH, kernels.STRETCH, kernels.RATE)
    if status == 1:
        raise PatchFormatError("cm2 section is truncated or corrupt (read past its end)")
    if status == 2:
        raise PatchFormatError(f"cm2 section has {len(body) - used} bytes left after its last value")
    return values


@register
class TemporalContextModel(Codec):
    codec_id = "cm2"

    @staticmethod
    def _layer(info: LayerInfo, total: int):
        count = min(info.count, total) if info.count else total
        scale = float(info.scale) if info.scale else 0.0
        row, _ = layer_geometry(info)
        return count, scale, scale_key(scale), row

    def encode(self, values: np.ndarray, info: LayerInfo) -> bytes:
        values = np.ascontiguousarray(values, np.int64)
        if len(values) and (int(np.abs(values).max()) >= MAX_MAGNITUDE
                            or values.min() == np.iinfo(np.int64).min):
            raise ValueError("cm2 codes residuals of magnitude below 2^62")
        count, scale, key, row = self._layer(info, len(values))
        hbits = float_bits(info.history, count)
        hq = _units(info.history, scale, count)
        slope = fit_slope(values[:count], hq) if hq is not None else 0
        predicted = None
        if slope:
            pred, rembits = _predict(info.history, scale, slope, key, count)
            errors = values.copy()
            errors[:count] -= pred
            if int(np.abs(errors).max()) < MAX_MAGNITUDE:
                body = _run(errors, hbits, rembits, key, count, row)
                predicted = bytes([MODE_PREDICTED]) + _varint((slope << 1) ^ (slope >> 63)) + body
                if abs(slope) >= UNSURE_SLOPE:
                    return predicted
        plain = bytes([MODE_PLAIN]) + _run(values, hbits, float_bits(info.base, count), key, count, row)
        return predicted if predicted is not None and len(predicted) < len(plain) else plain

    def decode(self, data: bytes, count: int, info: LayerInfo) -> np.ndarray:
        if not data or data[0] not in (MODE_PLAIN, MODE_PREDICTED):
            raise PatchFormatError(f"cm2 stream mode {data[0] if data else 'missing'} unknown")
        if count < 0:
            raise PatchFormatError(f"cm2 section declares {count} values")
        main, scale, key, row = self._layer(info, count)
        hbits = float_bits(info.history, main)
        slope, start = _read_slope(data) if data[0] == MODE_PREDICTED else (0, 1)
        if data[0] == MODE_PREDICTED and not slope:
            raise PatchFormatError("cm2 predicted section with a zero slope")
        body = np.frombuffer(data, np.uint8, offset=start)
        if count == 0:
            if len(body) or slope:
                raise PatchFormatError(f"cm2 section holds {len(data)} bytes for no values")
            return np.zeros(0, np.int64)
        values = np.zeros(count, np.int64)
        if not slope:
            return _run(values, hbits, float_bits(info.base, main), key, main, row, body)
        if _usable(info.history, scale, main) is None:
            raise PatchFormatError("cm2 section predicts from a history the patch does not give")
        pred, rembits = _predict(info.history, scale, slope, key, main)
        _run(values, hbits, rembits, key, main, row, body)
        values[:main] += pred
        return values

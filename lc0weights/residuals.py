"""Residuals: the small integers a patch codes for each layer, and their inverse.

One pair of functions per residual kind (see ``Residual`` in proto/patch.proto):
``*_residuals`` turns a target layer (and the paired base layer, if any) into
an int64 array, ``*_rebuild`` turns that array back into the target's codes.
The rebuild side is the only truth: the encoder computes the codes a client
will rebuild with the very same function.

Tolerance mode quantises and appends *escapes*: elements the quantised value
would put more than T away from the target are listed after the quantised
values as (gap to the previous escaped position, exact residual) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import encodings as enc
from . import weight_error as we
from .errors import PatchFormatError
from .proto.patch_pb2 import FLOAT_IMAGE, FLOAT_STEP, LINEAR16_REGRID, RAW_BYTES

MAX_QUANT_WIDTH = 2 * 65535 + 1


@dataclass
class LayerTarget:
    """What the rebuild needs to know about the target layer (from the header)."""

    encoding: int
    count: int
    min_bits: int = 0
    max_bits: int = 0

    @property
    def bounds(self) -> tuple[float, float]:
        return float(enc.f32(self.min_bits)), float(enc.f32(self.max_bits))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return enc.decode(self.encoding, codes, self.min_bits, self.max_bits)


def max_error(approx_codes, approx: LayerTarget, target_codes, target: LayerTarget) -> float:
    """The largest distance of any element of two layers of one encoding, under every
    engine decoding (what a tolerance promises); inf for a NaN against a number."""
    return we.max_difference(target.encoding, approx_codes, (approx.min_bits, approx.max_bits),
                             target_codes, (target.min_bits, target.max_bits))


@dataclass
class Residuals:
    kind: int
    values: np.ndarray      # int64: count quantised values, then escape pairs
    codes: np.ndarray       # the codes the rebuild yields (uint16/uint32/uint8)
    quant_width: int = 1
    escapes: int = 0
    scale: float = 0.0      # value of one residual unit, for context models


# -- escapes ----------------------------------------------------------------------

def _split_escapes(values: np.ndarray, count: int, escapes: int):
    if len(values) != count + 2 * escapes:
        raise PatchFormatError("residual section has the wrong number of values")
    q, pairs = values[:count], values[count:]
    gaps = pairs[0::2]
    if escapes and (gaps.min() < 0 or int(gaps.sum()) + escapes > count):
        raise PatchFormatError("escape positions out of range")
    positions = np.cumsum(gaps + 1) - 1
    return q, positions, pairs[1::2]


# -- LINEAR16: code minus the base re-gridded onto the target's min/max ------------

def regrid(base: np.ndarray | None, target: LayerTarget) -> np.ndarray:
    """Predict each u16 code from the base value on the target's new min/max.

    The numpy statement of the prediction; encoder and decoder compute it per
    element in ``weight_error`` (no float64 copy of the layer), and the tests
    hold the two equal, bit for bit.
    """
    lo, hi = target.bounds
    if base is None or not hi > lo or not np.isfinite(hi - lo):
        return np.zeros(target.count, np.int64)
    # In place, one float64 buffer: the same IEEE operations in the same order as
    # rint((b - lo) / (hi - lo) * 65535), so encoder and decoder agree bit for bit.
    x = base.astype(np.float64)
    if not np.isfinite(x).all():
        np.nan_to_num(x, copy=False, nan=lo, posinf=hi, neginf=lo)
    x -= lo
    x /= hi - lo
    x *= 65535.0
    np.rint(x, out=x)
    np.clip(x, 0, 65535, out=x)
    return x.astype(np.int64)


def linear16_quant_width(target: LayerTarget, tolerance: float | None) -> int:
    lo, hi = target.bounds
    step = (hi - lo) / 65535.0
    if not tolerance or not step > 0 or not np.isfinite(step):
        return 1
    # A hair under T/step: float32 decoding may stretch a code distance slightly.
    half = int(np.floor(tolerance / step * (1 - 1e-6)))
    return int(min(2 * max(half, 0) + 1, MAX_QUANT_WIDTH))


def _prediction_mode(base, target: LayerTarget) -> int:
    """How regrid predicts: 0 no usable range (all 0), 1 from the base, 2 the code of 0.0."""
    lo, hi = target.bounds
    if not hi > lo or not np.isfinite(hi - lo):
        return 0
    return 1 if base is not None else 2


def linear16_residuals(codes, base, target: LayerTarget, tolerance=None, predicted=None) -> Residuals:
    """The LINEAR16 residuals of ``codes`` against ``base`` (float32 weights, or None), or
    against ``predicted``, the base's predicted codes when already known (from
    :func:`linear16_base_table`: the same integers, without the float steps)."""
    # One pass per element (weight_error): the prediction, the residual and, with a
    # tolerance, the proof that the rebuilt code is within T under every LINEAR16
    # decoding (tables of all 65,536 codes), with no whole-layer float temporaries.
    # Same values as regrid() and encodings.worst_difference, bit for bit.
    w = linear16_quant_width(target, tolerance)
    step = (target.bounds[1] - target.bounds[0]) / 65535.0
    tables = we.decode_tables(enc.LINEAR16, target.min_bits, target.max_bits) if w > 1 else None
    if predicted is not None:            # codes 0..65535: exact in float32
        base, mode = np.asarray(predicted, np.float32), we.PREDICTED
    else:
        mode = _prediction_mode(base, target)
    values, rebuilt, escapes = we.linear16_quantise(codes, base, target.bounds, mode, w, tables,
                                                    float(tolerance or 0.0))
    if w == 1:
        return Residuals(LINEAR16_REGRID, values, rebuilt, 1, 0, step)
    return Residuals(LINEAR16_REGRID, values, rebuilt, w, escapes, step * w)


def linear16_rebuild(values, base, target: LayerTarget, quant_width: int, escapes: int) -> np.ndarray:
    return _linear16_rebuild(values, base, _prediction_mode(base, target), target, quant_width, escapes)


def _linear16_rebuild(values, base, mode: int, target: LayerTarget, quant_width: int, escapes: int):
    """The codes ``values`` rebuild from ``base`` as ``mode`` reads it (we.PREDICTED: the
    base's predicted codes themselves, exact in float32)."""
    # One pass, no int64 copy of the layer (weight_error); the same sums as p + q*w.
    return _rebuilt_codes(values, target, quant_width, escapes,
                          lambda q, positions, exact: we.linear16_rebuild(q, positions, exact, base, target.bounds,
                                                                          mode, quant_width, target.count))


def _rebuilt_codes(values, target: LayerTarget, quant_width: int, escapes: int, rebuild) -> np.ndarray:
    """The codes ``rebuild(q, positions, exact)`` makes of ``values`` (steps, then escapes), checked."""
    if not 1 <= quant_width <= MAX_QUANT_WIDTH:
        raise PatchFormatError(f"quantisation width {quant_width} out of range")
    q, positions, exact = _split_escapes(values, target.count, escapes)
    k, status = rebuild(q, positions, exact)
    if status:
        raise PatchFormatError("rebuilt LINEAR16 code out of range" if status == 1
                               else "escape positions out of range")
    return k


# A layer of at least this many elements whose base is LINEAR16 too is rebuilt through a
# table of the 65,536 base codes' predictions: building it costs what 65,536 weights cost.
TABLED_REBUILD_MIN = 1 << 17


def linear16_base_table(base_min_bits: int, base_max_bits: int, target: LayerTarget) -> np.ndarray:
    """The prediction (as float32) of every LINEAR16 base code, exactly as :func:`linear16_rebuild`
    computes it from the decoded base weight (decoding is per element)."""
    all_codes = np.arange(1 << 16, dtype=np.uint16)
    base = enc.decode(enc.LINEAR16, all_codes, base_min_bits, base_max_bits)
    # float32: codes 0..65535 are exact, and it is what the passes read (we.PREDICTED)
    return we.prediction(base, target.bounds, _prediction_mode(base, target), len(all_codes)).astype(np.float32)


def linear16_rebuild_from_codes(values, base_codes, table, target: LayerTarget, quant_width: int,
                                escapes: int) -> np.ndarray:
    """:func:`linear16_rebuild` of a LINEAR16 base given by its codes and
    :func:`linear16_base_table`; the same codes, the same errors."""
    return _rebuilt_codes(values, target, quant_width, escapes,
                          lambda q, positions, exact: we.linear16_rebuild_tabled(q, positions, exact, base_codes,
                                                                                 table, quant_width, target.count))


# -- floats: order-preserving integer images, or value steps of 2T ------------------

def _image(encoding, codes):
    return enc.ordered_image(encoding, codes) if codes is not None else 0


def float_image_residuals(codes, base_codes, target: LayerTarget) -> Residuals:
    d = enc.ordered_image(target.encoding, codes) - _image(target.encoding, base_codes)
    return Residuals(FLOAT_IMAGE, d.astype(np.int64), codes.copy())


def float_image_rebuild(values, base_codes, target: LayerTarget) -> np.ndarray:
    if len(values) != target.count:
        raise PatchFormatError("residual section has the wrong number of values")
    image = values + _image(target.encoding, base_codes)
    limit = 1 << (31 if target.encoding == enc.FLOAT32 else 15)
    if len(image) and (image.min() < -limit or image.max() >= limit):
        raise PatchFormatError("rebuilt float pattern out of range")
    return enc.from_ordered_image(target.encoding, image)


_MAX_STEPS = 1 << 40
# Float layers are stepped a chunk at a time: float64 working arrays of 8 MB each,
# however large the layer (every operation is per element, so chunking changes nothing).
STEP_CHUNK = 1 << 20


def _step_values(base_codes, target: LayerTarget, start: int, stop: int) -> np.ndarray:
    if base_codes is None:
        return np.zeros(stop - start, np.float64)
    b = target.decode(base_codes[start:stop]).astype(np.float64)
    return np.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)


def float_step_residuals(codes, base_codes, target: LayerTarget, tolerance: float) -> Residuals:
    step = 2.0 * tolerance
    count = len(codes)
    values = np.empty(count, np.int64)
    rebuilt = np.empty(count, codes.dtype)
    positions = []
    for start in range(0, count, STEP_CHUNK):
        stop = min(start + STEP_CHUNK, count)
        chunk = codes[start:stop]
        t = target.decode(chunk).astype(np.float64)
        b = _step_values(base_codes, target, start, stop)
        with np.errstate(invalid="ignore", over="ignore"):
            qf = np.rint((t - b) / step)
            finite = np.isfinite(t) & (np.abs(qf) < _MAX_STEPS)
            q = np.where(finite, qf, 0).astype(np.int64)
            k = enc.encode_float(target.encoding, b + q * step)
            # The check, once per weight: a float layer has one decoding.
            bad = ~finite | ~(np.abs(target.decode(k).astype(np.float64) - t) <= tolerance)
        q[bad] = 0
        values[start:stop] = q
        rebuilt[start:stop] = np.where(bad, chunk, k)
        positions.append(np.flatnonzero(bad) + start)
    positions = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    base_at = _image(target.encoding, base_codes[positions]) if base_codes is not None else 0
    exact = enc.ordered_image(target.encoding, codes[positions]) - base_at
    escapes = len(positions)
    values.resize(count + 2 * escapes, refcheck=False)      # grows in place where it can
    values[count::2] = np.diff(positions, prepend=-1) - 1
    values[count + 1::2] = exact
    return Residuals(FLOAT_STEP, values, rebuilt, 1, escapes, step)


def float_step_rebuild(values, base_codes, target: LayerTarget, tolerance: float, escapes: int):
    if not tolerance > 0:
        raise PatchFormatError("a FLOAT_STEP layer needs a positive tolerance")
    q, positions, exact = _split_escapes(values, target.count, escapes)
    if len(q) and np.abs(q).max() >= _MAX_STEPS:
        raise PatchFormatError("float step out of range")
    k = np.empty(target.count, np.uint32 if target.encoding == enc.FLOAT32 else np.uint16)
    for start in range(0, target.count, STEP_CHUNK):
        stop = min(start + STEP_CHUNK, target.count)
        b = _step_values(base_codes, target, start, stop)
        with np.errstate(invalid="ignore", over="ignore"):
            k[start:stop] = enc.encode_float(target.encoding, b + q[start:stop] * (2.0 * tolerance))
    if escapes:
        base_at = _image(target.encoding, base_codes[positions]) if base_codes is not None else 0
        fixed = float_image_rebuild(exact + base_at, None, LayerTarget(target.encoding, escapes))
        k[positions] = fixed
    return k


# -- raw bytes ---------------------------------------------------------------------

def raw_residuals(payload) -> Residuals:
    b = np.frombuffer(payload, np.uint8)
    return Residuals(RAW_BYTES, b.astype(np.int64), b.copy())


def raw_rebuild(values, count: int) -> np.ndarray:
    if len(values) != count or (count and (values.min() < 0 or values.max() > 255)):
        raise PatchFormatError("raw byte section out of range")
    return values.astype(np.uint8)

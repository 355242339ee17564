"""How far decoded weights are from each other, under every engine decoding, in one pass.

:func:`lc0weights.encodings.worst_difference` states the measure: per element,
the largest ``|a - b|`` (float64 of the float32 decodes) over every decoding
the engine may use; equal values (NaN included) differ by 0, a NaN against a
number by inf. This module computes the same numbers without whole-layer
float temporaries:

* a 16-bit layer has only 65,536 codes, so its decodes are a table per layer
  and per decoding (:func:`decode_tables`), computed once with the very
  functions of :mod:`encodings` (the exact fma emulation included), and every
  element costs a few table reads;
* FLOAT32 layers are read as float32 in place.

The kernels are plain numba loops (no fastmath, so IEEE operations in program
order): the same results as the numpy formulation, bit for bit.

:func:`linear16_quantise` is the tolerance encoder of LINEAR16 layers (see
:mod:`residuals`): quantised residuals, escapes and the rebuilt codes, each
rebuilt weight proven within T under every decoding as it is made.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import encodings as enc

ALL_CODES = np.arange(65536, dtype=np.uint16)


def decode_tables(encoding: int, min_bits: int = 0, max_bits: int = 0) -> np.ndarray:
    """(65536, decodings) float32: every 16-bit code decoded under each engine decoding.

    Code-major, so one element's decodings share a cache line (768 KB for LINEAR16).
    """
    names = enc.LINEAR16_DECODINGS if encoding == enc.LINEAR16 else ("master",)
    with np.errstate(invalid="ignore", over="ignore"):     # a non-finite range decodes to inf/NaN
        return np.ascontiguousarray(np.stack(
            [enc.decode(encoding, ALL_CODES, min_bits, max_bits, decoding=name) for name in names], axis=1))


@njit(cache=True, nogil=True, inline='always')
def _distance(a, b):
    """|a - b| as worst_difference measures it: equal (NaN too) 0, NaN vs number inf."""
    if a == b or (np.isnan(a) and np.isnan(b)):
        return 0.0
    d = abs(a - b)
    return np.inf if np.isnan(d) else d


@njit(cache=True, nogil=True, inline='always')
def _tabled_distance(tables_a, ka, tables_b, kb):
    worst = 0.0
    for d in range(tables_a.shape[1]):
        x = _distance(np.float64(tables_a[ka, d]), np.float64(tables_b[kb, d]))
        if x > worst:
            worst = x
    return worst


@njit(cache=True, nogil=True)
def worst_tabled(tables_a, codes_a, tables_b, codes_b, same_tables):
    """The largest distance of two 16-bit code arrays decoded through their tables."""
    worst = 0.0
    for i in range(len(codes_a)):
        if same_tables and codes_a[i] == codes_b[i]:
            continue                       # one code, one value: distance 0 under every decoding
        x = _tabled_distance(tables_a, codes_a[i], tables_b, codes_b[i])
        if x > worst:
            worst = x
    return worst


@njit(cache=True, nogil=True)
def worst_float32(a, b):
    """The largest distance of two float32 arrays (FLOAT32 layers, one decoding)."""
    worst = 0.0
    for i in range(len(a)):
        x = _distance(np.float64(a[i]), np.float64(b[i]))
        if x > worst:
            worst = x
    return worst


def max_difference(encoding: int, codes_a: np.ndarray, bounds_a: tuple[int, int],
                   codes_b: np.ndarray, bounds_b: tuple[int, int]) -> float:
    """``worst_difference(...).max()`` (0.0 for empty layers), in one pass and no temporaries."""
    if not len(codes_a):
        return 0.0
    if encoding == enc.FLOAT32:
        return float(worst_float32(np.ascontiguousarray(codes_a, np.uint32).view(np.float32),
                                   np.ascontiguousarray(codes_b, np.uint32).view(np.float32)))
    if encoding not in (enc.LINEAR16, enc.FLOAT16, enc.BFLOAT16):
        raise ValueError(f"cannot measure layer encoding {encoding}")
    same = encoding != enc.LINEAR16 or tuple(bounds_a) == tuple(bounds_b)
    tables_a = decode_tables(encoding, *bounds_a)
    tables_b = tables_a if same else decode_tables(encoding, *bounds_b)
    return float(worst_tabled(tables_a, np.ascontiguousarray(codes_a, np.uint16),
                              tables_b, np.ascontiguousarray(codes_b, np.uint16), same))


# -- LINEAR16 prediction and tolerance encoding -------------------------------------------

@njit(cache=True, nogil=True, inline='always')
def _rint(x):
    """Round half to even, as np.rint (exact: x - floor(x) is exact below 2^52)."""
    r = np.floor(x)
    f = x - r
    if f > 0.5 or (f == 0.5 and r % 2.0 != 0.0):
        r += 1.0
    return r


@njit(cache=True, nogil=True, inline='always')
def _regrid_one(b, lo, hi, span):
    """One code of residuals.regrid: rint((b - lo) / (hi - lo) * 65535) clipped, same IEEE steps."""
    x = np.float64(b)
    if np.isnan(x) or x == -np.inf:
        x = lo
    elif x == np.inf:
        x = hi
    x -= lo
    x /= span
    x *= 65535.0
    x = _rint(x)
    if x < 0.0:
        x = 0.0
    elif x > 65535.0:
        x = 65535.0
    return np.int64(x)


PREDICTED = 3


@njit(cache=True, nogil=True, inline='always')
def _prediction(base, i, lo, hi, span, mode):
    """mode 0: no usable range (0); 1: the base re-gridded; 2: the code of 0.0;
    3 (PREDICTED): ``base`` holds the predicted codes themselves (exact in float32)."""
    if mode == PREDICTED:
        return np.int64(base[i])
    if mode == 0:
        return np.int64(0)
    if mode == 1:
        return _regrid_one(base[i], lo, hi, span)
    return _regrid_one(np.float32(0.0), lo, hi, span)


def prediction(base, bounds, mode: int, count: int) -> np.ndarray:
    """residuals.regrid (mode 1: of ``base``; 2: of zeros; 0: all 0) as int64, without temporaries."""
    out = np.empty(count, np.int64)
    lo, hi = bounds
    _prediction_pass(np.ascontiguousarray(base, np.float32) if mode == 1 else np.zeros(1, np.float32),
                     lo, hi, hi - lo, mode, out)
    return out


@njit(cache=True, nogil=True)
def _prediction_pass(base, lo, hi, span, mode, out):
    for i in range(len(out)):
        out[i] = _prediction(base, i, lo, hi, span, mode)


@njit(cache=True, nogil=True, inline='always')
def _quantised(c, p, w):
    """(q, k): the quantised step and the code it rebuilds (floor division, as numpy)."""
    q = (c - p + w // 2) // w
    return q, p + q * w


@njit(cache=True, nogil=True)
def _quantise_pass(codes, base, lo, hi, span, mode, w, tables, tolerance, rebuilt):
    """Rebuilt codes: the quantised code where it is in range and within the tolerance
    under every decoding, else the exact code (an escape). Returns the escape count."""
    escapes = 0
    for i in range(len(codes)):
        c = np.int64(codes[i])
        _, k = _quantised(c, _prediction(base, i, lo, hi, span, mode), w)
        if k == c or 0 <= k <= 65535 and not _tabled_distance(tables, k, tables, c) > tolerance:
            rebuilt[i] = k
        else:
            rebuilt[i] = c
            escapes += 1
    return escapes


@njit(cache=True, nogil=True)
def _values_pass(codes, base, lo, hi, span, mode, w, rebuilt, values):
    """values: each element's q (0 at an escape), then (gap, exact residual) per escape."""
    count = len(codes)
    at, last = count, -1
    for i in range(count):
        c = np.int64(codes[i])
        p = _prediction(base, i, lo, hi, span, mode)
        q, k = _quantised(c, p, w)
        if k == rebuilt[i] and (0 <= k <= 65535):
            values[i] = q
        else:
            values[i] = 0
            values[at] = i - last - 1
            values[at + 1] = c - p
            at += 2
            last = i


@njit(cache=True, nogil=True)
def _residuals_pass(codes, base, lo, hi, span, mode, values):
    for i in range(len(codes)):
        values[i] = np.int64(codes[i]) - _prediction(base, i, lo, hi, span, mode)


def linear16_quantise(codes, base, bounds, mode: int, width: int, tables, tolerance: float):
    """(values, rebuilt uint16 codes, escapes) of a LINEAR16 layer; ``width`` 1 is lossless.

    ``bounds`` = (lo, hi) as float64, ``mode`` as in :func:`_prediction`, ``base``
    the base's float32 values (mode 1). A rebuilt code differs from the target's
    only where :func:`_tabled_distance` proved it within ``tolerance`` under every
    decoding in ``tables``.
    """
    codes = np.ascontiguousarray(codes, np.uint16)
    base = np.ascontiguousarray(base, np.float32) if mode in (1, PREDICTED) else np.zeros(1, np.float32)
    lo, hi = bounds
    span = hi - lo
    if width == 1:
        values = np.empty(len(codes), np.int64)
        _residuals_pass(codes, base, lo, hi, span, mode, values)
        return values, codes.copy(), 0
    rebuilt = np.empty(len(codes), np.uint16)
    escapes = _quantise_pass(codes, base, lo, hi, span, mode, width, tables, tolerance, rebuilt)
    values = np.empty(len(codes) + 2 * escapes, np.int64)
    _values_pass(codes, base, lo, hi, span, mode, width, rebuilt, values)
    return values, rebuilt, escapes


@njit(cache=True, nogil=True)
def _rebuild_pass(values, positions, exact, base, lo, hi, span, mode, w, out):
    """out[i] = prediction + q*w, or prediction + exact at an escape. Returns 0, 1 for a
    code out of range, 2 for escape positions not strictly increasing within the layer.

    int64 arithmetic wraps as numpy's does, so hostile values give the same codes."""
    j = 0
    for i in range(len(out)):
        p = _prediction(base, i, lo, hi, span, mode)
        if j < len(positions) and positions[j] == i:
            k = p + exact[j]
            j += 1
        else:
            k = p + values[i] * w
        if k < 0 or k > 65535:
            return 1
        out[i] = k
    return 0 if j == len(positions) else 2


def linear16_rebuild(values, positions, exact, base, bounds, mode: int, width: int, count: int):
    """(rebuilt uint16 codes, status): status as :func:`_rebuild_pass`, the codes valid if 0."""
    out = np.empty(count, np.uint16)
    lo, hi = bounds
    status = _rebuild_pass(np.ascontiguousarray(values, np.int64), np.ascontiguousarray(positions, np.int64),
                       np.ascontiguousarray(exact, np.int64),
                       np.ascontiguousarray(base, np.float32) if mode in (1, PREDICTED) else np.zeros(1, np.float32),
                       lo, hi, hi - lo, mode, width, out)
    return out, int(status)


def linear16_rebuild_tabled(values, positions, exact, base_codes, table, width: int, count: int):
    """:func:`linear16_rebuild` in mode PREDICTED, the prediction of element i being
    ``table[base_codes[i]]``: the same codes and status, with no array of predictions."""
    out = np.empty(count, np.uint16)
    if len(base_codes) != count or len(table) != 1 << 16:
        raise ValueError("a tabled rebuild needs one LINEAR16 base code per element and a 65,536-entry table")
    status = _tabled_rebuild_pass(np.ascontiguousarray(values, np.int64), np.ascontiguousarray(positions, np.int64),
                                  np.ascontiguousarray(exact, np.int64), np.ascontiguousarray(base_codes, np.uint16),
                                  np.ascontiguousarray(table, np.float32), width, out)
    return out, int(status)


@njit(cache=True, nogil=True)
def _tabled_rebuild_pass(values, positions, exact, base_codes, table, w, out):
    """:func:`_rebuild_pass` in mode PREDICTED, reading the prediction through ``table``.

    The loop is written out again on purpose: with its step in a shared jitted helper
    (returning the code and the next escape's index) both passes ran 12x slower."""
    j = 0
    for i in range(len(out)):
        p = np.int64(table[base_codes[i]])
        if j < len(positions) and positions[j] == i:
            k = p + exact[j]
            j += 1
        else:
            k = p + values[i] * w
        if k < 0 or k > 65535:
            return 1
        out[i] = k
    return 0 if j == len(positions) else 2


# What rebuilding LINEAR16 layers calls (lc0weights.kernel_preload loads them ahead of time).
REBUILD_KERNELS = (_prediction_pass, _rebuild_pass, _tabled_rebuild_pass)

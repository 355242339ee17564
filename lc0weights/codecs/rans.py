"""Codec ``rans1``: the fast tier, static tables and rANS (:mod:`lc0weights.rans_kernels`).

It decodes about ten times faster than ``cm1`` for a few percent more bytes
(docs/BENCHMARKS.md, "Coding tiers"), which is what a client on a fast link
wants from a net of lc0's size. On a run that publishes averaged weights it
codes the same temporal prediction error as ``cm2`` (one fitted slope per
stream, :mod:`.temporal`), when a history is given and the slope pays.

Stream (all varints are LEB128, unsigned):

    mode        1 byte: 0 plain, 1 predicted
    slope       mode 1 only: zigzag varint, 0 < |slope| < 2^16 (12-bit fixed point)
    tables      varint K (<= 63), then K times: varint context step (the first
                context itself, then the distance to the previous one minus one),
                varint first symbol, varint last minus first, and one varint
                frequency per symbol in that span; each table's frequencies sum
                to 4096
    words       varint n (2 <= n <= values + 2), then n little-endian 32-bit
                rANS words
    plain       the rest: signs and low bits, exactly as many bytes as they fill

An empty layer is the single byte 0. The value count is not stored: the
patch declares it.
"""
from __future__ import annotations

import numpy as np

from .. import rans_kernels as rk
from ..errors import PatchFormatError
from . import register
from .base import Codec, LayerInfo
from .context_model import MAX_MAGNITUDE
from .temporal import UNSURE_SLOPE, _predict, _units, _usable, _varint, fit_slope

MODE_PLAIN, MODE_PREDICTED = 0, 1
MAX_SLOPE = 1 << 16


class _Reader:
    """Bounded reading of the stream's header; every failure is a PatchFormatError."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def varint(self, what: str, limit: int) -> int:
        z, shift = 0, 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise PatchFormatError(f"rans1 {what} is truncated or too long")
            byte = self.data[self.pos]
            self.pos += 1
            z |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if z > limit:
            raise PatchFormatError(f"rans1 {what} {z} is over its limit {limit}")
        return z


def normalised(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to 4096 from one context's symbol counts (encoder only;
    integer arithmetic, ties to the lowest symbol, so every machine sends the same)."""
    n = int(counts.sum())
    freq = counts * rk.PROB_SCALE // n
    freq[(counts > 0) & (freq == 0)] = 1
    excess = int(freq.sum()) - rk.PROB_SCALE
    if excess < 0:
        freq[int(np.argmax(counts))] -= excess
    while excess > 0:
        i = int(np.argmax(freq))
        take = min(excess, int(freq[i]) - 1)
        freq[i] -= take
        excess -= take
    return freq


def _encode_values(values: np.ndarray) -> bytes:
    """Tables, words and plain bits of values (the stream after mode and slope)."""
    n = len(values)
    symbols, contexts = np.empty(n, np.uint8), np.empty(n, np.uint8)
    counts = np.zeros((rk.CONTEXTS, rk.SYMBOLS), np.int64)
    plain = np.empty(8 * n + 8, np.uint8)
    plain_used = rk.symbols_and_contexts(values, symbols, contexts, counts, plain)
    freq = np.zeros_like(counts)
    header = bytearray()
    used = np.flatnonzero(counts.sum(axis=1))
    header += _varint(len(used))
    previous = -1
    for ctx in used:
        freq[ctx] = normalised(counts[ctx])
        present = np.flatnonzero(freq[ctx])
        lo, hi = int(present[0]), int(present[-1])
        header += _varint(int(ctx) - previous - 1) + _varint(lo) + _varint(hi - lo)
        for f in freq[ctx, lo:hi + 1]:
            header += _varint(int(f))
        previous = int(ctx)
    cum = np.zeros_like(freq)
    cum[:, 1:] = np.cumsum(freq, axis=1)[:, :-1]
    words = np.empty(n + 2, np.uint32)
    first = rk.encode_states(symbols, contexts, freq, cum, words)
    words = words[first:]
    return (bytes(header) + _varint(len(words)) + words.astype("<u4").tobytes()
            + plain[:plain_used].tobytes())


def _decode_values(data: bytes, pos: int, count: int) -> np.ndarray:
    reader = _Reader(data, pos)
    tables = reader.varint("table count", rk.CONTEXTS)
    if tables == 0:
        raise PatchFormatError("rans1 section has no table for its values")
    table_of = np.full(rk.CONTEXTS, -1, np.int64)
    freq = np.zeros((tables, rk.SYMBOLS), np.int64)
    ctx = -1
    for t in range(tables):
        ctx += 1 + reader.varint("context step", rk.CONTEXTS)
        if ctx >= rk.CONTEXTS:
            raise PatchFormatError(f"rans1 table for context {ctx}, past the last ({rk.CONTEXTS - 1})")
        lo = reader.varint("first symbol", rk.SYMBOLS - 1)
        span = reader.varint("symbol span", rk.SYMBOLS - 1 - lo)
        for s in range(lo, lo + span + 1):
            freq[t, s] = reader.varint("frequency", rk.PROB_SCALE)
        if int(freq[t].sum()) != rk.PROB_SCALE:
            raise PatchFormatError(f"rans1 table for context {ctx} sums to {int(freq[t].sum())}, "
                                   f"not {rk.PROB_SCALE}")
        table_of[ctx] = t
    cum = np.zeros_like(freq)
    cum[:, 1:] = np.cumsum(freq, axis=1)[:, :-1]
    slot_symbol = np.empty((tables, rk.PROB_SCALE), np.uint8)
    for t in range(tables):
        slot_symbol[t] = np.repeat(np.arange(rk.SYMBOLS, dtype=np.uint8), freq[t])
    n_words = reader.varint("word count", count + 2)
    start = reader.pos
    if start + 4 * n_words > len(data):
        raise PatchFormatError(f"rans1 section declares {n_words:,} words; "
                               f"{len(data) - start:,} bytes are left")
    words = np.frombuffer(data, "<u4", n_words, start).astype(np.uint32)
    plain = np.frombuffer(data, np.uint8, offset=start + 4 * n_words)
    values = np.empty(count, np.int64)
    status = rk.decode_values(values, words, n_words, plain, len(plain), table_of, freq, cum,
                              slot_symbol)
    if status == 1:
        raise PatchFormatError("rans1 section is truncated or corrupt")
    if status == 2:
        raise PatchFormatError("rans1 section has bytes left after its last value")
    return values


@register
class FastCoder(Codec):
    codec_id = "rans1"
    context = frozenset({"history"})

    @staticmethod
    def _layer(info: LayerInfo, total: int):
        count = min(info.count, total) if info.count else total
        scale = float(info.scale) if info.scale else 0.0
        return count, scale

    def encode(self, values: np.ndarray, info: LayerInfo) -> bytes:
        values = np.ascontiguousarray(values, np.int64)
        if not len(values):
            return bytes([MODE_PLAIN])
        if int(np.abs(values).max()) >= MAX_MAGNITUDE or values.min() == np.iinfo(np.int64).min:
            raise ValueError("rans1 codes residuals of magnitude below 2^62")
        count, scale = self._layer(info, len(values))
        hq = _units(info.history, scale, count)
        slope = fit_slope(values[:count], hq) if hq is not None else 0
        predicted = None
        if slope:
            pred, _ = _predict(info.history, scale, slope, 0, count)
            errors = values.copy()
            errors[:count] -= pred
            if int(np.abs(errors).max()) < MAX_MAGNITUDE:
                predicted = (bytes([MODE_PREDICTED]) + _varint((slope << 1) ^ (slope >> 63))
                             + _encode_values(errors))
                if abs(slope) >= UNSURE_SLOPE:
                    return predicted
        plain = bytes([MODE_PLAIN]) + _encode_values(values)
        return predicted if predicted is not None and len(predicted) < len(plain) else plain

    def decode(self, data: bytes, count: int, info: LayerInfo) -> np.ndarray:
        if not data or data[0] not in (MODE_PLAIN, MODE_PREDICTED):
            raise PatchFormatError(f"rans1 stream mode {data[0] if data else 'missing'} unknown")
        if count < 0:
            raise PatchFormatError(f"rans1 section declares {count} values")
        if count == 0:
            if data != bytes([MODE_PLAIN]):
                raise PatchFormatError(f"rans1 section holds {len(data)} bytes for no values")
            return np.zeros(0, np.int64)
        main, scale = self._layer(info, count)
        slope, pos = 0, 1
        if data[0] == MODE_PREDICTED:
            reader = _Reader(data, 1)
            z = reader.varint("slope", 2 * MAX_SLOPE)
            slope, pos = (z >> 1) ^ -(z & 1), reader.pos
            if not slope or not -MAX_SLOPE < slope < MAX_SLOPE:
                raise PatchFormatError(f"rans1 slope {slope} out of range")
            if _usable(info.history, scale, main) is None:
                raise PatchFormatError("rans1 section predicts from a history the patch does not give")
        values = _decode_values(data, pos, count)
        if slope:
            pred, _ = _predict(info.history, scale, slope, 0, main)
            values[:main] += pred
        return values

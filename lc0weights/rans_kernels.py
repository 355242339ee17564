"""Deterministic numba kernels of the fast residual coder ``rans1``.

Where ``cm1`` adapts a mixer of binary estimators for every decision (about
a hundred nanoseconds a value), ``rans1`` codes each value with one lookup in
a static table: the encoder counts its stream's symbols first, sends the
normalised counts, and a range asymmetric numeral system (rANS) codes with
them. Every number is an integer.

Binarisation of one value ``v`` (int64, |v| < 2^62), ``e`` the bit length of
|v| (0 for v == 0):

- symbol: ``e`` for e < 2, else ``2e - 2 + t`` where ``t`` is the bit below
  the leading one (the magnitude class and its upper or lower half): 124
  symbols at most;
- context: the class the running scale predicts, ``eh = (a1 + 16) >> 4``,
  with ``a1 += (16 e - a1) >> 2`` after each value (cm1's running scale):
  one table per ``eh`` that occurs;
- then, when e > 0, the sign and the ``e - 2`` bits below ``t`` go to a plain
  bit stream as they are (measured on real training steps: neither the sign
  nor the low bits pay for a model at this speed).

rANS (one 64-bit state ``x`` in [2^30, 2^62), 32-bit words, probabilities in
12 bits): encoding runs from the last value to the first, so decoding runs
forward and can compute each value's context from the values before it.
Encode ``s`` (frequency ``f``, cumulative ``c``): when ``x >= 2^50 f`` write
the low word and shift; ``x = (x // f) << 12 | (x % f) + c``. Decode: slot
``x & 4095`` names ``s``; ``x = f (x >> 12) + slot - c``; below 2^30 the next
word comes in. The encoder starts at 2^30 and writes its final state first,
so a decoder that ends anywhere else, or with words left, read a corrupt
stream.

Memory per call: the value's symbols and contexts (12 bytes a value) on the
encoder's side; the decoder needs 4 KiB per table it was sent.
"""
from __future__ import annotations

import numpy as np
from numba import njit

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
STATE_LOW = 1 << 30                    # x in [STATE_LOW, STATE_LOW << 32)
SYMBOLS = 124                          # 2 * 62 - 2 + 2
CONTEXTS = 63                          # eh in 0..62
MAX_CLASS = 62


@njit(cache=True, nogil=True, inline='always')
def _bit_length(x):
    """Bits of x >= 0 (0 for 0), by halving: six steps whatever x."""
    e = 0
    if x >= np.int64(1) << 32:
        x >>= 32
        e += 32
    if x >= 1 << 16:
        x >>= 16
        e += 16
    if x >= 1 << 8:
        x >>= 8
        e += 8
    if x >= 1 << 4:
        x >>= 4
        e += 4
    if x >= 1 << 2:
        x >>= 2
        e += 2
    if x >= 2:
        x >>= 1
        e += 1
    return e + x


@njit(cache=True, nogil=True, inline='always')
def _predicted(a1):
    eh = (a1 + 16) >> 4
    return eh if eh < MAX_CLASS else MAX_CLASS


@njit(cache=True, nogil=True, inline='always')
def _put(out, state, field, width):
    """Append width (<= 24) bits of field to out; state = (acc, nacc, pos)."""
    acc, nacc, pos = state
    acc |= field << nacc
    nacc += width
    while nacc >= 8:
        out[pos] = np.uint8(acc & 0xFF)
        pos += 1
        acc >>= 8
        nacc -= 8
    return (acc, nacc, pos)


@njit(cache=True, nogil=True)
def symbols_and_contexts(values, symbols, contexts, counts, plain):
    """Fill symbols[i], contexts[i] (uint8) for every value, counts[ctx, sym]
    (int64[CONTEXTS, SYMBOLS], zeroed by the caller) and the plain bit stream
    (uint8, at least 8 bytes a value): each nonzero value's sign, then its bits
    below the top two, highest first in pieces of at most 24 bits, bytes filled
    from their least significant bit. Returns the plain bytes written."""
    a1 = 0
    state = (np.int64(0), 0, 0)
    for i in range(values.shape[0]):
        v = values[i]
        mag = v if v >= 0 else -v
        e = _bit_length(mag)
        eh = _predicted(a1)
        if e < 2:
            s = e
        else:
            s = 2 * e - 2 + ((mag >> (e - 2)) & 1)
        if e > 0:
            state = _put(plain, state, np.int64(1 if v < 0 else 0), 1)
            k = e - 2
            while k > 0:
                take = k if k < 24 else 24
                k -= take
                state = _put(plain, state, (mag >> k) & ((np.int64(1) << take) - 1), take)
        symbols[i] = s
        contexts[i] = eh
        counts[eh, s] += 1
        a1 += ((e << 4) - a1) >> 2
    acc, nacc, pos = state
    if nacc > 0:
        plain[pos] = np.uint8(acc & 0xFF)
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def encode_states(symbols, contexts, freq, cum, words):
    """rANS-encode symbols (last first) with tables freq/cum[ctx, sym]; words
    (uint32, at least 2 + len(symbols) long) receives the stream back to front.
    Returns the index of the first word written (the stream is words[first:])."""
    x = np.int64(STATE_LOW)
    pos = words.shape[0]
    for i in range(symbols.shape[0] - 1, -1, -1):
        s = np.int64(symbols[i])
        c = np.int64(contexts[i])
        f = np.int64(freq[c, s])
        if x >= (np.int64(STATE_LOW >> PROB_BITS) << 32) * f:
            pos -= 1
            words[pos] = np.uint32(x & 0xFFFFFFFF)
            x >>= 32
        x = ((x // f) << PROB_BITS) + (x % f) + np.int64(cum[c, s])
    pos -= 1
    words[pos] = np.uint32(x & 0xFFFFFFFF)
    pos -= 1
    words[pos] = np.uint32(x >> 32)
    return pos


@njit(cache=True, nogil=True, inline='always')
def _take(plain, n_plain, state, width):
    """width (<= 24) bits from the plain stream; state = (acc, nacc, pos)."""
    acc, nacc, pos = state
    while nacc < width:
        b = np.int64(plain[pos]) if pos < n_plain else np.int64(0)
        acc |= b << nacc
        nacc += 8
        pos += 1
    out = acc & ((np.int64(1) << width) - 1)
    return out, (acc >> width, nacc - width, pos)


@njit(cache=True, nogil=True)
def decode_values(values, words, n_words, plain, n_plain, table_of, freq, cum, slot_symbol):
    """Decode len(values) values. table_of[eh] is the row of eh's tables in
    freq/cum (int64[tables, SYMBOLS]) and slot_symbol (uint8[tables, PROB_SCALE]),
    or -1 when the stream sent none. Returns status: 0 fine, 1 corrupt (a context
    without a table, a read past the end, a final state other than the start),
    2 words or plain bytes left over."""
    if n_words < 2:
        return 1
    x = (np.int64(words[0]) << 32) | np.int64(words[1])
    if not STATE_LOW <= x < (np.int64(STATE_LOW) << 32):
        return 1
    w = 2
    state = (np.int64(0), 0, 0)
    a1 = 0
    mask = PROB_SCALE - 1
    for i in range(values.shape[0]):
        t = table_of[_predicted(a1)]
        if t < 0:
            return 1
        slot = x & mask
        s = np.int64(slot_symbol[t, slot])
        x = freq[t, s] * (x >> PROB_BITS) + slot - cum[t, s]
        if x < STATE_LOW:
            if w >= n_words:
                return 1
            x = (x << 32) | np.int64(words[w])
            w += 1
        if s < 2:
            e = s
            mag = s
        else:
            e = (s + 2) >> 1
            mag = (np.int64(2) | (s & 1)) << (e - 2)
        if e > 0:
            if e <= 25:                 # the sign and the low bits in one read: the same bits
                bits, state = _take(plain, n_plain, state, e - 1 if e > 1 else 1)
                neg = bits & 1
                mag |= bits >> 1
            else:
                neg, state = _take(plain, n_plain, state, 1)
                k = e - 2
                while k > 0:
                    take = k if k < 24 else 24
                    bits, state = _take(plain, n_plain, state, take)
                    k -= take
                    mag |= bits << k
            values[i] = -mag if neg else mag
        else:
            values[i] = 0
        a1 += ((e << 4) - a1) >> 2
    acc, nacc, pos = state
    if x != STATE_LOW or pos > n_plain:
        return 1
    if w != n_words or pos != n_plain or acc != 0:
        return 2
    return 0


# What a patch's decoding calls (lc0weights.kernel_preload loads them ahead of time).
DECODING_KERNELS = (decode_values,)

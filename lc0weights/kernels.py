"""Deterministic numba kernels of the context-mixing residual coder ``cm1``.

Design (every number below is an integer; nothing in the coding path touches
a float, so the jitted and the interpreted kernels give the same bytes):

- ``p`` is a 12-bit probability that the coded bit ``y`` is 1, in [1, 4095].
  ``stretch(p) = ln(p / (1 - p))`` and ``squash`` its inverse are tables:
  ``squash`` maps ``d`` in [-2047, 2047] (the logit times 256) to ``p``;
  ``stretch`` maps ``p`` back to ``d``. Both are built from a fixed-point
  ``exp`` with Python integers (:func:`build_tables`), never from ``math``.
- Binary arithmetic coder: 32-bit ``x1 <= x2``, carry-less (bytes leave when
  the top bytes of ``x1`` and ``x2`` agree), ``xmid = x1 + (x2-x1 >> 12) * p``.
  The encoder flushes the 4 bytes of ``x1``, so a decoder reads exactly the
  bytes the encoder wrote; reading past the end marks the stream corrupt.
- Adaptive estimator (``sm``): an int32 slot holds ``p20 << 10 | n``, a 20-bit
  probability and a hit count ``n``. Update ``p20 += (y<<20 - p20) * 2/(2n+3)``
  (the ``rate`` table, 16-bit fixed point) and ``n += 1`` up to a per-family
  ``limit``: fast learning first, then a slow fixed rate.
- Mixer: inputs ``st_i = stretch(p_i)``; a weight set (chosen by a small
  context) holds int32 weights in 16.16 fixed point. ``d = sum(w_i st_i) >> 16``
  clamped to +-2047, ``p = squash(d)``; after coding ``y``,
  ``w_i += st_i * ((y<<12) - p) * MIX_LR >> 10``.
- APM (secondary estimation): per context 33 16-bit probabilities on a grid
  of logits (step 128); the output interpolates the two neighbours of the
  mixer's logit ``d`` and the nearer one moves toward ``y`` by 1/2^APM_RATE.
  The final probability is ``(p_mix + 3 p_apm) / 4``.

Binarisation of one residual ``v`` (int64, |v| < 2^62):
  ``e`` = bit length of |v| (0 for v == 0) is coded as a walk around ``eh``,
  the class the running scale predicts: first "e >= eh?", then "e == c?" for
  c = eh, eh+1, ... upward or c = eh-1, eh-2, ... downward. Every walk
  decision goes through the mixer (typically 2-3 per value), whose two
  estimators are keyed by (bucket of |history|/scale, decision) and (bucket
  of |base|/scale, decision), weight set and APM by the decision. ``eh`` is
  a running average of past classes (rate 1/4). Then, when e > 0, the sign
  (one estimator; context: signs of history, base and the previous value,
  history bucket / 4), then the e-1 bits below the leading one: the top two
  through estimators keyed by (e, bits above), the rest at p = 1/2 as "direct"
  bits: one operation splits the coder range into 2^j equal parts (j <= 16),
  instead of j binary decisions.
  Contexts measured and dropped as not paying on real training steps:
  previous values' classes, same kernel position in the previous input
  channel, slow layer-wide scale, finer mantissa contexts.

Memory per call: about 100 KB of tables (int32), fresh for every layer since
layers are independent streams; the caller passes them (:func:`fresh_tables`).

Speed: the coder's state lives in local variables of the layer loop (the
helpers take and return it by value), and encoder and decoder are separate
loops without a per-bit mode test.

Stream (what the kernels read and write): the arithmetic coder's bytes, the
last four being the flushed ``x1``. The codec module adds its own header.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# -- fixed-point tables --------------------------------------------------------

# round(exp(-1/256) * 2^48): one step of the fixed-point exponential.
_EXP_STEP_48 = 280377609773054
_ONE_48 = 1 << 48


def build_tables():
    """(squash, stretch, rate) as int32 arrays, built with integer arithmetic only.

    ``squash[d + 2048] = round(4096 / (1 + exp(-d/256)))`` clamped to [1, 4095]
    for d in [-2048, 2047]; ``stretch[p]`` = the smallest d whose squash is
    >= p (2047 when none); ``rate[n] = 2^17 // (2n + 3)``.
    """
    exp_neg = [_ONE_48]                      # exp(-k/256) * 2^48, k = 0..2048
    for _ in range(2048):
        exp_neg.append((exp_neg[-1] * _EXP_STEP_48 + (1 << 47)) >> 48)
    squash = []
    for d in range(-2048, 2048):
        k = -d if d < 0 else d
        p = (4096 * _ONE_48 * 2 // (_ONE_48 + exp_neg[k]) + 1) // 2   # rounded 4096/(1+e^-k)
        if d < 0:
            p = 4096 - p
        squash.append(min(4095, max(1, p)))
    stretch = []
    d = -2048
    for p in range(4096):
        while d < 2047 and squash[d + 2048] < p:
            d += 1
        stretch.append(d)
    rate = [(1 << 17) // (2 * n + 3) for n in range(1024)]
    return (np.array(squash, np.int32), np.array(stretch, np.int32), np.array(rate, np.int32))


SQUASH, STRETCH, RATE = build_tables()

# -- arithmetic coder ------------------------------------------------------------
# The coder's state lives in the caller's local variables (x1, x2, the decoder's
# window x, the byte position pos), passed in and returned by value, so the
# compiled loop keeps it in registers. Call order: dec_init once (decoder),
# then enc_bit / dec_bit and enc_direct / dec_direct, then enc_flush (encoder).
# A decoder reading past the end of its input gets zeros and a pos beyond n_buf;
# the caller checks pos once per value.

MASK32 = 0xFFFFFFFF
TOP = 0xFF000000
DIRECT_CHUNK = 16              # bits per equal-split operation of the coder range


@njit(cache=True, nogil=True, inline='always')
def _byte_at(buf, n_buf, pos):
    if pos < n_buf:
        return np.int64(buf[pos])
    return np.int64(0)


@njit(cache=True, nogil=True, inline='always')
def dec_init(buf, n_buf):
    """(x1, x2, x, pos) of a decoder that has loaded its first four bytes."""
    x = 0
    for k in range(4):
        x = (x << 8) | _byte_at(buf, n_buf, k)
    return np.int64(0), np.int64(MASK32), x, np.int64(4)


@njit(cache=True, nogil=True, inline='always')
def enc_bit(x1, x2, buf, pos, p, y):
    """Code bit y with P(1) = p/4096 (p in [1, 4095]). buf needs room for 4 more bytes."""
    xmid = x1 + ((x2 - x1) >> 12) * p
    if y:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) & TOP) == 0:
        buf[pos] = x2 >> 24
        pos += 1
        x1 = (x1 << 8) & MASK32
        x2 = ((x2 << 8) & MASK32) | 255
    return x1, x2, pos


@njit(cache=True, nogil=True, inline='always')
def dec_bit(x1, x2, x, buf, n_buf, pos, p):
    """Decode one bit with P(1) = p/4096: (x1, x2, x, pos, y)."""
    xmid = x1 + ((x2 - x1) >> 12) * p
    y = np.int64(1) if x <= xmid else np.int64(0)
    if y:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) & TOP) == 0:
        x = ((x << 8) & MASK32) | _byte_at(buf, n_buf, pos)
        pos += 1
        x1 = (x1 << 8) & MASK32
        x2 = ((x2 << 8) & MASK32) | 255
    return x1, x2, x, pos, y


@njit(cache=True, nogil=True, inline='always')
def _direct_width(x1, x2, k):
    """Bits the next equal split codes: up to DIRECT_CHUNK, 0 when the range is too narrow."""
    j = k if k < DIRECT_CHUNK else DIRECT_CHUNK
    if ((x2 - x1) >> j) == 0:
        return 0
    return j


@njit(cache=True, nogil=True, inline='always')
def enc_direct(x1, x2, buf, pos, bits, k):
    """Code the k low bits of bits (k <= 62), each at P = 1/2, by splitting the range
    into 2^j equal parts, j bits at a time (the last part takes the remainder).
    A range narrower than 2^j (rare, after a carry-less underflow) codes one bit."""
    while k > 0:
        j = _direct_width(x1, x2, k)
        if j == 0:
            k -= 1
            x1, x2, pos = enc_bit(x1, x2, buf, pos, 2048, (bits >> k) & 1)
            continue
        k -= j
        s = (bits >> k) & ((1 << j) - 1)
        step = (x2 - x1) >> j
        x1 = x1 + s * step
        if s != (1 << j) - 1:
            x2 = x1 + step - 1
        while ((x1 ^ x2) & TOP) == 0:
            buf[pos] = x2 >> 24
            pos += 1
            x1 = (x1 << 8) & MASK32
            x2 = ((x2 << 8) & MASK32) | 255
    return x1, x2, pos


@njit(cache=True, nogil=True, inline='always')
def dec_direct(x1, x2, x, buf, n_buf, pos, k):
    """Inverse of enc_direct: (x1, x2, x, pos, bits). Any window x gives in-range bits."""
    bits = np.int64(0)
    while k > 0:
        j = _direct_width(x1, x2, k)
        if j == 0:
            k -= 1
            x1, x2, x, pos, y = dec_bit(x1, x2, x, buf, n_buf, pos, 2048)
            bits = (bits << 1) | y
            continue
        k -= j
        step = (x2 - x1) >> j
        last = (1 << j) - 1
        s = (x - x1) // step if x >= x1 else 0
        if s >= last:
            s = last
        x1 = x1 + s * step
        if s != last:
            x2 = x1 + step - 1
        bits = (bits << j) | s
        while ((x1 ^ x2) & TOP) == 0:
            x = ((x << 8) & MASK32) | _byte_at(buf, n_buf, pos)
            pos += 1
            x1 = (x1 << 8) & MASK32
            x2 = ((x2 << 8) & MASK32) | 255
    return x1, x2, x, pos, bits


@njit(cache=True, nogil=True, inline='always')
def enc_flush(x1, buf, pos):
    """Write the 4 bytes of x1, so the decoder's reads end exactly at the end."""
    for k in range(4):
        buf[pos] = (x1 >> (24 - 8 * k)) & 255
        pos += 1
    return pos


# -- adaptive estimators ---------------------------------------------------------
# sm: int32 table, slot = p20 << 10 | n. Call order: sm_p (predict), then
# sm_update with the coded bit. limit in [1, 1023] caps n (final rate 2/(2 limit+3)).

SM_INIT = (1 << 19) << 10          # p = 1/2, n = 0


@njit(cache=True, nogil=True, inline='always')
def sm_p(sm, i):
    """12-bit probability of slot i."""
    return np.int64(sm[i]) >> 18


@njit(cache=True, nogil=True, inline='always')
def sm_update(sm, i, y, limit, rate):
    s = np.int64(sm[i])
    n = s & 1023
    p20 = s >> 10
    p20 += (((y << 20) - p20) * rate[n]) >> 16
    if p20 < 256:                      # keeps the 12-bit p in [1, 4095]
        p20 = 256
    elif p20 > (1 << 20) - 256:
        p20 = (1 << 20) - 256
    if n < limit:
        n += 1
    sm[i] = (p20 << 10) | n


# -- mixer ---------------------------------------------------------------------
# w: int32[n_sets * N_IN] in 16.16, set ws at ws * N_IN; inputs: two stretched
# probabilities in [-2047, 2047] and a constant bias. Call order: mix_dot,
# squash, code, mix_update(set).

N_IN = 3                      # two estimators and a constant bias input
MIX_LR = 4
BIAS_INPUT = 256


@njit(cache=True, nogil=True, inline='always')
def mix_dot(w, ws, st0, st1):
    """The mixer's logit, clamped to [-2047, 2047]."""
    k = ws * N_IN
    d = (np.int64(w[k]) * st0 + np.int64(w[k + 1]) * st1 + np.int64(w[k + 2]) * BIAS_INPUT) >> 16
    if d > 2047:
        d = 2047
    elif d < -2047:
        d = -2047
    return d


@njit(cache=True, nogil=True, inline='always')
def mix_update(w, ws, st0, st1, p, y):
    err = ((y << 12) - p) * MIX_LR
    k = ws * N_IN
    w[k] += (st0 * err + 512) >> 10
    w[k + 1] += (st1 * err + 512) >> 10
    w[k + 2] += (BIAS_INPUT * err + 512) >> 10


# -- APM / SSE -------------------------------------------------------------------
# apm: int32[n_ctx * 33], 16-bit probabilities on a stretch grid. Call order:
# apm_p (returns p and the nearer cell), code, apm_update(cell).

APM_RATE = 7


def apm_table(n_ctx):
    """n_ctx fresh APM contexts: each cell holds squash of its grid point (16-bit)."""
    grid = np.minimum((np.arange(33) - 16) * 128, 2047)
    return np.tile(SQUASH[grid + 2048].astype(np.int32) * 16, n_ctx)


@njit(cache=True, nogil=True, inline='always')
def apm_p(apm, cx, d):
    """(12-bit p, nearer cell) for logit d in [-2048, 2047] in context cx."""
    s = d + 2048
    j = s >> 7
    wt = s & 127
    base = cx * 33 + j
    return (np.int64(apm[base]) * (128 - wt) + np.int64(apm[base + 1]) * wt) >> 11, base + (wt >> 6)


@njit(cache=True, nogil=True, inline='always')
def apm_update(apm, i, y):
    t = np.int64(apm[i])
    apm[i] = t + ((((y << 16) - y) - t) >> APM_RATE)


# -- wiring: one layer's residuals ------------------------------------------------
# Context features per element: hbits / bbits are the float32 bit patterns
# (viewed as int32) of the base's last step and of the base weight; an absent
# one is passed as an array shorter than n_main (empty) and reads as zeros.
# scale_key = float32(scale) bits >> 22. The kernel turns them into integer
# buckets: (|x| bits >> 22) is twice the binary exponent plus the top mantissa bit, so its difference with scale_key is a half-log2
# bucket of |x| / scale. Elements from n_main on are escapes: no features,
# running state reset, their own mixer weights.

NODES = 144                    # walk decision: 48 * direction + candidate class
MODELLED_BITS = 2              # mantissa bits below the leading one with an estimator
F_HIST = 0                     # family offsets in the one estimator table
F_BASE = F_HIST + 64 * NODES
F_SIGN = F_BASE + 64 * NODES
F_MANT = F_SIGN + 3 * 3 * 3 * 16
SM_SIZE = F_MANT + MODELLED_BITS * 64 * 4
LIMIT_WALK = 255
LIMIT_BITS = 1023
MAX_CLASS = 63
BUCKET_ZERO = 17               # bucket of |x| == scale


@njit(cache=True, nogil=True, inline='always')
def _bucket(bits, scale_key):
    """(half-log2 bucket of |x| / scale in [1, 63] or 0 for x == 0, sign 0/1/2)."""
    mag = bits & 0x7FFFFFFF
    if mag == 0:
        return 0, 0
    b = (mag >> 22) - scale_key + BUCKET_ZERO
    if b < 1:
        b = 1
    elif b > 63:
        b = 63
    return b, (2 if bits < 0 else 1)


@njit(cache=True, nogil=True, inline='always')
def _node_p(sm, w, apm, i0, i1, ws, acx, squash, stretch):
    """A walk decision's prediction: (p, mixer p, two stretched inputs, APM cell)."""
    st0 = np.int64(stretch[np.int64(sm[i0]) >> 18])
    st1 = np.int64(stretch[np.int64(sm[i1]) >> 18])
    d = mix_dot(w, ws, st0, st1)
    pm = np.int64(squash[d + 2048])
    pa, cell = apm_p(apm, acx, d)
    return (pm + 3 * pa + 2) >> 2, pm, st0, st1, cell


@njit(cache=True, nogil=True, inline='always')
def _node_update(sm, w, apm, i0, i1, ws, st0, st1, pm, cell, y, rate):
    sm_update(sm, i0, y, LIMIT_WALK, rate)
    sm_update(sm, i1, y, LIMIT_WALK, rate)
    mix_update(w, ws, st0, st1, pm, y)
    apm_update(apm, cell, y)


@njit(cache=True, nogil=True, inline='always')
def _predicted_class(a1):
    eh = (a1 + 16) >> 4
    return eh if eh < MAX_CLASS - 1 else MAX_CLASS - 1


@njit(cache=True, nogil=True, inline='always')
def _node(c):
    return c if c < 47 else 47


_FRESH = (np.full(SM_SIZE, SM_INIT, np.int32),
          np.full(2 * NODES * N_IN, (1 << 16) // 2, np.int32),
          apm_table(NODES))


def fresh_tables():
    """The adaptive state every layer starts from: (estimators, mixer weights, APM),
    copies of one prepared set (cheaper than building them for each small layer)."""
    return tuple(t.copy() for t in _FRESH)


@njit(cache=True, nogil=True)
def encode_layer(values, hbits, bbits, scale_key, n_main, row_len, buf, sm, w, apm,
                 squash, stretch, rate):
    """Encode values (int64, |v| < 2^62) into buf, replaced by a larger array when it
    runs short. hbits, bbits: int32[>= n_main], or shorter (empty) for a feature that
    is absent (read as zeros); row_len >= 1 elements per output channel; sm, w, apm:
    fresh tables (changed). Returns (buf, bytes written)."""
    n = values.shape[0]
    if n == 0:
        return buf, 0
    x1, x2, pos = np.int64(0), np.int64(MASK32), np.int64(0)
    a1, esc, col, s1 = 0, 0, 0, 0
    has_h = hbits.shape[0] >= n_main
    has_b = bbits.shape[0] >= n_main
    for i in range(n):
        if pos + 1024 > buf.shape[0]:
            bigger = np.zeros(2 * buf.shape[0] + 1024, np.uint8)
            bigger[:pos] = buf[:pos]
            buf = bigger
        if i == n_main:
            a1 = 0
            esc = NODES
        hb, hs, bb, bs = 0, 0, 0, 0
        if esc == 0:
            if has_h:
                hb, hs = _bucket(np.int64(hbits[i]), scale_key)
            if has_b:
                bb, bs = _bucket(np.int64(bbits[i]), scale_key)
            if col == 0:
                s1 = 0
            col += 1
            if col == row_len:
                col = 0
        f_hist = F_HIST + hb * NODES
        f_base = F_BASE + bb * NODES
        v = values[i]
        mag = v if v >= 0 else -v
        e = _bit_length(mag)
        eh = _predicted_class(a1)
        up = 1
        if eh > 0:
            node = _node(eh)
            p, pm, st0, st1, cell = _node_p(sm, w, apm, f_hist + node, f_base + node,
                                            node + esc, node, squash, stretch)
            up = 1 if e >= eh else 0
            x1, x2, pos = enc_bit(x1, x2, buf, pos, p, up)
            _node_update(sm, w, apm, f_hist + node, f_base + node, node + esc,
                         st0, st1, pm, cell, up, rate)
        if up:
            c = eh
            while c < MAX_CLASS:
                node = 48 + _node(c)
                p, pm, st0, st1, cell = _node_p(sm, w, apm, f_hist + node, f_base + node,
                                                node + esc, node, squash, stretch)
                y = 1 if e == c else 0
                x1, x2, pos = enc_bit(x1, x2, buf, pos, p, y)
                _node_update(sm, w, apm, f_hist + node, f_base + node, node + esc,
                             st0, st1, pm, cell, y, rate)
                if y:
                    break
                c += 1
        else:
            c = eh - 1
            while c > 0:
                node = 96 + _node(c)
                p, pm, st0, st1, cell = _node_p(sm, w, apm, f_hist + node, f_base + node,
                                                node + esc, node, squash, stretch)
                y = 1 if e == c else 0
                x1, x2, pos = enc_bit(x1, x2, buf, pos, p, y)
                _node_update(sm, w, apm, f_hist + node, f_base + node, node + esc,
                             st0, st1, pm, cell, y, rate)
                if y:
                    break
                c -= 1
        if e > 0:
            neg = 1 if v < 0 else 0
            k = F_SIGN + ((hs * 3 + bs) * 3 + s1) * 16 + (hb >> 2)
            x1, x2, pos = enc_bit(x1, x2, buf, pos, sm_p(sm, k), neg)
            sm_update(sm, k, neg, LIMIT_BITS, rate)
            s1 = 2 if neg else 1
            m = 1
            b = e - 2
            for top in range(MODELLED_BITS):
                if b < 0:
                    break
                bit = (mag >> b) & 1
                k = F_MANT + (top * 64 + e) * 4 + (m & 3)
                x1, x2, pos = enc_bit(x1, x2, buf, pos, sm_p(sm, k), bit)
                sm_update(sm, k, bit, LIMIT_BITS, rate)
                m = (m << 1) | bit
                b -= 1
            if b >= 0:
                x1, x2, pos = enc_direct(x1, x2, buf, pos, mag, b + 1)
        else:
            s1 = 0
        a1 += ((e << 4) - a1) >> 2
    return buf, enc_flush(x1, buf, pos)


@njit(cache=True, nogil=True)
def decode_layer(values, hbits, bbits, scale_key, n_main, row_len, buf, n_buf, sm, w, apm,
                 squash, stretch, rate):
    """Decode values (int64[n], written) from buf[:n_buf]; the other arguments as for
    encode_layer. Returns (bytes read, status): 0 fine, 1 read past the end, 2 bytes
    left after the last value. Any input bytes give in-range table indices."""
    n = values.shape[0]
    if n == 0:
        return 0, 0
    x1, x2, x, pos = dec_init(buf, n_buf)
    a1, esc, col, s1 = 0, 0, 0, 0
    has_h = hbits.shape[0] >= n_main
    has_b = bbits.shape[0] >= n_main
    for i in range(n):
        if i == n_main:
            a1 = 0
            esc = NODES
        hb, hs, bb, bs = 0, 0, 0, 0
        if esc == 0:
            if has_h:
                hb, hs = _bucket(np.int64(hbits[i]), scale_key)
            if has_b:
                bb, bs = _bucket(np.int64(bbits[i]), scale_key)
            if col == 0:
                s1 = 0
            col += 1
            if col == row_len:
                col = 0
        f_hist = F_HIST + hb * NODES
        f_base = F_BASE + bb * NODES
        eh = _predicted_class(a1)
        up = 1
        if eh > 0:
            node = _node(eh)
            p, pm, st0, st1, cell = _node_p(sm, w, apm, f_hist + node, f_base + node,
                                            node + esc, node, squash, stretch)
            x1, x2, x, pos, up = dec_bit(x1, x2, x, buf, n_buf, pos, p)
            _node_update(sm, w, apm, f_hist + node, f_base + node, node + esc,
                         st0, st1, pm, cell, up, rate)
        if up:
            c = eh
            while c < MAX_CLASS:
                node = 48 + _node(c)
                p, pm, st0, st1, cell = _node_p(sm, w, apm, f_hist + node, f_base + node,
                                                node + esc, node, squash, stretch)
                x1, x2, x, pos, y = dec_bit(x1, x2, x, buf, n_buf, pos, p)
                _node_update(sm, w, apm, f_hist + node, f_base + node, node + esc,
                             st0, st1, pm, cell, y, rate)
                if y:
                    break
                c += 1
        else:
            c = eh - 1
            while c > 0:
                node = 96 + _node(c)
                p, pm, st0, st1, cell = _node_p(sm, w, apm, f_hist + node, f_base + node,
                                                node + esc, node, squash, stretch)
                x1, x2, x, pos, y = dec_bit(x1, x2, x, buf, n_buf, pos, p)
                _node_update(sm, w, apm, f_hist + node, f_base + node, node + esc,
                             st0, st1, pm, cell, y, rate)
                if y:
                    break
                c -= 1
        e = c
        if e > 0:
            k = F_SIGN + ((hs * 3 + bs) * 3 + s1) * 16 + (hb >> 2)
            x1, x2, x, pos, neg = dec_bit(x1, x2, x, buf, n_buf, pos, sm_p(sm, k))
            sm_update(sm, k, neg, LIMIT_BITS, rate)
            s1 = 2 if neg else 1
            m = np.int64(1)
            b = e - 2
            for top in range(MODELLED_BITS):
                if b < 0:
                    break
                k = F_MANT + (top * 64 + e) * 4 + (m & 3)
                x1, x2, x, pos, bit = dec_bit(x1, x2, x, buf, n_buf, pos, sm_p(sm, k))
                sm_update(sm, k, bit, LIMIT_BITS, rate)
                m = (m << 1) | bit
                b -= 1
            if b >= 0:
                x1, x2, x, pos, low = dec_direct(x1, x2, x, buf, n_buf, pos, b + 1)
                m = (m << (b + 1)) | low
            values[i] = -m if neg else m
        else:
            s1 = 0
            values[i] = 0
        if pos > n_buf:
            return pos, 1
        a1 += ((e << 4) - a1) >> 2
    if pos != n_buf:
        return pos, 2
    return pos, 0


@njit(cache=True, nogil=True, inline='always')
def _bit_length(x):
    """Bits of x >= 0 (0 for 0)."""
    e = 0
    while x > 0:
        x >>= 1
        e += 1
    return e


# -- temporal prediction (codec cm2) ----------------------------------------------------
# The history (float32) in 1/16 residual units, hq = rint(16 h / scale) (NaN 0, clipped to
# +-2^40), then the prediction p16 = (slope hq + 2^11) >> 12, pred = (p16 + 8) >> 4 and
# the rounding remainder p16 - 16 pred in -8..7 as a float32 pattern of kernel bucket
# |remainder| (low = scale_key - BUCKET_ZERO; no pattern when low is out of range).
# Float steps: one multiply by 16 (exact), one correctly rounded division; rint is
# done by hand (floor, ties to even), so the result does not depend on a rounding mode.

HQ_LIMIT = float(1 << 40)


@njit(cache=True, nogil=True, inline='always')
def _history_unit(h, scale):
    x = np.float64(h) * 16.0
    x = x / scale
    if x != x:
        return np.int64(0)
    if x > HQ_LIMIT:
        x = HQ_LIMIT
    elif x < -HQ_LIMIT:
        x = -HQ_LIMIT
    r = np.floor(x)
    frac = x - r                         # exact: |x| <= 2^40
    if frac > 0.5 or (frac == 0.5 and (np.int64(r) & 1) == 1):
        r += 1.0
    return np.int64(r)


@njit(cache=True, nogil=True)
def history_units(history, scale, out):
    """out[i] = hq of history[i] (float32), as above."""
    for i in range(out.shape[0]):
        out[i] = _history_unit(history[i], scale)


@njit(cache=True, nogil=True)
def history_prediction(history, scale, slope, low, pred, rembits):
    """pred[i] and rembits[i] (int32 patterns, or untouched when low is out of range)
    from history[i] (float32) with a 12-bit fixed-point slope."""
    patterns = 1 <= low and low + 8 < 512
    for i in range(pred.shape[0]):
        p16 = (_history_unit(history[i], scale) * slope + 2048) >> 12
        p = (p16 + 8) >> 4
        pred[i] = p
        if patterns:
            rem = p16 - 16 * p
            mag = rem if rem >= 0 else -rem
            bits = np.int64(0) if mag == 0 else (low + mag) << 22
            if rem < 0:
                bits |= np.int64(1) << 31
            rembits[i] = np.int32(bits - (np.int64(1) << 32) if bits >= (np.int64(1) << 31) else bits)


# What a patch's decoding calls (lc0weights.kernel_preload loads them ahead of time).
DECODING_KERNELS = (decode_layer, history_units, history_prediction)

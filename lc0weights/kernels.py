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
  of ``stretch(p)`` (step 128); the output interpolates the two neighbours of
  ``stretch(p)`` and the nearer one moves toward ``y`` by 1/2^APM_RATE.
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
  through estimators keyed by (e, bits above), the rest at p = 1/2.
  Contexts measured and dropped as not paying on real training steps:
  previous values' classes, same kernel position in the previous input
  channel, slow layer-wide scale, finer mantissa contexts.

Memory per call: about 100 KB of tables (int32), allocated and initialised
for every layer, since layers are independent streams.

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
# ac: int64[5] = x1, x2, x (decoder's window), pos (next byte to write/read),
# status (ac[4]) becomes 1 when the decoder reads past the end of its input.
# Call order: ac_init_* once, then ac_code per bit, then ac_flush (encoder).

MASK32 = 0xFFFFFFFF


@njit(cache=True, nogil=True, inline='always')
def ac_init_decoder(ac, buf, n_buf):
    """Load the first four bytes into the window x (missing bytes mark corruption)."""
    ac[0] = 0
    ac[1] = MASK32
    x = 0
    for _ in range(4):
        x = (x << 8) | _next_byte(ac, buf, n_buf)
    ac[2] = x


@njit(cache=True, nogil=True, inline='always')
def _next_byte(ac, buf, n_buf):
    pos = ac[3]
    ac[3] = pos + 1
    if pos < n_buf:
        return np.int64(buf[pos])
    ac[4] = 1
    return np.int64(0)


@njit(cache=True, nogil=True, inline='always')
def ac_code(ac, buf, n_buf, p, y, encode):
    """Code bit y (encoder) or decode it (decoder, y ignored) with P(1) = p/4096.

    p must be in [1, 4095]. The encoder's buf must have room for 4 more bytes
    (the caller grows it). Returns the bit.
    """
    x1 = ac[0]
    x2 = ac[1]
    xmid = x1 + ((x2 - x1) >> 12) * p
    if not encode:
        y = 1 if ac[2] <= xmid else 0
    if y:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) & 0xFF000000) == 0:
        if encode:
            buf[ac[3]] = x2 >> 24
            ac[3] += 1
        else:
            ac[2] = ((ac[2] << 8) & MASK32) | _next_byte(ac, buf, n_buf)
        x1 = (x1 << 8) & MASK32
        x2 = ((x2 << 8) & MASK32) | 255
    ac[0] = x1
    ac[1] = x2
    return y


@njit(cache=True, nogil=True, inline='always')
def ac_flush(ac, buf):
    """Encoder only: write the 4 bytes of x1, so the decoder's reads end exactly at the end."""
    x1 = ac[0]
    for k in range(4):
        buf[ac[3]] = (x1 >> (24 - 8 * k)) & 255
        ac[3] += 1


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
# w: int32[n_sets, N_IN] in 16.16; st: int64[N_IN] stretched inputs in
# [-2047, 2047]. Call order: fill st, mix_predict(set), code, mix_update(set).

N_IN = 3                      # two estimators and a constant bias input
MIX_LR = 6
BIAS_INPUT = 256


@njit(cache=True, nogil=True, inline='always')
def mix_predict(w, ws, st, squash):
    d = 0
    for k in range(N_IN):
        d += np.int64(w[ws, k]) * st[k]
    d >>= 16
    if d > 2047:
        d = 2047
    elif d < -2047:
        d = -2047
    return np.int64(squash[d + 2048])


@njit(cache=True, nogil=True, inline='always')
def mix_update(w, ws, st, p, y):
    err = ((y << 12) - p) * MIX_LR
    for k in range(N_IN):
        w[ws, k] += (st[k] * err + 512) >> 10


# -- APM / SSE -------------------------------------------------------------------
# apm: int32[n_ctx * 33], 16-bit probabilities on a stretch grid. Call order:
# apm_p (returns p and remembers the nearer cell in cell[0]), code, apm_update.

APM_RATE = 6


@njit(cache=True, nogil=True, inline='always')
def apm_init(apm, n_ctx, squash):
    for c in range(n_ctx):
        for j in range(33):
            d = (j - 16) * 128
            if d > 2047:
                d = 2047
            apm[c * 33 + j] = squash[d + 2048] * 16


@njit(cache=True, nogil=True, inline='always')
def apm_p(apm, cx, p, stretch, cell):
    s = np.int64(stretch[p]) + 2048          # 0..4095
    j = s >> 7
    wt = s & 127
    base = cx * 33 + j
    cell[0] = base + (wt >> 6)
    return (np.int64(apm[base]) * (128 - wt) + np.int64(apm[base + 1]) * wt) >> 11


@njit(cache=True, nogil=True, inline='always')
def apm_update(apm, cell, y):
    i = cell[0]
    t = np.int64(apm[i])
    apm[i] = t + ((((y << 16) - y) - t) >> APM_RATE)


# -- wiring: one layer's residuals ------------------------------------------------
# Context features per element: hbits / bbits are the float32 bit patterns
# (viewed as int32) of the base's last step and of the base weight, or all
# zeros when absent; scale_key = float32(scale) bits >> 22. The kernel turns
# them into integer buckets: (|x| bits >> 22) is twice the binary exponent
# plus the top mantissa bit, so its difference with scale_key is a half-log2
# bucket of |x| / scale. Elements from n_main on are escapes: no features,
# running state reset, their own mixer weights.

NODES = 144                    # walk decision: 48 * direction + candidate class
F_HIST = 0                     # family offsets in the one estimator table
F_BASE = F_HIST + 64 * NODES
F_SIGN = F_BASE + 64 * NODES
F_MANT = F_SIGN + 3 * 3 * 3 * 16
SM_SIZE = F_MANT + 2 * 64 * 4
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
def _walk_bit(sm, w, apm, slots, st, cell, ws, acx, squash, stretch, rate,
              ac, buf, n_buf, y, encode):
    """One mixed decision of the class walk: predict, code, update everything."""
    for k in range(N_IN - 1):
        st[k] = stretch[sm_p(sm, slots[k])]
    st[N_IN - 1] = BIAS_INPUT
    pm = mix_predict(w, ws, st, squash)
    pa = apm_p(apm, acx, pm, stretch, cell)
    p = (pm + 3 * pa + 2) >> 2
    y = ac_code(ac, buf, n_buf, p, y, encode)
    for k in range(N_IN - 1):
        sm_update(sm, slots[k], y, LIMIT_WALK, rate)
    mix_update(w, ws, st, pm, y)
    apm_update(apm, cell, y)
    return y


@njit(cache=True, nogil=True, inline='always')
def _plain_bit(sm, i, ac, buf, n_buf, y, encode, rate):
    """One decision through a single adaptive estimator (sign, mantissa)."""
    y = ac_code(ac, buf, n_buf, sm_p(sm, i), y, encode)
    sm_update(sm, i, y, LIMIT_BITS, rate)
    return y


@njit(cache=True, nogil=True)
def code_layer(values, hbits, bbits, scale_key, n_main, row_len, buf, n_buf, encode,
               squash, stretch, rate):
    """Encode values into buf (encode=True) or decode them from buf[:n_buf].

    values: int64[n], read when encoding (|v| < 2^62), written when decoding.
    hbits, bbits: int32[n_main] or longer; row_len >= 1 elements per output
    channel. When encoding, buf is any uint8 array (it is replaced by a
    larger one when it runs short). Returns (buf, bytes written or read,
    status): 0 fine, 1 read past the end, 2 bytes left after the last value.
    """
    n = values.shape[0]
    sm = np.full(SM_SIZE, SM_INIT, np.int32)
    w = np.full((2 * NODES, N_IN), (1 << 16) // 2, np.int32)
    apm = np.zeros(NODES * 33, np.int32)
    apm_init(apm, NODES, squash)
    slots = np.zeros(N_IN - 1, np.int64)
    st = np.zeros(N_IN, np.int64)
    cell = np.zeros(1, np.int64)
    ac = np.zeros(5, np.int64)
    ac[1] = MASK32
    if n == 0:
        return buf, 0, 0
    if not encode:
        ac_init_decoder(ac, buf, n_buf)
    a1 = 0                    # running class, 1/16 units
    esc = 0
    col = 0
    s1 = 0
    for i in range(n):
        if encode and ac[3] + 1024 > buf.shape[0]:
            bigger = np.zeros(2 * buf.shape[0] + 1024, np.uint8)
            bigger[:ac[3]] = buf[:ac[3]]
            buf = bigger
        if i == n_main:
            a1 = 0
            esc = NODES
        hb, hs, bb, bs = 0, 0, 0, 0
        if esc == 0:
            hb, hs = _bucket(np.int64(hbits[i]), scale_key)
            bb, bs = _bucket(np.int64(bbits[i]), scale_key)
            if col == 0:
                s1 = 0
            col += 1
            if col == row_len:
                col = 0
        f_hist = F_HIST + hb * NODES
        f_base = F_BASE + bb * NODES
        # -- class walk around the predicted class eh
        eh = (a1 + 16) >> 4
        if eh > MAX_CLASS - 1:
            eh = MAX_CLASS - 1
        v = values[i] if encode else 0
        mag = v if v >= 0 else -v
        e = _bit_length(mag) if encode else 0
        up = 1
        if eh > 0:
            node = eh if eh < 47 else 47
            slots[0] = f_hist + node
            slots[1] = f_base + node
            up = _walk_bit(sm, w, apm, slots, st, cell, node + esc, node, squash, stretch,
                           rate, ac, buf, n_buf, 1 if e >= eh else 0, encode)
        if up:
            c = eh
            while c < MAX_CLASS:
                node = 48 + (c if c < 47 else 47)
                slots[0] = f_hist + node
                slots[1] = f_base + node
                if _walk_bit(sm, w, apm, slots, st, cell, node + esc, node, squash, stretch,
                             rate, ac, buf, n_buf, 1 if e == c else 0, encode):
                    break
                c += 1
        else:
            c = eh - 1
            while c > 0:
                node = 96 + (c if c < 47 else 47)
                slots[0] = f_hist + node
                slots[1] = f_base + node
                if _walk_bit(sm, w, apm, slots, st, cell, node + esc, node, squash, stretch,
                             rate, ac, buf, n_buf, 1 if e == c else 0, encode):
                    break
                c -= 1
        e = c
        # -- sign and the bits below the leading one
        if e > 0:
            sctx = ((hs * 3 + bs) * 3 + s1) * 16 + (hb >> 2)
            neg = _plain_bit(sm, F_SIGN + sctx, ac, buf, n_buf, 1 if v < 0 else 0, encode, rate)
            s1 = 2 if neg else 1
            m = 1
            for b in range(e - 2, -1, -1):
                top = e - 2 - b                # 0 for the bit right below the leading one
                bit = (mag >> b) & 1
                if top < 2:
                    mctx = F_MANT + (top * 64 + e) * 4 + (m & 3)
                    bit = _plain_bit(sm, mctx, ac, buf, n_buf, bit, encode, rate)
                else:
                    bit = ac_code(ac, buf, n_buf, 2048, bit, encode)
                m = (m << 1) | bit
            if not encode:
                values[i] = -m if neg else m
        else:
            s1 = 0
            if not encode:
                values[i] = 0
        if ac[4]:
            return buf, ac[3], 1
        a1 += ((e << 4) - a1) >> 2
    if encode:
        ac_flush(ac, buf)
        return buf, ac[3], 0
    if ac[3] != n_buf:
        return buf, ac[3], 2
    return buf, ac[3], 0


@njit(cache=True, nogil=True, inline='always')
def _bit_length(x):
    """Bits of x >= 0 (0 for 0)."""
    e = 0
    while x > 0:
        x >>= 1
        e += 1
    return e

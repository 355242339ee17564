"""The deterministic kernels of cm1, piece by piece: tables, coder, estimators, mixer, APM."""
from __future__ import annotations

import numpy as np
import pytest

from lc0weights import kernels as K


def test_squash_is_a_monotone_12_bit_logistic():
    sq = K.SQUASH.astype(np.int64)
    assert sq.min() == 1 and sq.max() == 4095
    assert np.all(np.diff(sq) >= 0)
    assert sq[2048] == 2048                    # squash(0) = 1/2
    assert sq[2048 + 256] == 2994              # 4096 / (1 + e^-1) = 2994.4
    assert np.all(sq[2048 + np.arange(1, 2048)] + sq[2048 - np.arange(1, 2048)] == 4096)


def test_stretch_inverts_squash():
    st, sq = K.STRETCH.astype(np.int64), K.SQUASH.astype(np.int64)
    assert np.all(np.diff(st) >= 0)
    for p in (1, 100, 1000, 2048, 3000, 4000, 4095):
        assert abs(sq[st[p] + 2048] - p) <= 1 + p // 40 + (4096 - p) // 40


def test_tables_are_rebuilt_identically():
    for a, b in zip(K.build_tables(), (K.SQUASH, K.STRETCH, K.RATE)):
        assert np.array_equal(a, b)
    assert K.RATE[0] == (1 << 17) // 3 and K.RATE[1023] == (1 << 17) // 2049


def _code_bits(bits, probs):
    buf = np.zeros(len(bits) * 2 + 16, np.uint8)
    x1, x2, pos = 0, K.MASK32, 0
    for y, p in zip(bits, probs):
        x1, x2, pos = K.enc_bit(x1, x2, buf, pos, int(p), int(y))
    pos = K.enc_flush(x1, buf, pos)
    data = buf[:pos].copy()
    out = []
    x1, x2, x, pos = K.dec_init(data, len(data))
    for p in probs:
        x1, x2, x, pos, y = K.dec_bit(x1, x2, x, data, len(data), pos, int(p))
        out.append(int(y))
    return data, out, pos


def test_arithmetic_coder_round_trip_and_cost():
    rng = np.random.default_rng(1)
    probs = rng.integers(1, 4096, 3000)
    bits = (rng.integers(0, 4096, 3000) < probs).astype(int)
    data, out, pos = _code_bits(bits, probs)
    assert out == list(bits)
    assert pos == len(data)                               # read exactly what was written
    ideal = -np.sum(np.log2(np.where(bits == 1, probs, 4096 - probs) / 4096)) / 8
    assert len(data) <= ideal * 1.02 + 8


def test_arithmetic_decoder_reading_past_the_end_shows_in_its_position():
    bits = [1, 0] * 200
    data, _, _ = _code_bits(bits, [2048] * len(bits))
    cut = data[:-3].copy()
    x1, x2, x, pos = K.dec_init(cut, len(cut))
    for _ in bits:
        x1, x2, x, pos, _y = K.dec_bit(x1, x2, x, cut, len(cut), pos, 2048)
    assert pos > len(cut)


def _direct_round_trip(groups, prefix_probs=()):
    """Code (bits, k) groups as direct bits, after some skewed binary decisions."""
    buf = np.zeros(64 + 16 * len(groups) + len(prefix_probs), np.uint8)
    x1, x2, pos = 0, K.MASK32, 0
    for p in prefix_probs:
        x1, x2, pos = K.enc_bit(x1, x2, buf, pos, int(p), 1)
    for bits, k in groups:
        x1, x2, pos = K.enc_direct(x1, x2, buf, pos, bits, k)
    pos = K.enc_flush(x1, buf, pos)
    data = buf[:pos].copy()
    x1, x2, x, pos = K.dec_init(data, len(data))
    for p in prefix_probs:
        x1, x2, x, pos, _y = K.dec_bit(x1, x2, x, data, len(data), pos, int(p))
    out = []
    for _, k in groups:
        x1, x2, x, pos, bits = K.dec_direct(x1, x2, x, data, len(data), pos, k)
        out.append(int(bits))
    assert pos == len(data)
    return data, out


def test_direct_bits_round_trip_and_cost_one_bit_each():
    rng = np.random.default_rng(4)
    ks = rng.integers(1, 63, 400)
    groups = [(int(rng.integers(0, 1 << 62)) & ((1 << int(k)) - 1), int(k)) for k in ks]
    data, out = _direct_round_trip(groups)
    assert out == [b for b, _ in groups]
    assert len(data) <= ks.sum() / 8 * 1.001 + 8


def test_direct_bits_survive_a_narrow_range():
    """p = 1 decisions drive the carry-less range down to a few units: the split must
    fall back to single bits there and still round-trip."""
    groups = [((1 << k) - 1 - (k % 3), k) for k in (1, 5, 16, 17, 40, 62)] * 4
    for prefix in ([1] * 7, [1, 4095] * 9, [2, 1, 1, 1, 3]):
        _, out = _direct_round_trip(groups, prefix)
        assert out == [b for b, _ in groups]


def test_direct_decoder_gives_in_range_bits_from_any_window():
    rng = np.random.default_rng(6)
    junk = rng.integers(0, 256, 64).astype(np.uint8)
    x1, x2, x, pos = K.dec_init(junk, len(junk))
    for k in (3, 16, 20, 62):
        x1, x2, x, pos, bits = K.dec_direct(x1, x2, x, junk, len(junk), pos, k)
        assert 0 <= bits < (1 << k) and 0 <= x1 <= x2 <= K.MASK32


def test_estimator_learns_fast_then_settles():
    sm = np.full(4, K.SM_INIT, np.int32)
    assert K.sm_p(sm, 0) == 2048
    K.sm_update(sm, 0, 1, 255, K.RATE)
    assert K.sm_p(sm, 0) > 3000                           # first update moves 2/3 of the way
    for _ in range(2000):
        K.sm_update(sm, 1, 0, 255, K.RATE)
    assert 0 < K.sm_p(sm, 1) < 8 and (int(sm[1]) & 1023) == 255


def test_mixer_learns_to_trust_the_right_input():
    w = np.full(K.N_IN, 1 << 14, np.int32)
    rng = np.random.default_rng(2)
    for _ in range(3000):
        y = int(rng.integers(0, 2))
        st0, st1 = (1000 if y else -1000), int(rng.integers(-1000, 1001))
        p = int(K.SQUASH[K.mix_dot(w, 0, st0, st1) + 2048])
        K.mix_update(w, 0, st0, st1, p, y)
    assert w[0] > 4 * abs(int(w[1]))
    assert K.SQUASH[K.mix_dot(w, 0, 1000, 0) + 2048] > 3900


def test_apm_starts_as_identity_and_adapts():
    apm = K.apm_table(2)
    for d in (-1500, -300, 0, 700, 2047):
        p, _ = K.apm_p(apm, 1, d)
        assert abs(p - K.SQUASH[d + 2048]) <= 2 + K.SQUASH[d + 2048] // 50
    for _ in range(500):
        _, cell = K.apm_p(apm, 0, 0)
        K.apm_update(apm, cell, 1)
    assert K.apm_p(apm, 0, 0)[0] > 3500
    assert abs(K.apm_p(apm, 1, 0)[0] - 2048) <= 2          # other context untouched


def _layer_round_trip(v, hbits=None, bbits=None, row=1, start=None):
    none = np.zeros(len(v), np.int32)
    hbits = none if hbits is None else hbits
    bbits = none if bbits is None else bbits
    buf, used = K.encode_layer(v, hbits, bbits, 120, len(v), row,
                               np.zeros(4 if start is None else start, np.uint8),
                               *K.fresh_tables(), K.SQUASH, K.STRETCH, K.RATE)
    out = np.zeros(len(v), np.int64)
    read, status = K.decode_layer(out, hbits, bbits, 120, len(v), row, buf[:used].copy(), used,
                                  *K.fresh_tables(), K.SQUASH, K.STRETCH, K.RATE)
    assert status == 0 and read == used and np.array_equal(out, v)
    return buf[:used]


@pytest.mark.parametrize("values", [[0], [5, -5, 0, 1 << 40, -(1 << 40), 7], [-(1 << 61)] * 3,
                                    [(1 << 62) - 1, 0, -((1 << 62) - 1)]])
def test_layer_round_trip_without_features(values):
    _layer_round_trip(np.array(values, np.int64))


def test_layer_round_trip_with_features_and_a_growing_buffer():
    rng = np.random.default_rng(7)
    v = np.rint(rng.laplace(0, 40, 20000)).astype(np.int64)
    hbits = rng.normal(0, 1e-3, 20000).astype(np.float32).view(np.int32)
    bbits = rng.normal(0, 1e-1, 20000).astype(np.float32).view(np.int32)
    data = _layer_round_trip(v, hbits, bbits, row=9, start=1)
    assert len(data) < 20000 * 8 / 8                       # about 7.3 bits a value


def test_fresh_tables_are_independent_copies():
    a, b = K.fresh_tables(), K.fresh_tables()
    a[0][0] = 0
    assert b[0][0] == K.SM_INIT and K.fresh_tables()[0][0] == K.SM_INIT

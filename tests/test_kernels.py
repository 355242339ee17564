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
    ac = np.zeros(5, np.int64)
    ac[1] = K.MASK32
    for y, p in zip(bits, probs):
        K.ac_code(ac, buf, 0, int(p), int(y), True)
    K.ac_flush(ac, buf)
    data = buf[:ac[3]].copy()
    dec = np.zeros(5, np.int64)
    K.ac_init_decoder(dec, data, len(data))
    out = [K.ac_code(dec, data, len(data), int(p), 0, False) for p in probs]
    return data, out, dec


def test_arithmetic_coder_round_trip_and_cost():
    rng = np.random.default_rng(1)
    probs = rng.integers(1, 4096, 3000)
    bits = (rng.integers(0, 4096, 3000) < probs).astype(int)
    data, out, dec = _code_bits(bits, probs)
    assert out == list(bits)
    assert dec[3] == len(data) and dec[4] == 0          # read exactly what was written
    ideal = -np.sum(np.log2(np.where(bits == 1, probs, 4096 - probs) / 4096)) / 8
    assert len(data) <= ideal * 1.02 + 8


def test_arithmetic_decoder_flags_reading_past_the_end():
    bits = [1, 0] * 200
    data, _, _ = _code_bits(bits, [2048] * len(bits))
    dec = np.zeros(5, np.int64)
    cut = data[:-3].copy()
    K.ac_init_decoder(dec, cut, len(cut))
    for _ in bits:
        K.ac_code(dec, cut, len(cut), 2048, 0, False)
    assert dec[4] == 1


def test_estimator_learns_fast_then_settles():
    sm = np.full(4, K.SM_INIT, np.int32)
    assert K.sm_p(sm, 0) == 2048
    K.sm_update(sm, 0, 1, 255, K.RATE)
    assert K.sm_p(sm, 0) > 3000                           # first update moves 2/3 of the way
    for _ in range(2000):
        K.sm_update(sm, 1, 0, 255, K.RATE)
    assert 0 < K.sm_p(sm, 1) < 8 and (int(sm[1]) & 1023) == 255


def test_mixer_learns_to_trust_the_right_input():
    w = np.full((1, K.N_IN), 1 << 14, np.int32)
    st = np.zeros(K.N_IN, np.int64)
    rng = np.random.default_rng(2)
    for _ in range(3000):
        y = int(rng.integers(0, 2))
        st[:] = [1000 if y else -1000, int(rng.integers(-1000, 1001)), K.BIAS_INPUT][:K.N_IN]
        p = K.mix_predict(w, 0, st, K.SQUASH)
        K.mix_update(w, 0, st, p, y)
    assert w[0, 0] > 4 * abs(int(w[0, 1]))
    st[:] = [1000, 0, K.BIAS_INPUT][:K.N_IN]
    assert K.mix_predict(w, 0, st, K.SQUASH) > 3900


def test_apm_starts_as_identity_and_adapts():
    apm = np.zeros(2 * 33, np.int32)
    K.apm_init(apm, 2, K.SQUASH)
    cell = np.zeros(1, np.int64)
    for p in (100, 2048, 3900):
        assert abs(K.apm_p(apm, 1, p, K.STRETCH, cell) - p) <= 2 + p // 50
    for _ in range(500):
        K.apm_p(apm, 0, 2048, K.STRETCH, cell)
        K.apm_update(apm, cell, 1)
    assert K.apm_p(apm, 0, 2048, K.STRETCH, cell) > 3500
    assert abs(K.apm_p(apm, 1, 2048, K.STRETCH, cell) - 2048) <= 2   # other context untouched


@pytest.mark.parametrize("values", [[0], [5, -5, 0, 1 << 40, -(1 << 40), 7], [-(1 << 61)] * 3])
def test_code_layer_round_trip_without_features(values):
    v = np.array(values, np.int64)
    none = np.zeros(len(v), np.int32)
    buf, used, status = K.code_layer(v, none, none, 0, len(v), 1, np.zeros(4, np.uint8), 0, True,
                                     K.SQUASH, K.STRETCH, K.RATE)
    assert status == 0
    out = np.zeros(len(v), np.int64)
    _, read, status = K.code_layer(out, none, none, 0, len(v), 1, buf[:used].copy(), used, False,
                                   K.SQUASH, K.STRETCH, K.RATE)
    assert status == 0 and read == used and np.array_equal(out, v)

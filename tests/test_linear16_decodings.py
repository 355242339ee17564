"""LINEAR16 as every lc0 engine decodes it, and tolerance bounds that hold under each decoding."""
from fractions import Fraction

import numpy as np
import pytest

from lc0weights import Net, apply_patch, make_patch, max_error
from lc0weights import encodings as enc

from conftest import DATA, load

TOLERANCES = [2 ** -14, 2 ** -10]


def exact_fma(t: np.float32, d: np.float32, m: np.float32) -> np.float32:
    """t*d + m computed exactly and rounded once to float32, nearest, ties to even."""
    x = Fraction(float(t)) * Fraction(float(d)) + Fraction(float(m))
    near = np.float32(float(x))
    candidates = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    def key(c):
        return abs(Fraction(float(c)) - x), int(np.array([c], np.float32).view(np.uint32)[0]) & 1
    return min(candidates, key=key)


def test_fma_emulation_rounds_once():
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(60):
        lo = np.float32(rng.normal() * 10.0 ** rng.integers(-6, 2))
        hi = np.float32(lo + abs(rng.normal()) * 10.0 ** rng.integers(-9, 2))
        u = rng.integers(0, 65536, 60).astype(np.uint16)
        got = enc.linear16_fma(u, lo, hi)
        t = u.astype(np.float32) / np.float32(65535.0)
        for k in range(len(u)):
            assert got[k] == exact_fma(t[k], np.float32(hi - lo), lo), (lo, hi, u[k])
            checked += 1
    assert checked == 3600


def test_fma_tie_broken_by_the_bits_a_double_drops():
    # t*d + m = 1 + 3*2^-24 - 2^-70: a double rounds it to the float32 midpoint
    # 1 + 3*2^-24, which round-to-even takes up; the exact value lies below it.
    t = np.float32(2.0 ** -24 * (1 + 2.0 ** -23))
    d = np.float32(1 - 2.0 ** -23)
    m = np.float32(1 + 2.0 ** -23)
    naive = np.float32(np.float64(t) * np.float64(d) + np.float64(m))
    expect = exact_fma(t, d, m)
    assert expect == m and naive == np.float32(1 + 2.0 ** -22)
    assert enc.fma_f32(np.array([t]), d, m)[0] == expect


def test_the_three_decodings_differ_on_real_layers():
    net = load(sorted((DATA / "runs" / "maia-swa").glob("step-*.pb.gz"))[3])
    differ = {name: 0 for name in enc.LINEAR16_DECODINGS}
    for layer in net.layers:
        if layer.codable and layer.encoding == enc.LINEAR16 and layer.count:
            codes = net.codes(layer)
            master = enc.decode(enc.LINEAR16, codes, layer.min_bits, layer.max_bits)
            for name in differ:
                other = enc.decode(enc.LINEAR16, codes, layer.min_bits, layer.max_bits, decoding=name)
                differ[name] += int((other != master).sum())
    assert differ["master"] == 0 and differ["v0.32.1"] > 1000 and differ["fma"] > 1000


@pytest.mark.parametrize("tolerance", TOLERANCES, ids=["2^-14", "2^-10"])
def test_tolerance_patches_hold_under_every_decoding(tolerance):
    paths = sorted((DATA / "runs" / "maia-swa").glob("step-*.pb.gz"))
    history, base, target = (load(p) for p in paths[9:12])
    rebuilt = Net(apply_patch(base, make_patch(base, target, tolerance, history=history, verify=False),
                              history=history))
    for name in enc.LINEAR16_DECODINGS:
        worst = 0.0
        for a, t in zip(rebuilt.layers, target.layers):
            if a.codable and a.count:
                da = enc.decode(a.encoding, rebuilt.codes(a), a.min_bits, a.max_bits, decoding=name)
                dt = enc.decode(t.encoding, target.codes(t), t.min_bits, t.max_bits, decoding=name)
                worst = max(worst, float(np.abs(da.astype(np.float64) - dt).max()))
        assert 0 < worst <= tolerance, name
    assert max_error(rebuilt, target) <= tolerance


def test_worst_difference_sees_nans_and_each_decoding():
    bounds = (int(np.array([-0.3], np.float32).view(np.uint32)[0]),
              int(np.array([0.7], np.float32).view(np.uint32)[0]))
    a = np.arange(0, 65536, 97).astype(np.uint16)
    diff = enc.worst_difference(enc.LINEAR16, a, bounds, a + 1, bounds)
    one_by_one = [np.abs(enc.decode(enc.LINEAR16, a, *bounds, decoding=n).astype(np.float64)
                         - enc.decode(enc.LINEAR16, a + 1, *bounds, decoding=n)) for n in enc.LINEAR16_DECODINGS]
    assert np.array_equal(diff, np.max(one_by_one, axis=0))
    nan16 = np.array([0x7E00, 0x7E00, 0x3C00], np.uint16)
    assert enc.worst_difference(enc.FLOAT16, nan16, (0, 0), np.array([0x7E00, 0, 0x3C00], np.uint16),
                                (0, 0)).tolist() == [0.0, np.inf, 0.0]

"""One-pass tolerance checks (weight_error) against the numpy statements they replace."""
import numpy as np
import pytest

from lc0weights import encodings as enc
from lc0weights import make_patch
from lc0weights import residuals as res
from lc0weights import weight_error as we
from lc0weights.errors import PatchFormatError, VerificationError

from conftest import run_paths, load


def bits(x) -> int:
    return int(np.array([x], np.float32).view(np.uint32)[0])


def ranges(rng, n):
    """(lo, hi) float32 pairs: ordinary, tiny, wide, empty and non-finite ranges."""
    out = [(np.float32(-0.3), np.float32(0.7)), (np.float32(1.0), np.float32(1.0)),
           (np.float32(-np.inf), np.float32(1.0)), (np.float32(-3e38), np.float32(3e38))]
    for _ in range(n):
        lo = np.float32(rng.normal() * 10.0 ** rng.integers(-5, 2))
        out.append((lo, np.float32(lo + abs(rng.normal()) * 10.0 ** rng.integers(-7, 1))))
    return out


def numpy_quantise(codes, base, target, tolerance):
    """The LINEAR16 tolerance encoder as whole-layer numpy (the former implementation)."""
    c = codes.astype(np.int64)
    p = res.regrid(base if base is not None else np.zeros(len(codes), np.float32), target)
    w = res.linear16_quant_width(target, tolerance)
    d = c - p
    q = np.floor_divide(d + w // 2, w)
    k = p + q * w
    ok = (k >= 0) & (k <= 65535)
    bounds = (target.min_bits, target.max_bits)
    bad = ~ok | (enc.worst_difference(enc.LINEAR16, np.where(ok, k, c), bounds, c, bounds) > tolerance)
    positions = np.flatnonzero(bad)
    q[positions] = 0
    pairs = np.empty(2 * len(positions), np.int64)
    pairs[0::2], pairs[1::2] = np.diff(positions, prepend=-1) - 1, d[positions]
    return np.concatenate([q, pairs]), np.where(bad, c, k).astype(np.uint16), len(positions)


def test_prediction_is_regrid_bit_for_bit():
    rng = np.random.default_rng(3)
    for lo, hi in ranges(rng, 40):
        target = res.LayerTarget(enc.LINEAR16, 3000, bits(lo), bits(hi))
        base = (rng.normal(size=3000) * (float(hi) - float(lo) if np.isfinite(hi - lo) else 1.0)
                + float(lo)).astype(np.float32)
        base[:6] = [np.nan, np.inf, -np.inf, lo, hi, 0.0]
        mode = res._prediction_mode(base, target)
        assert np.array_equal(we.prediction(base, target.bounds, mode, 3000), res.regrid(base, target))


@pytest.mark.parametrize("tolerance", [2 ** -17, 2 ** -14, 2 ** -8])
def test_linear16_quantise_matches_numpy_and_holds_under_every_decoding(tolerance):
    rng = np.random.default_rng(int(-np.log2(tolerance)))
    escaped = 0
    for lo, hi in ranges(rng, 30):
        target = res.LayerTarget(enc.LINEAR16, 4000, bits(lo), bits(hi))
        codes = rng.integers(0, 65536, 4000).astype(np.uint16)
        codes[:3] = [0, 65535, 32768]
        base = None if rng.random() < 0.2 else enc.decode(
            enc.LINEAR16, np.clip(codes.astype(np.int64) + rng.integers(-900, 900, 4000), 0, 65535),
            bits(lo), bits(hi))
        r = res.linear16_residuals(codes, base, target, tolerance)
        values, rebuilt, escapes = numpy_quantise(codes, base, target, tolerance)
        assert np.array_equal(r.values, values) and np.array_equal(r.codes, rebuilt) and r.escapes == escapes
        bounds = (target.min_bits, target.max_bits)
        assert enc.worst_difference(enc.LINEAR16, r.codes, bounds, codes, bounds).max() <= tolerance
        assert np.array_equal(res.linear16_rebuild(r.values, base, target, r.quant_width, r.escapes), r.codes)
        escaped += escapes
    assert escaped > 0                     # edge codes and the quantised grid force some


def test_max_difference_is_worst_difference_for_every_encoding():
    rng = np.random.default_rng(5)
    for encoding, dtype in ((enc.FLOAT16, np.uint16), (enc.BFLOAT16, np.uint16), (enc.FLOAT32, np.uint32)):
        a = rng.integers(0, np.iinfo(dtype).max, 20000, dtype=np.uint64).astype(dtype)
        b = a.copy()
        b[::3] += 1
        b[1::7] = rng.integers(0, np.iinfo(dtype).max, len(b[1::7]), dtype=np.uint64).astype(dtype)
        with np.errstate(invalid="ignore"):
            expect = enc.worst_difference(encoding, a, (0, 0), b, (0, 0)).max()
        assert we.max_difference(encoding, a, (0, 0), b, (0, 0)) == expect
        finite = np.isfinite(enc.decode(encoding, a)) & np.isfinite(enc.decode(encoding, b))
        assert we.max_difference(encoding, a[finite], (0, 0), b[finite], (0, 0)) == \
            enc.worst_difference(encoding, a[finite], (0, 0), b[finite], (0, 0)).max() < np.inf
    for (lo, hi), (lo2, hi2) in zip(ranges(rng, 10), ranges(rng, 10)[3:]):
        a = rng.integers(0, 65536, 5000).astype(np.uint16)
        b = np.clip(a.astype(np.int64) + rng.integers(-3, 4, 5000), 0, 65535).astype(np.uint16)
        with np.errstate(invalid="ignore"):
            expect = enc.worst_difference(enc.LINEAR16, a, (bits(lo), bits(hi)), b, (bits(lo2), bits(hi2))).max()
        assert we.max_difference(enc.LINEAR16, a, (bits(lo), bits(hi)), b, (bits(lo2), bits(hi2))) == expect


@pytest.mark.parametrize("encoding", [enc.FLOAT16, enc.BFLOAT16, enc.FLOAT32])
def test_float_steps_in_chunks_equal_one_chunk(monkeypatch, encoding):
    rng = np.random.default_rng(encoding)
    t = (rng.normal(size=5000) * 0.1).astype(np.float32)
    t[:4] = [np.nan, np.inf, 3e38, -0.0]
    b = t + (rng.normal(size=5000) * 1e-3).astype(np.float32)
    codes, base = enc.encode_float(encoding, t), enc.encode_float(encoding, b)
    target = res.LayerTarget(encoding, 5000)
    whole = res.float_step_residuals(codes, base, target, 2 ** -10)
    monkeypatch.setattr(res, "STEP_CHUNK", 777)
    chunked = res.float_step_residuals(codes, base, target, 2 ** -10)
    assert np.array_equal(whole.values, chunked.values) and np.array_equal(whole.codes, chunked.codes)
    assert 0 < chunked.escapes < 5000
    rebuilt = res.float_step_rebuild(chunked.values, base, target, 2 ** -10, chunked.escapes)
    assert np.array_equal(rebuilt, chunked.codes)
    assert we.max_difference(encoding, rebuilt, (0, 0), codes, (0, 0)) <= 2 ** -10


@pytest.mark.parametrize("tolerance", [None, 2 ** -14])
def test_make_patch_catches_a_layer_that_decodes_wrong(monkeypatch, tolerance):
    base, target = (load(p) for p in run_paths()[:2])
    rebuild = res.linear16_rebuild

    def off_by_one(*args):
        codes = rebuild(*args)
        codes[len(codes) // 2] ^= 1
        return codes

    make_patch(base, target, tolerance, codec="varint-brotli")        # checks itself and passes
    monkeypatch.setattr(res, "linear16_rebuild", off_by_one)
    with pytest.raises(VerificationError):       # the rebuild no longer gives what the patch promises
        make_patch(base, target, tolerance, codec="varint-brotli")


@pytest.mark.parametrize("width", [1, 3])
def test_tabled_rebuild_equals_the_rebuild_from_decoded_weights(width):
    """A LINEAR16 base given by its codes and a table of all 65,536 predictions rebuilds the
    same codes (and refuses the same out-of-range steps) as the per-weight float steps."""
    rng = np.random.default_rng(5)
    for (lo_b, hi_b), (lo_t, hi_t) in zip(ranges(rng, 12), ranges(np.random.default_rng(6), 12)):
        base_codes = rng.integers(0, 65536, 5000).astype(np.uint16)
        base_codes[:2] = [0, 65535]
        target = res.LayerTarget(enc.LINEAR16, 5000, bits(lo_t), bits(hi_t))
        base = enc.decode(enc.LINEAR16, base_codes, bits(lo_b), bits(hi_b))
        table = res.linear16_base_table(bits(lo_b), bits(hi_b), target)
        prediction = we.prediction(base, target.bounds, res._prediction_mode(base, target), 5000)
        steps = rng.integers(-40, 41, 5000)
        steps = np.clip(steps, -(prediction // width), (65535 - prediction) // width)
        escapes = [(3, 1234 - prediction[3]), (100, 60000 - prediction[104])]   # (gap before, exact step)
        values = np.concatenate([steps, np.ravel(escapes)])
        floated = res.linear16_rebuild(values, base, target, width, len(escapes))
        tabled = res.linear16_rebuild_from_codes(values, base_codes, table, target, width, len(escapes))
        assert np.array_equal(floated, tabled)
        values[0] = 70000                                # out of range either way
        for rebuild in (lambda: res.linear16_rebuild(values, base, target, width, len(escapes)),
                        lambda: res.linear16_rebuild_from_codes(values, base_codes, table, target, width,
                                                                len(escapes))):
            with pytest.raises(PatchFormatError):
                rebuild()


@pytest.mark.parametrize("tolerance, tier", [(None, "cm"), (2 ** -14, "fast")])
def test_patches_rebuild_the_same_through_the_base_code_tables(monkeypatch, tolerance, tier):
    """Every LINEAR16 layer coded and rebuilt through its table of base-code predictions (the
    path of layers over res.TABLED_REBUILD_MIN elements) gives the bytes the float path gives."""
    from lc0weights import apply_patch
    base, target = (load(p) for p in run_paths()[4:6])
    patch = make_patch(base, target, tolerance, tier=tier, verify=False, chunk_size=1 << 14)
    floated = apply_patch(base, patch)
    calls = []
    real = res.linear16_rebuild_from_codes
    monkeypatch.setattr(res, "TABLED_REBUILD_MIN", 1)
    monkeypatch.setattr(res, "linear16_rebuild_from_codes", lambda *a: calls.append(1) or real(*a))
    assert apply_patch(base, patch, workers=3) == floated
    assert len(calls) > 20
    # The encoder takes its predictions from the same tables: the same patch, byte for byte.
    assert make_patch(base, target, tolerance, tier=tier, verify=False, chunk_size=1 << 14, workers=3) == patch

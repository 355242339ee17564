"""Codec cm1 on real residuals of the shared training run, on edge cases and on bad streams."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lc0weights.codecs import LayerInfo, get_codec
from lc0weights.errors import PatchFormatError

from conftest import run_paths, load

GOLDEN = Path(__file__).parent / "golden" / "cm1_v2.json"
REPO = Path(__file__).resolve().parents[1]
CODEC = get_codec("cm1")


def _round_trip(values, info):
    data = CODEC.encode(values, info)
    out = CODEC.decode(data, len(values), info)
    assert out.dtype == np.int64 and np.array_equal(out, values)
    return data


def _f32(bits: int) -> float:
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def real_layers(step=4, intra=False):
    """(residuals, LayerInfo) of net `step` against its predecessor, as patches code them."""
    paths = run_paths()
    if len(paths) <= step:
        pytest.fail("shared training run not found")
    a, b, h = (load(paths[step - 1]), load(paths[step]), load(paths[step - 2]))
    out = []
    for la, lb, lh in zip(a.layers, b.layers, h.layers):
        base = a.values(la)
        lo, hi = _f32(lb.min_bits), _f32(lb.max_bits)
        codes = b.codes(lb).astype(np.int64)
        if intra:
            zero = int(np.clip(np.rint(-lo / (hi - lo) * 65535), 0, 65535)) if hi > lo else 0
            resid = codes - zero
        else:
            pred = (np.clip(np.rint((base.astype(np.float64) - lo) / (hi - lo) * 65535), 0, 65535)
                    .astype(np.int64) if hi > lo else np.zeros(la.count, np.int64))
            resid = codes - pred
        info = LayerInfo(path=la.path, role=la.role, count=la.count, shape=(la.count,),
                         base=None if intra else base,
                         history=None if intra else base - h.values(lh),
                         scale=(hi - lo) / 65535)
        out.append((resid, info))
    return out


def _pick(layers):
    """A conv, a batch-norm and a dense layer, plus the smallest layer."""
    chosen = {}
    for resid, info in layers:
        if info.role in ("conv", "bn", "dense") and info.role not in chosen and len(resid) <= 40000:
            chosen[info.role] = (resid, info)
    return list(chosen.values()) + [min(layers, key=lambda x: len(x[0]))]


def test_round_trip_real_residuals_beats_order0_entropy():
    for resid, info in _pick(real_layers()):
        data = _round_trip(resid, info)
        if len(resid) > 10000:
            _, counts = np.unique(resid, return_counts=True)
            order0 = -(counts * np.log2(counts / counts.sum())).sum() / 8
            assert len(data) < order0, info.path


def test_round_trip_intra():
    for resid, info in _pick(real_layers(intra=True)):
        assert info.base is None
        _round_trip(resid, info)


def test_context_changes_the_stream_but_not_the_values():
    resid, info = _pick(real_layers())[0]
    bare = LayerInfo(count=info.count, role=info.role)
    assert _round_trip(resid, info) != _round_trip(resid, bare)


@pytest.mark.parametrize("values", [
    [], [0], [-1], [1 << 40], [-(1 << 40), 1 << 40, 0, 3],
    [(1 << 62) - 1, -(1 << 62) + 1],
])
def test_round_trip_edge_cases(values):
    v = np.array(values, np.int64)
    _round_trip(v, LayerInfo(count=len(v)))


def test_round_trip_small_alphabet_and_escapes():
    rng = np.random.default_rng(5)
    small = rng.choice([-1, 0, 0, 0, 1], 5000).astype(np.int64)
    info = LayerInfo(count=5000, shape=(50, 100), base=rng.normal(size=5000).astype(np.float32),
                     scale=0.01)
    assert len(_round_trip(small, info)) < 5000 * 1.5 / 8
    with_escapes = np.concatenate([small, [17, 123456789, -4]])    # escape data after count
    _round_trip(with_escapes, info)


def test_a_long_run_of_zeros_takes_a_few_bytes_and_decodes():
    zeros = np.zeros(262144, np.int64)                 # a dead dense layer that did not move
    info = LayerInfo(count=len(zeros), shape=(128, 2048), history=np.zeros(len(zeros), np.float32),
                     base=np.zeros(len(zeros), np.float32), scale=2 ** -10)
    assert len(_round_trip(zeros, info)) < 64


def test_rejects_magnitudes_it_cannot_code():
    with pytest.raises(ValueError):
        CODEC.encode(np.array([1 << 62], np.int64), LayerInfo(count=1))


def test_truncated_and_corrupt_streams_raise_format_errors():
    resid, info = _pick(real_layers())[0]
    data = CODEC.encode(resid, info)
    for cut in (1, 2, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(PatchFormatError):
            CODEC.decode(data[:cut], len(resid), info)
    for bad in (b"", b"\x01" + data[1:], b"\x03" + data[1:], data + b"\x00", data[:1]):
        with pytest.raises(PatchFormatError):
            CODEC.decode(bad, len(resid), info)
    with pytest.raises(PatchFormatError):
        CODEC.decode(data, -1, info)
    rng = np.random.default_rng(3)
    caught = 0
    for _ in range(40):                                        # flipped bytes: an error or
        buf = bytearray(data)                                  # values of the right length
        buf[int(rng.integers(1, len(buf)))] ^= int(rng.integers(1, 256))
        try:
            out = CODEC.decode(bytes(buf), len(resid), info)
            assert len(out) == len(resid)
        except PatchFormatError:
            caught += 1
    assert caught > 0


def test_threads_give_the_same_bytes():
    layers = _pick(real_layers())
    serial = [CODEC.encode(v, i) for v, i in layers]
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda a: CODEC.encode(*a), layers)) == serial


def test_config_round_trips_through_json():
    config = json.loads(json.dumps(CODEC.get_config()))
    assert config["id"] == "cm1"
    assert get_codec("cm1", config).get_config() == config


def golden_input():
    """A deterministic layer: Laplacian-like residuals with a base and a history."""
    rng = np.random.default_rng(20240601)
    n = 3000
    base = rng.normal(0, 0.05, n).astype(np.float32)
    history = (rng.normal(0, 1e-3, n) * rng.uniform(0.2, 2, n)).astype(np.float32)
    scale = 1.5e-5
    magnitude = np.abs(history) / scale * 0.3 + 5
    values = np.rint(rng.laplace(0, magnitude)).astype(np.int64)
    values = np.concatenate([values, [123456, -7]])             # two escape values
    info = LayerInfo(role="conv", count=n, shape=(10, 30, 3, 3), base=base, history=history,
                     scale=scale)
    return values, info


def test_golden_vector():
    values, info = golden_input()
    data = _round_trip(values, info)
    golden = json.loads(GOLDEN.read_text())
    assert golden["values_sha256"] == hashlib.sha256(values.tobytes()).hexdigest()
    assert golden["encoded_size"] == len(data)
    assert golden["encoded_sha256"] == hashlib.sha256(data).hexdigest()


def test_interpreted_kernels_give_the_same_bytes():
    """NUMBA_DISABLE_JIT=1 runs the kernels as plain Python: same bytes as the compiled ones."""
    values, info = golden_input()
    values, info.count = values[:1500], 1500
    info.base, info.history, info.shape = info.base[:1500], info.history[:1500], (5, 30, 3, 3)
    jitted = CODEC.encode(values, info)
    script = (
        "import sys, hashlib; sys.path[:0] = [{repo!r}, {tests!r}]\n"
        "from test_codec_context_model import golden_input, CODEC\n"
        "v, i = golden_input(); v, i.count = v[:1500], 1500\n"
        "i.base, i.history, i.shape = i.base[:1500], i.history[:1500], (5, 30, 3, 3)\n"
        "print(CODEC.encode(v, i).hex())\n"
    ).format(repo=str(REPO), tests=str(REPO / "tests"))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert bytes.fromhex(out.stdout.strip()) == jitted


def test_random_streams_never_crash_the_decoder():
    """Any bytes decode to the declared count or raise PatchFormatError: table indices
    derived from decoded data stay in range (the compiled kernels check no bounds)."""
    values, info = golden_input()
    rng = np.random.default_rng(11)
    outcomes = set()
    for trial in range(300):
        size = int(rng.integers(1, 200)) if trial % 2 else int(rng.integers(200, 4000))
        junk = bytes([2]) + rng.integers(0, 256, size).astype(np.uint8).tobytes()
        try:
            out = CODEC.decode(junk, len(values), info)
            assert len(out) == len(values)
            outcomes.add("values")
        except PatchFormatError:
            outcomes.add("error")
    assert "error" in outcomes

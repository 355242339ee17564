"""Codec cm2: the signed prediction from the base's last step, on the averaged (SWA) run."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lc0weights import Net, apply_patch, make_patch, read_patch_info
from lc0weights.codecs import LayerInfo, get_codec
from lc0weights.codecs import temporal
from lc0weights.errors import PatchFormatError

from conftest import DATA, load

SWA = DATA / "runs" / "maia-swa"
GOLDEN = Path(__file__).parent / "golden" / "cm2_v1.json"
REPO = Path(__file__).resolve().parents[1]
CM1, CM2 = get_codec("cm1"), get_codec("cm2")


def swa_nets(*steps) -> list[Net]:
    paths = sorted(SWA.glob("step-*.pb.gz"))
    if len(paths) < 13:
        pytest.fail(f"shared SWA run not found under {SWA}")
    return [load(paths[s]) for s in steps]


def _round_trip(codec, values, info):
    data = codec.encode(values, info)
    out = codec.decode(data, len(values), info)
    assert out.dtype == np.int64 and np.array_equal(out, values)
    return data


def swa_layer(step: int, path: str):
    """(residuals, LayerInfo) of one layer of the SWA run as a history patch codes it."""
    from lc0weights.patch import _Context, _pair
    from lc0weights import residuals as res
    from lc0weights.proto import patch_pb2
    history, base, target = swa_nets(step - 2, step - 1, step)
    layer = next(l for l in target.layers if l.path == path)
    base_layer = _pair(base, layer)
    lt = res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)
    r = res.linear16_residuals(target.codes(layer), base.values(base_layer), lt)
    ctx = _Context(base, history, {l.path: l.count for l in target.layers if l.codable})
    return r.values, ctx.info(layer, patch_pb2.LayerPatch(residual=r.kind), base_layer)


@pytest.mark.parametrize("step, vs_contexts, vs_plain", [(5, 0.99, 0.9), (11, 0.85, 0.6)],
                         ids=["before-lr-drop", "after-lr-drop"])
def test_prediction_beats_history_contexts_on_an_averaged_run(step, vs_contexts, vs_plain):
    values, info = swa_layer(step, "weights.residual.2.conv1.weights")
    predicted = _round_trip(CM2, values, info)
    assert predicted[0] == temporal.MODE_PREDICTED
    slope = temporal._read_slope(predicted)[0] / (1 << temporal.SLOPE_BITS)
    assert 0.5 < slope < 1.2                          # SWA steps persist
    assert len(predicted) < vs_contexts * len(CM1.encode(values, info))      # cm1 with history
    no_history = LayerInfo(**{**info.__dict__, "history": None})
    assert len(predicted) < vs_plain * len(CM1.encode(values, no_history))


def test_without_history_the_stream_is_cm1s():
    values, info = swa_layer(5, "weights.residual.2.conv1.weights")
    info.history = None
    data = _round_trip(CM2, values, info)
    assert data[0] == temporal.MODE_PLAIN and data[1:] == CM1.encode(values, info)[1:]


def test_history_units_are_exact_integers_of_sixteenths():
    h = np.array([0.0, 1.5e-5, -3e-5, np.nan, np.inf, -np.inf, 2.4e-6], np.float32)
    hq = temporal.history_units(h, 1.5e-5, len(h))
    expect = [0, 16, -32, 0, temporal.MAX_HISTORY, -temporal.MAX_HISTORY,
              round(float(np.float32(2.4e-6)) * 16 / 1.5e-5)]
    assert hq.tolist() == expect
    assert temporal.history_units(h, 0.0, len(h)) is None
    assert temporal.history_units(h[:3], 1.0, len(h)) is None


def test_compiled_prediction_equals_its_numpy_statement():
    from lc0weights import kernels
    values, info = swa_layer(11, "weights.residual.1.conv2.weights")
    edges = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 0.5 * 1.5e-5 / 16,
                      1.5 * 1.5e-5 / 16, -2.5 * 1.5e-5 / 16, 2.5 * 1.5e-5 / 16], np.float32)
    for history, scale in ((info.history, info.scale), (edges, 1.5e-5)):
        hq = temporal.history_units(history, scale, len(history))
        compiled = np.empty(len(history), np.int64)
        kernels.history_units(np.ascontiguousarray(history, np.float32), scale, compiled)
        assert np.array_equal(compiled, hq)
        for slope in (2867, -1234, 1):
            key = temporal.scale_key(scale)
            pred, rem = temporal.prediction(hq, slope)
            got_pred, got_bits = temporal._predict(history, scale, slope, key, len(history))
            assert np.array_equal(got_pred, pred)
            assert np.array_equal(got_bits, temporal.remainder_bits(rem, key))


def test_prediction_rounds_and_keeps_the_remainder():
    hq = np.array([0, 16, -16, 24, 8, -8, 7, -9], np.int64)
    pred, rem = temporal.prediction(hq, 1 << temporal.SLOPE_BITS)      # slope 1
    assert pred.tolist() == [0, 1, -1, 2, 1, 0, 0, -1]
    assert np.array_equal(pred * 16 + rem, hq)
    assert rem.min() >= -8 and rem.max() <= 7


def test_escapes_and_edge_values_round_trip():
    values, info = swa_layer(11, "weights.input.weights")
    with_escapes = np.concatenate([values, [17, 123456789, -4, 0]])
    data = _round_trip(CM2, with_escapes, info)
    assert data[0] == temporal.MODE_PREDICTED
    for edge in ([], [0], [(1 << 62) - 1, -(1 << 62) + 1]):
        _round_trip(CM2, np.array(edge, np.int64), LayerInfo(count=len(edge)))


def test_corrupt_streams_raise_format_errors():
    values, info = swa_layer(11, "weights.residual.0.conv2.weights")
    data = CM2.encode(values, info)
    bad = [b"", b"\x02" + data[1:], b"\x01", b"\x01\x80\x80\x80", b"\x01\x00" + data[2:],
           data[:len(data) // 2], data + b"\x00"]
    for stream in bad:
        with pytest.raises(PatchFormatError):
            CM2.decode(stream, len(values), info)
    without = LayerInfo(**{**info.__dict__, "history": None})
    with pytest.raises(PatchFormatError):
        CM2.decode(data, len(values), without)
    with pytest.raises(PatchFormatError):
        CM2.decode(data, -1, info)


def test_history_patches_over_the_swa_run_rebuild_the_target_and_shrink():
    history, base, target = swa_nets(9, 10, 11)
    plain = make_patch(base, target, verify=False)
    predicted = make_patch(base, target, history=history)
    assert bytes(apply_patch(base, predicted, history=history)) == target.raw
    codecs = {l["codec"] for l in read_patch_info(predicted).layers}
    assert "cm2" in codecs and "cm1" not in codecs
    assert len(predicted) < 0.6 * len(plain)


def golden_input():
    """A deterministic layer whose steps persist: residuals 0.7 x history + noise."""
    rng = np.random.default_rng(20261201)
    n, scale = 3000, 1.5e-5
    history = (rng.normal(0, 1e-4, n) * rng.uniform(0.2, 2, n)).astype(np.float32)
    values = np.rint(0.7 * history / scale + rng.laplace(0, 3, n)).astype(np.int64)
    values = np.concatenate([values, [654321, -9]])
    info = LayerInfo(role="conv", count=n, shape=(10, 30, 3, 3),
                     base=rng.normal(0, 0.05, n).astype(np.float32), history=history, scale=scale)
    return values, info


def test_golden_vector():
    values, info = golden_input()
    data = _round_trip(CM2, values, info)
    golden = json.loads(GOLDEN.read_text())
    assert golden["values_sha256"] == hashlib.sha256(values.tobytes()).hexdigest()
    assert (golden["encoded_size"], golden["encoded_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_interpreted_kernels_give_the_same_bytes():
    values, info = golden_input()
    script = ("import sys; sys.path[:0] = [{repo!r}, {tests!r}]\n"
              "from test_codec_temporal import golden_input, CM2\n"
              "v, i = golden_input(); v, i.count = v[:1200], 1200\n"
              "i.base, i.history, i.shape = i.base[:1200], i.history[:1200], (4, 30, 3, 3)\n"
              "print(CM2.encode(v, i).hex())\n").format(repo=str(REPO), tests=str(REPO / "tests"))
    values, info.count = values[:1200], 1200
    info.base, info.history, info.shape = info.base[:1200], info.history[:1200], (4, 30, 3, 3)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env=dict(os.environ, NUMBA_DISABLE_JIT="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert bytes.fromhex(out.stdout.strip()) == CM2.encode(values, info)

"""Codec rans1, the fast tier: exact round trips on real runs, hostile streams, golden bytes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lc0weights import apply_patch, make_patch, read_patch_info
from lc0weights.codecs import LayerInfo, get_codec
from lc0weights.codecs import rans
from lc0weights.errors import PatchFormatError
from lc0weights import rans_kernels as rk

from test_codec_temporal import golden_input, swa_layer, swa_nets

GOLDEN = Path(__file__).parent / "golden" / "rans1_v1.json"
REPO = Path(__file__).resolve().parents[1]
RANS, CM1, CM2 = get_codec("rans1"), get_codec("cm1"), get_codec("cm2")
EDGES = [0, 1, -1, 2, -2, 3, -3, 4, -5, (1 << 24) + 5, -(1 << 26) - 3, (1 << 62) - 1, -(1 << 62) + 1,
         (1 << 61) + 12345, 7]


def _round_trip(values, info):
    data = RANS.encode(values, info)
    out = RANS.decode(data, len(values), info)
    assert out.dtype == np.int64 and np.array_equal(out, values)
    return data


@pytest.mark.parametrize("step, path", [(5, "weights.residual.2.conv1.weights"),
                                        (11, "weights.residual.0.conv2.weights"),
                                        (11, "weights.input.weights")])
def test_real_layers_round_trip_within_a_few_percent_of_the_context_model(step, path):
    values, info = swa_layer(step, path)
    predicted = _round_trip(values, info)
    assert predicted[0] == rans.MODE_PREDICTED      # the SWA run's steps persist
    assert len(predicted) <= 1.06 * len(CM2.encode(values, info))
    info.history = None
    plain = _round_trip(values, info)
    assert plain[0] == rans.MODE_PLAIN
    assert len(plain) <= 1.06 * len(CM1.encode(values, info))


def test_edge_values_escapes_and_degenerate_layers_round_trip():
    values, info = swa_layer(11, "weights.input.weights")
    _round_trip(np.concatenate([values, EDGES]), info)           # escapes after info.count
    plain = LayerInfo(count=0)
    for case in ([0] * 5000, [5] * 300, EDGES, [-1], list(range(-3000, 3000, 7)), []):
        _round_trip(np.array(case, np.int64), plain)
    assert RANS.encode(np.zeros(0, np.int64), plain) == b"\x00"
    with pytest.raises(ValueError):
        RANS.encode(np.array([1 << 62], np.int64), plain)


def test_frequencies_are_normalised_exactly():
    for counts in ([1] * 124, [10 ** 9, 1, 1, 0, 3], [0, 0, 7], [4095, 1, 1]):
        counts = np.array(counts + [0] * (124 - len(counts)), np.int64)
        freq = rans.normalised(counts)
        assert int(freq.sum()) == rk.PROB_SCALE
        assert ((freq > 0) == (counts > 0)).all()


def _header(tables, words=(1 << 30 >> 32, 1 << 30 & 0xFFFFFFFF), plain=b""):
    out = bytearray([rans.MODE_PLAIN]) + rans._varint(len(tables))
    previous = -1
    for ctx, lo, freqs in tables:
        out += rans._varint(ctx - previous - 1) + rans._varint(lo) + rans._varint(len(freqs) - 1)
        out += b"".join(rans._varint(f) for f in freqs)
        previous = ctx
    out += rans._varint(len(words)) + np.array(words, "<u4").tobytes()
    return bytes(out) + plain


def test_hostile_streams_raise_format_errors_only():
    values, info = swa_layer(11, "weights.residual.0.conv2.weights")
    data = RANS.encode(values, info)
    n = len(values)
    info_plain = LayerInfo(count=n)
    bad = [b"", b"\x02" + data[1:], b"\x01", b"\x01\x80\x80\x80", b"\x01\x00" + data[2:],
           data + b"\x00", data[:-1],
           _header([]),                                         # no table
           _header([(1, 0, [4095])]),                          # sums to 4095
           _header([(63, 0, [4096])]),                         # context past the last
           _header([(0, 120, [1] * 5)]),                       # symbols past the last
           _header([(1, 0, [4096])], words=(0, 0)),            # a state out of range
           _header([(1, 0, [4096])], words=(0, 1 << 30, 7)),   # a word left over
           _header([(5, 0, [4096])]),                  # the first value's context (1) has no table
           b"\x00" + rans._varint(1) + b"\x00\x00\x00" + rans._varint(4096) + rans._varint(10 ** 9)]
    for stream in bad:
        with pytest.raises(PatchFormatError):
            RANS.decode(stream, n, info if stream[:1] == b"\x01" else info_plain)
    with pytest.raises(PatchFormatError):
        RANS.decode(data, n, LayerInfo(**{**info.__dict__, "history": None}))
    with pytest.raises(PatchFormatError):
        RANS.decode(data, -1, info)
    with pytest.raises(PatchFormatError):
        RANS.decode(b"\x00\x00", 0, info)
    assert RANS.decode(_header([(1, 0, [4096])]), 3, info_plain).tolist() == [0, 0, 0]


def test_truncated_or_flipped_streams_never_raise_anything_else():
    values, info = swa_layer(11, "weights.residual.0.conv2.weights")
    info.history = None
    data = RANS.encode(values, info)
    rng = np.random.default_rng(7)
    for cut in sorted(set(rng.integers(0, len(data), 40).tolist())):
        with pytest.raises(PatchFormatError):
            RANS.decode(data[:cut], len(values), info)
    for at in rng.integers(0, len(data), 60).tolist():
        flipped = bytearray(data)
        flipped[at] ^= 1 << int(rng.integers(0, 8))
        try:
            out = RANS.decode(bytes(flipped), len(values), info)
        except PatchFormatError:
            continue
        assert out.dtype == np.int64 and len(out) == len(values)


def test_fast_tier_patches_rebuild_the_target_with_the_same_bytes_for_any_workers():
    history, base, target = swa_nets(9, 10, 11)
    patches = {w: make_patch(base, target, history=history, tier="fast", workers=w, chunk_size=1 << 15)
               for w in (1, 2, 4)}
    assert patches[1] == patches[2] == patches[4]
    assert apply_patch(base, patches[1], history=history) == target.raw
    codecs = {layer["codec"] for layer in read_patch_info(patches[1], base).layers}
    assert "rans1" in codecs
    cm = make_patch(base, target, history=history, chunk_size=1 << 15, verify=False)
    assert len(cm) < len(patches[1]) <= 1.05 * len(cm)
    with pytest.raises(ValueError):
        make_patch(base, target, tier="fastest")


def test_golden_vector():
    values, info = golden_input()
    predicted = _round_trip(values, info)
    info.history = None
    plain = _round_trip(values, info)
    golden = json.loads(GOLDEN.read_text())
    assert golden["values_sha256"] == hashlib.sha256(values.tobytes()).hexdigest()
    for key, data in (("predicted", predicted), ("plain", plain)):
        assert (golden[key]["encoded_size"], golden[key]["encoded_sha256"]) == (
            len(data), hashlib.sha256(data).hexdigest())


def test_interpreted_kernels_give_the_same_bytes():
    script = ("import sys; sys.path[:0] = [{repo!r}, {tests!r}]\n"
              "from test_codec_rans import golden_input, RANS\n"
              "v, i = golden_input(); v, i.count, i.history = v[:1500], 1500, i.history[:1500]\n"
              "d = RANS.encode(v, i); assert (RANS.decode(d, 1500, i) == v).all()\n"
              "print(d.hex())\n").format(repo=str(REPO), tests=str(REPO / "tests"))
    values, info = golden_input()
    values, info.count, info.history = values[:1500], 1500, info.history[:1500]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env=dict(os.environ, NUMBA_DISABLE_JIT="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert bytes.fromhex(out.stdout.strip()) == RANS.encode(values, info)

"""Synthetic training runs: real lc0 layout, small steps, same bytes for a seed."""
import json

import numpy as np
import pytest

from lc0weights import Net
from lc0weights import encodings as enc
from lc0weights.synthetic import architecture, generate, write_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, write_run(out, count=4, seed=7)


def test_writes_named_checkpoints_and_run_info(run):
    out, paths = run
    assert [p.name for p in paths] == [f"step-{s:06d}.pb.gz" for s in (0, 100, 200, 300)]
    info = json.loads((out / "run_info.json").read_text())
    assert info["checkpoints"] == [p.name for p in paths] and info["synthetic"] is True
    assert not list(out.glob("*.tmp"))


def test_nets_have_the_lc0_se_resnet_layout(run):
    net = Net.load(run[1][0])
    paths = {l.path: l.count for l in net.layers}
    assert len(net.layers) == 105 and net.weight_count == 868_355 and len(net.raw) > 1_700_000
    assert paths["weights.input.weights"] == 64 * 112 * 9
    assert paths["weights.residual.5.conv2.weights"] == 64 * 64 * 9
    assert paths["weights.residual.0.se.w1"] == 8 * 64 and paths["weights.residual.0.se.b2"] == 128
    assert paths["weights.policy.weights"] == 80 * 64 * 9 and paths["weights.policy1.bn_betas"] == 64
    assert paths["weights.ip1_val_w"] == 128 * 32 * 64 and paths["weights.ip2_val_b"] == 3
    assert all(l.encoding == enc.LINEAR16 for l in net.layers)
    assert net.raw[:5] == b"\x0d\xc0\x01\x00\x00"


def test_layout_matches_the_real_small_nets(run_nets):
    real = run_nets[0]
    synthetic = Net(next(generate(count=1))[1])
    assert [(l.path, l.count) for l in synthetic.layers] == [(l.path, l.count) for l in real.layers]


def test_consecutive_nets_differ_slightly(run):
    a, b = (Net.load(p) for p in run[1][1:3])
    assert a.id != b.id and len(a.raw) == len(b.raw)
    moved = []
    for la, lb in zip(a.layers, b.layers):
        va, vb = a.values(la).astype(np.float64), b.values(lb).astype(np.float64)
        if va.std() > 0 and la.count > 1000:
            moved.append(np.abs(vb - va).std() / va.std())
    assert 1e-3 < np.median(moved) < 0.1


def test_dead_weights_keep_their_code_after_regrid(run):
    a, b = (Net.load(p) for p in run[1][1:3])
    la, lb = a.layer("weights.ip1_val_w"), b.layer("weights.ip1_val_w")
    lo, hi = float(enc.f32(lb.min_bits)), float(enc.f32(lb.max_bits))
    pred = np.rint((a.values(la).astype(np.float64) - lo) / (hi - lo) * 65535)
    resid = b.codes(lb).astype(np.int64) - pred.astype(np.int64)
    assert np.bincount(resid - resid.min()).max() / resid.size > 0.5


def test_same_seed_same_bytes_other_seed_other_bytes():
    first = [raw for _, raw in generate(count=2, blocks=2, filters=16, seed=5)]
    again = [raw for _, raw in generate(count=2, blocks=2, filters=16, seed=5)]
    other = [raw for _, raw in generate(count=2, blocks=2, filters=16, seed=6)]
    assert first == again and first[0] != other[0]


@pytest.mark.parametrize("encoding", ["FLOAT16", "BFLOAT16", "FLOAT32"])
def test_float_encodings_load(encoding):
    net = Net(next(generate(count=1, blocks=1, filters=16, encoding=encoding))[1])
    assert {l.encoding for l in net.layers} == {getattr(enc, encoding)}
    assert all(np.isfinite(net.values(l)).all() for l in net.layers)


def test_architecture_scales_with_blocks_and_filters():
    specs = architecture(20, 256)
    assert sum(s.count for s in specs) > 20 * 2 * 256 * 256 * 9
    assert sum(1 for s in specs if s.path[-1] == "w1") == 20

"""tools/lc0_nets.py: lc0-scale nets at a small scale parse as lc0 nets and patch like a real run."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from lc0weights import Net, apply_patch, make_patch
from lc0weights.proto import lc0net_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import lc0_nets


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("lc0nets")
    return {net: (out, lc0_nets.write_run(out, net, count=2, scale=scale, seed=3))
            for net, scale in (("bt4", 0.003), ("t82", 0.002))}


@pytest.mark.parametrize("name", ["bt4", "t82"])
def test_nets_are_lc0_nets_with_the_planned_layers(pairs, name):
    out, facts = pairs[name]
    specs = lc0_nets.layers_for(name, {"bt4": 0.003, "t82": 0.002}[name])
    raw = gzip.decompress((out / facts[0]["file"]).read_bytes())
    # Field-number order with canonical lengths: protobuf re-serialises it to the same bytes.
    assert pb.Net.FromString(raw).SerializeToString() == raw
    net = Net(raw)
    assert net.id == facts[0]["id"] and len(raw) == facts[0]["raw_bytes"]
    assert {layer.path for layer in net.layers} == {s.name for s in specs}
    assert net.weight_count == sum(s.count for s in specs)
    for layer in net.layers:
        codes = net.codes(layer)
        if layer.min_bits != layer.max_bits:      # every varying layer spans its whole LINEAR16 range
            assert codes.min() == 0 and codes.max() == 65535, layer.path
    info = json.loads((out / f"{name}.json").read_text())
    assert info["layers"] == len(specs) and info["nets"][1]["id"] == facts[1]["id"]


def test_bt4_has_the_attention_body_and_multi_head_fields(pairs):
    out, facts = pairs["bt4"]
    w = pb.Net.FromString(gzip.decompress((out / facts[0]["file"]).read_bytes())).weights
    assert len(w.encoder) == 15 and w.headcount == 32
    e = w.encoder[14]
    assert e.mha.smolgen.dense2_w.params and e.ffn.dense2_w.params and e.ln2_betas.params
    assert w.policy_heads.vanilla.pol_encoder[0].mha.q_w.params and w.policy_heads.opponent.ip4_pol_w.params
    assert w.value_heads.st.ip_val_cat_w.params and w.ip_emb_ffn.dense1_w.params and w.smolgen_w.params


@pytest.mark.parametrize("name", ["bt4", "t82"])
def test_successive_nets_patch_like_a_real_swa_step(pairs, name):
    out, facts = pairs[name]
    base, target = (Net.load(out / f["file"]) for f in facts)
    assert base.id != target.id
    patch = make_patch(base, target)
    assert Net(apply_patch(base, patch)).id == target.id
    # maia-swa: a lossless patch of successive nets is 0.36-0.53 of the .pb.gz; far outside means
    # the step model (or the generator) broke.
    ratio = len(patch) / facts[1]["gz_bytes"]
    assert 0.2 < ratio < 0.6, ratio


def test_same_seed_same_bytes_whatever_the_run_length(pairs, tmp_path):
    _, facts = pairs["t82"]
    again = lc0_nets.write_run(tmp_path, "t82", count=1, scale=0.002, seed=3)
    assert again[0]["id"] == facts[0]["id"]
    other = lc0_nets.write_run(tmp_path / "other", "t82", count=1, scale=0.002, seed=4)
    assert other[0]["id"] != facts[0]["id"]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown net"):
        lc0_nets.write_run(tmp_path, "t99")
    misspelt = lc0_nets.LayerSpec(("encoder", 0, "mha", "qq_w"), "dense", (8, 8))
    with pytest.raises(ValueError, match="no field 'qq_w'"):
        lc0_nets.message_size(lc0_nets.build_tree([misspelt]), pb.Weights.DESCRIPTOR, [misspelt])

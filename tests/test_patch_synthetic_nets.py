"""Byte-exact patches for any writer: encodings, bodies, ONNX, unknown fields, field order."""
import numpy as np
import pytest

from lc0weights import Net, apply_patch, encodings as enc, make_patch, max_error, read_patch_info
from lc0weights.proto import lc0net_pb2 as pb

import netfactory as nf

ENCODINGS = [enc.LINEAR16, enc.FLOAT16, enc.BFLOAT16, enc.FLOAT32]


def as_net(message_or_bytes) -> Net:
    raw = message_or_bytes if isinstance(message_or_bytes, bytes) else message_or_bytes.SerializeToString()
    return Net.from_bytes(raw)


def assert_exact(base, target, **kw):
    patch = make_patch(base, target, **kw)
    assert bytes(apply_patch(base, patch)) == target.raw
    return patch


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: enc.NAMES[e])
def test_every_encoding_round_trips(encoding):
    rng = np.random.default_rng(encoding)
    a = nf.residual_net(rng, encoding=encoding)
    b = nf.step(a, rng)
    base, target = as_net(a), as_net(b)
    patch = assert_exact(base, target)
    # A small step leaves the high bits of every 16-bit code alone; float32 mantissas churn.
    assert len(patch) < len(target.raw) * (0.7 if encoding == enc.FLOAT32 else 0.5)
    assert_exact(None, target)
    assert all(l.encoding == encoding for l in target.layers)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: enc.NAMES[e])
def test_every_encoding_within_tolerance(encoding):
    rng = np.random.default_rng(10 + encoding)
    a = nf.residual_net(rng, encoding=encoding)
    base, target = as_net(a), as_net(nf.step(a, rng))
    for tolerance in (2 ** -17, 2 ** -10):
        patch = make_patch(base, target, tolerance)
        rebuilt = Net(apply_patch(base, patch))
        assert max_error(rebuilt, target) <= tolerance
        assert [l.encoding for l in rebuilt.layers] == [l.encoding for l in target.layers]


def test_transformer_body_with_head_maps():
    rng = np.random.default_rng(3)
    a = nf.transformer_net(rng)
    base, target = as_net(a), as_net(nf.step(a, rng))
    paths = [l.path for l in target.layers]
    assert "weights.policy_heads.policy_head_map.1.value.pol_encoder.0.mha.q_w" in paths
    assert "weights.value_heads.value_head_map.0.value.ip_val_w" in paths
    assert "weights.encoder.1.mha.smolgen.compress" in paths
    assert_exact(base, target)
    assert_exact(None, target)


def test_onnx_net():
    rng = np.random.default_rng(4)
    a = nf.onnx_net(rng)
    b = pb.Net()
    b.CopyFrom(a)
    model = bytearray(a.onnx_model.model)
    model[100:110] = b"0123456789"
    b.onnx_model.model = bytes(model)
    base, target = as_net(a), as_net(b)
    assert target.layers == [] and target.format_name == "onnx"
    patch = assert_exact(base, target)
    assert len(patch) < 2000, "an ONNX net that changed in a few bytes gives a small patch"
    assert_exact(None, target)


def test_unknown_fields_everywhere_survive():
    rng = np.random.default_rng(5)
    a = nf.residual_net(rng, blocks=1)
    raw = bytearray(a.SerializeToString())
    # An unknown field inside every layer (after params) and at the top level.
    net = Net.from_bytes(bytes(raw))
    out, pos = bytearray(), 0
    for layer in net.layers:
        out += raw[pos:layer.span.end]
        pos = layer.span.end
    out += raw[pos:]
    layer_extra = nf.field(99, 0, 12345)
    # Rebuild with an unknown field appended to the top-level message only; unknown fields
    # inside layers are exercised by a hand-made layer below.
    hand_layer = (nf.field(1, 5, np.float32(-1).tobytes()) + nf.field(2, 5, np.float32(1).tobytes())
                  + nf.field(77, 2, b"future") + nf.field(3, 2, np.arange(64, dtype="<u2").tobytes())
                  + layer_extra)
    weights_extra = nf.field(31, 2, hand_layer)            # ip_mov_w, a known Layer field
    raw_net = bytes(out) + nf.field(10, 2, weights_extra) + nf.field(500, 2, b"unknown top-level")
    target = Net.from_bytes(raw_net)
    assert "weights.ip_mov_w" in [l.path for l in target.layers]
    base = Net.from_bytes(bytes(raw))
    assert_exact(base, target)
    assert_exact(None, target)


def test_non_canonical_field_order():
    rng = np.random.default_rng(6)
    a = nf.residual_net(rng, blocks=1)
    pieces = [pb.Net(**{fd.name: v}).SerializeToString() for fd, v in a.ListFields()]
    reordered = b"".join(reversed(pieces))          # weights first, magic last
    target = Net.from_bytes(reordered)
    assert target.raw != a.SerializeToString()
    base = as_net(a)
    assert_exact(base, target)
    assert_exact(target, base)


def test_changed_metadata_only():
    rng = np.random.default_rng(7)
    a = nf.residual_net(rng, blocks=1)
    b = pb.Net()
    b.CopyFrom(a)
    b.training_params.training_steps = 2000
    b.training_params.lc0_params = "changed parameters"
    b.license = "another license"
    b.format.network_format.network = 134          # an enum value the schema does not name
    base, target = as_net(a), as_net(b)
    patch = assert_exact(base, target)
    assert len(patch) < 0.03 * len(target.raw)
    assert read_patch_info(patch).target_id == target.id


def test_layers_added_removed_reshaped_reencoded():
    rng = np.random.default_rng(8)
    a = nf.residual_net(rng, blocks=2)
    b = nf.step(a, rng)
    del b.weights.residual[1]                                    # removed
    nf.fill_layer(b.weights.ip_mov_w, rng.normal(0, 0.1, 500))   # added
    nf.fill_layer(b.weights.ip2_val_b, rng.normal(0, 0.1, 5))    # reshaped
    b.weights.policy.biases.Clear()
    nf.fill_layer(b.weights.policy.biases, rng.normal(0, 0.1, 80), enc.FLOAT16)  # re-encoded
    base, target = as_net(a), as_net(b)
    patch = assert_exact(base, target)
    intra = {l["path"] for l in read_patch_info(patch, base).layers if l["intra"]}
    assert {"weights.ip_mov_w", "weights.ip2_val_b", "weights.policy.biases"} <= intra


def test_odd_payload_and_unknown_encoding_are_kept_as_bytes():
    rng = np.random.default_rng(9)
    a = nf.residual_net(rng, blocks=1)
    a.weights.ip_mov_b.params = b"\x01\x02\x03"               # odd length
    a.weights.ip_mov_b.encoding = enc.FLOAT16
    a.weights.ip1_mov_b.params = bytes(range(40))
    a.weights.ip1_mov_b.encoding = 9                           # an encoding from the future
    target = as_net(a)
    assert_exact(None, target)
    assert_exact(target, target)

"""Build small synthetic lc0 nets for tests: every encoding, every body, odd writers."""
from __future__ import annotations

import numpy as np

from lc0weights import encodings as enc
from lc0weights.proto import lc0net_pb2 as pb

Weights = pb.Weights


def fill_layer(layer, values, encoding=enc.LINEAR16, write_encoding=True, dims=()):
    values = np.asarray(values, np.float32)
    if encoding == enc.LINEAR16:
        lo, hi = float(values.min()), float(values.max())
        layer.min_val, layer.max_val = lo, hi
        layer.params = enc.encode_linear16(values, np.float32(lo), np.float32(hi)).tobytes()
    else:
        layer.params = enc.encode_float(encoding, values).tobytes()
    if write_encoding:
        layer.encoding = encoding
    layer.dims.extend(dims)
    return layer


def residual_net(rng, blocks=2, filters=8, encoding=enc.LINEAR16, scale=0.1):
    """A small SE-ResNet with conv policy and WDL value heads."""
    net = pb.Net(magic=0x1C0, license="test nets are free")
    net.min_version.major, net.min_version.minor = 0, 33
    net.format.weights_encoding = 1
    net.format.network_format.network = 4
    net.training_params.training_steps = 1000

    def conv(block, cin, cout, k=3):
        fill_layer(block.weights, rng.normal(0, scale, cout * cin * k * k), encoding)
        fill_layer(block.biases, rng.normal(0, scale, cout), encoding)
        fill_layer(block.bn_means, rng.normal(0, scale, cout), encoding)
        fill_layer(block.bn_stddivs, rng.uniform(0.1, 1, cout), encoding)
    w = net.weights
    conv(w.input, 112, filters)
    for _ in range(blocks):
        r = w.residual.add()
        conv(r.conv1, filters, filters)
        conv(r.conv2, filters, filters)
        fill_layer(r.se.w1, rng.normal(0, scale, filters * 4), encoding)
        fill_layer(r.se.b1, rng.normal(0, scale, 4), encoding)
        fill_layer(r.se.w2, rng.normal(0, scale, 4 * filters * 2), encoding)
        fill_layer(r.se.b2, rng.normal(0, scale, filters * 2), encoding)
    conv(w.policy1, filters, filters)
    conv(w.policy, filters, 80)
    conv(w.value, filters, 32, k=1)
    fill_layer(w.ip1_val_w, rng.normal(0, scale, 32 * 64 * 16), encoding)
    fill_layer(w.ip1_val_b, rng.normal(0, scale, 128), encoding)
    fill_layer(w.ip2_val_w, rng.normal(0, scale, 128 * 3), encoding)
    fill_layer(w.ip2_val_b, rng.normal(0, scale, 3), encoding)
    return net


def transformer_net(rng, encoders=2, d=16, encoding=enc.FLOAT16):
    """An attention body with multi-head policy and value maps."""
    net = pb.Net(magic=0x1C0)
    net.min_version.major, net.min_version.minor = 0, 33
    net.format.network_format.network = 7
    w = net.weights
    fill_layer(w.ip_emb_preproc_w, rng.normal(0, 0.05, 64 * 12 * d), encoding)
    fill_layer(w.ip_emb_w, rng.normal(0, 0.05, d * 112), encoding, dims=(d, 112))
    fill_layer(w.ip_emb_b, rng.normal(0, 0.05, d), encoding)
    fill_layer(w.ip_mult_gate, rng.normal(1, 0.05, 64 * d), encoding)
    fill_layer(w.ip_add_gate, rng.normal(0, 0.05, 64 * d), encoding)
    fill_layer(w.ip_emb_ffn.dense1_w, rng.normal(0, 0.05, d * d * 2), encoding)
    for _ in range(encoders):
        e = w.encoder.add()
        for name in ("q_w", "k_w", "v_w", "dense_w"):
            fill_layer(getattr(e.mha, name), rng.normal(0, 0.05, d * d), encoding)
        for name in ("q_b", "k_b", "v_b", "dense_b"):
            fill_layer(getattr(e.mha, name), rng.normal(0, 0.05, d), encoding)
        fill_layer(e.mha.smolgen.compress, rng.normal(0, 0.05, d * 4), encoding)
        fill_layer(e.ln1_gammas, rng.normal(1, 0.05, d), encoding)
        fill_layer(e.ffn.dense1_w, rng.normal(0, 0.05, d * 2 * d), encoding)
        fill_layer(e.ffn.dense2_b, rng.normal(0, 0.05, d), encoding)
    w.headcount = 4
    heads = w.policy_heads
    fill_layer(heads.ip_pol_w, rng.normal(0, 0.05, d * d), encoding)
    for key in ("vanilla", "optimistic"):
        m = heads.policy_head_map.add(key=key)
        fill_layer(m.value.ip2_pol_w, rng.normal(0, 0.05, d * d), encoding)
        fill_layer(m.value.ip3_pol_b, rng.normal(0, 0.05, d), encoding)
        enc_layer = m.value.pol_encoder.add()
        fill_layer(enc_layer.mha.q_w, rng.normal(0, 0.05, d * d), encoding)
    for key in ("winner", "q"):
        m = w.value_heads.value_head_map.add(key=key)
        fill_layer(m.value.ip_val_w, rng.normal(0, 0.05, d * 32), encoding)
        fill_layer(m.value.ip1_val_b, rng.normal(0, 0.05, 3), encoding)
    fill_layer(w.value_heads.winner.ip_val_cat_w, rng.normal(0, 0.05, 32), encoding)
    return net


def onnx_net(rng, size=20000):
    net = pb.Net(magic=0x1C0)
    net.format.network_format.network = 5
    net.onnx_model.model = b"\x08\x07" + rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    net.onnx_model.input_planes = "/input/planes"
    net.onnx_model.output_wdl = "/output/wdl"
    return net


def varint(n: int) -> bytes:
    """``n`` (not negative) as a protobuf varint, written here apart from the library's reader."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, wire: int, payload: bytes | int) -> bytes:
    """One protobuf field in wire format (varint for wire 0, else raw payload)."""
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def step(net: pb.Net, rng, size=2e-4) -> pb.Net:
    """A copy of ``net`` with every layer moved a little, re-encoded like a trainer."""
    new = pb.Net()
    new.CopyFrom(net)

    def visit(msg):
        for fd, value in msg.ListFields():
            items = value if fd.is_repeated else [value]
            if fd.type != fd.TYPE_MESSAGE:
                continue
            for item in items:
                if fd.message_type.full_name == "pblczero.Weights.Layer":
                    encoding = item.encoding if item.HasField("encoding") else enc.LINEAR16
                    codes = enc.codes(encoding, item.params)
                    values = enc.decode(encoding, codes, _bits(item.min_val), _bits(item.max_val))
                    values = values + rng.normal(0, size, len(values)).astype(np.float32)
                    fill_layer(item, values, encoding, item.HasField("encoding"))
                else:
                    visit(item)
    visit(new)
    return new


def _bits(x: float) -> int:
    return int(np.array([x], np.float32).view(np.uint32)[0])

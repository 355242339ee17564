"""lc0-scale nets for benchmarks: BT4-class, T82-class, one big layer, SWA-like runs.

Real production nets may not be redistributed and are hundreds of MB, so the
scale benchmark makes its own, at run time, into a folder given by the caller
(never committed):

* ``bt4``: attention body (embedding, 15 encoders with mha q/k/v/dense,
  smolgen, ffn, layer norms), global smolgen, multi-head attention policy
  (vanilla with its own encoder, optimistic_st, soft, opponent) and value
  heads (winner, q, st), moves left: 477 layers, 187.6M weights, the largest
  (smolgen dense2) 2.1M; 375 MB raw, 338 MB .pb.gz (lc0's BT4: 334 MB).
* ``t82``: SE-ResNet, 768 filters, the layer list of lc0weights.synthetic;
  8 blocks (94M weights, 160 MB .pb.gz: the 160-170 MB of a T82 file; 15
  blocks of 768 filters would be ~300 MB. lc0's own T82 files are named
  768x15x24h, which reads as an attention body of 15 encoders).
* ``biglayer``: a small attention net plus one 60M-weight dense layer.

Every layer is LINEAR16 over its own float32 min/max, written with lc0's real
field numbers (resolved by name through our schema of lc0's net.proto, so a
misspelt field fails loudly) and in field-number order, as lc0's Python
trainer writes them.

Values: each weight lives in a normalised space ``z`` (a Gaussian scale
mixture, heavier-tailed for convolutions) clipped to the layer's extremes,
which two weights hold exactly; values are ``mean + std * z`` (log-normal for
variances). A run's step is SWA-like: each weight has a persistent step
magnitude and a direction with strong memory (AR(1), rho 0.85, as measured on
maia-swa), the extremes drift a little, so every code of a layer can shift as
in a real run. The step size is in LINEAR16 code units, calibrated so a
lossless ``lc0weights diff`` of successive nets is ~0.4 of the .pb.gz.
Measured on maia-swa (steps 300->400->500, on the later net's grid): steps of
median |15-20| codes (rms 25-40) in the convolutions, successive steps
correlated 0.80-0.91, std/range 0.02-0.04 with kurtosis 25-50; its lossless
patches are 0.36-0.53 of the .pb.gz. Here: rms 14 codes with heavy-tailed
per-weight magnitudes gives 0.39 (BT4, scale 0.05; 0.31 with --history),
and std/range ~0.03 makes the .pb.gz ~0.91 of the raw net (lc0's BT4: 334
of 372 MB).

Memory: the nets of a run are written side by side, layer by layer, in chunks
of ``CHUNK`` weights, so the generator holds a few chunk-sized arrays and
never a whole net (peak RSS 230 MB for a BT4 pair, mostly imports). A full
BT4 pair takes ~25 s of CPU (isal gzip). Same seed and scale, same bytes.

    python tools/lc0_nets.py OUT --net bt4 --count 2 [--scale 0.05] [--seed 1]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lc0weights import encodings as enc
from lc0weights.proto import lc0net_pb2 as pb
from lc0weights.synthetic import KINDS as RESNET_KINDS
from lc0weights.synthetic import LayerSpec, architecture

CHUNK = 1 << 20
CODES = 65535.0
SWA_MEMORY = 0.85          # correlation of successive steps of a weight, maia-swa: 0.80-0.91
STEP_CODES = 14.0          # rms step of a weight per net, LINEAR16 codes (calibrated, see module doc)
EXTREME_DRIFT = 4e-4       # relative random walk of a layer's extremes per net
TRAINING_STEPS_OFFSET = 4_000_000
NETS = ("bt4", "t82", "biglayer")


@dataclass(frozen=True)
class Style:
    """How a family of layers is distributed: centre, spread, tail weight, reach.

    reach: the layer's extremes in standard deviations (sets std/range, hence
    how well gzip does); positive: log-normal values (batch-norm variances).
    """

    std: float
    mean: float = 0.0
    tail: float = 0.3
    reach: float = 16.0
    positive: bool = False


STYLES = {
    "dense": Style(std=0.02),
    "smolgen": Style(std=0.03),
    "emb": Style(std=0.05, tail=0.35),
    "bias": Style(std=0.02, tail=0.3, reach=7.0),
    "ln_gamma": Style(std=0.12, mean=1.0, tail=0.3, reach=7.0),
    "ln_beta": Style(std=0.05, tail=0.3, reach=7.0),
    "gate_mult": Style(std=0.15, mean=1.0, tail=0.2, reach=6.0),
    "gate_add": Style(std=0.08, tail=0.2, reach=6.0),
}
# The SE-ResNet kinds of lc0weights.synthetic keep their centre, spread and tails;
# heavier tails reach further (maia's convolutions: std/range ~0.03).
for _name, _k in RESNET_KINDS.items():
    STYLES[_name] = Style(std=_k.std, mean=_k.mean, tail=min(_k.tail, 0.8),
                          reach=16.0 * math.exp(0.5 * min(_k.tail, 0.8)), positive=_k.positive)


def _r8(x: float) -> int:
    return max(8, round(x / 8.0) * 8)


def _encoder(prefix: tuple, d: int, dff: int, heads: int, sg_hidden: int, sg_gen: int, sg_ch: int):
    """One EncoderLayer: mha (q/k/v/dense + smolgen), two layer norms, ffn."""
    m = prefix + ("mha",)
    s = m + ("smolgen",)
    specs = []
    for name in ("q", "k", "v"):
        specs += [LayerSpec(m + (f"{name}_w",), "dense", (d, d)), LayerSpec(m + (f"{name}_b",), "bias", (d,))]
    specs += [LayerSpec(m + ("dense_w",), "dense", (d, d)), LayerSpec(m + ("dense_b",), "bias", (d,)),
              LayerSpec(s + ("compress",), "smolgen", (sg_ch, d)),
              LayerSpec(s + ("dense1_w",), "smolgen", (sg_hidden, 64 * sg_ch)),
              LayerSpec(s + ("dense1_b",), "bias", (sg_hidden,)),
              LayerSpec(s + ("ln1_gammas",), "ln_gamma", (sg_hidden,)),
              LayerSpec(s + ("ln1_betas",), "ln_beta", (sg_hidden,)),
              LayerSpec(s + ("dense2_w",), "smolgen", (heads * sg_gen, sg_hidden)),
              LayerSpec(s + ("dense2_b",), "bias", (heads * sg_gen,)),
              LayerSpec(s + ("ln2_gammas",), "ln_gamma", (heads * sg_gen,)),
              LayerSpec(s + ("ln2_betas",), "ln_beta", (heads * sg_gen,)),
              LayerSpec(prefix + ("ln1_gammas",), "ln_gamma", (d,)),
              LayerSpec(prefix + ("ln1_betas",), "ln_beta", (d,))]
    f = prefix + ("ffn",)
    specs += [LayerSpec(f + ("dense1_w",), "dense", (dff, d)), LayerSpec(f + ("dense1_b",), "bias", (dff,)),
              LayerSpec(f + ("dense2_w",), "dense", (d, dff)), LayerSpec(f + ("dense2_b",), "bias", (d,)),
              LayerSpec(prefix + ("ln2_gammas",), "ln_gamma", (d,)),
              LayerSpec(prefix + ("ln2_betas",), "ln_beta", (d,))]
    return specs


def bt4_layers(scale: float = 1.0, encoders: int = 15) -> list[LayerSpec]:
    """A BT4-class net: widths shrink with sqrt(scale), the layer list stays the same."""
    f = math.sqrt(scale)
    d, dff, pre = _r8(1024 * f), _r8(1720 * f), _r8(2048 * f)
    heads, sg_hidden, sg_gen, sg_ch = 32, _r8(256 * f), _r8(256 * f), 32
    specs = [LayerSpec(("ip_emb_preproc_w",), "emb", (pre, 64 * 12)),
             LayerSpec(("ip_emb_preproc_b",), "bias", (pre,)),
             LayerSpec(("ip_emb_w",), "emb", (d, 112 + pre // 64)),
             LayerSpec(("ip_emb_b",), "bias", (d,)),
             LayerSpec(("ip_emb_ln_gammas",), "ln_gamma", (d,)),
             LayerSpec(("ip_emb_ln_betas",), "ln_beta", (d,)),
             LayerSpec(("ip_mult_gate",), "gate_mult", (64, d)),
             LayerSpec(("ip_add_gate",), "gate_add", (64, d)),
             LayerSpec(("ip_emb_ffn", "dense1_w"), "dense", (dff, d)),
             LayerSpec(("ip_emb_ffn", "dense1_b"), "bias", (dff,)),
             LayerSpec(("ip_emb_ffn", "dense2_w"), "dense", (d, dff)),
             LayerSpec(("ip_emb_ffn", "dense2_b"), "bias", (d,)),
             LayerSpec(("ip_emb_ffn_ln_gammas",), "ln_gamma", (d,)),
             LayerSpec(("ip_emb_ffn_ln_betas",), "ln_beta", (d,))]
    for i in range(encoders):
        specs += _encoder(("encoder", i), d, dff, heads, sg_hidden, sg_gen, sg_ch)
    specs.append(LayerSpec(("smolgen_w",), "smolgen", (64 * 64, sg_gen)))
    ph = ("policy_heads",)
    specs += [LayerSpec(ph + ("ip_pol_w",), "dense", (d, d)), LayerSpec(ph + ("ip_pol_b",), "bias", (d,))]
    for head in ("vanilla", "optimistic_st", "soft", "opponent"):
        h = ph + (head,)
        specs += [LayerSpec(h + ("ip_pol_w",), "dense", (d, d)), LayerSpec(h + ("ip_pol_b",), "bias", (d,)),
                  LayerSpec(h + ("ip2_pol_w",), "dense", (d, d)), LayerSpec(h + ("ip2_pol_b",), "bias", (d,)),
                  LayerSpec(h + ("ip3_pol_w",), "dense", (d, d)), LayerSpec(h + ("ip3_pol_b",), "bias", (d,)),
                  LayerSpec(h + ("ip4_pol_w",), "dense", (4, d))]
        if head == "vanilla":
            specs += _encoder(h + ("pol_encoder", 0), d, dff, heads, sg_hidden, sg_gen, sg_ch)
    for head in ("winner", "q", "st"):
        h = ("value_heads", head)
        specs += [LayerSpec(h + ("ip_val_w",), "dense", (32, d)), LayerSpec(h + ("ip_val_b",), "bias", (32,)),
                  LayerSpec(h + ("ip1_val_w",), "dense", (128, 64 * 32)),
                  LayerSpec(h + ("ip1_val_b",), "bias", (128,)),
                  LayerSpec(h + ("ip2_val_w",), "dense", (3 if head != "st" else 1, 128)),
                  LayerSpec(h + ("ip2_val_b",), "bias", (3 if head != "st" else 1,))]
        if head != "winner":
            specs += [LayerSpec(h + ("ip_val_err_w",), "dense", (1, 128)),
                      LayerSpec(h + ("ip_val_err_b",), "bias", (1,)),
                      LayerSpec(h + ("ip_val_cat_w",), "dense", (32, 128)),
                      LayerSpec(h + ("ip_val_cat_b",), "bias", (32,))]
    specs += [LayerSpec(("ip_mov_w",), "dense", (8, d)), LayerSpec(("ip_mov_b",), "bias", (8,)),
              LayerSpec(("ip1_mov_w",), "dense", (128, 64 * 8)), LayerSpec(("ip1_mov_b",), "bias", (128,)),
              LayerSpec(("ip2_mov_w",), "dense", (1, 128)), LayerSpec(("ip2_mov_b",), "bias", (1,))]
    return specs


T82_BLOCKS = 8     # 768 filters: 8 blocks make a 160 MB .pb.gz with these weight statistics


def t82_layers(scale: float = 1.0, blocks: int = T82_BLOCKS) -> list[LayerSpec]:
    """A T82-class SE-ResNet (768 filters at scale 1; filters shrink with sqrt(scale))."""
    return architecture(blocks, _r8(768 * math.sqrt(scale)))


def biglayer_layers(scale: float = 1.0, big: int = 60_000_000) -> list[LayerSpec]:
    """A two-encoder attention net with one dense layer of ``big * scale`` weights (ip_emb_preproc_w)."""
    specs = bt4_layers(scale * 0.01, encoders=2)
    rows = max(8, int(big * scale) // (64 * 12))
    return [LayerSpec(("ip_emb_preproc_w",), "emb", (rows, 64 * 12)) if s.path == ("ip_emb_preproc_w",) else s
            for s in specs]


def layers_for(net: str, scale: float) -> list[LayerSpec]:
    if net not in NETS:
        raise ValueError(f"unknown net {net!r}; expected one of {', '.join(NETS)}")
    return {"bt4": bt4_layers, "t82": t82_layers, "biglayer": biglayer_layers}[net](scale)


# --- the protobuf wire format, written as a stream --------------------------------------------

@dataclass(frozen=True)
class Scalar:
    """A uint32 field (head counts) in the layer tree."""

    value: int


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def layer_message_size(count: int) -> int:
    """Bytes of a LINEAR16 Weights.Layer: min_val, max_val (fixed32) and params."""
    return 5 + 5 + 1 + len(_varint(2 * count)) + 2 * count


def build_tree(specs: list[LayerSpec], scalars: dict[tuple, int] = ()) -> dict:
    """Nest layer indices (and scalar fields) by path: {"encoder": {0: {"mha": {"q_w": 7}}}}."""
    root: dict = {}
    items = [(s.path, i) for i, s in enumerate(specs)] + [(p, Scalar(v)) for p, v in dict(scalars).items()]
    for path, leaf in items:
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if path[-1] in node:
            raise ValueError(f"two layers at weights.{'.'.join(map(str, path))}")
        node[path[-1]] = leaf
    return root


def _fields(node: dict, desc):
    """(field descriptor, child) in field-number order; repeated children expanded in list order."""
    out = []
    for name, child in node.items():
        fd = desc.fields_by_name.get(name)
        if fd is None:
            raise ValueError(f"{desc.full_name} has no field {name!r} (see proto/lc0net.proto)")
        if fd.is_repeated:
            if sorted(child) != list(range(len(child))):
                raise ValueError(f"{desc.full_name}.{name}: indices must be 0..n-1")
            out += [(fd, child[i]) for i in range(len(child))]
        else:
            out.append((fd, child))
    return sorted(out, key=lambda item: item[0].number)


def message_size(node: dict, desc, specs: list[LayerSpec]) -> int:
    total = 0
    for fd, child in _fields(node, desc):
        if isinstance(child, Scalar):
            total += len(_tag(fd.number, 0)) + len(_varint(child.value))
            continue
        size = layer_message_size(specs[child].count) if isinstance(child, int) \
            else message_size(child, fd.message_type, specs)
        total += len(_tag(fd.number, 2)) + len(_varint(size)) + size
    return total


def emit(node: dict, desc, specs: list[LayerSpec], common, layer) -> None:
    """Walk the tree in wire order: ``common(bytes)`` for bytes every net shares, ``layer(i)`` per layer."""
    for fd, child in _fields(node, desc):
        if isinstance(child, Scalar):
            common(_tag(fd.number, 0) + _varint(child.value))
        elif isinstance(child, int):
            common(_tag(fd.number, 2) + _varint(layer_message_size(specs[child].count)))
            layer(child)
        else:
            common(_tag(fd.number, 2) + _varint(message_size(child, fd.message_type, specs)))
            emit(child, fd.message_type, specs, common, layer)


# --- values: one layer's trajectory through the run, a chunk at a time ------------------------

class LayerRun:
    """One layer through ``count`` nets: its extremes per net, and its codes chunk by chunk."""

    def __init__(self, spec: LayerSpec, index: int, seed: int, count: int, step_codes: float):
        self.spec, self.index, self.seed, self.count = spec, index, seed, count
        self.style = STYLES[spec.kind]
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0]))
        n, reach = spec.count, self.style.reach
        # Draws that net 0 depends on come first, so a net does not depend on the run's length.
        tilt = rng.uniform(-0.15, 0.15)
        self.extreme_at = rng.choice(n, 2, replace=False) if n >= 2 else np.array([0, 0])
        layer_pace = math.exp(0.3 * rng.standard_normal())
        lo, hi = -reach * (1 + tilt), reach * (1 - tilt)
        self.z_lo, self.z_hi = [lo], [hi]
        for _ in range(1, count):       # the extremes wander a little: every code of the layer shifts
            lo *= 1 + EXTREME_DRIFT * rng.standard_normal()
            hi *= 1 + EXTREME_DRIFT * rng.standard_normal()
            self.z_lo.append(lo)
            self.z_hi.append(hi)
        self.constant = spec.constant is not None or n < 2
        self.bounds = [self._bounds(k) for k in range(count)]
        self.sigma = step_codes * layer_pace * (self.z_hi[0] - self.z_lo[0]) / CODES

    def values(self, z: np.ndarray) -> np.ndarray:
        s = self.style
        if s.positive:
            return (s.mean * np.exp(0.3 * z)).astype(np.float32)
        return (s.mean + s.std * z).astype(np.float32)

    def _bounds(self, k: int) -> tuple[np.float32, np.float32]:
        if self.constant:
            c = np.float32(self.spec.constant if self.spec.constant is not None else self.style.mean)
            return c, c
        lo, hi = self.values(np.array([self.z_lo[k], self.z_hi[k]]))
        return lo, hi

    def header(self, k: int) -> bytes:
        """min_val, max_val and the params tag of net ``k``'s Layer message."""
        lo, hi = self.bounds[k]
        n = self.spec.count
        return (_tag(1, 5) + np.float32(lo).tobytes() + _tag(2, 5) + np.float32(hi).tobytes()
                + _tag(3, 2) + _varint(2 * n))

    def chunks(self):
        """Yield, chunk by chunk, the list of ``count`` code arrays (one per net)."""
        n, s = self.spec.count, self.style
        for c, start in enumerate(range(0, n, CHUNK)):
            size = min(CHUNK, n - start)
            if self.constant:
                yield [np.zeros(size, "<u2")] * self.count
                continue
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.index, c + 1]))
            z = rng.standard_normal(size) * np.exp(s.tail * rng.standard_normal(size) - s.tail ** 2)
            magnitude = np.exp(0.6 * rng.standard_normal(size) - 0.36)
            direction = rng.standard_normal(size)
            lo_at, hi_at = (int(p) - start for p in self.extreme_at)
            out = []
            for k in range(self.count):
                if k:
                    direction *= SWA_MEMORY
                    direction += math.sqrt(1 - SWA_MEMORY ** 2) * rng.standard_normal(size)
                    z += self.sigma * magnitude * direction
                np.clip(z, self.z_lo[k], self.z_hi[k], out=z)
                if 0 <= lo_at < size:
                    z[lo_at] = self.z_lo[k]
                if 0 <= hi_at < size:
                    z[hi_at] = self.z_hi[k]
                lo, hi = self.bounds[k]
                out.append(enc.encode_linear16(self.values(z), lo, hi).astype("<u2"))
            yield out


# --- writing a run ---------------------------------------------------------------------------

def _gzip_writer(path: Path):
    """A gzip stream as lc0 expects (no name, mtime 0); isal's igzip when installed, it is ~10x faster."""
    try:
        from isal import igzip
        return igzip.IGzipFile(filename="", mode="wb", fileobj=open(path, "wb"), compresslevel=1, mtime=0)
    except ImportError:
        import gzip
        return gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), compresslevel=6, mtime=0)


class _Outputs:
    """The ``count`` nets of a run, written side by side: gzip streams, raw sha256, temp then rename."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.tmps = [p.with_name(f".{p.name}.tmp") for p in paths]
        self.streams = [_gzip_writer(t) for t in self.tmps]
        self.hashes = [hashlib.sha256() for _ in paths]
        self.raw = [0] * len(paths)

    def write(self, k: int, data: bytes) -> None:
        self.streams[k].write(data)
        self.hashes[k].update(data)
        self.raw[k] += len(data)

    def common(self, data: bytes) -> None:
        for k in range(len(self.paths)):
            self.write(k, data)

    def close(self, ok: bool) -> None:
        for s in self.streams:
            fileobj = s.fileobj
            s.close()
            fileobj.close()
        for tmp, path in zip(self.tmps, self.paths):
            if ok:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)


def _net_header(net: str, training_steps: int) -> bytes:
    """The fields before ``weights`` (magic, min_version, format, training_params), by protobuf."""
    msg = pb.Net(magic=0x1C0)
    msg.min_version.major, msg.min_version.minor = 0, (31 if net != "t82" else 28)
    msg.format.weights_encoding = 1
    nf = msg.format.network_format
    if net == "t82":     # classical 112 planes, SE with head format, convolution policy, WDL
        nf.input, nf.output, nf.network, nf.policy, nf.value, nf.moves_left = 1, 2, 4, 2, 2, 1
    else:                # attention body, multi-head format, attention policy, WDL, mish / swish / relu^2
        nf.input, nf.output, nf.network, nf.policy, nf.value, nf.moves_left = 5, 2, 7, 3, 2, 1
        nf.default_activation, nf.smolgen_activation, nf.ffn_activation, nf.input_embedding = 1, 3, 5, 2
    msg.training_params.training_steps = training_steps
    msg.training_params.learning_rate = 2e-4
    return msg.SerializeToString()


def write_run(directory, net: str = "bt4", count: int = 2, scale: float = 1.0, seed: int = 1,
              step_codes: float = STEP_CODES, every: int = 200) -> list[dict]:
    """Write nets ``{net}-000.pb.gz ...`` (successive SWA-like nets) and ``{net}.json``; return their facts.

    Memory: a few arrays of CHUNK weights per net of the run, whatever the net's size.
    """
    if count < 1 or not 0 < scale <= 4:
        raise ValueError("need count >= 1 and 0 < scale <= 4")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs = layers_for(net, scale)
    scalars = {} if net == "t82" else {("headcount",): 32, ("policy_heads", "vanilla", "pol_headcount"): 32}
    tree = build_tree(specs, scalars)
    weights_size = message_size(tree, pb.Weights.DESCRIPTOR, specs)
    paths = [directory / f"{net}-{k:03d}.pb.gz" for k in range(count)]
    out = _Outputs(paths)
    start, ok = time.perf_counter(), False
    try:
        for k in range(count):
            out.write(k, _net_header(net, TRAINING_STEPS_OFFSET + k * every)
                      + _tag(10, 2) + _varint(weights_size))

        def layer(i: int) -> None:
            run = LayerRun(specs[i], i, seed, count, step_codes)
            for k in range(count):
                out.write(k, run.header(k))
            for codes in run.chunks():
                for k, c in enumerate(codes):
                    out.write(k, c.tobytes())

        emit(tree, pb.Weights.DESCRIPTOR, specs, out.common, layer)
        ok = True
    finally:
        out.close(ok)
    facts = [{"file": p.name, "id": h.hexdigest(), "raw_bytes": raw, "gz_bytes": p.stat().st_size,
              "training_steps": TRAINING_STEPS_OFFSET + k * every}
             for k, (p, h, raw) in enumerate(zip(paths, out.hashes, out.raw))]
    info = {"net": net, "scale": scale, "seed": seed, "count": count, "step_codes": step_codes,
            "layers": len(specs), "weights": sum(s.count for s in specs),
            "largest_layer": max(s.count for s in specs), "seconds": round(time.perf_counter() - start, 2),
            "nets": facts}
    tmp = directory / f".{net}.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, directory / f"{net}.json")
    return facts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the nets into")
    parser.add_argument("--net", choices=NETS, default="bt4")
    parser.add_argument("--count", type=int, default=2, help="successive nets of one run (default 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full weight count")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--step-codes", type=float, default=STEP_CODES,
                        help=f"rms step per net in LINEAR16 codes (default {STEP_CODES})")
    args = parser.parse_args(argv)
    try:
        write_run(args.out, args.net, args.count, args.scale, args.seed, args.step_codes)
    except (ValueError, OSError) as e:
        print(f"lc0_nets: {e}", file=sys.stderr)
        return 2
    print((args.out / f"{args.net}.json").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

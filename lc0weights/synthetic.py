"""Synthetic training runs: successive lc0 nets made here, free to ship and test.

Real nets may not be redistributed, so tests, demos and benchmarks use runs
this module writes: an SE-ResNet net (input conv, residual blocks with
batch norm and squeeze-excitation, convolution policy head, WDL value head)
saved the way the trainer saves it, then a chain of checkpoints.

The step model works at checkpoint granularity (one checkpoint = ``every``
optimizer steps) and was calibrated on a real SGD run (Nesterov momentum,
weight decay, a learning-rate drop):

* each weight has a persistent update magnitude (log-normal), so the size
  of a weight's step correlates across checkpoints (|step| correlation
  0.2-0.6 as in the real run), times a per-output-channel scale;
* the direction has a short memory (AR(1), momentum-like, slightly negative
  for convolutions where weights oscillate);
* step size follows the learning rate, with an early transient and a 10x
  drop late in the run;
* dead units (ReLU outputs that never fire, empty input planes) get no
  gradient: their weights sit near zero and only weight decay touches them
  (most of ``ip1_val_w`` never changes code);
* batch-norm running statistics drift more than the trained weights and
  keep drifting after the drop;
* weights have heavy tails, so the LINEAR16 range (each layer's float32
  min/max, re-taken every checkpoint) is set by a few outliers.

Everything is vectorised numpy, a layer at a time, so a 100 MB net takes
seconds. The same seed gives the same bytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import encodings as enc
from .durable_files import atomic_write
from .net import gzip_bytes
from .proto import lc0net_pb2

ENCODINGS = {"LINEAR16": enc.LINEAR16, "FLOAT16": enc.FLOAT16,
             "BFLOAT16": enc.BFLOAT16, "FLOAT32": enc.FLOAT32}
INPUT_PLANES = 112
POLICY_PLANES = 80
VALUE_PLANES = 32
VALUE_HIDDEN = 128
BASE_LR = 0.02
WEIGHT_DECAY = 1e-4
# The run continues a long training: step counts stay 3-byte varints, so every
# checkpoint of a run has the same length (what the XOR-upload scheme needs).
TRAINING_STEPS_OFFSET = 400_000


@dataclass(frozen=True)
class Kind:
    """How one family of layers looks and moves.

    std: weight standard deviation; mean: its centre; tail: log-normal
    scale-mixture width (0 = Gaussian, larger = heavier tails, wider range);
    channel_cv: spread of per-output-channel scales; rel: step standard
    deviation per checkpoint relative to std, late in the high-LR phase;
    magnitude_sd: spread of persistent per-weight step magnitudes;
    memory: AR(1) coefficient of step directions; positive: only positive
    values (variances).
    """

    std: float
    mean: float = 0.0
    tail: float = 0.0
    channel_cv: float = 0.0
    rel: float = 0.01
    magnitude_sd: float = 0.6
    memory: float = 0.0
    positive: bool = False
    bn_stat: bool = False


KINDS = {
    "input": Kind(std=0.031, tail=1.15, channel_cv=0.5, rel=0.022, magnitude_sd=0.7, memory=-0.15),
    "conv": Kind(std=0.032, tail=0.75, channel_cv=0.15, rel=0.021, magnitude_sd=0.6, memory=-0.1),
    "policy1": Kind(std=0.044, tail=0.85, channel_cv=0.19, rel=0.019, magnitude_sd=0.4, memory=-0.08),
    "policy": Kind(std=0.058, tail=1.0, channel_cv=0.55, rel=0.0125, magnitude_sd=0.95, memory=-0.1),
    "value": Kind(std=0.044, tail=0.45, channel_cv=0.22, rel=0.016, magnitude_sd=0.5, memory=0.15),
    "se_w1": Kind(std=0.10, tail=0.25, channel_cv=0.42, rel=0.0045, magnitude_sd=0.45, memory=0.25),
    "se_w2": Kind(std=0.08, tail=0.3, channel_cv=0.40, rel=0.0085, magnitude_sd=0.7),
    "ip1_val_w": Kind(std=0.014, tail=0.6, channel_cv=0.3, rel=0.011, magnitude_sd=0.7, memory=0.2),
    "ip2_val_w": Kind(std=0.09, tail=0.4, rel=0.0035, magnitude_sd=0.6, memory=0.5),
    "bias": Kind(std=0.08, tail=0.5, rel=0.0025, magnitude_sd=0.6),
    "se_b1": Kind(std=0.25, mean=0.4, rel=0.0025),
    "se_b2": Kind(std=0.43, mean=-0.12, rel=0.0012),
    "ip1_val_b": Kind(std=0.3, tail=0.5, rel=0.0007, magnitude_sd=0.8),
    "ip2_val_b": Kind(std=0.63, rel=0.0015),
    "bn_means": Kind(std=0.3, mean=-0.15, tail=0.3, rel=0.035, magnitude_sd=0.4, memory=-0.3, bn_stat=True),
    "bn_stddivs": Kind(std=0.25, mean=0.3, rel=0.022, magnitude_sd=0.5, memory=-0.2,
                       positive=True, bn_stat=True),
    "bn_gammas": Kind(std=0.3, mean=0.75, rel=0.002, magnitude_sd=0.5),
    "bn_betas": Kind(std=0.5, mean=-0.28, rel=0.0015, magnitude_sd=0.5),
}


@dataclass(frozen=True)
class LayerSpec:
    """A layer to generate: where it goes in ``Weights``, its kind and shape."""

    path: tuple[str, ...]      # attribute path below Weights, e.g. ("residual", 0, "conv1", "weights")
    kind: str
    shape: tuple[int, ...]     # [out, in, h, w] or [out, in] or [n]
    dead_rows: str | None = None   # which shared dead-unit mask kills rows ("value_hidden", "se3")
    dead_cols: str | None = None   # ... or columns / input channels
    constant: float | None = None  # a layer that never changes (e.g. value bn gammas)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))

    @property
    def name(self) -> str:
        return "weights." + ".".join(str(p) for p in self.path)


def _conv_block(prefix, kind, out, inp, k, bn=True, biases=False, gammas_constant=None, **dead):
    specs = [LayerSpec(prefix + ("weights",), kind, (out, inp, k, k), **dead)]
    if biases:
        specs.append(LayerSpec(prefix + ("biases",), "bias", (out,)))
    if bn:
        specs += [LayerSpec(prefix + ("bn_means",), "bn_means", (out,)),
                  LayerSpec(prefix + ("bn_stddivs",), "bn_stddivs", (out,)),
                  LayerSpec(prefix + ("bn_gammas",), "bn_gammas", (out,), constant=gammas_constant),
                  LayerSpec(prefix + ("bn_betas",), "bn_betas", (out,))]
    return specs


def architecture(blocks: int, filters: int) -> list[LayerSpec]:
    """The layers of an SE-ResNet lc0 net, in the order the file stores them."""
    se = max(1, filters // 8)
    specs = _conv_block(("input",), "input", filters, INPUT_PLANES, 3, dead_cols="input_planes")
    for b in range(blocks):
        r = ("residual", b)
        # Only the second batch norm of a block learns a scale; the others keep gamma = 1.
        specs += _conv_block(r + ("conv1",), "conv", filters, filters, 3, gammas_constant=1.0)
        specs += _conv_block(r + ("conv2",), "conv", filters, filters, 3)
        specs += [LayerSpec(r + ("se", "w1"), "se_w1", (se, filters), dead_rows=f"se{b}"),
                  LayerSpec(r + ("se", "b1"), "se_b1", (se,), dead_rows=f"se{b}"),
                  LayerSpec(r + ("se", "w2"), "se_w2", (2 * filters, se), dead_cols=f"se{b}"),
                  LayerSpec(r + ("se", "b2"), "se_b2", (2 * filters,))]
    # Field order of Weights: policy=3, value=6, ip1_val=7/8, ip2_val=9/10, policy1=11.
    specs += _conv_block(("policy",), "policy", POLICY_PLANES, filters, 3, bn=False, biases=True,
                         dead_cols="policy_in")
    specs += _conv_block(("value",), "value", VALUE_PLANES, filters, 1, gammas_constant=1.0)
    specs += [LayerSpec(("ip1_val_w",), "ip1_val_w", (VALUE_HIDDEN, VALUE_PLANES * 64),
                        dead_rows="value_hidden"),
              LayerSpec(("ip1_val_b",), "ip1_val_b", (VALUE_HIDDEN,), dead_rows="value_hidden"),
              LayerSpec(("ip2_val_w",), "ip2_val_w", (3, VALUE_HIDDEN), dead_cols="value_hidden"),
              LayerSpec(("ip2_val_b",), "ip2_val_b", (3,))]
    specs += _conv_block(("policy1",), "policy1", filters, filters, 3, gammas_constant=1.0)
    return specs


def _dead_masks(rng: np.random.Generator, blocks: int, filters: int) -> dict[str, np.ndarray]:
    """Units that never fire, shared by the layers that read or write them."""
    se = max(1, filters // 8)
    masks = {"value_hidden": rng.random(VALUE_HIDDEN) < 0.78,
             "input_planes": rng.random(INPUT_PLANES) < 0.02,
             "policy_in": rng.random(filters) < 0.2}
    for b in range(blocks):
        m = np.zeros(se, bool)
        if se >= 4:
            m[rng.integers(se)] = True       # one squeeze unit in eight is dead in the real net
        masks[f"se{b}"] = m
    return masks


def _dead_elements(spec: LayerSpec, masks) -> np.ndarray | None:
    shape = spec.shape
    if spec.dead_rows:
        rows = masks[spec.dead_rows]
        return np.broadcast_to(rows.reshape((-1,) + (1,) * (len(shape) - 1)), shape).ravel()
    if spec.dead_cols:
        cols = masks[spec.dead_cols]
        full = cols.reshape((1, -1) + (1,) * (len(shape) - 2))
        return np.broadcast_to(full, shape).ravel()
    return None


def learning_rate_factor(pair: int, lr_drop_pair: int | None) -> float:
    """Step size of checkpoint interval ``pair`` relative to the settled high-LR phase."""
    transient = 1.0 + 1.2 * np.exp(-pair / 2.5)
    drop = 1.0
    if lr_drop_pair is not None and pair >= lr_drop_pair:
        # Right after the drop the momentum buffer still carries high-LR velocity.
        drop = 0.14 if pair == lr_drop_pair else 0.1
    return float(transient * drop)


class _LayerTrajectory:
    """One layer's weights through the run, a checkpoint at a time."""

    def __init__(self, spec: LayerSpec, rng: np.random.Generator, dead: np.ndarray | None):
        self.spec, self.rng = spec, rng
        kind = KINDS[spec.kind]
        self.kind = kind
        n = spec.count
        out = spec.shape[0] if len(spec.shape) > 1 else 1
        per_channel = n // out
        channel = np.exp(kind.channel_cv * rng.standard_normal(out)) if kind.channel_cv else np.ones(out)
        self.channel = np.repeat(channel / np.sqrt(np.mean(channel ** 2)), per_channel)
        if spec.constant is not None:
            self.w = np.full(n, spec.constant)
            self.magnitude = np.zeros(n)
        else:
            z = rng.standard_normal(n) * np.exp(kind.tail * rng.standard_normal(n))
            z *= self.channel / max(z.std(), 1e-12)
            if kind.positive:   # variances: log-normal around the mean
                self.w = kind.mean * np.exp(0.8 * z - 0.32)
            else:
                self.w = kind.mean + kind.std * z
            self.magnitude = np.exp(kind.magnitude_sd * rng.standard_normal(n) - kind.magnitude_sd ** 2)
            self.magnitude *= self.channel
        self.direction = rng.standard_normal(n)
        self.dead = dead
        if dead is not None and dead.any():
            # Dead units decayed to (nearly) one tiny value long ago and never get a gradient:
            # they share one LINEAR16 code, and keep sharing one as the grid moves.
            step = (self.w.max() - self.w.min()) / 65535.0
            k = int(dead.sum())
            self.w[dead] = -0.45 * step * (1.0 + 0.05 * rng.standard_normal(k))
            stragglers = rng.random(k) < 0.15      # a few kept a small non-zero value
            self.w[np.flatnonzero(dead)[stragglers]] = 3.0 * step * rng.standard_normal(int(stragglers.sum()))
            self.magnitude[dead] = 0.0
        self.step_scale = kind.rel * (kind.std if not kind.positive else kind.mean)
        self.step_scale /= max(np.sqrt(np.mean(self.magnitude ** 2)), 1e-12)

    def advance(self, lr_factor: float, every: int) -> None:
        kind, rng = self.kind, self.rng
        if self.spec.constant is not None:
            return
        fresh = rng.standard_normal(self.w.size)
        self.direction = kind.memory * self.direction + np.sqrt(1 - kind.memory ** 2) * fresh
        if kind.bn_stat:
            # Running statistics follow the batches: part of their drift does not shrink with the LR.
            lr_factor = 0.1 + 0.9 * lr_factor
        step = lr_factor * self.step_scale * self.magnitude * self.direction
        if kind.positive:
            self.w = self.w * np.exp(step / kind.mean)
        else:
            decay = 1.0 - BASE_LR * lr_factor * WEIGHT_DECAY * every
            self.w = self.w * decay + step

    def values(self) -> np.ndarray:
        return self.w.astype(np.float32)


def encode_layer(values: np.ndarray, encoding: int) -> tuple[float | None, float | None, bytes]:
    """``(min_val, max_val, params)`` of float32 values as the trainer writes them."""
    if encoding == enc.LINEAR16:
        lo, hi = np.float32(values.min()), np.float32(values.max())
        return float(lo), float(hi), enc.to_bytes(enc.LINEAR16, enc.encode_linear16(values, float(lo), float(hi)))
    return None, None, enc.to_bytes(encoding, enc.encode_float(encoding, values))


def _layer_message(weights_msg, path):
    msg = weights_msg
    for part in path:
        if isinstance(part, int):
            while len(msg) <= part:      # msg is a repeated field here
                msg.add()
            msg = msg[part]
        else:
            msg = getattr(msg, part)
    return msg


def _net_bytes(specs, layer_payloads, encoding: int, training_steps: int, lr: float) -> bytes:
    net = lc0net_pb2.Net()
    net.magic = 0x1C0
    if encoding == enc.LINEAR16:
        net.min_version.major, net.min_version.minor, net.min_version.patch = 0, 21, 0
    else:   # per-layer float encodings load only in engine v0.33+
        net.min_version.major, net.min_version.minor, net.min_version.patch = 0, 33, 0
    net.format.weights_encoding = 1
    nf = net.format.network_format
    nf.input, nf.output, nf.network, nf.policy, nf.value = 1, 2, 4, 2, 2
    net.training_params.training_steps = training_steps
    net.training_params.learning_rate = lr
    for spec, (lo, hi, params) in zip(specs, layer_payloads):
        msg = _layer_message(net.weights, spec.path)
        if lo is not None:
            msg.min_val, msg.max_val = lo, hi
        else:
            msg.encoding = encoding
        msg.params = params
    return net.SerializeToString()


def generate(count: int = 8, blocks: int = 6, filters: int = 64, seed: int = 1,
             encoding: str = "LINEAR16", every: int = 100, lr_drop_at: int | None = -1,
             start_step: int = 0):
    """Yield ``(training_step, raw_net_bytes)`` for each checkpoint of a synthetic run.

    ``lr_drop_at``: training step from which the learning rate is 10x lower;
    -1 (default) puts it three quarters of the way through, None never drops.
    Memory: one net's float state plus one net's bytes per checkpoint kept.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {sorted(ENCODINGS)}")
    if count < 1 or blocks < 0 or filters < 8:
        raise ValueError("need count >= 1, blocks >= 0, filters >= 8")
    enc_id = ENCODINGS[encoding]
    if lr_drop_at == -1:
        lr_drop_at = start_step + every * max(1, (3 * (count - 1)) // 4) if count > 2 else None
    drop_pair = None if lr_drop_at is None else (lr_drop_at - start_step) // every
    specs = architecture(blocks, filters)
    root = np.random.SeedSequence(seed)
    mask_seed, *layer_seeds = root.spawn(len(specs) + 1)
    masks = _dead_masks(np.random.default_rng(mask_seed), blocks, filters)
    # Layers are independent: simulate each layer's whole trajectory and keep only its encoded
    # payload per checkpoint, so float state is one layer and the rest is one net per checkpoint.
    per_checkpoint = [[None] * len(specs) for _ in range(count)]
    for i, (spec, s) in enumerate(zip(specs, layer_seeds)):
        traj = _LayerTrajectory(spec, np.random.default_rng(s), _dead_elements(spec, masks))
        for t in range(count):
            if t:
                traj.advance(learning_rate_factor(t - 1, drop_pair), every)
            per_checkpoint[t][i] = encode_layer(traj.values(), enc_id)
    for t in range(count):
        lr = BASE_LR * (0.1 if drop_pair is not None and t > drop_pair else 1.0)
        raw = _net_bytes(specs, per_checkpoint[t], enc_id, TRAINING_STEPS_OFFSET + start_step + t * every, lr)
        per_checkpoint[t] = None
        yield start_step + t * every, raw


def write_run(directory, count: int = 8, blocks: int = 6, filters: int = 64, seed: int = 1,
              encoding: str = "LINEAR16", *, every: int = 100, lr_drop_at: int | None = -1) -> list[Path]:
    """Write a synthetic run ``step-000000.pb.gz ...`` plus ``run_info.json``; return the net paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    if lr_drop_at == -1:
        lr_drop_at = every * max(1, (3 * (count - 1)) // 4) if count > 2 else None
    for step, raw in generate(count, blocks, filters, seed, encoding, every, lr_drop_at):
        path = directory / f"step-{step:06d}.pb.gz"
        atomic_write(path, gzip_bytes(raw))
        paths.append(path)
    info = {"synthetic": True, "generator": "lc0weights.synthetic", "seed": seed,
            "blocks": blocks, "filters": filters, "encoding": encoding, "every": every,
            "steps": (count - 1) * every, "lr": BASE_LR, "lr_drop_at": lr_drop_at,
            "lr_after_drop": BASE_LR / 10 if lr_drop_at is not None else None,
            "weight_decay": WEIGHT_DECAY, "checkpoints": [p.name for p in paths]}
    atomic_write(directory / "run_info.json", (json.dumps(info, indent=1) + "\n").encode())
    return paths

"""Making and applying patches: one net into another, a layer at a time.

``make_patch(base, target)`` codes the target against the base: the target's
bytes without layer payloads (the *skeleton*) coded against the base's
skeleton, then every layer's residuals with the smallest codec. ``apply_patch``
runs the same steps backwards and checks the rebuilt bytes against the id the
patch promises. Both work one layer at a time, in parallel across layers,
holding at most the nets and a few layers' working arrays.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import brotli
import numpy as np

from . import container
from . import encodings as enc
from . import residuals as res
from .codecs import LayerInfo, codec_ids, get_codec
from .codecs.varint_brotli import decompress_limited, leb128
from .errors import (Lc0WeightsError, MissingHistoryError, NetFormatError, PatchFormatError,
                     VerificationError, WrongBaseError)
from .net import DEFAULT_MAX_SIZE, GZIP_LEVEL, Layer, Net, atomic_file
from .proto import patch_pb2
from .wire import find_skeleton_layers, read_varint

WRITER = "lc0weights 0.1"
MAX_RESULT_SIZE = 16 << 30
# Plausibility bounds on what a patch declares, checked before memory is committed
# (docs/FORMAT.md, "Limits"). Real skeletons take about 20 bytes and 6 fields per
# layer (1,960 bytes for the 105 layers of a 1.7 MB maia net): a megabyte is 500
# times that. A base with a larger skeleton (an ONNX net is all skeleton) allows
# up to twice its own.
SKELETON_CAP = 1 << 20
MAX_SKELETON_FIELDS = 1 << 20
# A layer coded against no base layer decodes to at most this many values per
# stored byte (plus a small allowance for the whole patch). Real intra layers
# reach 13 (a 64-element layer of ones in 5 bytes); the writer never goes past it.
INTRA_VALUES_PER_BYTE = 64
INTRA_ALLOWANCE = 1 << 20
MAX_CODEC_CONFIG = 4096
UNDECODABLE = "patch could not be decoded"
DEFAULT_CODECS = ("varint-brotli", "cm1", "stored")
# With a history net the context model predicts each step from the last one (cm2);
# without one cm2 writes cm1's bytes, so cm1 is named and older readers still read it.
HISTORY_CODECS = ("varint-brotli", "cm2", "stored")
# The context model wins on every sizeable layer of real runs; the baseline is
# tried beside it only where it is cheap to try (small layers).
BASELINE_TRIAL_LIMIT = 1 << 14


# -- skeleton: the net's bytes with every layer payload cut out ----------------------

def skeleton_stream(net: Net) -> bytes:
    """Cut count, cut offsets (varint deltas), then the bytes between payloads."""
    cuts, pieces, pos, removed = [], [], 0, 0
    for layer in net.layers:
        if not layer.has_params:
            continue
        s, e = layer.span.params_start, layer.span.params_end
        pieces.append(net.raw[pos:s])
        cuts.append(s - removed)
        removed += e - s
        pos = e
    pieces.append(net.raw[pos:])
    deltas = np.diff(np.array(cuts, np.int64), prepend=0).astype(np.uint64)
    return leb128(np.array([len(cuts)], np.uint64)) + leb128(deltas) + b"".join(pieces)


def _xor(a: bytes, b: bytes) -> bytes:
    return (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()


def encode_skeleton(stream: bytes, base_stream: bytes | None) -> tuple[str, bytes]:
    options = [("brotli", brotli.compress(stream, quality=11))]
    if base_stream is not None and len(base_stream) == len(stream):
        options.append(("brotli-xor-base", brotli.compress(_xor(stream, base_stream), quality=11)))
    return min(options, key=lambda o: len(o[1]))


def skeleton_limit(base_stream) -> int:
    """The largest skeleton a patch may declare, given the base's skeleton stream."""
    return SKELETON_CAP + 2 * (len(base_stream) if base_stream is not None else 0)


def decode_skeleton(section: patch_pb2.Section, data, size: int, base_stream,
                    layers: int | None = None) -> tuple[list[int], memoryview]:
    """The cut offsets and the skeleton bytes; ``layers``, if given, is the cut count to expect."""
    if section.codec not in ("brotli", "brotli-xor-base"):
        raise PatchFormatError(f"unknown skeleton codec {section.codec!r}")
    if size > skeleton_limit(base_stream):
        raise PatchFormatError(f"skeleton of {size:,} bytes declared, more than any net has")
    stream = decompress_limited(data, size)
    if len(stream) != size:
        raise PatchFormatError("skeleton is shorter than declared")
    if section.codec == "brotli-xor-base":
        if base_stream is None or len(base_stream) != size:
            raise PatchFormatError("skeleton is coded against a base skeleton of another size")
        stream = _xor(stream, base_stream)
    view = memoryview(stream)
    try:
        n, pos = read_varint(view, 0, len(view))
        if n > size or (layers is not None and n != layers):
            raise PatchFormatError("skeleton declares another number of cuts than the header has layers")
        cuts, at = [], 0
        for _ in range(n):
            delta, pos = read_varint(view, pos, len(view))
            at += delta
            cuts.append(at)
    except NetFormatError as e:
        raise PatchFormatError(f"corrupt skeleton ({e})") from None
    body = view[pos:]
    if cuts and cuts[-1] > len(body):
        raise PatchFormatError("skeleton cut offset past its end")
    return cuts, body


# -- layer pairing and codec context ----------------------------------------------------

def _pair(base: Net | None, layer: Layer) -> Layer | None:
    """The base layer a target layer is coded against: same path, count and encoding."""
    if base is None or not layer.codable:
        return None
    for candidate in base._by_path().get(layer.path, ()):
        if candidate.codable and candidate.count == layer.count and candidate.encoding == layer.encoding:
            return candidate
    return None


def infer_shape(path: str, count: int, counts: dict[str, int], dims=()) -> tuple:
    """(out, in, h, w) for convolutions, (out, in) for dense layers, else (count,).

    lc0 files rarely carry dims; the output width is read off the layer's bias
    or batch-norm sibling instead.
    """
    if dims and int(np.prod(dims)) == count:
        return tuple(int(d) for d in dims)
    stem, _, leaf = path.rpartition(".")
    if leaf == "weights":
        sibling = counts.get(f"{stem}.biases") or counts.get(f"{stem}.bn_means") or counts.get(f"{stem}.bn_betas")
        if sibling and count % sibling == 0:
            rest = count // sibling
            return (sibling, rest // 9, 3, 3) if rest % 9 == 0 else (sibling, rest, 1, 1)
    elif leaf.endswith("_w") or leaf in ("w1", "w2"):
        bias = leaf[:-2] + "_b" if leaf.endswith("_w") else "b" + leaf[1:]
        out = counts.get(f"{stem}.{bias}" if stem else bias)
        if out and count % out == 0:
            return (out, count // out)
    return (count,)


@dataclass
class _Context:
    """Everything both sides derive from the base, history and skeleton alike."""

    base: Net | None
    history: Net | None
    counts: dict[str, int] = field(default_factory=dict)
    tolerance: float = 0.0

    def base_layer(self, layer: Layer, lp) -> Layer | None:
        if lp.intra or lp.residual == patch_pb2.RAW_BYTES:
            return None
        index = layer.index + lp.base_shift
        if self.base is None or not 0 <= index < len(self.base.layers):
            raise PatchFormatError(f"layer {layer.path}: base layer {index} does not exist")
        found = self.base.layers[index]
        if not found.codable or found.encoding != layer.encoding or found.count != layer.count:
            raise PatchFormatError(f"layer {layer.path}: base layer {index} does not match")
        return found

    def info(self, layer: Layer, lp, base_layer: Layer | None) -> LayerInfo:
        base_values = self.base.values(base_layer) if base_layer is not None else None
        history = None
        if base_layer is not None and self.history is not None:
            h = _pair(self.history, base_layer)
            if h is not None:
                with np.errstate(invalid="ignore", over="ignore"):
                    history = base_values - self.history.values(h)
        count = layer.count if lp.residual != patch_pb2.RAW_BYTES else layer.nbytes
        return LayerInfo(path=layer.path, role=layer.role, residual=lp.residual, encoding=layer.encoding,
                         count=count, dims=layer.dims,
                         shape=infer_shape(layer.path, count, self.counts, layer.dims),
                         quant_width=lp.quant_width or 1, tolerance=self.tolerance,
                         base=base_values, history=history, scale=_scale(layer, lp, self.tolerance))


def _scale(layer: Layer, lp, tolerance: float) -> float:
    """The value of one residual unit, as the rebuild side can compute it."""
    if lp.residual == patch_pb2.LINEAR16_REGRID:
        lo, hi = float(enc.f32(layer.min_bits)), float(enc.f32(layer.max_bits))
        return (hi - lo) / 65535.0 * (lp.quant_width or 1)
    if lp.residual == patch_pb2.FLOAT_STEP:
        return 2.0 * tolerance
    return 0.0


def _target_of(layer: Layer) -> res.LayerTarget:
    return res.LayerTarget(layer.encoding, layer.count, layer.min_bits, layer.max_bits)


def _value_count(layer: Layer, lp) -> int:
    """How many integers a layer's section holds: elements, then escape pairs."""
    if lp.residual == patch_pb2.RAW_BYTES:
        return layer.nbytes
    return layer.count + 2 * lp.escapes


# -- encoding one layer ----------------------------------------------------------------

def _candidates(target: Net, layer: Layer, base: Net | None, base_layer, tolerance):
    if not layer.codable:
        return [res.raw_residuals(target.payload(layer))]
    codes = target.codes(layer)
    lt = _target_of(layer)
    if layer.encoding == enc.LINEAR16:
        base_values = base.values(base_layer) if base_layer is not None else None
        return [res.linear16_residuals(codes, base_values, lt, tolerance)]
    base_codes = base.codes(base_layer) if base_layer is not None else None
    options = [res.float_image_residuals(codes, base_codes, lt)]
    if tolerance:
        options.append(res.float_step_residuals(codes, base_codes, lt, tolerance))
    return options


def _encode_layer(job):
    ctx, target, layer, codecs = job
    base_layer = _pair(ctx.base, layer)
    best = None
    for r in _candidates(target, layer, ctx.base, base_layer, ctx.tolerance):
        paired = base_layer is not None and r.kind != patch_pb2.RAW_BYTES
        lp = patch_pb2.LayerPatch(intra=not paired, residual=r.kind, escapes=r.escapes,
                                  base_shift=base_layer.index - layer.index if paired else 0,
                                  quant_width=r.quant_width if r.quant_width > 1 else 0)
        info = ctx.info(layer, lp, base_layer if paired else None)
        trials, fits = list(_trials(codecs, len(r.values))), False
        while trials:
            codec_id = trials.pop(0)
            codec = get_codec(codec_id)
            data = codec.encode(r.values, info)
            if not paired and len(r.values) > INTRA_VALUES_PER_BYTE * len(data):
                if not trials and not fits:
                    trials.append("stored")   # readers refuse denser intra layers; stored always fits
                continue
            fits = True
            if best is None or len(data) < len(best[1]):
                lp.section.CopyFrom(patch_pb2.Section(codec=codec_id, stored_size=len(data),
                                                      codec_config=_config_bytes(codec)))
                chosen = patch_pb2.LayerPatch()
                chosen.CopyFrom(lp)
                best = (chosen, data, r.codes)
    return best


def _trials(codecs: tuple, count: int) -> tuple:
    """The codecs to try on a layer of ``count`` values (all of them when forced)."""
    if len(codecs) > 1 and {"cm1", "cm2"} & set(codecs) and count > BASELINE_TRIAL_LIMIT:
        return tuple(c for c in codecs if c != "varint-brotli")
    return codecs


def _config_bytes(codec) -> bytes:
    config = {k: v for k, v in codec.get_config().items() if k != "id"}
    return json.dumps(config, sort_keys=True).encode() if config else b""


def _bounded_map(fn, items, workers: int, cost=None):
    """Like map, in order, in ``workers`` threads, with bounded results in flight.

    ``cost(item)`` (default 1) is what an item holds in memory (its element
    count); work is submitted while what is in flight costs at most two of the
    largest items per worker, so small layers never stall the big ones and
    memory stays a few layers' worth whatever the net's size. Nor more than a
    quarter of all items (or the largest one): on a machine with many cores the
    working arrays stay a small multiple of the net, not of the core count.
    """
    items = list(items)
    if workers <= 1:
        yield from map(fn, items)
        return
    costs = [max(1, cost(item)) if cost else 1 for item in items]
    largest = max(costs, default=1)
    budget = min(2 * workers * largest, max(largest, sum(costs) // 4))
    with ThreadPoolExecutor(workers) as pool:
        pending, in_flight = [], 0
        for item, c in zip(items, costs):
            while pending and in_flight + c > budget:
                done, dc = pending.pop(0)
                in_flight -= dc
                yield done.result()
            pending.append((pool.submit(fn, item), c))
            in_flight += c
        for done, _ in pending:
            yield done.result()


def _workers(workers: int | None) -> int:
    return max(1, workers if workers else (os.cpu_count() or 1))


def make_patch(base: Net | None, target: Net, tolerance: float | None = None, *,
               codec: str | None = None, history: Net | None = None,
               workers: int | None = None, verify: bool = True, progress=None) -> bytes:
    """A patch that rebuilds ``target`` from ``base`` (``None``: an intra patch).

    ``tolerance``: every rebuilt weight is within this absolute distance of the
    target's (the engine's decoding); ``None`` makes the rebuild byte-exact.
    ``codec`` forces one registered codec for every layer (default: the
    smallest per layer). ``history`` is the base's predecessor, used as
    context; a client then needs it too. With ``verify`` the patch is applied
    once before it is returned, and a lossy patch is checked weight by weight.
    ``progress``, if given, wraps the iterator of encoded layers as
    ``progress(layers, layer_count)`` (in a progress bar, say).
    """
    if tolerance is not None and not (tolerance > 0 and np.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a positive number, not {tolerance!r}")
    if history is not None and base is None:
        history = None
    defaults = DEFAULT_CODECS if history is None else HISTORY_CODECS
    codecs = (codec,) if codec else tuple(c for c in defaults if c in codec_ids())
    for c in codecs:
        get_codec(c)
    ctx = _Context(base, history, {l.path: l.count for l in target.layers if l.codable},
                   float(tolerance or 0.0))
    header = patch_pb2.PatchHeader(
        base_id=bytes.fromhex(base.id) if base is not None else b"",
        target_id=bytes.fromhex(target.id),
        mode=patch_pb2.TOLERANCE if tolerance else patch_pb2.LOSSLESS,
        tolerance=float(tolerance or 0.0), writer=WRITER,
        history_id=bytes.fromhex(history.id) if history is not None else b"")
    stream = skeleton_stream(target)
    base_stream = skeleton_stream(base) if base is not None else None
    if len(stream) > skeleton_limit(base_stream):
        raise PatchFormatError(f"the target's skeleton of {len(stream):,} bytes is larger than "
                               f"readers accept ({skeleton_limit(base_stream):,})")
    skeleton_codec, skeleton_data = encode_skeleton(stream, base_stream)
    header.skeleton.CopyFrom(patch_pb2.Section(codec=skeleton_codec, stored_size=len(skeleton_data)))
    header.skeleton_size = len(stream)

    jobs = [(ctx, target, layer, codecs) for layer in target.layers if layer.has_params]
    sections, result = [skeleton_data], hashlib.sha256()
    lossless, pos = tolerance is None, 0
    encoded = _bounded_map(_encode_layer, jobs, _workers(workers), lambda job: job[2].nbytes)
    if progress:
        encoded = progress(encoded, len(jobs))
    for layer, (lp, data, codes) in zip((j[2] for j in jobs), encoded):
        header.layers.append(lp)
        sections.append(data)
        if not lossless:
            result.update(target.raw[pos:layer.span.params_start])
            result.update(codes.tobytes())
            pos = layer.span.params_end
    if not lossless:                      # lossless: the result is the target itself
        result.update(target.raw[pos:])
        header.result_id = result.digest()
    header.result_size = len(target.raw)
    patch = container.pack(header, sections)
    if verify:
        rebuilt = apply_patch(base, patch, history=history, workers=workers)
        if not lossless:
            error = max_error(Net(rebuilt), target)
            if not error <= tolerance:
                raise VerificationError(f"internal error: rebuilt weights are {error} from the "
                                        f"target, over the tolerance {tolerance}")
    return patch


# -- applying ---------------------------------------------------------------------------

@dataclass
class PatchInfo:
    base_id: str | None
    target_id: str
    result_id: str
    history_id: str | None
    mode: str
    tolerance: float | None
    result_size: int
    patch_size: int
    layers: list[dict]


def _hex(b: bytes) -> str | None:
    return b.hex() if b else None


@contextlib.contextmanager
def _hostile_input():
    """Turn any other failure on patch data into a PatchFormatError.

    Every check the format needs raises Lc0WeightsError itself; this is the
    backstop that keeps a decoder bug on a hostile patch from escaping as a
    built-in exception, so a caller that falls back on Lc0WeightsError (the
    fetch client) always can. The message says it was not a known check.
    """
    try:
        yield
    except Lc0WeightsError:
        raise
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError, MemoryError,
            struct.error) as e:
        raise PatchFormatError(f"{UNDECODABLE} ({type(e).__name__}: {str(e)[:200]})") from None


def _check_patch_argument(patch) -> None:
    if not isinstance(patch, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(f"a patch is bytes or a file path, not {type(patch).__name__}")


def read_patch_info(patch, base: Net | None = None, *, max_size: int | None = None) -> PatchInfo:
    """The header of a patch (bytes or a file path), after the checks ``apply`` runs.

    Every declared size is checked as :func:`apply_patch` checks it, so a
    patch that inspects cleanly decodes in bounded memory. Checks against the
    base run when ``base`` is the patch's base. Layer paths come from the
    skeleton, readable without the base for an intra patch and with it
    otherwise; without it they are None.
    """
    _check_patch_argument(patch)
    with _hostile_input(), container.open_patch(patch) as source:
        header = source.header
        usable = base if base is not None and base.id == header.base_id.hex() else None
        plan = _plan(source, usable, None, max_size, complete=False)
        paths = [layer.path for layer in plan.layers] if plan.layers else [None] * len(header.layers)
        layers = [{"path": path, "codec": lp.section.codec, "stored_size": lp.section.stored_size,
                   "residual": patch_pb2.Residual.Name(lp.residual), "intra": lp.intra,
                   "base_shift": lp.base_shift, "escapes": lp.escapes}
                  for path, lp in zip(paths, header.layers)]
        return PatchInfo(_hex(header.base_id), header.target_id.hex(), _result_id(header).hex(),
                         _hex(header.history_id),
                         "tolerance" if header.mode == patch_pb2.TOLERANCE else "lossless",
                         header.tolerance if header.mode == patch_pb2.TOLERANCE else None,
                         header.result_size, source.size, layers)


def _result_id(header) -> bytes:
    return header.result_id or header.target_id


def _check_header_fields(header) -> None:
    """What a header must hold whatever the base: ids, mode and tolerance."""
    for name, value in (("base_id", header.base_id), ("target_id", header.target_id),
                        ("result_id", header.result_id), ("history_id", header.history_id)):
        if value and len(value) != 32 or (name == "target_id" and not value):
            raise PatchFormatError(f"patch header field {name} is not a sha256")
    if header.mode not in (patch_pb2.LOSSLESS, patch_pb2.TOLERANCE):
        raise PatchFormatError(f"unknown patch mode {header.mode}")
    if header.mode == patch_pb2.TOLERANCE and not header.result_id:
        raise PatchFormatError("tolerance patch without the id of its result")
    if header.mode == patch_pb2.TOLERANCE and not (header.tolerance > 0 and np.isfinite(header.tolerance)):
        raise PatchFormatError("tolerance patch without a positive tolerance")
    known = set(patch_pb2.Residual.values())
    for lp in header.layers:
        if lp.residual not in known:
            raise PatchFormatError(f"unknown residual kind {lp.residual}")


def _check_ids(header, base: Net | None, history: Net | None):
    if header.base_id:
        if base is None:
            raise WrongBaseError(f"this patch needs base net {header.base_id.hex()}; none was given")
        if base.id != header.base_id.hex():
            raise WrongBaseError(f"this patch is for base net {header.base_id.hex()[:16]}..., "
                                 f"not {base.id[:16]}...")
    if header.history_id and (history is None or history.id != header.history_id.hex()):
        raise MissingHistoryError(f"this patch also needs net {header.history_id.hex()} "
                                  "(the base's predecessor) as context")


def _decode_layer(job):
    ctx, layer, lp, base_layer, codec, data = job
    try:
        info = ctx.info(layer, lp, base_layer)
        count = _value_count(layer, lp)
        values = codec.decode(bytes(data), count, info)
        if len(values) != count:
            raise PatchFormatError("codec returned the wrong number of values")
        target = _target_of(layer)
        if lp.residual == patch_pb2.RAW_BYTES:
            codes = res.raw_rebuild(values, layer.nbytes)
        elif lp.residual == patch_pb2.LINEAR16_REGRID:
            codes = res.linear16_rebuild(values, info.base, target, lp.quant_width or 1, lp.escapes)
        else:
            base_codes = ctx.base.codes(base_layer) if base_layer is not None else None
            if lp.residual == patch_pb2.FLOAT_IMAGE:
                codes = res.float_image_rebuild(values, base_codes, target)
            else:
                codes = res.float_step_rebuild(values, base_codes, target, ctx.tolerance, lp.escapes)
        return codes.tobytes()
    except PatchFormatError as e:
        raise PatchFormatError(f"layer {layer.path}: {e}") from None


def _config(section) -> dict:
    """A section's codec parameters: a small, flat JSON object."""
    if not section.codec_config:
        return {}
    if len(section.codec_config) > MAX_CODEC_CONFIG:
        raise PatchFormatError(f"codec configuration of {len(section.codec_config):,} bytes")
    try:
        config = json.loads(section.codec_config)
    except (ValueError, RecursionError):
        raise PatchFormatError("unreadable codec configuration") from None
    if not isinstance(config, dict):
        raise PatchFormatError("unreadable codec configuration")
    return config


_RESIDUALS_FOR = {enc.LINEAR16: (patch_pb2.LINEAR16_REGRID,),
                  enc.FLOAT16: (patch_pb2.FLOAT_IMAGE, patch_pb2.FLOAT_STEP),
                  enc.BFLOAT16: (patch_pb2.FLOAT_IMAGE, patch_pb2.FLOAT_STEP),
                  enc.FLOAT32: (patch_pb2.FLOAT_IMAGE, patch_pb2.FLOAT_STEP)}


def _check_layer_header(layer: Layer, lp, tolerance: float) -> None:
    """The residual kind must suit the layer the skeleton describes."""
    if lp.residual == patch_pb2.RAW_BYTES:
        if lp.escapes:
            raise PatchFormatError(f"layer {layer.path}: escapes in a raw byte layer")
        return
    if not layer.codable or lp.residual not in _RESIDUALS_FOR.get(layer.encoding, ()):
        raise PatchFormatError(f"layer {layer.path}: residual kind {lp.residual} does not suit "
                               f"encoding {layer.encoding} of {layer.nbytes} bytes")
    if lp.residual == patch_pb2.FLOAT_STEP and not tolerance > 0:
        raise PatchFormatError(f"layer {layer.path}: value steps in a lossless patch")
    if lp.escapes > layer.count:
        raise PatchFormatError(f"layer {layer.path}: more escapes than elements")
    if lp.escapes and lp.residual == patch_pb2.FLOAT_IMAGE:
        raise PatchFormatError(f"layer {layer.path}: escapes in an exact float layer")
    if lp.quant_width > res.MAX_QUANT_WIDTH:
        raise PatchFormatError(f"layer {layer.path}: quantisation width {lp.quant_width} out of range")


def skeleton_layers(body, cuts) -> list[Layer]:
    """The target's layers as the skeleton describes them (payloads cut out)."""
    try:
        spans = find_skeleton_layers(body, cuts, MAX_SKELETON_FIELDS)
    except NetFormatError as e:
        raise PatchFormatError(f"corrupt skeleton ({e})") from None
    return [Layer(i, s.path, s, enc.effective(s.encoding)) for i, s in enumerate(spans)]


@dataclass
class _Plan:
    """A patch checked against its declared sizes, ready to decode layer by layer."""

    header: patch_pb2.PatchHeader
    ctx: _Context | None = None
    cuts: list[int] = field(default_factory=list)
    body: memoryview | None = None
    layers: list[Layer] = field(default_factory=list)     # layers with a payload, in header order
    base_layers: list = field(default_factory=list)      # each one's paired base layer, or None
    codecs: list = field(default_factory=list)


def _plan(source: container.PatchSource, base: Net | None, history: Net | None,
          max_size: int | None, complete: bool = True) -> _Plan:
    """Check every size the patch declares before anything is allocated from it.

    The result size against ``max_size``; the skeleton against a cap and the
    base's; each layer's payload against its base layer (delta layers, whose
    bytes together cannot exceed the base's) or against its section's stored
    bytes (intra layers); see docs/FORMAT.md, "Limits". With ``complete``
    false (inspecting without the base), what needs the base is skipped.
    """
    header = source.header
    _check_header_fields(header)
    if complete:
        _check_ids(header, base, history)
    if not header.base_id:
        base = None
    if not header.history_id:
        history = None
    limit = min(MAX_RESULT_SIZE, DEFAULT_MAX_SIZE if max_size is None else max_size)
    if header.result_size > limit:
        raise PatchFormatError(f"the patch rebuilds a net of {header.result_size:,} bytes, "
                               f"more than the {limit:,} allowed")
    if header.skeleton_size > header.result_size + 16 + 10 * len(header.layers):
        raise PatchFormatError("declared skeleton is larger than the declared net")
    plan = _Plan(header)
    plan.codecs = [get_codec(lp.section.codec, _config(lp.section)) for lp in header.layers]
    if header.base_id and base is None:
        if header.skeleton.codec == "brotli-xor-base":
            return plan                    # the skeleton cannot be read without the base
        base_stream = None
    else:
        base_stream = skeleton_stream(base) if base is not None else None
    cuts, body = decode_skeleton(header.skeleton, source.section(0), header.skeleton_size,
                                 base_stream, len(header.layers))
    layers = [layer for layer in skeleton_layers(body, cuts) if layer.has_params]
    if len(layers) != len(header.layers) or len(cuts) != len(layers):
        raise PatchFormatError("the skeleton and the header list different layers")
    if len(body) + sum(layer.nbytes for layer in layers) != header.result_size:
        raise PatchFormatError("skeleton and layer sizes do not add up to the declared net size")
    tolerance = header.tolerance if header.mode == patch_pb2.TOLERANCE else 0.0
    for layer, lp in zip(layers, header.layers):
        _check_layer_header(layer, lp, tolerance)
    plan.cuts, plan.body, plan.layers = cuts, body, layers
    plan.ctx = _Context(base, history, {l.path: l.count for l in layers if l.codable}, tolerance)
    if header.base_id and base is None:
        return plan
    _check_layer_sizes(plan, base)
    return plan


def _check_layer_sizes(plan: _Plan, base: Net | None) -> None:
    """Delta layers are bounded by the base, intra layers by their stored bytes."""
    delta_bytes, intra_values, intra_stored = 0, 0, 0
    for layer, lp in zip(plan.layers, plan.header.layers):
        base_layer = plan.ctx.base_layer(layer, lp)
        plan.base_layers.append(base_layer)
        if base_layer is not None:
            delta_bytes += base_layer.nbytes
        else:
            intra_values += _value_count(layer, lp)
            intra_stored += lp.section.stored_size
    if base is not None and delta_bytes > len(base.raw):
        raise PatchFormatError("the patch pairs more bytes with base layers than the base has")
    if intra_values > INTRA_ALLOWANCE + INTRA_VALUES_PER_BYTE * intra_stored:
        raise PatchFormatError(f"layers coded without a base declare {intra_values:,} values "
                               f"in {intra_stored:,} bytes, more than any codec packs")


def _rebuild(plan: _Plan, source: container.PatchSource, workers):
    """The rebuilt net's bytes as a sequence of chunks, decoded layer by layer."""
    layers, header = plan.layers, plan.header

    def decode(index):
        return _decode_layer((plan.ctx, layers[index], header.layers[index], plan.base_layers[index],
                              plan.codecs[index], source.section(index + 1)))

    src, body = 0, plan.body
    payloads = _bounded_map(decode, range(len(layers)), _workers(workers), lambda i: layers[i].nbytes)
    for cut, layer, payload in zip(plan.cuts, layers, payloads):
        if len(payload) != layer.nbytes or cut < src:
            raise PatchFormatError("a rebuilt layer has the wrong size")
        yield body[src:cut]
        yield payload
        src = cut
    yield body[src:]


def _chunks(plan, source, workers, progress):
    chunks = _rebuild(plan, source, workers)
    return progress(chunks, plan.header.result_size) if progress else chunks


def _mismatch() -> VerificationError:
    return VerificationError("the rebuilt net does not match the id the patch promises "
                             "(corrupt patch or wrong base)")


def apply_patch(base: Net | None, patch, history: Net | None = None, *,
                workers: int | None = None, progress=None, max_size: int | None = None) -> bytearray:
    """Rebuild the net a patch describes and check it against the promised id.

    ``patch`` is the patch's bytes or the path of a patch file. Returns the raw
    protobuf bytes (a ``bytearray``, to avoid a copy of a large net). Raises
    :class:`WrongBaseError` for another base, :class:`MissingHistoryError`
    when the context net is missing, :class:`PatchFormatError` for a corrupt
    patch or one that declares implausible sizes, and
    :class:`VerificationError` when the result is not what the patch
    promised; never anything else on bad patch data. ``progress``, if given,
    is called as ``progress(chunks, total_bytes)`` and returns the chunk
    iterator it was given, wrapped (in a progress bar, say): the decoder never
    knows how progress is shown. ``max_size`` refuses a patch whose net would
    be larger (default :data:`~lc0weights.net.DEFAULT_MAX_SIZE`; a caller that
    knows the size to expect, say from a repository index, passes it). Every
    declared size is checked before the output is allocated.
    """
    _check_patch_argument(patch)
    with _hostile_input(), container.open_patch(patch) as source:
        plan = _plan(source, base, history, max_size)
        out, dst = bytearray(plan.header.result_size), 0
        for chunk in _chunks(plan, source, workers, progress):
            if dst + len(chunk) > len(out):
                raise _mismatch()
            out[dst:dst + len(chunk)] = chunk
            dst += len(chunk)
        if dst != len(out) or hashlib.sha256(out).digest() != _result_id(plan.header):
            raise _mismatch()
    return out


def apply_patch_to_file(base: Net | None, patch, output, history: Net | None = None, *,
                        workers: int | None = None, progress=None, max_size: int | None = None) -> str:
    """Rebuild a net straight into ``output`` (gzip when it ends in ``.gz``).

    The rebuilt bytes are streamed to a temp file and hashed on the way; the
    file replaces ``output`` only if they match the id the patch promises, so
    memory holds the base and a few layers, never the output net. Returns the
    id of the written net. Checks and errors as :func:`apply_patch`.
    """
    _check_patch_argument(patch)
    with _hostile_input(), container.open_patch(patch) as source:
        plan = _plan(source, base, history, max_size)
        digest = hashlib.sha256()
        with atomic_file(output) as f:
            sink = gzip.GzipFile(fileobj=f, mode="wb", compresslevel=GZIP_LEVEL, mtime=0, filename="") \
                if str(output).endswith(".gz") else f
            for chunk in _chunks(plan, source, workers, progress):
                digest.update(chunk)
                sink.write(chunk)
            if digest.digest() != _result_id(plan.header):
                raise _mismatch()
            if sink is not f:
                sink.close()
    return digest.hexdigest()


# -- measuring -----------------------------------------------------------------------

def max_error(approx: Net, target: Net) -> float:
    """The largest absolute difference of any decoded weight (nets of one layout)."""
    if len(approx.layers) != len(target.layers):
        raise VerificationError("the nets have different layer lists")
    worst = 0.0
    for a, t in zip(approx.layers, target.layers):
        if a.path != t.path or a.count != t.count or a.codable != t.codable:
            raise VerificationError(f"layer {t.path} differs in shape")
        if not t.codable:
            if bytes(approx.payload(a)) != bytes(target.payload(t)):
                return float("inf")
            continue
        worst = max(worst, res.max_error(approx.codes(a), _target_of(a), target.codes(t), _target_of(t)))
    return worst

"""Making a patch: every layer's residuals coded with the smallest codec."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .. import container
from .. import encodings as enc
from .. import residuals as res
from ..codecs import codec_ids, get_codec
from ..errors import PatchFormatError, VerificationError
from ..tiers import TIERS
from ..net import Layer, Net
from ..proto import patch_pb2
from .decode import apply_patch, check_patch
from .chunks import CHUNK_SIZE, chunk_step
from .layers import LayerContext, layer_values, paired_layer
from .limits import INTRA_VALUES_PER_BYTE, WRITER
from .measure import max_error
from .parallel import bounded_map, worker_count
from .skeleton import encode_skeleton, skeleton_limit, skeleton_stream

DEFAULT_CODECS = ("varint-brotli", "cm1", "stored")
# With a history net the context model predicts each step from the last one (cm2);
# without one cm2 writes cm1's bytes, so cm1 is named and older readers still read it.
HISTORY_CODECS = ("varint-brotli", "cm2", "stored")
# The context model wins on every sizeable layer of real runs; the baseline is
# tried beside it only where it is cheap to try (small layers).
BASELINE_TRIAL_LIMIT = 1 << 14
# The fast tier (docs/FORMAT.md, "Coding tiers"): chunks over BASELINE_TRIAL_LIMIT
# values are coded with rans1, which decodes about ten times faster than the context
# model; smaller ones may still take whatever codes them smallest, since they are a
# sliver of a large net's decoding time and rans1's tables cost most on them.
# (varint-brotli is not tried: on the small chunks it would be, it costs a publisher a
# second of CPU per BT4-size patch and saves no measurable byte.)
FAST_CODECS = ("rans1", "cm1", "stored")
FAST_HISTORY_CODECS = ("rans1", "cm2", "stored")
TIER_CODECS = {"cm": (DEFAULT_CODECS, HISTORY_CODECS), "fast": (FAST_CODECS, FAST_HISTORY_CODECS)}
# Coding tiers: "cm" codes with the context model (smallest bytes, slow to decode), "fast"
# large chunks with rans1 (several times faster to decode, a percent or two more bytes).
assert tuple(TIER_CODECS) == TIERS, "lc0weights.tiers lists the tiers, in this order"
SLOW_CODECS = ("cm1", "cm2")


# -- encoding one chunk of a layer ------------------------------------------------------

def _candidates(ctx: LayerContext, target: Net, layer: Layer, base_layer, lo: int, hi: int):
    """The residual kinds a layer may be coded in, computed for its elements ``lo:hi``
    (every kind is per element, escapes counted from ``lo``)."""
    base, tolerance = ctx.base, ctx.tolerance
    if not layer.codable:
        return [res.raw_residuals(target.payload(layer)[lo:hi])]
    codes = target.codes(layer)[lo:hi]
    lt = res.LayerTarget(layer.encoding, hi - lo, layer.min_bits, layer.max_bits)
    if layer.encoding == enc.LINEAR16:
        table = ctx.base_table(layer, base_layer)
        if table is not None:
            return [res.linear16_residuals(codes, None, lt, tolerance,
                                           predicted=table[base.codes(base_layer)[lo:hi]])]
        base_values = layer_values(base, base_layer, lo, hi) if base_layer is not None else None
        return [res.linear16_residuals(codes, base_values, lt, tolerance)]
    base_codes = base.codes(base_layer)[lo:hi] if base_layer is not None else None
    options = [res.float_image_residuals(codes, base_codes, lt)]
    if tolerance:
        options.append(res.float_step_residuals(codes, base_codes, lt, tolerance))
    return options


@dataclass
class _Coded:
    """One residual kind of one chunk, in its smallest codec."""

    lp: patch_pb2.LayerPatch       # the layer's fields for this kind (section unset)
    escapes: int
    section: patch_pb2.Section
    data: bytes
    codes: np.ndarray | None       # the codes the rebuild yields (lossy patches only)


def _encode_chunk(job) -> list[_Coded]:
    """Every residual kind of elements ``lo:hi``, each in the codec that codes it smallest.

    Depends on the chunk alone (never on other chunks or threads), so the
    patch is the same whatever the thread count.
    """
    ctx, target, layer, base_layer, lo, hi, codecs = job
    options = []
    for r in _candidates(ctx, target, layer, base_layer, lo, hi):
        paired = base_layer is not None and r.kind != patch_pb2.RAW_BYTES
        lp = patch_pb2.LayerPatch(intra=not paired, residual=r.kind,
                                  base_shift=base_layer.index - layer.index if paired else 0,
                                  quant_width=r.quant_width if r.quant_width > 1 else 0)
        trials, fits, best = list(_trials(codecs, len(r.values))), False, None
        context = frozenset().union(*(get_codec(c).context for c in trials + ["stored"]))
        info = ctx.info(layer, lp, base_layer if paired else None, lo, hi, context)
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
                best = (patch_pb2.Section(codec=codec_id, stored_size=len(data),
                                          codec_config=_config_bytes(codec)), data)
        if best is not None:
            options.append(_Coded(lp, r.escapes, best[0], best[1], r.codes if ctx.tolerance else None))
    return options


def _trials(codecs: tuple, count: int) -> tuple:
    """The codecs to try on a layer of ``count`` values (all of them when forced)."""
    if len(codecs) > 1 and count > BASELINE_TRIAL_LIMIT:
        if "rans1" in codecs:           # the fast tier
            return tuple(c for c in codecs if c != "varint-brotli" and c not in SLOW_CODECS)
        if set(SLOW_CODECS) & set(codecs):
            return tuple(c for c in codecs if c != "varint-brotli")
    return codecs


def _layer_chunks(ctx: LayerContext, layer: Layer) -> list[tuple[int, int]]:
    """Where the layer's chunks start and end (``chunks.chunk_step`` of its values)."""
    count = layer.count if layer.codable else layer.nbytes
    kind = patch_pb2.LINEAR16_REGRID if layer.codable else patch_pb2.RAW_BYTES
    step, pieces = chunk_step(count, ctx.shape(layer, patch_pb2.LayerPatch(residual=kind)), ctx.chunk_size)
    return [(i * step, min(count, (i + 1) * step)) for i in range(pieces)]


def _encode_layers(ctx: LayerContext, target: Net, layers: list[Layer], codecs: tuple, workers,
                   result):
    """Each layer's (LayerPatch, its chunks' streams), in order, chunks coded in parallel.

    The residual kind is chosen per layer (the smallest sum over its chunks; the
    first on a tie), the codec per chunk. For a lossy patch ``result`` (a list
    holding one sha256) is fed the rebuilt net as it goes: one running copy per
    kind within a layer, so no layer's codes are ever held whole.
    """
    jobs, pos = [], 0
    for layer in layers:
        base_layer = paired_layer(ctx.base, layer)
        bounds = _layer_chunks(ctx, layer)
        jobs += [(ctx, target, layer, base_layer, lo, hi, codecs) for lo, hi in bounds]
    chunks = bounded_map(_encode_chunk, jobs, worker_count(workers), lambda job: job[5] - job[4])
    for layer in layers:
        pieces = len(_layer_chunks(ctx, layer))
        first = next(chunks)
        if result is not None:
            result[0].update(target.raw[pos:layer.span.params_start])
            pos = layer.span.params_end
        digests = [result[0].copy() if result is not None else None for _ in first]
        parts = [[] for _ in first]
        for k in range(pieces):
            options = first if k == 0 else next(chunks)
            if len(options) != len(parts):
                raise PatchFormatError(f"layer {layer.path}: chunks differ in residual kinds")
            for part, digest, option in zip(parts, digests, options):
                part.append(option)
                if digest is not None:
                    digest.update(option.codes.tobytes())
                option.codes = None
        best = min(range(len(parts)), key=lambda i: sum(o.section.stored_size for o in parts[i]))
        chosen = parts[best]
        lp = patch_pb2.LayerPatch()
        lp.CopyFrom(chosen[0].lp)
        if pieces == 1:
            lp.escapes = chosen[0].escapes
            lp.section.CopyFrom(chosen[0].section)
        else:
            lp.chunks.extend(patch_pb2.Chunk(escapes=o.escapes, section=o.section) for o in chosen)
            lp.section.stored_size = sum(o.section.stored_size for o in chosen)
        if result is not None:
            result[0] = digests[best]
        yield lp, [o.data for o in chosen]
    if result is not None:
        result[0].update(target.raw[pos:])


class PatchTooLarge(Exception):
    """The patch being made would exceed the caller's ``max_bytes``: encoding stopped early."""


def _config_bytes(codec) -> bytes:
    config = {k: v for k, v in codec.get_config().items() if k != "id"}
    return json.dumps(config, sort_keys=True).encode() if config else b""


def make_patch(base: Net | None, target: Net, tolerance: float | None = None, *,
               codec: str | None = None, history: Net | None = None,
               workers: int | None = None, verify: bool = True, progress=None,
               chunk_size: int = CHUNK_SIZE, max_bytes: int | None = None,
               tier: str = "cm") -> bytes:
    """A patch that rebuilds ``target`` from ``base`` (``None``: an intra patch).

    ``tolerance``: every rebuilt weight is within this absolute distance of the
    target's (the engine's decoding); ``None`` makes the rebuild byte-exact.
    ``codec`` forces one registered codec for every layer (default: the
    smallest per layer). ``history`` is the base's predecessor, used as
    context; a client then needs it too. With ``verify`` the patch is applied
    once before it is returned (streamed and hashed when lossless), and a lossy
    patch is checked weight by weight.
    ``progress``, if given, wraps the iterator of encoded layers as
    ``progress(layers, layer_count)`` (in a progress bar, say). Layers of more
    than ``chunk_size`` values are coded as independent chunks (format version
    2); the bytes do not depend on ``workers``.
    ``max_bytes``: raise :class:`PatchTooLarge` as soon as the coded sections
    pass this many bytes (a publisher abandons a patch dearer than the net).
    ``tier``: "cm" codes smallest; "fast" codes a large layer for decoding speed
    (rans1, a few percent larger), for clients on fast links (:data:`TIERS`).
    """
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
    if tolerance is not None and not (tolerance > 0 and np.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a positive number, not {tolerance!r}")
    if chunk_size < container.MIN_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be at least {container.MIN_CHUNK_SIZE}, not {chunk_size!r}")
    if history is not None and base is None:
        history = None
    defaults = TIER_CODECS[tier][0 if history is None else 1]
    codecs = (codec,) if codec else tuple(c for c in defaults if c in codec_ids())
    for c in codecs:
        get_codec(c)
    ctx = LayerContext(base, history, {l.path: l.count for l in target.layers if l.codable},
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
    skeleton_codec, skeleton_data = encode_skeleton(stream, base_stream, base.raw_size if base is not None else 0)
    header.skeleton.CopyFrom(patch_pb2.Section(codec=skeleton_codec, stored_size=len(skeleton_data)))
    header.skeleton_size = len(stream)

    layers = [layer for layer in target.layers if layer.has_params]
    # Version 2 (a chunk size in the header) only when a layer is split: other
    # patches stay readable by version 1 readers, byte for byte as they were.
    if any((layer.count if layer.codable else layer.nbytes) > chunk_size for layer in layers):
        ctx.chunk_size = header.chunk_size = chunk_size
    result = [hashlib.sha256()] if tolerance is not None else None
    coded = _encode_layers(ctx, target, layers, codecs, workers, result)
    if progress:
        coded = progress(coded, len(layers))
    sections = [skeleton_data]            # a chunked layer's section: its chunks' streams in order
    size = len(skeleton_data)
    for lp, pieces in coded:
        size += sum(len(piece) for piece in pieces)
        if max_bytes is not None and size > max_bytes:
            raise PatchTooLarge(f"the patch passes {max_bytes:,} bytes")
        header.layers.append(lp)
        sections.extend(pieces)
    if result is not None:                # lossless: the result is the target itself
        header.result_id = result[0].digest()
    header.result_size = len(target.raw)
    patch = container.pack(header, sections)
    del sections
    if verify and tolerance is None:
        check_patch(base, patch, history=history, workers=workers)
    elif verify:
        rebuilt = apply_patch(base, patch, history=history, workers=workers)
        if tolerance is not None:
            error = max_error(Net(rebuilt), target)
            if not error <= tolerance:
                raise VerificationError(f"internal error: rebuilt weights are {error} from the "
                                        f"target, over the tolerance {tolerance}")
    return patch

"""Applying a patch: every declared size checked, then layers rebuilt and the result verified."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .. import container
from .. import encodings as enc
from .. import gzipio
from .. import kernels, rans_kernels, weight_error
from .. import residuals as res
from ..kernel_preload import preload
from ..codecs import get_codec
from ..errors import (Lc0WeightsError, MissingHistoryError, NetFormatError, PatchFormatError,
                      VerificationError, WrongBaseError)
from ..durable_files import atomic_file
from ..net import DEFAULT_MAX_SIZE, GZIP_LEVEL, Layer, Net
from ..net_arriving import ArrivingNet
from ..proto import patch_pb2
from ..wire import find_skeleton_layers
from .chunks import chunk_sections, total_escapes
from .layers import LayerContext, layer_values, pairs_with_base, value_count
from .limits import (INTRA_ALLOWANCE, INTRA_VALUES_PER_BYTE, MAX_CODEC_CONFIG, MAX_RESULT_SIZE, MAX_SKELETON_FIELDS,
                     SKELETON_CAP, UNDECODABLE)
from .parallel import bounded_map, worker_count
from .skeleton import decode_skeleton, skeleton_stream


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


def preload_decoders():
    """Start loading the decoding kernels from numba's cache on a helper thread (returned),
    so a caller about to read a large base pays for them while it reads."""
    return preload(kernels.DECODING_KERNELS + rans_kernels.DECODING_KERNELS + weight_error.REBUILD_KERNELS)


def _check_patch_argument(patch) -> None:
    if not isinstance(patch, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(f"a patch is bytes or a file path, not {type(patch).__name__}")


def read_patch_info(patch, base: Net | None = None, *, max_size: int | None = None,
                    open_patch=container.open_patch) -> PatchInfo:
    """The header of a patch (bytes or a file path), after the checks ``apply`` runs.

    Every declared size is checked as :func:`apply_patch` checks it, so a
    patch that inspects cleanly decodes in bounded memory. Checks against the
    base run when ``base`` is the patch's base. Layer paths come from the
    skeleton, readable without the base for an intra patch and with it
    otherwise; without it they are None. ``open_patch`` as :func:`apply_patch`'s.
    """
    _check_patch_argument(patch)
    with _hostile_input(), open_patch(patch) as source:
        header = source.header
        usable = base if base is not None and base.id == header.base_id.hex() else None
        plan = _plan(source, usable, None, max_size, complete=False)
        paths = [layer.path for layer in plan.layers] if plan.layers else [None] * len(header.layers)
        layers = [{"path": path, "codec": _codec_names(lp), "stored_size": lp.section.stored_size,
                   "residual": patch_pb2.Residual.Name(lp.residual), "intra": lp.intra,
                   "base_shift": lp.base_shift, "escapes": total_escapes(lp),
                   "chunks": max(1, len(lp.chunks))}
                  for path, lp in zip(paths, header.layers)]
        return PatchInfo(_hex(header.base_id), header.target_id.hex(), _result_id(header).hex(),
                         _hex(header.history_id),
                         "tolerance" if header.mode == patch_pb2.TOLERANCE else "lossless",
                         header.tolerance if header.mode == patch_pb2.TOLERANCE else None,
                         header.result_size, source.size, layers)


def _codec_names(lp) -> str:
    """The codec of a layer; a chunked layer's distinct chunk codecs, joined by '+'."""
    return "+".join(dict.fromkeys(section.codec for section in chunk_sections(lp)))


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


def _check_ids(header, base: Net | None, history: Net | None, base_arriving: bool = False):
    if header.base_id and not base_arriving:      # an arriving base is checked once it has arrived
        if base is None:
            raise WrongBaseError(f"this patch needs base net {header.base_id.hex()}; none was given")
        if base.id != header.base_id.hex():
            raise WrongBaseError(f"this patch is for base net {header.base_id.hex()[:16]}..., "
                                 f"not {base.id[:16]}...")
    if header.history_id and (history is None or history.id != header.history_id.hex()):
        raise MissingHistoryError(f"this patch also needs net {header.history_id.hex()} "
                                  "(the base's predecessor) as context")


def _decode_chunk(plan: "_Plan", source: container.PatchSource, index: int, chunk_index: int) -> bytes:
    """The rebuilt payload bytes of one chunk of layer ``index``: decoded from its own
    stream against its slice of the base, so the work and memory are the chunk's."""
    layer, lp, base_layer = plan.layers[index], plan.header.layers[index], _base_layer(plan, index)
    chunk = plan.chunks[index][chunk_index]
    where = f"layer {layer.path}" + (f" chunk {chunk_index}" if len(plan.chunks[index]) > 1 else "")
    try:
        data = source.section_part(index + 1, chunk.offset, chunk.section.stored_size)
        codec = plan.codecs[index][chunk_index]
        info = plan.ctx.info(layer, lp, base_layer, chunk.lo, chunk.hi, codec.context)
        count = chunk.count + (2 * chunk.escapes if lp.residual != patch_pb2.RAW_BYTES else 0)
        values = codec.decode(bytes(data), count, info)
        del data
        if len(values) != count:
            raise PatchFormatError("codec returned the wrong number of values")
        target = res.LayerTarget(layer.encoding, chunk.count, layer.min_bits, layer.max_bits)
        if lp.residual == patch_pb2.RAW_BYTES:
            codes = res.raw_rebuild(values, chunk.count)
        elif lp.residual == patch_pb2.LINEAR16_REGRID:
            codes = _linear16_rebuild(plan, index, chunk, values, info, target, lp)
        else:
            base_codes = plan.ctx.base.codes(base_layer)[chunk.lo:chunk.hi] \
                if base_layer is not None else None
            if lp.residual == patch_pb2.FLOAT_IMAGE:
                codes = res.float_image_rebuild(values, base_codes, target)
            else:
                codes = res.float_step_rebuild(values, base_codes, target, plan.ctx.tolerance,
                                               chunk.escapes)
        plan.ctx.release(base_layer, chunk.lo, chunk.hi)
        return codes.tobytes()
    except PatchFormatError as e:
        raise PatchFormatError(f"{where}: {e}") from None


def _linear16_rebuild(plan: "_Plan", index: int, chunk, values, info, target, lp) -> np.ndarray:
    """A LINEAR16 chunk's codes: through the layer's table of base-code predictions when
    the base layer is LINEAR16 and the layer large, else from the decoded base weights."""
    base_layer = _base_layer(plan, index)
    width = lp.quant_width or 1
    table = plan.ctx.base_table(plan.layers[index], base_layer)
    if table is not None:
        base_codes = plan.ctx.base.codes(base_layer)[chunk.lo:chunk.hi]
        return res.linear16_rebuild_from_codes(values, base_codes, table, target, width, chunk.escapes)
    base = info.base
    if base is None and base_layer is not None:     # the codec did not need the weights
        base = layer_values(plan.ctx.base, base_layer, chunk.lo, chunk.hi)
    return res.linear16_rebuild(values, base, target, width, chunk.escapes)


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
        if total_escapes(lp):
            raise PatchFormatError(f"layer {layer.path}: escapes in a raw byte layer")
        return
    if not layer.codable or lp.residual not in _RESIDUALS_FOR.get(layer.encoding, ()):
        raise PatchFormatError(f"layer {layer.path}: residual kind {lp.residual} does not suit "
                               f"encoding {layer.encoding} of {layer.nbytes} bytes")
    if lp.residual == patch_pb2.FLOAT_STEP and not tolerance > 0:
        raise PatchFormatError(f"layer {layer.path}: value steps in a lossless patch")
    if total_escapes(lp) > layer.count:
        raise PatchFormatError(f"layer {layer.path}: more escapes than elements")
    if total_escapes(lp) and lp.residual == patch_pb2.FLOAT_IMAGE:
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
    ctx: LayerContext | None = None
    cuts: list[int] = field(default_factory=list)
    body: memoryview | None = None
    layers: list[Layer] = field(default_factory=list)     # layers with a payload, in header order
    base_layers: list = field(default_factory=list)      # each one's paired base layer, or None
    codecs: list = field(default_factory=list)           # per layer, a codec per chunk
    chunks: list = field(default_factory=list)           # per layer, its ChunkSpecs
    arriving: ArrivingNet | None = None                 # the base, still being read


_PENDING = object()                 # a base layer not looked up yet (the base is arriving)


def _base_layer(plan: _Plan, index: int) -> Layer | None:
    """Layer ``index``'s base layer; from an arriving base, once it has arrived."""
    found = plan.base_layers[index]
    if found is _PENDING:
        found = plan.ctx.base_layer(plan.layers[index], plan.header.layers[index])
        plan.base_layers[index] = found
    return found


def _while_arriving(header, base) -> bool:
    """Whether the rebuild can start before ``base`` has arrived in full: the skeleton
    must be readable without the base's (see docs/FORMAT.md, "Skeleton")."""
    return isinstance(base, ArrivingNet) and header.skeleton.codec == "brotli" \
        and header.skeleton_size <= SKELETON_CAP


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
    arriving = base if header.base_id and _while_arriving(header, base) else None
    if isinstance(base, ArrivingNet) and arriving is None and header.base_id:
        base = base.complete()
    if complete:
        _check_ids(header, base, history, base_arriving=arriving is not None)
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
    plan.codecs = [[get_codec(section.codec, _config(section)) for section in chunk_sections(lp)]
                   for lp in header.layers]
    if header.base_id and base is None:
        if header.skeleton.codec == "brotli-xor-base":
            return plan                    # the skeleton cannot be read without the base
        base_stream = None
    else:
        base_stream = skeleton_stream(base) if base is not None and arriving is None else None
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
    plan.ctx = LayerContext(base, history, {l.path: l.count for l in layers if l.codable}, tolerance,
                            header.chunk_size)
    plan.chunks = [plan.ctx.chunks(layer, lp) for layer, lp in zip(layers, header.layers)]
    if header.base_id and base is None:
        return plan
    plan.arriving = arriving
    _check_layer_sizes(plan, base)
    return plan


def _check_layer_sizes(plan: _Plan, base: Net | None) -> None:
    """Delta layers are bounded by the base, intra layers by their stored bytes. The
    base layers of an arriving base are looked up as they arrive (:func:`_base_layer`)
    and their total checked once it has (:func:`_check_arrived_base`)."""
    intra_values, intra_stored = 0, 0
    for layer, lp in zip(plan.layers, plan.header.layers):
        if plan.arriving is not None and pairs_with_base(lp):
            plan.base_layers.append(_PENDING)
            continue
        base_layer = plan.ctx.base_layer(layer, lp)
        plan.base_layers.append(base_layer)
        if base_layer is None:
            intra_values += value_count(layer, lp)
            intra_stored += lp.section.stored_size
    if plan.arriving is None:
        _check_delta_bytes(plan, base)
    if intra_values > INTRA_ALLOWANCE + INTRA_VALUES_PER_BYTE * intra_stored:
        raise PatchFormatError(f"layers coded without a base declare {intra_values:,} values "
                               f"in {intra_stored:,} bytes, more than any codec packs")


def _check_delta_bytes(plan: _Plan, base: Net | None) -> None:
    delta_bytes = sum(base_layer.nbytes for base_layer in plan.base_layers if base_layer is not None)
    if base is not None and delta_bytes > len(base.raw):
        raise PatchFormatError("the patch pairs more bytes with base layers than the base has")


def _check_arrived_base(plan: _Plan) -> None:
    """An arriving base, once in: the net the patch names, and every layer paired as declared."""
    base = plan.arriving.complete()
    _check_ids(plan.header, base, plan.ctx.history)
    for index in range(len(plan.layers)):
        _base_layer(plan, index)
    _check_delta_bytes(plan, base)


def _rebuild(plan: _Plan, source: container.PatchSource, workers):
    """The rebuilt net's pieces (:func:`_rebuild_pieces`); with an arriving base, a failure
    is first put down to a wrong base if the base is not the one the patch names."""
    if plan.arriving is None:
        yield from _rebuild_pieces(plan, source, workers)
        return
    try:
        yield from _rebuild_pieces(plan, source, workers)
    except PatchFormatError:
        _check_arrived_base(plan)
        raise
    _check_arrived_base(plan)


def _rebuild_pieces(plan: _Plan, source: container.PatchSource, workers):
    """The rebuilt net's bytes as a sequence of pieces, in order: skeleton bytes and
    decoded chunks. Chunks (not layers) are spread over the threads, with bounded
    work in flight, so one large layer uses every core and a few chunks' memory."""
    layers = plan.layers
    jobs = [(index, k) for index, chunks in enumerate(plan.chunks) for k in range(len(chunks))]
    pieces = bounded_map(lambda job: _decode_chunk(plan, source, *job), jobs, worker_count(workers),
                         lambda job: plan.chunks[job[0]][job[1]].count)
    src, body = 0, plan.body
    for index, (cut, layer) in enumerate(zip(plan.cuts, layers)):
        if cut < src:
            raise PatchFormatError("a rebuilt layer has the wrong size")
        yield body[src:cut]
        size = 0
        for _ in plan.chunks[index]:
            piece = next(pieces)
            size += len(piece)
            yield piece
        if size != layer.nbytes:
            raise PatchFormatError("a rebuilt layer has the wrong size")
        src = cut
    yield body[src:]


def _chunks(plan, source, workers, progress):
    chunks = _rebuild(plan, source, workers)
    return progress(chunks, plan.header.result_size) if progress else chunks


def _mismatch() -> VerificationError:
    return VerificationError("the rebuilt net does not match the id the patch promises "
                             "(corrupt patch or wrong base)")


def apply_patch(base: Net | None, patch, history: Net | None = None, *,
                workers: int | None = None, progress=None, max_size: int | None = None,
                open_patch=container.open_patch) -> bytearray:
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
    declared size is checked before the output is allocated. ``open_patch``
    turns ``patch`` into a :class:`~lc0weights.container.PatchSource` (a
    patch still downloading: :mod:`.streaming`).
    """
    _check_patch_argument(patch)
    with _hostile_input(), open_patch(patch) as source:
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


def check_patch(base: Net | None, patch, history: Net | None = None, *,
                workers: int | None = None, max_size: int | None = None, progress=None) -> str:
    """Rebuild the net a patch describes only to hash it; returns its id.

    Checks and errors as :func:`apply_patch`, in the memory of a few chunks:
    the rebuilt bytes are hashed as they are decoded, never held.
    """
    digest = hashlib.sha256()
    for chunk in rebuilt_pieces(base, patch, history, workers=workers, max_size=max_size, progress=progress):
        digest.update(chunk)
    return digest.hexdigest()


def rebuilt_pieces(base: Net | None, patch, history: Net | None = None, *,
                   workers: int | None = None, max_size: int | None = None, progress=None,
                   open_patch=container.open_patch):
    """The net a patch rebuilds, as its raw bytes in order, in pieces (bytes or memoryviews).

    Nothing is held beyond a few chunks: a caller that looks at each piece
    once (hashing, comparing layer by layer) never holds the rebuilt net. The
    pieces are checked against the id the patch promises as the last one is
    taken: instead of ending, the iterator raises :class:`VerificationError`
    then, so only a caller that read it to the end knows the net checked out.
    When it does end, its return value (``StopIteration.value``) is that id.
    Checks and errors (and ``open_patch``) as :func:`apply_patch`.
    """
    _check_patch_argument(patch)
    with _hostile_input(), open_patch(patch) as source:
        plan = _plan(source, base, history, max_size)
        digest, size = hashlib.sha256(), 0
        for chunk in _chunks(plan, source, workers, progress):
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        if size != plan.header.result_size or digest.digest() != _result_id(plan.header):
            raise _mismatch()
    return digest.hexdigest()


def apply_patch_to_file(base: Net | None, patch, output, history: Net | None = None, *,
                        workers: int | None = None, progress=None, max_size: int | None = None,
                        open_patch=container.open_patch) -> str:
    """Rebuild a net straight into ``output`` (gzip when it ends in ``.gz``).

    The rebuilt bytes are streamed to a temp file and hashed on the way; the
    file replaces ``output`` only if they match the id the patch promises, so
    memory holds the base (a few chunks of it when it is mapped: ``Net.load``'s
    spill folder) and a few layers, never the output net. Returns the
    id of the written net. Checks and errors (and ``open_patch``) as
    :func:`apply_patch`.
    """
    _check_patch_argument(patch)
    with _hostile_input(), open_patch(patch) as source:
        plan = _plan(source, base, history, max_size)
        digest = hashlib.sha256()
        with atomic_file(output) as f:
            sink = gzipio.GzipWriter(f, GZIP_LEVEL) if str(output).endswith(".gz") else f
            for chunk in _chunks(plan, source, workers, progress):
                digest.update(chunk)
                sink.write(chunk)
            if digest.digest() != _result_id(plan.header):
                raise _mismatch()
            if sink is not f:
                sink.close()
    return digest.hexdigest()

"""Applying a patch: its plan checked (:mod:`.plan`), then layers rebuilt and the result verified."""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass

import numpy as np

from .. import container
from .. import gzipio
from .. import kernels, rans_kernels, weight_error
from .. import residuals as res
from ..kernel_preload import preload
from ..errors import Lc0WeightsError, PatchFormatError, VerificationError
from ..durable_files import atomic_file
from ..net import GZIP_LEVEL, Net
from ..proto import patch_pb2
from .chunks import chunk_sections, total_escapes
from .layers import layer_values
from .limits import UNDECODABLE
from .parallel import bounded_map, worker_count
from .plan import Plan, base_layer_of, check_arrived_base, plan_patch


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
        plan = plan_patch(source, usable, None, max_size, complete=False)
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


def _decode_chunk(plan: "Plan", source: container.PatchSource, index: int, chunk_index: int) -> bytes:
    """The rebuilt payload bytes of one chunk of layer ``index``: decoded from its own
    stream against its slice of the base, so the work and memory are the chunk's."""
    layer, lp, base_layer = plan.layers[index], plan.header.layers[index], base_layer_of(plan, index)
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


def _linear16_rebuild(plan: "Plan", index: int, chunk, values, info, target, lp) -> np.ndarray:
    """A LINEAR16 chunk's codes: through the layer's table of base-code predictions when
    the base layer is LINEAR16 and the layer large, else from the decoded base weights."""
    base_layer = base_layer_of(plan, index)
    width = lp.quant_width or 1
    table = plan.ctx.base_table(plan.layers[index], base_layer)
    if table is not None:
        base_codes = plan.ctx.base.codes(base_layer)[chunk.lo:chunk.hi]
        return res.linear16_rebuild_from_codes(values, base_codes, table, target, width, chunk.escapes)
    base = info.base
    if base is None and base_layer is not None:     # the codec did not need the weights
        base = layer_values(plan.ctx.base, base_layer, chunk.lo, chunk.hi)
    return res.linear16_rebuild(values, base, target, width, chunk.escapes)


def _rebuild(plan: Plan, source: container.PatchSource, workers):
    """The rebuilt net's pieces (:func:`_rebuild_pieces`); with an arriving base, a failure
    is first put down to a wrong base if the base is not the one the patch names."""
    if plan.arriving is None:
        yield from _rebuild_pieces(plan, source, workers)
        return
    try:
        yield from _rebuild_pieces(plan, source, workers)
    except PatchFormatError:
        check_arrived_base(plan)
        raise
    check_arrived_base(plan)


def _rebuild_pieces(plan: Plan, source: container.PatchSource, workers):
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
        plan = plan_patch(source, base, history, max_size)
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
        plan = plan_patch(source, base, history, max_size)
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
        plan = plan_patch(source, base, history, max_size)
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

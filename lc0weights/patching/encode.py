"""Making a patch: every layer's residuals coded with the smallest codec."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from .. import container
from .. import encodings as enc
from .. import residuals as res
from ..codecs import codec_ids, get_codec
from ..errors import PatchFormatError
from ..net import Layer, Net
from ..proto import patch_pb2
from . import selfcheck
from .layers import LayerContext, paired_layer, target_of
from .limits import INTRA_VALUES_PER_BYTE, WRITER
from .parallel import bounded_map, worker_count
from .skeleton import encode_skeleton, skeleton_limit, skeleton_stream

DEFAULT_CODECS = ("varint-brotli", "cm1", "stored")
# With a history net the context model predicts each step from the last one (cm2);
# without one cm2 writes cm1's bytes, so cm1 is named and older readers still read it.
HISTORY_CODECS = ("varint-brotli", "cm2", "stored")
# The context model wins on every sizeable layer of real runs; the baseline is
# tried beside it only where it is cheap to try (small layers).
BASELINE_TRIAL_LIMIT = 1 << 14


# -- encoding one layer ----------------------------------------------------------------

def _candidates(target: Net, layer: Layer, base: Net | None, base_layer, tolerance):
    if not layer.codable:
        return [res.raw_residuals(target.payload(layer))]
    codes = target.codes(layer)
    lt = target_of(layer)
    if layer.encoding == enc.LINEAR16:
        base_values = base.values(base_layer) if base_layer is not None else None
        return [res.linear16_residuals(codes, base_values, lt, tolerance)]
    base_codes = base.codes(base_layer) if base_layer is not None else None
    options = [res.float_image_residuals(codes, base_codes, lt)]
    if tolerance:
        options.append(res.float_step_residuals(codes, base_codes, lt, tolerance))
    return options


def _encode_layer(job):
    ctx, target, layer, codecs, check = job
    base_layer = paired_layer(ctx.base, layer)
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
    r = None    # the residuals' arrays go before the check decodes them again
    if check:   # selfcheck: the built-in check of make_patch, per layer in this worker
        selfcheck.check_layer(ctx, layer, best[0], best[1],
                              best[2] if ctx.tolerance else target.payload(layer))
    return best


def _trials(codecs: tuple, count: int) -> tuple:
    """The codecs to try on a layer of ``count`` values (all of them when forced)."""
    if len(codecs) > 1 and {"cm1", "cm2"} & set(codecs) and count > BASELINE_TRIAL_LIMIT:
        return tuple(c for c in codecs if c != "varint-brotli")
    return codecs


def _config_bytes(codec) -> bytes:
    config = {k: v for k, v in codec.get_config().items() if k != "id"}
    return json.dumps(config, sort_keys=True).encode() if config else b""


def make_patch(base: Net | None, target: Net, tolerance: float | None = None, *,
               codec: str | None = None, history: Net | None = None,
               workers: int | None = None, verify: bool = True, progress=None) -> bytes:
    """A patch that rebuilds ``target`` from ``base`` (``None``: an intra patch).

    ``tolerance``: every rebuilt weight is within this absolute distance of the
    target's (the engine's decoding); ``None`` makes the rebuild byte-exact.
    ``codec`` forces one registered codec for every layer (default: the
    smallest per layer). ``history`` is the base's predecessor, used as
    context; a client then needs it too. With ``verify`` every layer is decoded as a
    reader decodes it, in the worker that encoded it, and the packed patch read
    back as a reader reads it (``selfcheck``): what applying it would check.
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
    skeleton_codec, skeleton_data = encode_skeleton(stream, base_stream)
    header.skeleton.CopyFrom(patch_pb2.Section(codec=skeleton_codec, stored_size=len(skeleton_data)))
    header.skeleton_size = len(stream)

    jobs = [(ctx, target, layer, codecs, verify) for layer in target.layers if layer.has_params]
    sections, result = [skeleton_data], hashlib.sha256()
    lossless, pos = tolerance is None, 0
    encoded = bounded_map(_encode_layer, jobs, worker_count(workers), lambda job: job[2].nbytes)
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
    if verify:   # with each layer's check in _encode_layer: what applying the patch checks
        selfcheck.check_structure(patch, base, history, target)
    return patch

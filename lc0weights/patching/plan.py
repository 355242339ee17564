"""A patch's plan: every size and field it declares checked before anything is decoded.

:func:`plan_patch` reads the header and skeleton of an opened patch and checks
them against the limits of docs/FORMAT.md, against each other, and against the
base and history: what comes out (:class:`Plan`) lists the layers to rebuild,
their base layers, codecs and chunks, and allocating from it is safe. A base
that is still arriving (:class:`~lc0weights.net_arriving.ArrivingNet`) has its
layers looked up as they come in and the whole checked once it is in
(:func:`check_arrived_base`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .. import container
from .. import encodings as enc
from .. import residuals as res
from ..codecs import get_codec
from ..errors import MissingHistoryError, NetFormatError, PatchFormatError, WrongBaseError
from ..net import DEFAULT_MAX_SIZE, Layer, Net
from ..net_arriving import ArrivingNet
from ..proto import patch_pb2
from ..wire import find_skeleton_layers
from .chunks import chunk_sections, total_escapes
from .layers import LayerContext, pairs_with_base, value_count
from .limits import INTRA_ALLOWANCE, INTRA_VALUES_PER_BYTE, MAX_CODEC_CONFIG, MAX_RESULT_SIZE, MAX_SKELETON_FIELDS, SKELETON_CAP
from .skeleton import decode_skeleton, skeleton_stream


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


def check_ids(header, base: Net | None, history: Net | None, base_arriving: bool = False):
    if header.base_id and not base_arriving:      # an arriving base is checked once it has arrived
        if base is None:
            raise WrongBaseError(f"this patch needs base net {header.base_id.hex()}; none was given")
        if base.id != header.base_id.hex():
            raise WrongBaseError(f"this patch is for base net {header.base_id.hex()[:16]}..., "
                                 f"not {base.id[:16]}...")
    if header.history_id and (history is None or history.id != header.history_id.hex()):
        raise MissingHistoryError(f"this patch also needs net {header.history_id.hex()} "
                                  "(the base's predecessor) as context")


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
class Plan:
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


PENDING = object()                 # a base layer not looked up yet (the base is arriving)


def base_layer_of(plan: Plan, index: int) -> Layer | None:
    """Layer ``index``'s base layer; from an arriving base, once it has arrived."""
    found = plan.base_layers[index]
    if found is PENDING:
        found = plan.ctx.base_layer(plan.layers[index], plan.header.layers[index])
        plan.base_layers[index] = found
    return found


def while_arriving(header, base) -> bool:
    """Whether the rebuild can start before ``base`` has arrived in full: the skeleton
    must be readable without the base's (see docs/FORMAT.md, "Skeleton")."""
    return isinstance(base, ArrivingNet) and header.skeleton.codec == "brotli" \
        and header.skeleton_size <= SKELETON_CAP


def plan_patch(source: container.PatchSource, base: Net | None, history: Net | None,
          max_size: int | None, complete: bool = True) -> Plan:
    """Check every size the patch declares before anything is allocated from it.

    The result size against ``max_size``; the skeleton against a cap and the
    base's; each layer's payload against its base layer (delta layers, whose
    bytes together cannot exceed the base's) or against its section's stored
    bytes (intra layers); see docs/FORMAT.md, "Limits". With ``complete``
    false (inspecting without the base), what needs the base is skipped.
    """
    header = source.header
    _check_header_fields(header)
    arriving = base if header.base_id and while_arriving(header, base) else None
    if isinstance(base, ArrivingNet) and arriving is None and header.base_id:
        base = base.complete()
    if complete:
        check_ids(header, base, history, base_arriving=arriving is not None)
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
    plan = Plan(header)
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


def _check_layer_sizes(plan: Plan, base: Net | None) -> None:
    """Delta layers are bounded by the base, intra layers by their stored bytes. The
    base layers of an arriving base are looked up as they arrive (:func:`_base_layer`)
    and their total checked once it has (:func:`_check_arrived_base`)."""
    intra_values, intra_stored = 0, 0
    for layer, lp in zip(plan.layers, plan.header.layers):
        if plan.arriving is not None and pairs_with_base(lp):
            plan.base_layers.append(PENDING)
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


def _check_delta_bytes(plan: Plan, base: Net | None) -> None:
    delta_bytes = sum(base_layer.nbytes for base_layer in plan.base_layers if base_layer is not None)
    if base is not None and delta_bytes > len(base.raw):
        raise PatchFormatError("the patch pairs more bytes with base layers than the base has")


def check_arrived_base(plan: Plan) -> None:
    """An arriving base, once in: the net the patch names, and every layer paired as declared."""
    base = plan.arriving.complete()
    check_ids(plan.header, base, plan.ctx.history)
    for index in range(len(plan.layers)):
        base_layer_of(plan, index)
    _check_delta_bytes(plan, base)

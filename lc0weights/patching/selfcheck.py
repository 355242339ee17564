"""The encoder's check of its own patch: what ``apply_patch`` would do, without a second pass.

``make_patch`` used to apply every patch it made (a full decode of the net, a
rebuilt copy in memory, its sha256) and, for a lossy patch, measure the result
against the target again. The same guarantee, split where the work already is:

* :func:`check_layer` runs in the worker that just encoded a layer: it decodes
  the chosen section with the decoder's own function (``decode._decode_layer``,
  the codec built from the section's id and configuration as a reader builds
  it, the base layer found from ``base_shift`` as a reader finds it) and
  requires the rebuilt bytes to equal what the encoder meant: the target's
  payload (lossless) or the codes the residuals proved within the tolerance
  under every engine decoding (lossy; see ``residuals``). The proof is not
  redone here: each tolerance check runs once per weight, in the encoder.
* :func:`check_structure` reads the packed patch as a reader does (``_plan``:
  header fields, ids, every declared size, the skeleton decoded) and requires
  the layers the skeleton describes to be the target's layers (index, path,
  encoding, size, dims, range: everything the decoder derives a layer's
  context from, so the per-layer decodes above are the decodes a reader runs)
  and the skeleton's bytes to be the target's bytes between the payloads.

Together: the bytes a reader rebuilds are, piece by piece, the bytes the
encoder hashed into ``result_id`` (lossless: the target's own bytes, whose
hash is ``target_id``), which is what applying the patch would have checked.
"""
from __future__ import annotations

from .. import container
from ..codecs import get_codec
from ..errors import VerificationError
from ..net import Layer, Net
from .decode import _config, _decode_layer, _plan


def check_layer(ctx, layer: Layer, lp, data: bytes, expected) -> None:
    """Decode one layer's section as a reader would; it must rebuild ``expected`` exactly."""
    base_layer = ctx.base_layer(layer, lp)
    codec = get_codec(lp.section.codec, _config(lp.section))
    rebuilt = _decode_layer((ctx, layer, lp, base_layer, codec, data))
    if rebuilt != memoryview(expected).cast("B"):
        raise VerificationError(f"internal error: layer {layer.path} does not decode to what was "
                                f"encoded (codec {lp.section.codec})")


def _shape(layer: Layer) -> tuple:
    return (layer.index, layer.path, layer.encoding, layer.nbytes, layer.codable, layer.count,
            layer.dims, layer.min_bits, layer.max_bits)


def check_structure(patch: bytes, base: Net | None, history: Net | None, target: Net) -> None:
    """The patch, read as a reader reads it, places every layer where the target has it."""
    with container.open_patch(patch) as source:
        plan = _plan(source, base, history, None)
        layers = [layer for layer in target.layers if layer.has_params]
        if [_shape(l) for l in plan.layers] != [_shape(l) for l in layers]:
            raise VerificationError("internal error: the patch's skeleton describes other layers")
        src, pos = 0, 0
        raw = memoryview(target.raw)
        for cut, layer in zip(plan.cuts, layers):
            if plan.body[src:cut] != raw[pos:layer.span.params_start]:
                raise VerificationError(f"internal error: the skeleton differs before layer {layer.path}")
            src, pos = cut, layer.span.params_end
        if plan.body[src:] != raw[pos:]:
            raise VerificationError("internal error: the skeleton differs after the last layer")

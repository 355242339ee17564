"""How far a rebuilt net is from its target, under every engine decoding."""
from __future__ import annotations

from collections.abc import Iterable
from itertools import zip_longest

from .. import encodings as enc
from .. import residuals as res
from ..errors import VerificationError
from ..net import Layer, Net
from .layers import target_of


# -- measuring -----------------------------------------------------------------------

def max_error(approx: Net, target: Net) -> float:
    """The largest absolute difference of any decoded weight (nets of one layout)."""
    return max_layer_error(((layer, approx.raw) for layer in approx.layers),
                           ((layer, target.raw) for layer in target.layers))


def _payload(layer: Layer, data):
    return memoryview(data)[layer.span.params_start:layer.span.params_end]


def max_layer_error(approx: Iterable[tuple[Layer, bytes]], target: Iterable[tuple[Layer, bytes]]) -> float:
    """:func:`max_error` over two nets given layer by layer, in file order.

    Each item is ``(layer, data)``, the layer's span located in ``data`` (a
    whole raw net, or the layer's own message from a
    :class:`~lc0weights.net_stream.NetStream`): one layer of each net is held
    at a time. Both sequences are read to their end, so a rebuilt net streamed
    in is checked whole. Raises :class:`VerificationError` when the nets'
    layer lists differ (in count, else at the first layer that differs in
    shape); infinite when a layer that is not whole elements differs.
    """
    worst, outcome = 0.0, None
    count_a = count_t = 0
    for a, t in zip_longest(approx, target):
        count_a += a is not None
        count_t += t is not None
        if a is None or t is None or outcome is not None:
            continue
        (la, da), (lt, dt) = a, t
        if la.path != lt.path or la.count != lt.count or la.codable != lt.codable:
            outcome = VerificationError(f"layer {lt.path} differs in shape")
        elif not lt.codable:
            if bytes(_payload(la, da)) != bytes(_payload(lt, dt)):
                outcome = float("inf")
        else:
            worst = max(worst, res.max_error(enc.codes(la.encoding, _payload(la, da)), target_of(la),
                                             enc.codes(lt.encoding, _payload(lt, dt)), target_of(lt)))
    if count_a != count_t:
        raise VerificationError("the nets have different layer lists")
    if isinstance(outcome, VerificationError):
        raise outcome
    return worst if outcome is None else outcome

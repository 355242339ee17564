"""How far a rebuilt net is from its target, under every engine decoding."""
from __future__ import annotations



from .. import residuals as res
from ..errors import (VerificationError)
from ..net import Net
from .layers import target_of


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
        worst = max(worst, res.max_error(approx.codes(a), target_of(a), target.codes(t), target_of(t)))
    return worst

"""The patch functions the distribution layer uses, in one place.

The codecs (numba and its compiled kernels: a third of a second and 90 MB)
are imported when a patch is first made or applied, not with the client.

It also gives the one spot that turns a rebuilt net into a checked
:class:`~lc0weights.net.Net`.
"""
from __future__ import annotations

import hashlib

from ..errors import VerificationError
from ..net import Net
from ..console import counting_bar, progress_bar


def make_patch(base: Net | None, target: Net, tolerance: float | None = None,
               codec: str | None = None, history: Net | None = None) -> bytes:
    from .. import patch as _patch      # loaded on first use: a fetch of full nets never needs it
    return _patch.make_patch(base, target, tolerance=tolerance, codec=codec, history=history,
                             progress=lambda layers, total: counting_bar(layers, total, "encoding"))


def apply_patch(base: Net | None, patch: bytes, desc: str = "decoding",
                max_size: int | None = None, history: Net | None = None) -> bytes:
    """Rebuild a net, with a progress bar over the decoding when on a terminal."""
    from .. import patch as _patch
    return _patch.apply_patch(base, patch, history=history, max_size=max_size,
                              progress=lambda chunks, total: progress_bar(chunks, total, 0, desc))


def checked_net(raw: bytes, expected_id: str, what: str) -> Net:
    """A net from rebuilt raw bytes, after checking they hash to ``expected_id``."""
    checked_id(hashlib.sha256(raw).hexdigest(), expected_id, what)
    return Net(raw, what)


def checked_id(actual: str, expected_id: str, what: str) -> None:
    """Refuse a rebuilt net whose id (``actual``) is not ``expected_id``."""
    if actual != expected_id:
        raise VerificationError(f"{what}: rebuilt net has id {actual[:16]}..., "
                                f"expected {expected_id[:16]}...")

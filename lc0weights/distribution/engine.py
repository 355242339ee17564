"""The patch functions the distribution layer uses, looked up when first needed.

Keeping the lookup in one place lets the transport, index and routing code be
used (and tested) on their own, and gives one spot that turns a rebuilt net
into a checked :class:`~lc0weights.net.Net`.
"""
from __future__ import annotations

import hashlib

from ..errors import VerificationError
from ..net import Net


def make_patch(base: Net | None, target: Net, tolerance: float | None = None,
               codec: str | None = None) -> bytes:
    import lc0weights
    return lc0weights.make_patch(base, target, tolerance=tolerance, codec=codec)


def apply_patch(base: Net | None, patch: bytes, desc: str = "decoding",
                max_size: int | None = None) -> bytes:
    """Rebuild a net, with a progress bar over the decoding when on a terminal."""
    import lc0weights
    from .download import progress_bar
    return lc0weights.apply_patch(base, patch, max_size=max_size,
                                  progress=lambda chunks, total: progress_bar(chunks, total, 0, desc))


def read_patch_info(patch: bytes):
    import lc0weights
    return lc0weights.read_patch_info(patch)


def checked_net(raw: bytes, expected_id: str, what: str) -> Net:
    """A net from rebuilt raw bytes, after checking they hash to ``expected_id``."""
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected_id:
        raise VerificationError(f"{what}: rebuilt net has id {actual[:16]}..., "
                                f"expected {expected_id[:16]}...")
    return Net(raw, what)

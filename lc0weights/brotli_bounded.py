"""Brotli decompression with a bound on the output: what a patch's container and its
codecs use on bytes they have not verified (a brotli bomb stops at the bound)."""
from __future__ import annotations

import brotli

from .errors import PatchFormatError


def decompress_limited(data, limit: int) -> bytes:
    """brotli-decompress, refusing output beyond ``limit`` bytes (no bombs)."""
    limit = min(int(limit), 1 << 40)          # a bound, not a size: never past what brotli takes
    try:
        d = brotli.Decompressor()
        out = d.process(bytes(data), output_buffer_limit=limit + 1)
        if len(out) > limit or not d.is_finished():
            raise PatchFormatError("brotli stream is larger than declared or incomplete")
        return out
    except brotli.error as e:
        raise PatchFormatError(f"corrupt brotli stream ({e})") from None

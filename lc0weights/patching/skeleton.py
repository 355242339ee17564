"""The skeleton: a net's bytes with every layer payload cut out, coded against the base's."""
from __future__ import annotations


import brotli
import numpy as np

from ..codecs.varint_brotli import decompress_limited, leb128
from ..errors import (NetFormatError, PatchFormatError)
from ..net import SPILL_MIN, Net
from ..proto import patch_pb2
from ..wire import read_varint
from .limits import SKELETON_CAP


# -- skeleton: the net's bytes with every layer payload cut out ----------------------

def skeleton_stream(net: Net) -> bytes:
    """Cut count, cut offsets (varint deltas), then the bytes between payloads."""
    cuts, pieces, pos, removed = [], [], 0, 0
    for layer in net.layers:
        if not layer.has_params:
            continue
        s, e = layer.span.params_start, layer.span.params_end
        pieces.append(net.raw[pos:s])
        cuts.append(s - removed)
        removed += e - s
        pos = e
    pieces.append(net.raw[pos:])
    deltas = np.diff(np.array(cuts, np.int64), prepend=0).astype(np.uint64)
    return leb128(np.array([len(cuts)], np.uint64)) + leb128(deltas) + b"".join(pieces)


def _xor(a: bytes, b: bytes) -> bytes:
    return (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()


# A base at least this large (raw) is read while the rebuild starts (``net_arriving``): the
# skeleton is then coded on its own, readable before the base has arrived, for a few hundred
# bytes more on a patch of a hundred megabytes.
STANDALONE_SKELETON_MIN = SPILL_MIN


def encode_skeleton(stream: bytes, base_stream: bytes | None, base_size: int = 0) -> tuple[str, bytes]:
    """(codec, bytes) of a skeleton stream: the smaller of brotli alone and brotli of its XOR
    with the base's (same length only), except against a base of
    :data:`STANDALONE_SKELETON_MIN` raw bytes or more, where it stands alone."""
    options = [("brotli", brotli.compress(stream, quality=11))]
    if base_stream is not None and len(base_stream) == len(stream) and base_size < STANDALONE_SKELETON_MIN:
        options.append(("brotli-xor-base", brotli.compress(_xor(stream, base_stream), quality=11)))
    return min(options, key=lambda o: len(o[1]))


def skeleton_limit(base_stream) -> int:
    """The largest skeleton a patch may declare, given the base's skeleton stream."""
    return SKELETON_CAP + 2 * (len(base_stream) if base_stream is not None else 0)


def decode_skeleton(section: patch_pb2.Section, data, size: int, base_stream,
                    layers: int | None = None) -> tuple[list[int], memoryview]:
    """The cut offsets and the skeleton bytes; ``layers``, if given, is the cut count to expect."""
    if section.codec not in ("brotli", "brotli-xor-base"):
        raise PatchFormatError(f"unknown skeleton codec {section.codec!r}")
    if size > skeleton_limit(base_stream):
        raise PatchFormatError(f"skeleton of {size:,} bytes declared, more than any net has")
    stream = decompress_limited(data, size)
    if len(stream) != size:
        raise PatchFormatError("skeleton is shorter than declared")
    if section.codec == "brotli-xor-base":
        if base_stream is None or len(base_stream) != size:
            raise PatchFormatError("skeleton is coded against a base skeleton of another size")
        stream = _xor(stream, base_stream)
    view = memoryview(stream)
    try:
        n, pos = read_varint(view, 0, len(view))
        if n > size or (layers is not None and n != layers):
            raise PatchFormatError("skeleton declares another number of cuts than the header has layers")
        cuts, at = [], 0
        for _ in range(n):
            delta, pos = read_varint(view, pos, len(view))
            at += delta
            cuts.append(at)
    except NetFormatError as e:
        raise PatchFormatError(f"corrupt skeleton ({e})") from None
    body = view[pos:]
    if cuts and cuts[-1] > len(body):
        raise PatchFormatError("skeleton cut offset past its end")
    return cuts, body

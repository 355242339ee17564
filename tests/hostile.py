"""Hostile patches built from scratch or from real ones, and a way to measure one case.

Shared by the hostile-input tests and ``tools/bench_hostile.py``. Everything
here builds bytes without ever holding what they claim to expand to.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import resource
import struct
import time

import brotli
import numpy as np

from lc0weights import container
from lc0weights.codecs import LayerInfo, get_codec
from lc0weights.proto import lc0net_pb2, patch_pb2

FLOAT16 = 2


# -- protobuf wire bytes by hand ---------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_field(number: int, body: bytes, extra: int = 0) -> bytes:
    """A length-delimited field whose declared length counts ``extra`` bytes not in ``body``."""
    return tag(number, 2) + varint(len(body) + extra) + body


def one_layer_skeleton(payload_bytes: int, encoding: int = FLOAT16) -> tuple[bytes, int]:
    """The skeleton stream of a net with one layer (``weights.ip2_val_b``) of that many bytes.

    Returns (stream, skeleton body length); the payload itself is never built.
    """
    number = lc0net_pb2.Weights.DESCRIPTOR.fields_by_name["ip2_val_b"].number
    before_cut = tag(1, 5) + struct.pack("<f", -1.0) + tag(2, 5) + struct.pack("<f", 1.0) \
        + tag(3, 2) + varint(payload_bytes)
    after_cut = tag(4, 0) + varint(encoding)
    layer = length_field(number, before_cut + after_cut, payload_bytes)
    head = tag(1, 5) + struct.pack("<I", 0x1C0) + tag(10, 2) + varint(len(layer) + payload_bytes)
    body = head + layer
    cut = len(head) + (len(layer) - len(before_cut + after_cut)) + len(before_cut)
    return varint(1) + varint(cut) + body, len(body)


def intra_patch(skeleton_stream: bytes, skeleton_body: int, payload_bytes: int,
                layer_section: bytes, codec: str = "cm1", residual=patch_pb2.FLOAT_IMAGE,
                codec_config: bytes = b"", skeleton_size: int | None = None) -> bytes:
    """A sealed intra patch with one layer; the checksum and section sizes are right."""
    skeleton = brotli.compress(skeleton_stream)
    header = patch_pb2.PatchHeader(
        target_id=hashlib.sha256(b"no such net").digest(), mode=patch_pb2.LOSSLESS,
        result_size=skeleton_body + payload_bytes,
        skeleton=patch_pb2.Section(codec="brotli", stored_size=len(skeleton)),
        skeleton_size=len(skeleton_stream) if skeleton_size is None else skeleton_size)
    header.layers.append(patch_pb2.LayerPatch(
        intra=True, residual=residual,
        section=patch_pb2.Section(codec=codec, stored_size=len(layer_section), codec_config=codec_config)))
    return container.pack(header, [skeleton, layer_section])


def zero_layer_patch(elements: int) -> bytes:
    """A patch of a few hundred bytes declaring one float16 layer of ``elements`` zero residuals.

    The cm1 stream of a thousand zeros is 5 bytes and decodes as any number of them
    until it runs out: the declared count, not the stream, would set the cost.
    """
    stream, body = one_layer_skeleton(2 * elements)
    section = get_codec("cm1").encode(np.zeros(1000, np.int64), LayerInfo(count=1000))
    return intra_patch(stream, body, 2 * elements, section)


def brotli_bomb(size: int, piece: bytes = b"\x08\x01") -> bytes:
    """brotli of ``size`` bytes of a repeated tiny field, compressed a megabyte at a time."""
    compressor, out = brotli.Compressor(quality=5), []
    block = piece * ((1 << 20) // len(piece))
    for _ in range(size // len(block)):
        out.append(compressor.process(block))
    out.append(compressor.finish())
    return b"".join(out)


def skeleton_bomb_patch(size: int) -> bytes:
    """A patch whose skeleton is ``size`` bytes of tiny unknown fields (cut count 0)."""
    stream_head = varint(0) + tag(1, 5) + struct.pack("<I", 0x1C0)
    compressor = brotli.Compressor(quality=5)
    parts = [compressor.process(stream_head)]
    block = tag(2, 0) + b"\x01"
    block = block * ((1 << 20) // len(block))
    filled = len(stream_head)
    while filled + 2 <= size:
        piece = block[:(size - filled) // 2 * 2]
        parts.append(compressor.process(piece))
        filled += len(piece)
    parts.append(compressor.finish())
    skeleton = b"".join(parts)
    header = patch_pb2.PatchHeader(
        target_id=hashlib.sha256(b"no such net").digest(), mode=patch_pb2.LOSSLESS,
        result_size=filled - 1, skeleton_size=filled,
        skeleton=patch_pb2.Section(codec="brotli", stored_size=len(skeleton)))
    return container.pack(header, [skeleton])


# -- resealing real patches ---------------------------------------------------------------

def split(patch: bytes) -> tuple[patch_pb2.PatchHeader, list[bytes]]:
    header, sections = container.unpack(patch)
    copy = patch_pb2.PatchHeader()
    copy.CopyFrom(header)
    return copy, [bytes(s) for s in sections]


def reseal(header: patch_pb2.PatchHeader, sections: list[bytes], fix_sizes: bool = True) -> bytes:
    """Pack again with a valid checksum; section sizes follow the sections unless told not to."""
    if fix_sizes:
        header.skeleton.stored_size = len(sections[0])
        for lp, data in zip(header.layers, sections[1:]):
            lp.section.stored_size = len(data)
    return container.pack(header, sections)


def with_header(patch: bytes, change) -> bytes:
    """A real patch with ``change(header)`` applied, resealed."""
    header, sections = split(patch)
    change(header)
    return reseal(header, sections)


# -- measuring one case in a child process ---------------------------------------------

def run_measured(fn, *args) -> dict:
    """Run ``fn(*args)`` in a forked child: its outcome, seconds and peak memory growth.

    The growth is the child's peak resident size less the parent's at the fork,
    so it is what the case itself costs. The outcome is ``("ok", repr)`` or
    ``(exception type name, message, is an Lc0WeightsError)``. Call only while
    no other thread is running (forking copies one thread).
    """
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:                                          # the child
        os.close(read_fd)
        try:
            from lc0weights import Lc0WeightsError
            before = peak_rss()
            try:
                result = ("ok", repr(fn(*args))[:200], True)
            except BaseException as e:                    # reported, not raised: the parent judges
                result = (type(e).__name__, str(e)[:500], isinstance(e, Lc0WeightsError))
            with os.fdopen(write_fd, "wb") as f:
                pickle.dump((result, peak_rss() - before), f)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _, status, _ = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    outcome, growth = pickle.loads(data) if data else (("killed", f"child status {status}", False), -1)
    return {"outcome": outcome, "seconds": seconds, "peak_growth": growth}


def peak_rss() -> int:
    """This process's peak resident size so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

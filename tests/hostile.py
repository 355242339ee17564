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

from netfactory import varint

FLOAT16 = 2


# -- protobuf wire bytes by hand ---------------------------------------------------------

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
    so it is what the case itself costs. The outcome is ``("ok", value, True)``
    (plain data as it is, anything else as its repr) or
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
                value = fn(*args)
                plain = isinstance(value, (dict, list, tuple, int, str, type(None)))
                result = ("ok", value if plain else repr(value)[:200], True)
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


# -- structure-aware mutations of real patches ------------------------------------------

_SIZES = (0, 1, 2, 255, 1 << 16, (1 << 31) - 1, 1 << 31, 1 << 32, 2 << 30, 16 << 30, (1 << 63) - 1,
          1 << 63, (1 << 64) - 1)
_CONFIGS = (b"", b"{}", b'{"quality": 5}', b'{"quality": "x"}', b'{"quality": 1e999}', b'{"q": 1}',
            b"[]", b"null", b"{", b'{"quality": [1, 2]}', b"[" * 5000, b'{"a": ' * 300 + b"1" + b"}" * 300,
            b"\xff", b'{"quality": -7}', b'{"quality": 99999999999999999999999}')
_CODECS = ("varint-brotli", "cm1", "stored", "brotli", "", "zstd", "cm2")


def _some_size(rng, current: int) -> int:
    choice = rng.integers(4)
    if choice == 0:
        return int(_SIZES[rng.integers(len(_SIZES))])
    if choice == 1:
        return max(0, current + int(rng.integers(-3, 4)))
    if choice == 2:
        return current * int(rng.integers(2, 1000))
    return int(rng.integers(0, 1 << 62)) >> int(rng.integers(0, 62))


def _flip(rng, data: bytes, max_flips: int = 4) -> bytes:
    if not data:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8))
    out = bytearray(data)
    for _ in range(int(rng.integers(1, max_flips + 1))):
        kind = rng.integers(5)
        pos = int(rng.integers(len(out))) if out else 0
        if kind == 0 and out:
            out[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1 and out:
            out[pos] = int(rng.integers(256))
        elif kind == 2:
            del out[pos:pos + int(rng.integers(1, 16))]
        elif kind == 3:
            out[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        else:
            del out[int(rng.integers(len(out) + 1)):]
    return bytes(out)


def _mutate_header(rng, header) -> str:
    layers = header.layers
    lp = layers[int(rng.integers(len(layers)))] if len(layers) else None
    kind = int(rng.integers(16))
    if kind == 0:
        header.result_size = _some_size(rng, header.result_size)
        return "result_size"
    if kind == 1:
        header.skeleton_size = _some_size(rng, header.skeleton_size)
        return "skeleton_size"
    if kind == 2:
        header.skeleton.codec = ("brotli", "brotli-xor-base", "cm1", "", "zz")[int(rng.integers(5))]
        return "skeleton codec"
    if kind == 3:
        field = ("base_id", "target_id", "result_id", "history_id")[int(rng.integers(4))]
        value = getattr(header, field)
        setattr(header, field, (b"", value[:16], bytes(32), _flip(rng, value, 1))[int(rng.integers(4))])
        return field
    if kind == 4:
        header.mode = int(rng.integers(0, 4))
        header.tolerance = float((0.0, -1.0, np.nan, np.inf, 1e-300, 1e300, 2.0 ** -10,
                                  2.0 ** -17)[int(rng.integers(8))])
        return "mode/tolerance"
    if lp is None:
        return "nothing"
    if kind == 5:
        lp.section.codec = _CODECS[int(rng.integers(len(_CODECS)))]
        return "layer codec"
    if kind == 6:
        lp.section.codec_config = _CONFIGS[int(rng.integers(len(_CONFIGS)))]
        return "codec config"
    if kind == 7:
        lp.base_shift = (lp.base_shift + int(rng.integers(-3, 4)), int(rng.integers(-1 << 40, 1 << 40)),
                         -(1 << 63), (1 << 63) - 1)[int(rng.integers(4))]
        return "base_shift"
    if kind == 8:
        lp.escapes = _some_size(rng, lp.escapes)
        return "escapes"
    if kind == 9:
        lp.quant_width = (0, 1, 2, 3, 65535, 131071, 131072, 1 << 40, (1 << 64) - 1)[int(rng.integers(9))]
        return "quant_width"
    if kind == 10:
        lp.residual = int(rng.integers(0, 6))
        return "residual"
    if kind == 11:
        lp.intra = not lp.intra
        return "intra"
    return ""                                             # a section or the skeleton instead


def mutate(patch: bytes, rng) -> tuple[bytes, str]:
    """One structure-aware mutation of a real patch, resealed; and what was changed."""
    header, sections = split(patch)
    what = _mutate_header(rng, header)
    fix_sizes = True
    if not what:
        kind = int(rng.integers(7))
        if kind <= 2 and len(sections) > 1:               # one layer's section
            i = int(rng.integers(1, len(sections)))
            if kind == 0:
                sections[i] = _flip(rng, sections[i])
            elif kind == 1:
                sections[i] = sections[int(rng.integers(1, len(sections)))]
            else:
                sections[i] = sections[i][:1] + bytes(int(rng.integers(0, 64)))
            what = "layer section"
        elif kind <= 4:                                   # the skeleton stream, recompressed
            stream = brotli.decompress(sections[0])
            stream = _flip(rng, stream, 3)
            sections[0] = brotli.compress(stream, quality=5)
            if rng.integers(3):
                header.skeleton_size = len(stream)
            what = "skeleton stream"
        elif kind == 5:                                   # drop, repeat or swap layer entries
            i, j = (int(x) for x in rng.integers(len(header.layers), size=2))
            entries = list(header.layers)
            body = sections[1:]
            op = int(rng.integers(3))
            if op == 0:
                del entries[i], body[i]
            elif op == 1:
                entries.insert(j, entries[i])
                body.insert(j, body[i])
            else:
                entries[i], entries[j] = entries[j], entries[i]
                body[i], body[j] = body[j], body[i]
            del header.layers[:]
            header.layers.extend(entries)
            sections = sections[:1] + body
            what = "layer list"
        else:                                             # stored sizes that disagree with the file
            fix_sizes = False
            lp = header.layers[int(rng.integers(len(header.layers)))]
            lp.section.stored_size = _some_size(rng, lp.section.stored_size)
            what = "stored_size"
    return reseal(header, sections, fix_sizes), what

"""The patch file: fixed prefix, header, sections, checksum (docs/FORMAT.md).

    offset  size  field
    0       8     magic  b"LC0PATCH"
    8       2     format version, uint16 little-endian (1)
    10      2     flags, uint16 little-endian (0; a reader refuses others)
    12      4     header length H, uint32 little-endian
    16      H     PatchHeader, protobuf (proto/patch.proto), brotli-compressed
    16+H    ...   sections in header order: skeleton, then one per layer
    end-32  32    sha256 of every byte before it

Everything is checked before anything is allocated from it: the checksum
first, then that the declared section sizes add up to the file.
"""
from __future__ import annotations

import hashlib
import struct

import brotli
from google.protobuf.message import DecodeError

from .codecs.varint_brotli import decompress_limited
from .errors import PatchFormatError
from .proto.patch_pb2 import PatchHeader

MAGIC = b"LC0PATCH"
VERSION = 1
_PREFIX = struct.Struct("<8sHHI")
CHECKSUM_SIZE = 32
MAX_HEADER = 64 << 20


def pack(header: PatchHeader, sections: list[bytes]) -> bytes:
    """Assemble a patch; section sizes in ``header`` must match ``sections``."""
    head = brotli.compress(header.SerializeToString(deterministic=True), quality=11)
    body = b"".join([_PREFIX.pack(MAGIC, VERSION, 0, len(head)), head, *sections])
    return body + hashlib.sha256(body).digest()


def unpack(patch: bytes) -> tuple[PatchHeader, list[memoryview]]:
    """Check a patch and split it into its header and section views."""
    patch = memoryview(patch)
    if len(patch) < _PREFIX.size + CHECKSUM_SIZE:
        raise PatchFormatError(f"not an lc0weights patch: only {len(patch)} bytes")
    magic, version, flags, head_len = _PREFIX.unpack_from(patch)
    if magic != MAGIC:
        raise PatchFormatError("not an lc0weights patch (bad magic)")
    if version != VERSION or flags:
        raise PatchFormatError(f"patch format version {version} (flags {flags}) is not "
                               f"readable by this build, which reads version {VERSION}")
    body = patch[:-CHECKSUM_SIZE]
    if hashlib.sha256(body).digest() != bytes(patch[-CHECKSUM_SIZE:]):
        raise PatchFormatError("patch checksum mismatch: the file is truncated or corrupt")
    start = _PREFIX.size
    if head_len > min(MAX_HEADER, len(body) - start):
        raise PatchFormatError("patch header length runs past the end of the file")
    header = PatchHeader()
    try:
        header.ParseFromString(decompress_limited(body[start:start + head_len], MAX_HEADER))
    except DecodeError as e:
        raise PatchFormatError(f"unreadable patch header ({e})") from None
    pos = start + head_len
    sizes = [header.skeleton.stored_size] + [layer.section.stored_size for layer in header.layers]
    if pos + sum(sizes) != len(body):
        raise PatchFormatError("declared section sizes do not add up to the patch length")
    sections = []
    for size in sizes:
        sections.append(body[pos:pos + size])
        pos += size
    return header, sections

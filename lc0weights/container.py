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

A patch file's sections are read with ``os.pread``: worker threads decode
different layers at once, and a shared file position would let one thread's
seek land between another's seek and read.
"""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import brotli
from google.protobuf.message import DecodeError

from .codecs.varint_brotli import decompress_limited
from .errors import PatchFormatError
from .proto.patch_pb2 import PatchHeader

MAGIC = b"LC0PATCH"
VERSION = 1
_PREFIX = struct.Struct("<8sHHI")
CHECKSUM_SIZE = 32
# A real header takes about 20 bytes per layer (2 KB for a 105-layer net); a
# megabyte holds 50,000 layers, far past any lc0 net, and keeps the parsed
# message small whatever a hostile header repeats.
MAX_HEADER = 1 << 20
MAX_LAYERS = 1 << 16


def pack(header: PatchHeader, sections: list[bytes]) -> bytes:
    """Assemble a patch; section sizes in ``header`` must match ``sections``."""
    head = brotli.compress(header.SerializeToString(deterministic=True), quality=11)
    body = b"".join([_PREFIX.pack(MAGIC, VERSION, 0, len(head)), head, *sections])
    return body + hashlib.sha256(body).digest()


class PatchSource:
    """A checked patch: its header and its sections, read one at a time.

    Made by :func:`open_patch` from bytes or from a file path. For a file only
    the header and the section being decoded are in memory, so applying a
    large patch costs no copy of it.
    """

    def __init__(self, header: PatchHeader, offsets: list[tuple[int, int]], reader, close=None):
        self.header = header
        self.size = offsets[-1][0] + offsets[-1][1] + CHECKSUM_SIZE   # bytes in the patch
        self._offsets = offsets
        self._read = reader
        self._close = close

    def close(self) -> None:
        if self._close:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def section(self, index: int) -> bytes:
        """Section ``index``: 0 is the skeleton, ``i + 1`` the i-th layer."""
        start, size = self._offsets[index]
        data = self._read(start, size)
        if len(data) != size:
            raise PatchFormatError("patch file changed or shrank while it was read")
        return data


def _parse(prefix: bytes, total: int, read_header) -> tuple[PatchHeader, list[tuple[int, int]]]:
    """Check the fixed prefix, parse the header, and lay out the sections."""
    if total < _PREFIX.size + CHECKSUM_SIZE:
        raise PatchFormatError(f"not an lc0weights patch: only {total} bytes")
    magic, version, flags, head_len = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise PatchFormatError("not an lc0weights patch (bad magic)")
    if version != VERSION or flags:
        raise PatchFormatError(f"patch format version {version} (flags {flags}) is not "
                               f"readable by this build, which reads version {VERSION}")
    body_len = total - CHECKSUM_SIZE
    start = _PREFIX.size
    if head_len > min(MAX_HEADER, body_len - start):
        raise PatchFormatError("patch header length runs past the end of the file")
    header = PatchHeader()
    try:
        header.ParseFromString(decompress_limited(read_header(start, head_len), MAX_HEADER))
    except DecodeError as e:
        raise PatchFormatError(f"unreadable patch header ({e})") from None
    if len(header.layers) > MAX_LAYERS:
        raise PatchFormatError(f"patch header lists {len(header.layers):,} layers, "
                               f"more than the {MAX_LAYERS:,} a net can plausibly have")
    pos = start + head_len
    sizes = [header.skeleton.stored_size] + [layer.section.stored_size for layer in header.layers]
    if pos + sum(sizes) != body_len:
        raise PatchFormatError("declared section sizes do not add up to the patch length")
    offsets = []
    for size in sizes:
        offsets.append((pos, size))
        pos += size
    return header, offsets


def open_patch(patch) -> PatchSource:
    """Check a patch (bytes-like, or a path to a patch file) and open it for reading."""
    if isinstance(patch, (str, os.PathLike)):
        return _open_file(Path(patch))
    view = memoryview(patch)
    if len(view) >= CHECKSUM_SIZE and \
            hashlib.sha256(view[:-CHECKSUM_SIZE]).digest() != bytes(view[-CHECKSUM_SIZE:]):
        _parse(bytes(view[:_PREFIX.size]), len(view), lambda s, n: bytes(view[s:s + n]))  # says what is wrong
        raise PatchFormatError("patch checksum mismatch: the file is truncated or corrupt")
    header, offsets = _parse(bytes(view[:_PREFIX.size]), len(view), lambda s, n: bytes(view[s:s + n]))
    return PatchSource(header, offsets, lambda s, n: view[s:s + n])


def _open_file(path: Path) -> PatchSource:
    try:
        f = open(path, "rb")
        total = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise PatchFormatError(f"{path}: cannot read patch ({e.strerror})") from None
    digest = hashlib.sha256()
    remaining = max(0, total - CHECKSUM_SIZE)
    while remaining:
        chunk = f.read(min(remaining, 1 << 20))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    trailer = f.read(CHECKSUM_SIZE)

    def read(start, size):
        return _read_at(f.fileno(), start, size)

    try:
        prefix = read(0, _PREFIX.size)
        if total >= _PREFIX.size + CHECKSUM_SIZE and digest.digest() != trailer:
            _parse(prefix, total, read)
            raise PatchFormatError(f"{path}: patch checksum mismatch: the file is truncated or corrupt")
        header, offsets = _parse(prefix, total, read)
    except BaseException:
        f.close()
        raise
    return PatchSource(header, offsets, read, f.close)


def _read_at(fd: int, start: int, size: int) -> bytes:
    """``size`` bytes at ``start``, without moving a shared file position (thread-safe)."""
    pieces, got = [], 0
    while got < size:
        piece = os.pread(fd, size - got, start + got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def unpack(patch: bytes) -> tuple[PatchHeader, list[memoryview]]:
    """Check a patch held in memory and split it into its header and section views."""
    source = open_patch(patch)
    return source.header, [source.section(i) for i in range(len(source._offsets))]

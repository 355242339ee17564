"""The patch file: fixed prefix, header, sections, checksum (docs/FORMAT.md).

    offset  size  field
    0       8     magic  b"LC0PATCH"
    8       2     format version, uint16 little-endian (1, or 2 when a layer is chunked)
    10      2     flags, uint16 little-endian (0; a reader refuses others)
    12      4     header length H, uint32 little-endian
    16      H     PatchHeader, protobuf (proto/patch.proto), brotli-compressed
    16+H    ...   sections in header order: skeleton, then one per layer
                  (a chunked layer's section is its chunks' streams back to back)
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

from .brotli_bounded import decompress_limited
from .errors import PatchFormatError
from .proto.patch_pb2 import PatchHeader

MAGIC = b"LC0PATCH"
VERSION = 2               # the newest this build reads; it writes 1 when no layer is chunked
VERSIONS = (1, 2)
# Version 2 splits layers of more than PatchHeader.chunk_size values; a reader
# refuses smaller chunk sizes, which keeps the chunk count of any layer (and the
# work per chunk, of which there is a little) in proportion to its bytes.
MIN_CHUNK_SIZE = 1 << 12
_PREFIX = struct.Struct("<8sHHI")
CHECKSUM_SIZE = 32
# A real header takes about 20 bytes per layer (2 KB for a 105-layer net); a
# megabyte holds 50,000 layers, far past any lc0 net, and keeps the parsed
# message small whatever a hostile header repeats.
MAX_HEADER = 1 << 20
MAX_LAYERS = 1 << 16


def pack(header: PatchHeader, sections: list[bytes]) -> bytes:
    """Assemble a patch; section sizes in ``header`` must match ``sections`` (a
    section may be passed as several consecutive pieces: a chunked layer's streams)."""
    head = brotli.compress(header.SerializeToString(deterministic=True), quality=11)
    version = 2 if header.chunk_size else 1
    pieces = [_PREFIX.pack(MAGIC, version, 0, len(head)), head, *sections]
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return b"".join([*pieces, digest.digest()])      # one copy of the patch, not two


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

    def section_part(self, index: int, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` inside section ``index`` (one chunk of a layer)."""
        start, total = self._offsets[index]
        if offset < 0 or size < 0 or offset + size > total:
            raise PatchFormatError("chunk runs past the end of its layer's section")
        data = self._read(start + offset, size)
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
    if version not in VERSIONS or flags:
        raise PatchFormatError(f"patch format version {version} (flags {flags}) is not "
                               f"readable by this build, which reads versions 1 to {VERSION}")
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
    _check_chunking(version, header)
    pos = start + head_len
    sizes = [header.skeleton.stored_size] + [layer.section.stored_size for layer in header.layers]
    if pos + sum(sizes) != body_len:
        raise PatchFormatError("declared section sizes do not add up to the patch length")
    offsets = []
    for size in sizes:
        offsets.append((pos, size))
        pos += size
    return header, offsets


def _check_chunking(version: int, header: PatchHeader) -> None:
    """Version 1 has no chunks; version 2 names a chunk size a reader accepts."""
    if version == 1 and (header.chunk_size or any(layer.chunks for layer in header.layers)):
        raise PatchFormatError("a version 1 patch with chunked layers")
    if version == 2 and header.chunk_size < MIN_CHUNK_SIZE:
        raise PatchFormatError(f"chunk size {header.chunk_size} is below the "
                               f"{MIN_CHUNK_SIZE:,} values a reader accepts")


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
        return read_at(f.fileno(), start, size)

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


def read_at(fd: int, start: int, size: int) -> bytes:
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

"""Unpacking a net file: a gzip stream inflated within a size limit, into memory or a spill file.

Everything here reads bytes nobody has verified yet: the output is bounded by
the caller's limit (a gzip bomb stops there), a buffer is sized from a gzip
trailer only up to a cap, and every failure is a :class:`NetFormatError`
naming its source. A large net can be unpacked into an unnamed, space-reserved
file (:func:`spill_file`) and mapped, instead of held on the heap.
"""
from __future__ import annotations

import errno
import hashlib
import mmap
import os
import queue
import tempfile
import threading
from pathlib import Path

from . import gzipio
from .errors import NetFormatError

# The largest raw net read or rebuilt unless the caller says otherwise: lc0 nets are
# 150-400 MB raw today; twice the largest float32 transformer stays under it.
DEFAULT_MAX_SIZE = 2 << 30
GZIP_MAGIC = gzipio.MAGIC


def size_limit(max_size: int | None) -> int:
    return DEFAULT_MAX_SIZE if max_size is None else max(0, int(max_size))


def too_large(source: str, limit: int) -> NetFormatError:
    return NetFormatError(f"{source}: the net is larger than the {limit:,} bytes allowed")


def maybe_gunzip(data: bytes, source: str = "<bytes>", max_size: int | None = None):
    """``data`` itself, or its gzip stream decompressed; either at most ``max_size`` bytes raw."""
    limit = size_limit(max_size)
    if data[:2] != GZIP_MAGIC:
        if len(data) > limit:
            raise too_large(source, limit)
        return data
    return gunzip_limited(data, limit, source)


def gunzip_limited(data, limit: int, source: str = "<bytes>") -> bytearray:
    """Decompress a (possibly multi-member) gzip stream of at most ``limit`` bytes.

    Output past ``limit`` stops the decompression there: a gzip bomb costs
    ``limit`` bytes of memory, never what it expands to. The output buffer is
    sized once from the trailer (capped by ``limit``), so there is no copy.
    """
    view = memoryview(data).cast("B")
    hint = int.from_bytes(view[-4:], "little") if len(view) >= 18 else 0
    sink = RawSink(min(hint, limit), limit, source, hash_raw=False)
    for start in range(0, len(view), gzipio.READ_SIZE):
        sink.feed(view[start:start + gzipio.READ_SIZE])
    return sink.finish()


class RawSink:
    """Gunzips a stream handed over in pieces into one buffer, bounded by ``limit``.

    ``size_hint`` sizes the buffer up front (the declared raw size, or a
    trailer's); it grows past that only up to ``limit``. Every error is a
    :class:`NetFormatError` naming ``source``. With ``hash_raw`` the raw bytes
    are hashed on the way (:attr:`raw_id`), so nothing is read twice.
    """

    def __init__(self, size_hint: int, limit: int, source: str = "<bytes>", hash_raw: bool = True):
        self.source = source
        self.limit = limit
        self.out = bytearray(max(0, min(size_hint, limit)))
        self.pos = 0
        self._inflater = gzipio.Inflater(limit, multi_member=True, hash_raw=hash_raw)

    def feed(self, data) -> None:
        try:
            pieces = self._inflater.feed(data)
        except gzipio.TooLarge:
            raise too_large(self.source, self.limit) from None
        except ValueError as e:
            raise NetFormatError(f"{self.source}: {e}") from None
        except gzipio.GzipError as e:
            raise NetFormatError(f"{self.source}: corrupt gzip stream ({e})") from None
        for piece in pieces:
            self._store(piece)
            self.pos += len(piece)

    def _store(self, piece) -> None:
        end = self.pos + len(piece)
        if end > len(self.out):
            self.out.extend(bytes(end - len(self.out)))
        self.out[self.pos:end] = piece

    def _check_end(self) -> None:
        try:
            self._inflater.finish()
        except ValueError as e:
            raise NetFormatError(f"{self.source}: {e}") from None

    def finish(self) -> bytearray:
        """The raw bytes, once the stream ended on a whole member."""
        self._check_end()
        del self.out[self.pos:]
        return self.out

    @property
    def raw_id(self) -> str:
        return self._inflater.hexdigest()


class _SpillWriter:
    """Writes the pieces handed to :meth:`put` (immutable, in order) to the open file ``fd``
    and hashes them, on a thread of its own: writing and hashing a large net take about as
    long as gunzipping it, and all three let go of the GIL, so on two cores they overlap."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error: OSError | None = None
        self._pieces: queue.Queue = queue.Queue(maxsize=gzipio.PIECES_IN_FLIGHT)
        self._sha256 = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="net spill", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._pieces.get()) is not None:
            if self.error is not None:
                continue                      # drain: the reader stops at its next put
            self._sha256.update(piece)
            view = memoryview(piece)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as e:
                self.error = e

    def put(self, piece: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._pieces.put(piece)

    def close(self) -> None:
        """Wait for every piece put; raise the write's error if one failed."""
        if self._thread.is_alive():
            self._pieces.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error

    def hexdigest(self) -> str:
        self.close()
        return self._sha256.hexdigest()


class _FileSink(RawSink):
    """A :class:`RawSink` whose raw bytes go to the open file ``fd`` instead, written and
    hashed on a thread of its own (:attr:`raw_id`; :meth:`close` whatever happens)."""

    def __init__(self, fd: int, limit: int, source: str):
        super().__init__(0, limit, source, hash_raw=False)
        self._writer = _SpillWriter(fd)

    def _store(self, piece) -> None:
        self._writer.put(piece)

    def finish(self) -> None:
        self._check_end()
        self._writer.close()

    @property
    def raw_id(self) -> str:
        return self._writer.hexdigest()

    def close(self) -> None:
        try:
            self._writer.close()
        except OSError:
            pass                              # raised where it mattered (finish or put)


def trailer_size(f, source: str, limit: int) -> int:
    """The raw size a gzip file's trailer declares, as a hint (it is the length mod 2^32),
    capped so a corrupt file cannot make us allocate gigabytes up front (nets compress far
    less than 16x); leaves ``f`` at its start."""
    stored = os.fstat(f.fileno()).st_size
    if stored < 18:
        raise NetFormatError(f"{source}: truncated gzip stream")
    f.seek(-4, os.SEEK_END)
    size = min(int.from_bytes(f.read(4), "little"), 16 * stored, limit)
    f.seek(0)
    return size


def feed_file(f, sink: RawSink) -> None:
    for block in iter(lambda: f.read(gzipio.READ_SIZE), b""):
        sink.feed(block)


def gunzip_file(f, source: str, size: int, limit: int) -> bytearray:
    """Decompress a gzip file into one buffer sized from its trailer: no second copy."""
    sink = RawSink(size, limit, source, hash_raw=False)
    feed_file(f, sink)
    return sink.finish()


def cannot_unpack(source: str, folder: Path, e: OSError) -> NetFormatError:
    return NetFormatError(f"{source}: cannot unpack into {folder} ({e.strerror})")


def spill_file(folder: Path, size: int, source: str) -> int:
    """An unnamed file in ``folder`` (open for writing) for the raw bytes of ``source``,
    ``size`` bytes reserved where the file system can, so a full disk fails here and not
    halfway. It loses its name as soon as it is made, so nothing is left behind whatever
    happens after that (a crash before it leaves a temp file the cache sweeps)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".spill-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise cannot_unpack(source, folder, e) from None
    try:
        os.unlink(name)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):    # not on this file system
                raise
            os.ftruncate(fd, size)
    except OSError as e:
        os.close(fd)
        raise cannot_unpack(source, folder, e) from None
    return fd


def gunzip_to_map(f, source: str, size: int, limit: int, folder: Path):
    """Decompress a gzip file into a :func:`spill_file` in ``folder``; (its read-only map,
    the raw bytes' id). Its space is freed with the map."""
    fd = spill_file(folder, size, source)
    try:
        sink = _FileSink(fd, limit, source)
        try:
            feed_file(f, sink)
            sink.finish()
        except OSError as e:
            raise cannot_unpack(source, folder, e) from None
        finally:
            sink.close()
        if sink.pos == 0:
            return b"", None
        return mmap.mmap(fd, sink.pos, access=mmap.ACCESS_READ), sink.raw_id
    finally:
        os.close(fd)

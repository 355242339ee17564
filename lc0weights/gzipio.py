"""Every gzip read and write of lc0weights and the service, through ISA-L when it is installed.

python-isal (``isal``) inflates about twice and deflates five to ten times as
fast as the standard library's zlib; without it the standard zlib is used and
nothing else changes. Both write one standard gzip member (no name, mtime 0)
that lc0 (zlib's ``gzread``) and lczero-client (Go's ``compress/gzip``) read.

Determinism: the gzip bytes of a raw net depend only on the raw bytes, the
level and the library: the writer feeds the compressor fixed blocks of
:data:`BLOCK` bytes whatever sizes it is handed, because ISA-L's output
depends on how its input is split. The same raw net gives the same ``.pb.gz``
on every machine with the same library; ISA-L and zlib give different (equally
valid) bytes. Nothing identifies a net by its gzip bytes: a net id is the
sha256 of the raw protobuf, and a published object's sha256 is the one its
signed record lists for the bytes the publisher wrote.

Reading is hostile-data safe in the callers' hands: :class:`Inflater` bounds
the output it produces and says whether another member follows, and each
caller keeps its own rule about trailing members.
"""
from __future__ import annotations

import hashlib
import zlib

try:                                   # pragma: no branch - one or the other per install
    from isal import isal_zlib as _backend
    BACKEND = "isal"
    # Level 1 of ISA-L compresses LINEAR16 nets as well as zlib's 6 at many times the speed;
    # 3 buys a few bytes more for what is published once and downloaded many times.
    FAST_LEVEL, SMALL_LEVEL = 1, 3
    GzipError: tuple[type[Exception], ...] = (zlib.error, _backend.error)
except ImportError:                    # pragma: no cover - exercised where isal is missing
    _backend = zlib
    BACKEND = "zlib"
    FAST_LEVEL, SMALL_LEVEL = 1, 6
    GzipError = (zlib.error,)

MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
BLOCK = 1 << 20                        # compressor input block (fixed: see the module docstring)
# File reads and inflate output pieces. Larger pieces would inflate beside busy Python threads
# with fewer waits for the GIL (a large base arrived 0.06-0.1 s sooner with 8 MiB), but each
# thread's malloc arena then keeps several of them: 165 MB more peak memory for a BT4 apply.
READ_SIZE = 1 << 20
PIECES_IN_FLIGHT = 16                  # pieces waiting between two threads, at most


def decompressobj():
    """A gzip decompressor with zlib's interface (``decompress(data, max_length)``,
    ``unconsumed_tail``, ``unused_data``, ``eof``); raises one of :data:`GzipError`."""
    return _backend.decompressobj(_GZIP_WBITS)


class GzipWriter:
    """Writes one gzip member of everything given to :meth:`write` into ``fileobj``.

    Closing writes the trailer; it does not close ``fileobj``. A writer left
    without :meth:`close` (an exception in a ``with`` block) writes nothing more.
    """

    def __init__(self, fileobj, level: int = FAST_LEVEL):
        self.fileobj = fileobj
        self._deflate = _backend.compressobj(level, _backend.DEFLATED, _GZIP_WBITS)
        self._pending = bytearray()
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self._pending:
            take = min(len(view), BLOCK - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == BLOCK:
                self.fileobj.write(self._deflate.compress(self._pending))
                self._pending = bytearray()
        whole = len(view) - len(view) % BLOCK
        for start in range(0, whole, BLOCK):
            self.fileobj.write(self._deflate.compress(view[start:start + BLOCK]))
        self._pending += view[whole:]
        return size

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pending:
            self.fileobj.write(self._deflate.compress(self._pending))
        self.fileobj.write(self._deflate.flush())
        self._pending = bytearray()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.close()
        else:
            self.closed = True


class _Collect:
    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(bytes(data))


def gzip_bytes(raw, level: int = SMALL_LEVEL) -> bytes:
    """``raw`` as one deterministic gzip member (see the module docstring)."""
    out = _Collect()
    with GzipWriter(out, level) as z:
        z.write(raw)
    return b"".join(out.parts)


def write_gzip(fileobj, raw, level: int = FAST_LEVEL) -> None:
    """Gzip ``raw`` straight into ``fileobj``, with no second copy of it in memory."""
    with GzipWriter(fileobj, level) as z:
        z.write(raw)


class TooLarge(Exception):
    """The stream inflates past the limit the caller set."""


class Inflater:
    """Incremental gunzip of a stream handed over in pieces, hashing the raw bytes it yields.

    ``limit`` bounds the raw bytes (a gzip bomb stops there, :class:`TooLarge`).
    ``multi_member`` says whether a second member may follow the first (lc0 and
    Go read such files; some readers do not); zero padding after the last member
    is always allowed. :meth:`feed` returns raw pieces; :meth:`finish` checks
    the stream ended on a member's trailer. Corrupt data raises one of
    :data:`GzipError`; data after the stream that is not allowed raises
    ``ValueError``.
    """

    def __init__(self, limit: int, multi_member: bool = True, hash_raw: bool = True):
        self.limit = limit
        self.multi_member = multi_member
        self.size = 0
        self.sha256 = hashlib.sha256() if hash_raw else None
        self._d = decompressobj()
        self._after_end = False          # the last member ended; only padding (or another member) may follow

    def feed(self, data) -> list:
        pieces = []
        view = memoryview(data).cast("B")
        if self._after_end:
            view = self._next_member(view)
            if not view:
                return pieces
        while True:
            want = min(READ_SIZE, self.limit + 1 - self.size)
            piece = self._d.decompress(view, want)
            self._take(piece, pieces)
            if self._d.eof:
                self._after_end = True
                view = self._next_member(memoryview(self._d.unused_data))
                if not view:
                    return pieces
                continue
            view = memoryview(self._d.unconsumed_tail)
            if not view and len(piece) < want:       # a full piece may leave output still held
                return pieces

    def _take(self, piece, pieces) -> None:
        if not piece:
            return
        self.size += len(piece)
        if self.size > self.limit:
            raise TooLarge(f"inflates past {self.limit:,} bytes")
        if self.sha256 is not None:
            self.sha256.update(piece)
        pieces.append(piece)

    def _next_member(self, view: memoryview) -> memoryview:
        """Skip zero padding after a member; a start of another member is allowed or refused."""
        while view and view[0] == 0:
            head = bytes(view[:1 << 16])
            view = view[len(head) - len(head.lstrip(b"\0")):]
        if view:
            if not self.multi_member:
                raise ValueError("data after the gzip stream")
            self._d = decompressobj()
            self._after_end = False
        return view

    def finish(self) -> None:
        """Raise ``ValueError`` unless the stream so far ends on a whole member (plus padding)."""
        if not self._after_end:
            raise ValueError("truncated gzip stream")

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()

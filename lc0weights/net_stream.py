"""Reading a net's layers in one forward pass, holding one layer at a time.

:class:`~lc0weights.net.Net` keeps the whole raw net in memory and finds its
layers in it. A caller that only needs to look at each layer once, in file
order (comparing a rebuilt net with a target, say), can instead walk the raw
bytes as they come (a file as it is gunzipped, a net as a patch rebuilds it):
:class:`NetStream` walks them with the same schema-guided rules as
:func:`~lc0weights.wire.find_layers` (same paths, same numbering, same errors)
and hands over each ``Weights.Layer`` message with its :class:`~lc0weights.net.Layer`,
located in that message's bytes. Everything else is skipped as it passes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

from . import encodings as enc
from . import gzipio
from .errors import Lc0WeightsError, NetFormatError
from .net import GZIP_MAGIC, MAGIC, Layer
from .net_unpack import size_limit, too_large
from .proto import lc0net_pb2
from .wire import _FIXED32, _FIXED64, _LENGTH, _VARINT, _message_fields, _parse_layer, _path

_COMPACT_AT = 1 << 20          # drop consumed bytes from the buffer past this


class _SourceFailed(Exception):
    """The pieces' source failed (a corrupt gzip, a patch that does not check out): passed on as it is."""

    def __init__(self, error: Lc0WeightsError):
        super().__init__(str(error))
        self.error = error


class _Forward:
    """A forward-only reader over pieces of bytes; ``pos`` counts bytes consumed."""

    def __init__(self, pieces: Iterable, hash_raw: bool):
        self._pieces = iter(pieces)
        self._buf = bytearray()
        self._at = 0
        self.pos = 0
        self.sha256 = hashlib.sha256() if hash_raw else None

    def _next_piece(self):
        """The next piece, hashed; None at the end."""
        try:
            piece = next(self._pieces, None)
        except Lc0WeightsError as e:
            raise _SourceFailed(e) from None
        if piece is not None and self.sha256 is not None:
            self.sha256.update(piece)
        return piece

    def _pull(self) -> bool:
        piece = self._next_piece()
        if piece is None:
            return False
        if self._at >= _COMPACT_AT or self._at == len(self._buf):
            del self._buf[:self._at]
            self._at = 0
        self._buf += piece
        return True

    def at_end(self) -> bool:
        while self._at == len(self._buf):
            if not self._pull():
                return True
        return False

    def varint(self, end: int | None) -> int:
        """One varint, which must end before ``end`` (the enclosing message's end)."""
        value = shift = 0
        while True:
            if (end is not None and self.pos >= end) or self.at_end():
                raise NetFormatError("truncated varint")
            b = self._buf[self._at]
            self._at += 1
            self.pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise NetFormatError("varint longer than 10 bytes")

    def read(self, n: int) -> bytearray:
        """The next ``n`` bytes, gathered straight into one buffer of that size."""
        out = bytearray(n)
        filled = 0
        while filled < n:
            if self.at_end():
                raise NetFormatError("protobuf field runs past the end of its message")
            take = min(n - filled, len(self._buf) - self._at)
            out[filled:filled + take] = self._buf[self._at:self._at + take]
            self._at += take
            filled += take
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        left = n
        while left:
            if self._at == len(self._buf):
                passed = self._pass_whole(left)
                if passed:
                    left -= passed
                    continue
            take = min(left, len(self._buf) - self._at)
            self._at += take
            left -= take
        self.pos += n

    def _pass_whole(self, left: int) -> int:
        """With nothing buffered, the next piece: passed over uncopied if the skip of ``left``
        bytes covers it (a layer's payload, when only its place is wanted; returns its
        length), else buffered (returns 0)."""
        piece = self._next_piece()
        if piece is None:
            raise NetFormatError("protobuf field runs past the end of its message")
        if len(piece) <= left:
            return len(piece)
        self._buf = bytearray(piece)
        self._at = 0
        return 0


class NetStream:
    """The layers of a raw net handed over as pieces, walked once, in file order.

    Iterate :meth:`layers` to the end: it yields ``(layer, message)`` for every
    ``Weights.Layer``, where ``message`` holds the layer message's bytes and
    ``layer.span`` is located in them (so ``message[span.params_start:
    span.params_end]`` is the payload). A caller that keeps the bytes itself
    (written to a file it maps, say) passes ``locate(path, start, end)``,
    which returns the layer's :class:`~lc0weights.wire.LayerSpan` from the
    message at ``start:end`` of the whole net once those bytes have passed;
    then ``message`` is None and no layer is copied. Only then are :attr:`size`,
    :attr:`id` (with ``hash_raw``) and the net's magic known and checked.
    Errors are :class:`NetFormatError` naming ``source``, worded as
    :class:`~lc0weights.net.Net` words them. The caller bounds the pieces'
    total (see :func:`file_pieces`).
    """

    def __init__(self, pieces: Iterable, source: str, hash_raw: bool = True, locate=None):
        self.source = source
        self._reader = _Forward(pieces, hash_raw)
        self._locate = locate
        self.size = None
        self._magic = None
        self._seen: dict[str, int] = {}

    @property
    def id(self) -> str:
        """The net id (sha256 of the raw bytes); known once :meth:`layers` is exhausted."""
        if self.size is None or self._reader.sha256 is None:
            raise RuntimeError("the net id is known only after a hashed stream was read to its end")
        return self._reader.sha256.hexdigest()

    def layers(self) -> Iterator[tuple[Layer, bytearray]]:
        try:
            for index, (span, message) in enumerate(self._walk(lc0net_pb2.Net.DESCRIPTOR, None, "", {})):
                yield Layer(index, span.path, span, enc.effective(span.encoding)), message
        except NetFormatError as e:
            raise NetFormatError(f"{self.source}: not an lc0 net ({e})") from None
        except _SourceFailed as e:
            raise e.error from None
        self.size = self._reader.pos
        if self.size == 0:
            raise NetFormatError(f"{self.source}: empty file, not an lc0 net")
        if self._magic != MAGIC:
            raise NetFormatError(f"{self.source}: not an lc0 net (no 0x1c0 magic at the start)")

    def _walk(self, descriptor, end: int | None, prefix: str, counters: dict):
        """Walk one message up to ``end`` (None: the top level, to the end of the stream)."""
        r = self._reader
        fields = _message_fields(descriptor)
        while (r.pos < end) if end is not None else not r.at_end():
            key = r.varint(end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise NetFormatError("field number 0 in protobuf data")
            if wire == _VARINT:
                r.varint(end)
            elif wire in (_FIXED32, _FIXED64):
                size = 4 if wire == _FIXED32 else 8
                self._check_room(size, end)
                if end is None and number == 1 and wire == _FIXED32:
                    self._magic = int.from_bytes(r.read(4), "little")     # the last one wins
                else:
                    r.skip(size)
            elif wire == _LENGTH:
                length = r.varint(end)
                self._check_room(length, end)
                entry = fields.get(number)
                if entry is None:
                    r.skip(length)
                    continue
                name, repeated, child = entry
                name = _path(prefix, name, repeated, counters)
                if child is None and self._locate is not None:
                    start = r.pos
                    r.skip(length)
                    yield self._locate(self._unique(name), start, start + length), None
                elif child is None:
                    message = r.read(length)
                    span = _parse_layer(message, self._unique(name), 0, length)
                    yield span, message
                else:
                    yield from self._walk(child, r.pos + length, name + ".", counters)
            else:
                raise NetFormatError(f"unsupported protobuf wire type {wire}")

    def _check_room(self, size: int, end: int | None) -> None:
        if end is not None and self._reader.pos + size > end:
            raise NetFormatError("protobuf field runs past the end of its message")

    def _unique(self, path: str) -> str:
        """A later occurrence of a path gets ``~N``, as :func:`~lc0weights.wire.find_layers` numbers it."""
        n = self._seen.get(path, 0)
        self._seen[path] = n + 1
        return f"{path}~{n}" if n else path


def file_pieces(path, max_size: int | None = None) -> Iterator:
    """The raw bytes of a ``.pb.gz`` or ``.pb`` file, as pieces, bounded as :meth:`Net.load` bounds them.

    Gzip is detected, not guessed; a gzip stream stops at ``max_size`` raw
    bytes (default :data:`~lc0weights.net.DEFAULT_MAX_SIZE`). Errors name the
    file as :meth:`Net.load` does.
    """
    source = str(path)
    limit = size_limit(max_size)
    try:
        with open(path, "rb") as f:
            if f.read(2) == GZIP_MAGIC:
                yield from _gunzip_pieces(f, source, limit)
                return
            if os.fstat(f.fileno()).st_size > limit:
                raise too_large(source, limit)
            f.seek(0)
            size = 0
            for block in iter(lambda: f.read(gzipio.READ_SIZE), b""):
                size += len(block)
                if size > limit:
                    raise too_large(source, limit)
                yield block
    except OSError as e:
        raise NetFormatError(f"{source}: cannot read ({e.strerror})") from None


def _gunzip_pieces(f, source: str, limit: int) -> Iterator:
    if os.fstat(f.fileno()).st_size < 18:
        raise NetFormatError(f"{source}: truncated gzip stream")
    f.seek(0)
    inflater = gzipio.Inflater(limit, multi_member=True, hash_raw=False)
    try:
        for block in iter(lambda: f.read(gzipio.READ_SIZE), b""):
            yield from inflater.feed(block)
        inflater.finish()
    except gzipio.TooLarge:
        raise too_large(source, limit) from None
    except ValueError as e:
        raise NetFormatError(f"{source}: {e}") from None
    except gzipio.GzipError as e:
        raise NetFormatError(f"{source}: corrupt gzip stream ({e})") from None

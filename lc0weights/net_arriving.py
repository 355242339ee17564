"""A large gzip net read while it is used: its layers become readable as they are gunzipped.

Gunzipping a 340 MB ``.pb.gz`` takes one core one and a half seconds even with
ISA-L, and a patch's rebuild used to wait for all of it. :func:`load_arriving`
starts the gunzip on threads of its own, into an unnamed file in a spill
folder (as :meth:`Net.load <lc0weights.net.Net.load>` spills a large net), and
returns at once an :class:`ArrivingNet`: :meth:`~ArrivingNet.layer_at` waits
until a layer's bytes are on disk, so a rebuild starts on the first layers
while the last ones are still being inflated.

Nothing about the net is trusted before it has arrived in full: its id (and
so whether it is the base a patch names) is known only from
:meth:`~ArrivingNet.complete`, which raises whatever the read ran into. The
file is mapped at the size the gzip trailer declares (checked against the
limit first, and its space reserved); a stream that inflates to any other
size (several members, or a corrupt trailer) stops with
:class:`SizeNotAsDeclared`, and the caller reads the net the ordinary way.
"""
from __future__ import annotations

import mmap
import os
import queue
import threading
from pathlib import Path

from . import gzipio
from .errors import NetFormatError
from .net import GZIP_MAGIC, SPILL_MIN, Layer, Net
from .net_unpack import size_limit, spill_file, trailer_size
from .net_stream import NetStream, file_pieces
from .wire import _parse_layer


class SizeNotAsDeclared(NetFormatError):
    """The gzip stream inflates to another size than its trailer declares: read it whole instead."""


def load_arriving(path, max_size: int | None = None, *, spill_dir) -> "Net | ArrivingNet":
    """The net at ``path``: an :class:`ArrivingNet` when it is a gzip file of at least
    :data:`~lc0weights.net.SPILL_MIN` bytes raw (by its trailer), else as ``Net.load``
    loads it with ``spill_dir``. Errors as ``Net.load``'s, some of them only when the
    arriving net is used."""
    path = Path(path)
    limit = size_limit(max_size)
    try:
        with open(path, "rb") as f:
            size = trailer_size(f, str(path), limit) if f.read(2) == GZIP_MAGIC else 0
    except OSError as e:
        raise NetFormatError(f"{path}: cannot read ({e.strerror})") from None
    if size < SPILL_MIN:
        return Net.load(path, max_size, spill_dir=spill_dir)
    return ArrivingNet(path, size, limit, Path(spill_dir))


class ArrivingNet:
    """A gzip net being gunzipped into a mapped spill file (see the module docstring).

    Reads as a :class:`~lc0weights.net.Net` reads for what has arrived
    (:meth:`codes`, :meth:`payload`, :meth:`release` on :attr:`raw`); its
    layer list and id only through :meth:`layer_at` and :meth:`complete`.
    """

    def __init__(self, path: Path, size: int, limit: int, folder: Path):
        self.source = str(path)
        self.raw_size = size
        self._limit = limit
        self._layers: list[Layer] = []
        self._done = False
        self._inflated = False                # the gunzip thread's last piece was taken
        self._error: Exception | None = None
        self._net: Net | None = None
        self._changed = threading.Condition()
        self._pieces: queue.Queue = queue.Queue(maxsize=gzipio.PIECES_IN_FLIGHT)
        self._fd = spill_file(folder, size, self.source)
        try:
            self.raw = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
        except OSError as e:
            os.close(self._fd)
            raise NetFormatError(f"{self.source}: cannot map its unpacked copy ({e.strerror})") from None
        threading.Thread(target=self._inflate, args=(path,), name="net gunzip", daemon=True).start()
        threading.Thread(target=self._walk, name="net spill", daemon=True).start()

    # -- reading what has arrived ---------------------------------------------------
    payload = Net.payload
    codes = Net.codes
    release = Net.release

    def layer_at(self, index: int) -> Layer | None:
        """Layer ``index`` once its bytes are on disk; None if the net has no such layer."""
        with self._changed:
            while len(self._layers) <= index and not self._done and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            return self._layers[index] if 0 <= index < len(self._layers) else None

    def complete(self) -> Net:
        """The whole net, once it has arrived and checked out as an lc0 net (id included)."""
        with self._changed:
            while not self._done and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise self._error
        return self._net

    @property
    def id(self) -> str:
        return self.complete().id

    # -- the two threads that bring it in ---------------------------------------------
    def _inflate(self, path: Path) -> None:
        """Gunzip the file into pieces for :meth:`_walk`; an error is handed on as a piece,
        and the last piece is always None."""
        try:
            for piece in file_pieces(path, self._limit):
                if self._error is not None:
                    return
                self._pieces.put(piece)
        except NetFormatError as e:
            self._pieces.put(e)
        finally:
            self._pieces.put(None)

    def _written(self):
        """The inflated pieces, each written to the spill file before it is passed on."""
        written = 0
        while (piece := self._pieces.get()) is not None:
            if isinstance(piece, Exception):
                raise piece
            if written + len(piece) > self.raw_size:
                raise SizeNotAsDeclared(f"{self.source}: inflates past the {self.raw_size:,} bytes "
                                        "its gzip trailer declares")
            view = memoryview(piece)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as e:
                raise NetFormatError(f"{self.source}: cannot unpack it ({e.strerror})") from None
            written += len(piece)
            yield piece
        self._inflated = True

    def _walk(self) -> None:
        stream = NetStream(self._written(), self.source, hash_raw=True,
                           locate=lambda path, start, end: _parse_layer(self.raw, path, start, end))
        try:
            for layer, _ in stream.layers():
                with self._changed:
                    self._layers.append(layer)
                    self._changed.notify_all()
            if stream.size != self.raw_size:
                raise SizeNotAsDeclared(f"{self.source}: inflates to {stream.size:,} bytes, not the "
                                        f"{self.raw_size:,} its gzip trailer declares")
            net = Net(self.raw, self.source)
            net._id = stream.id
        except Exception as e:            # noqa: BLE001 - handed to whoever waits on the net
            self._fail(e)
            return
        finally:
            os.close(self._fd)
        with self._changed:
            self._net, self._done = net, True
            self._changed.notify_all()

    def _fail(self, error: Exception) -> None:
        with self._changed:
            self._error = error if isinstance(error, NetFormatError) else \
                NetFormatError(f"{self.source}: cannot read it ({error})")
            self._changed.notify_all()
        while not self._inflated and self._pieces.get() is not None:
            pass                                  # let the gunzip thread see the error and end


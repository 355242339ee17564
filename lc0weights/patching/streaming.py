"""Decoding a patch while its bytes are still arriving.

A download stages an object into a file in order, from byte 0. An
:class:`ArrivingPatch` is told about each piece as it lands (it is the
download's *tap*: ``reset(staged)`` when the staged file starts or is
emptied, ``feed(chunk)`` for each piece) and gives the decoder a
:class:`~lc0weights.container.PatchSource` whose reads block until the bytes
they ask for have arrived. The decoder then rebuilds each layer as soon as its
section is in, so decoding overlaps the transfer instead of following it.

Nothing decoded this way is trusted early. The size and sha256 of the patch are
known before the download starts (a signed record lists them); the patch's own
trailing sha256 is checked here when the last byte arrives, the record's by
the download itself, and :meth:`ArrivingPatch.wait_verified` returns only
after both. The decoder is built for hostile patches anyway (every declared
size is checked before use), so decoding unverified bytes costs at most the
work of a bad route; the caller keeps the result only after the checks and the
rebuilt net's own id check.

Reads wait at most ``wait_seconds`` in all (the transfer's own deadline, which
bounds the download thread too); a failed transfer wakes every reader with its
error, and :meth:`ArrivingPatch.cancel` makes the transfer stop at its next
piece when decoding failed first.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time

from .. import container
from ..errors import PatchFormatError


class TransferCancelled(Exception):
    """Raised into the download by its tap once the decoder no longer wants the bytes."""


class ArrivingPatch:
    """A patch of known ``size`` being staged to a file; see the module docstring."""

    def __init__(self, size: int, name: str, wait_seconds: float):
        if size < container.CHECKSUM_SIZE:
            raise PatchFormatError(f"{name}: declared patch size {size} is too small")
        self.size = size
        self.name = name
        self._deadline = time.monotonic() + wait_seconds
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._arrived = 0
        self._body_hash = hashlib.sha256()       # the bytes before the trailing checksum
        self._trailer = bytearray()
        self._error: BaseException | None = None
        self._cancelled = False
        self._complete = False

    # -- the download's side (the tap) --------------------------------------------------
    def reset(self, staged) -> None:
        """The staged file starts (again) at byte 0: read from it from now on."""
        with self._cond:
            self._check_cancelled()
            self._close_fd()
            self._fd = _open_same_file(staged)
            self._arrived = 0
            self._body_hash = hashlib.sha256()
            self._trailer = bytearray()
            self._cond.notify_all()

    def feed(self, chunk) -> None:
        """``chunk`` was written (and flushed) at the end of the staged file."""
        with self._cond:
            self._check_cancelled()
            body_left = self.size - container.CHECKSUM_SIZE - self._arrived
            view = memoryview(chunk)
            if body_left > 0:
                self._body_hash.update(view[:body_left])
            self._trailer += view[max(0, body_left):]
            self._arrived += len(view)
            if self._arrived > self.size:
                raise PatchFormatError(f"{self.name}: more than the {self.size:,} bytes declared")
            self._cond.notify_all()

    def complete(self) -> None:
        """The download returned: every byte is staged and the record's sha256 checked."""
        with self._cond:
            self._complete = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The download failed: every waiting and later read raises ``error``."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def cancel(self) -> None:
        """The decoder gave up: the download stops at its next piece, readers stop waiting."""
        with self._cond:
            self._cancelled = True
            self.fail(TransferCancelled(f"{self.name}: decoding stopped"))

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise TransferCancelled(f"{self.name}: decoding stopped")

    # -- the decoder's side ---------------------------------------------------------------
    def read(self, start: int, size: int) -> bytes:
        """``size`` bytes at ``start``, once they have arrived (thread-safe)."""
        end = start + size
        if start < 0 or size < 0 or end > self.size:
            return b""                           # PatchSource reports the short read
        with self._cond:
            self._wait(lambda: self._arrived >= end)
            fd = self._fd
            return container.read_at(fd, start, size)

    def source(self) -> container.PatchSource:
        """The patch's header and section layout, parsed as soon as the header has arrived."""
        prefix = self.read(0, container._PREFIX.size)
        header, offsets = container._parse(prefix, self.size, self.read)
        return container.PatchSource(header, offsets, self.read)

    def wait_verified(self) -> None:
        """Return once the whole patch is in and both checksums match; raise otherwise."""
        with self._cond:
            self._wait(lambda: self._complete)
            if self._arrived != self.size:
                raise PatchFormatError(f"{self.name}: {self._arrived:,} bytes arrived, "
                                       f"{self.size:,} declared")
            if self._body_hash.digest() != bytes(self._trailer):
                raise PatchFormatError(f"{self.name}: patch checksum mismatch: the file is "
                                       "truncated or corrupt")

    def _wait(self, ready) -> None:
        while not ready():
            if self._error is not None:
                raise self._error
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise PatchFormatError(f"{self.name}: bytes did not arrive within the transfer's "
                                       "deadline")
            self._cond.wait(min(left, 1.0))
        if self._error is not None and not self._complete:
            raise self._error

    def close(self) -> None:
        with self._cond:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_same_file(staged) -> int:
    """A read descriptor of its own on the staged file (its own open file, so closing
    it never drops the writer's lock), checked to be that very file."""
    fd = os.open(staged.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    mine, theirs = os.fstat(fd), os.fstat(staged.file.fileno())
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        os.close(fd)
        raise PatchFormatError(f"{staged.path}: the staged file was replaced while it was written")
    return fd

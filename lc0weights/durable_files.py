"""Files that appear whole or not at all: temp file, fsync, rename.

A net written on a client or a publisher is a few hundred megabytes. The
fsync that makes it durable would wait for all of it at the end, after the
last byte is written, so :class:`WriteBehind` hands what has been written so
far to the disk on a helper thread every :data:`WRITE_BEHIND` bytes; the
closing fsync then waits for the last piece only. A write error the helper
meets is raised by :meth:`WriteBehind.finish` (the kernel reports a writeback
error to one fsync per open file only, so it must not be lost there).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from pathlib import Path

# Bytes written between two hand-overs to the disk: large enough that the
# helper's fdatasync calls are few, small enough that the last one is short.
WRITE_BEHIND = 32 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


class WriteBehind:
    """Flushes an open file to disk behind its writer; :meth:`finish` makes it durable."""

    def __init__(self, file: io.BufferedWriter, every: int = WRITE_BEHIND):
        self.file, self.every = file, every
        self._unsynced = 0
        self._helper: threading.Thread | None = None
        self._error: OSError | None = None

    def wrote(self, size: int) -> None:
        self._unsynced += size
        if self._unsynced < self.every or (self._helper is not None and self._helper.is_alive()):
            return
        self._unsynced = 0
        self.file.flush()
        self._helper = threading.Thread(target=self._sync, name="write-behind", daemon=True)
        self._helper.start()

    def _sync(self) -> None:
        try:
            os.fdatasync(self.file.fileno())
        except OSError as e:
            self._error = e

    def wait(self) -> None:
        """Wait for the helper (before the file is closed: it syncs by descriptor)."""
        if self._helper is not None:
            self._helper.join()
            self._helper = None

    def finish(self) -> None:
        """Flush and fsync the file; raises a write error the helper met."""
        self.wait()
        if self._error is not None:
            raise self._error
        self.file.flush()
        os.fsync(self.file.fileno())


class _WriteBehindFile(io.BufferedWriter):
    def write(self, data) -> int:
        size = super().write(data)
        self.write_behind.wrote(size)
        return size


@contextlib.contextmanager
def atomic_file(path):
    """A binary file object that becomes ``path`` only if the block succeeds.

    Written to a temp file in the same folder, fsynced (behind the writes, see
    :class:`WriteBehind`), then renamed over ``path``; on any error the temp
    file is removed and ``path`` is untouched. The file gets the usual
    permissions (0666 less the umask), not the private ones of a temp file, so
    a web server can read what is published.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.fchmod(fd, FILE_MODE)
        f = _WriteBehindFile(io.FileIO(fd, "wb"))
        f.write_behind = WriteBehind(f)
        with f:
            try:
                yield f
                f.write_behind.finish()
            finally:
                f.write_behind.wait()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def place_file(tmp, path) -> None:
    """Rename the complete, fsynced file ``tmp`` onto ``path``, with the permissions
    :func:`atomic_file` gives (a staged download is private until then)."""
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` by temp file, fsync and rename."""
    with atomic_file(path) as f:
        f.write(data)

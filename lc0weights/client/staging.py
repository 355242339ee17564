"""Where downloads sit until they are verified, and sweeping what killed processes left.

An object is written to a *staged file* and renamed to its destination only
after its size and sha256 check out. With a partial folder, the staged file is
``<partial_dir>/<sha256>.part``: named by the hash it must have, so a partial
is only ever resumed into the object it was started for, and it survives a
killed process so the next run resumes it. Every staged file is held under an
exclusive ``flock`` for as long as a process writes it; the kernel drops the
lock when the process dies, which is how a sweep tells an abandoned file from
one a running process owns. A second process that finds a partial locked
downloads to its own private temp file instead of waiting.

Work folders (``.fetch-*``) carry a locked ``.lock`` file for the same reason.
Nothing here follows a symlink: files are opened with ``O_NOFOLLOW`` and
sweeps skip links. A partial with more than one hard link is refused: its data
is also a file outside the partial folder, which resuming would write through.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ..durable_files import WriteBehind
from ..repository.errors import DownloadError

SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
PARTIAL_SUFFIX = ".part"
WORK_PREFIX = ".fetch-"
LOCK_NAME = ".lock"
TEMP_MIN_AGE = 3600.0                  # sweep: temp files and work folders untouched for an hour
PARTIAL_MIN_AGE = 7 * 24 * 3600.0      # sweep: partials are kept a week, for resuming
DEAD_OWNER_GRACE = 2.0                 # sweep: a work folder whose lock is free, after this many seconds
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def check_free_space(folder, needed: int) -> None:
    """Refuse (DownloadError) when ``folder``'s file system has fewer than ``needed`` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise DownloadError(f"{folder}: cannot read its free space ({e.strerror})") from None
    if free < needed:
        raise DownloadError(f"not enough free space in {folder}: {needed:,} bytes needed, {free:,} free; "
                            "free some space or use a cache folder on another disk")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (it may have been renamed or deleted)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


class StagedFile:
    """A locked file an object is written to, hashed as it grows, renamed into place once verified.

    A *tap* (an object with ``reset(staged_file)`` and ``feed(bytes)``) sees
    every byte of the object once, in order, as it is staged: ``reset`` when the
    file starts at byte 0 (opened, or emptied because the server restarted the
    transfer), then the bytes resumed from an earlier run, then each appended
    chunk, flushed to the file before the tap hears of it. It lets a caller gunzip or decode the
    object while it arrives instead of reading the file again afterwards. An
    exception from the tap on resumed bytes empties the partial (it cannot be
    the object); on appended bytes it propagates to the transfer.
    """

    def __init__(self, fd: int, path: Path, resumable: bool, tap=None):
        self.path = path
        self.resumable = resumable          # kept after a network failure, for the next run
        self.file = os.fdopen(fd, "r+b")
        self.write_behind = WriteBehind(self.file)
        self._hash = hashlib.sha256()
        self.size = 0
        self.tap = tap

    @classmethod
    def open(cls, dest: Path, sha256: str, partial_dir=None, limit: int | None = None,
             tap=None) -> StagedFile:
        """The partial for ``sha256`` in ``partial_dir`` (resumed), or a private temp beside ``dest``.

        A partial longer than ``limit`` is emptied before use. ``tap``: see the class.
        """
        if not SHA256_HEX.match(sha256):
            raise DownloadError(f"{sha256!r}: not a sha256 (64 lowercase hex digits)")
        if partial_dir is not None:
            staged = cls._open_partial(Path(partial_dir) / (sha256 + PARTIAL_SUFFIX))
            if staged is not None:
                staged.tap = tap
                if tap is not None:
                    tap.reset(staged)
                staged._adopt(limit)
                return staged
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)          # a fresh private file: never contended
        staged = cls(fd, Path(name), resumable=False, tap=tap)
        if tap is not None:
            tap.reset(staged)
        return staged

    @classmethod
    def _open_partial(cls, path: Path) -> StagedFile | None:
        if path.parent.is_symlink():
            raise DownloadError(f"{path.parent}: the partial download folder is a symlink; refused")
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise DownloadError(f"{path}: a symlink where a partial download belongs; "
                                        "remove it") from None
                raise DownloadError(f"{path}: cannot open ({e.strerror})") from None
            held = os.fstat(fd)
            if not stat.S_ISREG(held.st_mode):
                os.close(fd)
                raise DownloadError(f"{path}: not a regular file where a partial download belongs; remove it")
            if held.st_nlink > 1:
                # A hard link shares its data with a file elsewhere: writing would change that file.
                os.close(fd)
                raise DownloadError(f"{path}: a partial download with {held.st_nlink} hard links (it is "
                                    "also a file elsewhere); refused: remove it")
            if not _try_lock(fd):
                os.close(fd)
                return None                     # another process is downloading it
            if _same_file(fd, path):
                return cls(fd, path, resumable=True)
            os.close(fd)                        # renamed or swept while we waited: open again
        return None

    def _adopt(self, limit: int | None) -> None:
        """Take over what an earlier run left: hash it, or empty it when it cannot be ours."""
        length = os.fstat(self.file.fileno()).st_size
        if limit is not None and length > limit:
            self.reset()
            return
        self.file.seek(0)
        try:
            for block in iter(lambda: self.file.read(1 << 20), b""):
                self._hash.update(block)
                self.size += len(block)
                if self.tap is not None:
                    self.tap.feed(block)
        except Exception:  # noqa: BLE001 - the tap refused it: not the start of this object
            self.reset()
            return
        self.file.seek(self.size)
        self.file.truncate()                    # what grew since fstat is not trusted

    def reset(self) -> None:
        # The tap hears first: a reader of the growing file must stop trusting the old bytes
        # before they go, or it reads a file shorter than what it was told had arrived.
        if self.tap is not None:
            self.tap.reset(self)
        self.file.seek(0)
        self.file.truncate()
        self._hash = hashlib.sha256()
        self.size = 0

    def append(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)
        self.write_behind.wrote(len(chunk))
        if self.tap is not None:
            self.file.flush()                   # a tap may read the file as it grows
            self.tap.feed(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def commit(self, dest: Path) -> None:
        """Flush, then rename onto ``dest`` (copying when the partial folder is on another disk)."""
        self.write_behind.finish()
        try:
            os.replace(self.path, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    self.file.seek(0)
                    shutil.copyfileobj(self.file, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(name, dest)
            except BaseException:
                _unlink(Path(name))
                raise
            _unlink(self.path)
        self.close()

    def discard(self) -> None:
        """Delete the file (still under our lock, so nobody resumes it meanwhile)."""
        if not self.file.closed:
            if _same_file(self.file.fileno(), self.path):
                _unlink(self.path)
            self.close()

    def close(self) -> None:
        self.write_behind.wait()
        if not self.file.closed:
            self.file.close()                  # releases the lock


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def work_folder(root):
    """A private ``.fetch-*`` folder under ``root``, locked while in use and removed after.

    A sweep never removes a work folder whose lock a live process holds.
    """
    folder = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root))
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def sweep_stale(folder, min_age_seconds: float, partial_min_age_seconds: float | None = None) -> list[Path]:
    """Remove what killed processes left directly in ``folder``; return what was removed.

    Removed: ``.fetch-*`` work folders, ``.*.tmp`` temp files and ``*.part``
    partial downloads, each only when nothing in it changed for
    ``min_age_seconds`` (``partial_min_age_seconds`` for partials, which are
    kept longer so an interrupted download can resume) and no live process
    holds its lock. Symlinks are never followed or removed.
    """
    partial_age = min_age_seconds if partial_min_age_seconds is None else partial_min_age_seconds
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            name, path = entry.name, Path(entry.path)
            if stat.S_ISDIR(st.st_mode) and name.startswith(WORK_PREFIX):
                if _sweep_work_folder(path, now - min_age_seconds):
                    removed.append(path)
            elif stat.S_ISREG(st.st_mode) and name.endswith(PARTIAL_SUFFIX):
                if _sweep_file(path, now - partial_age):
                    removed.append(path)
            elif stat.S_ISREG(st.st_mode) and name.startswith(".") and name.endswith(".tmp"):
                if _sweep_file(path, now - min_age_seconds):
                    removed.append(path)
        except OSError:
            continue                           # vanished or unreadable: leave it
    return removed


def _sweep_file(path: Path, cutoff: float) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return False
    try:
        if not _try_lock(fd) or not _same_file(fd, path):
            return False
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
            return False
        path.unlink()
        return True
    finally:
        os.close(fd)


def _sweep_work_folder(folder: Path, cutoff: float) -> bool:
    fd = None
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        pass                                   # left by an older version: age alone decides
    except OSError:
        return False
    try:
        if fd is not None and not _try_lock(fd):
            return False
        if fd is not None:
            # Its lock is free: the process that made it is gone (the grace covers the moment
            # between a folder's creation and its lock being taken).
            cutoff = max(cutoff, time.time() - DEAD_OWNER_GRACE)
        if _newest_mtime(folder) > cutoff:
            return False
        shutil.rmtree(folder)                  # removes links inside, never follows them
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _newest_mtime(folder: Path) -> float:
    newest = os.lstat(folder).st_mtime
    for parent, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
            except OSError:
                pass
    return newest

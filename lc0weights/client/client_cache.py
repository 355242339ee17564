"""lczero-client's cache folder: where it is, what a net file looks like, its lock.

lczero-client (lc0's training client) keeps each net as a gzip file named by
the bare 64-hex sha256 of the raw protobuf, in ``$XDG_CACHE_HOME/lc0/client-cache``
(else ``~/.cache/lc0/client-cache``; ``~/Library/Caches/lc0/client-cache`` on
macOS). It checks a cached file by gunzipping and hashing it, downloads to
``<sha>_tmp*`` and renames, and serialises work on one net with an exclusive
``flock`` on ``<sha>.lck``. Anything placed there under the right name with the
right bytes is used without a download; this module holds those rules in one
place so the mirror, the follow mode and the cache agree on them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import gzipio
from ..repository.errors import IntegrityError

NET_NAME = re.compile(r"[0-9a-f]{64}\Z")
LOCK_WAIT_SECONDS = 60.0       # what the client itself waits for another holder


def client_cache_dir() -> Path:
    """The folder lczero-client uses when it is given no ``--cache`` option."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lc0" / "client-cache"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "lc0" / "client-cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lc0" / "client-cache"


def is_net_name(name: str) -> bool:
    return NET_NAME.match(name) is not None


def net_files(folder) -> dict[str, Path]:
    """Regular files named like a client-cache net, by the id their name claims.

    The name is only a claim: whoever uses one verifies its content first.
    Symlinks are skipped, so a link cannot make us read outside the folder.
    """
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if is_net_name(entry.name) and entry.is_file(follow_symlinks=False):
            found[entry.name] = Path(entry.path)
    return found


def gzip_net_id(path, max_raw_bytes: int = 16 << 30) -> str | None:
    """sha256 of the gunzipped content of ``path`` (streamed), or None when it is not gzip.

    This is exactly the client's own check of a cached net. The output is bounded,
    so a gzip bomb costs time in proportion to ``max_raw_bytes``, never memory.
    """
    try:
        with open(path, "rb") as f:
            return gzip_stream_id(f, max_raw_bytes)
    except OSError:
        return None


def gzip_stream_id(f, max_raw_bytes: int = 16 << 30) -> str | None:
    """As :func:`gzip_net_id`, for an open binary file (read from its start, left at its end)."""
    try:
        f.seek(0)
        if f.read(2) != gzipio.MAGIC:
            return None
        f.seek(0)
        # A second member is refused: readers disagree on such files.
        inflater = gzipio.Inflater(max_raw_bytes, multi_member=False)
        for block in iter(lambda: f.read(gzipio.READ_SIZE), b""):
            inflater.feed(block)
        inflater.finish()
    except (OSError, EOFError, ValueError, gzipio.TooLarge) + gzipio.GzipError:
        return None
    return inflater.hexdigest()


@contextlib.contextmanager
def net_lock(folder, net_id: str, wait: float = LOCK_WAIT_SECONDS):
    """Hold ``<id>.lck`` as lczero-client does, waiting up to ``wait`` seconds.

    Yields True when the lock is held, False when another holder kept it past
    the wait (the caller may still write: every write is a rename, so a reader
    never sees half a file). A lock file this call created is removed again,
    so placing nets leaves no litter beside them.
    """
    path = Path(folder) / f"{net_id}.lck"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd, created = os.open(path, flags | os.O_EXCL, 0o644), True
    except FileExistsError:
        fd, created = os.open(path, flags, 0o644), False
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    held = False
                    break
                time.sleep(0.05)
        try:
            yield held
        finally:
            if held:
                if created:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_lock_if_free(folder, net_id: str) -> None:
    """Delete ``<id>.lck`` once no one holds it (used when its net is removed)."""
    path = Path(folder) / f"{net_id}.lck"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def place_net(folder, net_id: str, source) -> Path:
    """Put the gzip net at ``source`` into the client's folder as ``<id>``, only once it is that net.

    The copy is made under the net's lock to a temp name, checked by gunzip +
    sha256 of the bytes written (what the client will read), then renamed: the
    client never sees a partial or wrong file under the net's name. A file
    already there that checks out is kept.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / net_id
    with net_lock(folder, net_id):
        if not dest.is_symlink() and dest.is_file() and gzip_net_id(dest) == net_id:
            return dest
        fd, tmp = tempfile.mkstemp(prefix=f".{net_id}.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, gzipio.READ_SIZE)
                out.flush()
                os.fsync(out.fileno())
            if gzip_net_id(tmp) != net_id:
                raise IntegrityError(f"{source}: not a gzip of net {net_id[:16]}...; not placed in {folder}")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return dest

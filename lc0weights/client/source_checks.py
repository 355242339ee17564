"""What every repository source shares: the checks on paths and sizes it is given, and what it returns.

A path from an index or a caller must name a file under the repository root
and a declared size must be a byte count, whichever source reads it;
:class:`DocumentReply` is what reading a top document gives back.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import NamedTuple

from ..repository.errors import DownloadError

# Reads hand over up to a megabyte at once (what has arrived; never waiting to fill it), so
# per-chunk work (hashing, budget, clock) is no per-8 KB Python overhead on a fast link.
CHUNK = 1 << 20
_SAFE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*\Z")


class DocumentReply(NamedTuple):
    """A top document (root.json, timestamp.json) as read, or "not modified"."""

    data: bytes | None           # None when not_modified
    etag: str | None             # the server's ETag for these bytes (or the one sent, on a 304)
    not_modified: bool           # the server answered 304 to If-None-Match
    transferred: int             # body bytes read, over every attempt



def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()



def checked_path(path: str) -> str:
    """A repository path that can only name a file under the root (no '..', no scheme, no host)."""
    if not isinstance(path, str) or not _SAFE_PATH.match(path) or ".." in path.split("/"):
        raise DownloadError(f"{path!r}: not a repository path")
    return path


def checked_size(size, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DownloadError(f"{what}: declared size {size!r} is not a byte count")
    return size


"""``serve``: a small static HTTP server for a repository (GET and HEAD).

Only the repository's own documents and objects are served, by exact name:
``root.json`` and ``timestamp.json`` at the top, and
``records/<64 hex>.json``, ``nets/<64 hex>.pb.gz``, ``patches/<64 hex>.lc0patch``.
Anything else is a 404, whatever exists on disk. Files are opened one path
component at a time with ``O_NOFOLLOW`` from the repository root, so a
symlink anywhere below the root is never followed, and only regular files
are read (a FIFO or device planted in the repository is a 404 too).

Objects are immutable and named by a hash, so the hash is their strong ETag
and they are cached forever; top documents are revalidated on every use
(``no-cache``) and carry the sha256 of their bytes as ETag, so a poll with
nothing new is a 304. Single byte ranges are honoured (206, or 416 when
unsatisfiable); several ranges, or a range that is not understood, get the
whole object.

The server is meant for a trusted network or to sit behind nginx or a CDN
(docs/SECURITY.md), but it bounds what any client can take from it through
the HTTP front it shares with the mirror (:mod:`lc0weights.serving.front`):
slots overall and per client address, one deadline for the request head and
body, bounded heads and bodies, a minimum rate for responses.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from lc0weights.serving.front import (BoundedHandler, BoundedServer, ServerLimits, parse_range,
                                      within_descriptor_limit)

__all__ = ["RepositoryHandler", "RepositoryServer", "ServerLimits", "parse_range", "route", "serve",
           "within_descriptor_limit"]
log = logging.getLogger(__name__)
CHUNK = 1 << 16
OBJECT_CACHE = "public, max-age=31536000, immutable"
DOCUMENT_CACHE = "no-cache"
DOCUMENTS = ("root.json", "timestamp.json")
OBJECT_SUFFIXES = {"records": ".json", "nets": ".pb.gz", "patches": ".lc0patch"}
_OBJECT_PATH = re.compile(r"/(records|nets|patches)/([0-9a-f]{64})(\.json|\.pb\.gz|\.lc0patch)\Z")


@dataclass(frozen=True)
class Target:
    """A name the repository layout allows: a top document or an immutable object."""

    folder: str | None
    name: str
    etag: str | None                     # objects: the hash in their name

    @property
    def is_document(self) -> bool:
        return self.folder is None

    @property
    def content_type(self) -> str:
        return "application/json" if self.name.endswith(".json") else "application/octet-stream"


def route(request_target: str) -> Target | None:
    """The layout entry a request names, or None; the query string is ignored."""
    path = request_target.split("?", 1)[0]
    if path.startswith("/") and path[1:] in DOCUMENTS:
        return Target(None, path[1:], None)
    m = _OBJECT_PATH.match(path)
    if m and OBJECT_SUFFIXES[m.group(1)] == m.group(3):
        return Target(m.group(1), m.group(2) + m.group(3), f'"{m.group(2)}"')
    return None


def open_in_root(root: Path, target: Target) -> int | None:
    """A descriptor of the target as a regular file, never through a symlink; None if absent."""
    nofollow = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    dir_fd = root_fd
    try:
        if target.folder is not None:
            dir_fd = os.open(target.folder, nofollow | os.O_DIRECTORY, dir_fd=root_fd)
        # O_NONBLOCK: opening a FIFO someone left here must not block this thread
        fd = os.open(target.name, nofollow | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)
        os.close(root_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


class _DocumentTags:
    """sha256 ETags of top documents, recomputed only when the file changes (they are renamed in)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tags: dict[str, tuple[tuple, str]] = {}

    def etag(self, name: str, fd: int, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            known = self._tags.get(name)
        if known and known[0] == key:
            return known[1]
        digest = hashlib.sha256()
        offset = 0
        while offset < st.st_size:
            chunk = os.pread(fd, min(CHUNK, st.st_size - offset), offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        tag = f'"{digest.hexdigest()}"'
        with self._lock:
            self._tags[name] = (key, tag)
        return tag


class RepositoryHandler(BoundedHandler):
    server_version = "lc0weights"
    root: Path = Path(".")

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def _resolve(self) -> Path | None:
        """The file a request names, when the layout allows it and it is a regular file here."""
        target = route(self.path)
        fd = open_in_root(self.root, target) if target else None
        if fd is None:
            return None
        os.close(fd)
        return self.root / (target.folder or "") / target.name

    def _serve(self, send_body: bool):
        target = route(self.path)
        fd = open_in_root(self.root, target) if target else None
        if fd is None:
            return self.error(HTTPStatus.NOT_FOUND, send_body)
        try:
            self._send_file(target, fd, send_body)
        finally:
            os.close(fd)

    def _send_file(self, target: Target, fd: int, send_body: bool):
        st = os.fstat(fd)
        size = st.st_size
        etag = target.etag or self.server.document_tags.etag(target.name, fd, st)
        if _matches(self.headers.get("If-None-Match"), etag):
            self.begin(HTTPStatus.NOT_MODIFIED)
            self._validators(etag, target)
            self.end_headers()
            return
        start, end, status = 0, size - 1, HTTPStatus.OK
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range.strip() == etag):
            parsed = parse_range(wanted, size)
            if parsed == "unsatisfiable":
                self.begin(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self._validators(etag, target)
                self.end_headers()
                return
            if parsed is not None:
                (start, end), status = parsed, HTTPStatus.PARTIAL_CONTENT
        self.begin(status)
        self._validators(etag, target)
        self.send_header("Content-Type", target.content_type)
        self.send_header("Content-Length", str(end - start + 1))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if send_body:
            self.send_range(fd, start, end - start + 1)

    def _validators(self, etag: str, target: Target):
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", DOCUMENT_CACHE if target.is_document else OBJECT_CACHE)


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


class RepositoryServer(BoundedServer):
    def __init__(self, root, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits | None = None):
        self.document_tags = _DocumentTags()
        handler = type("Handler", (RepositoryHandler,), {"root": Path(root).resolve()})
        super().__init__((host, port), handler, limits)


def serve(root, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits | None = None) -> None:
    with RepositoryServer(root, host, port, limits) as server:
        log.info("serving %s at %s", root, server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass

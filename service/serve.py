"""``serve``: a small static HTTP server for a repository (GET and HEAD).

Objects are immutable and content-addressed, so they are served with their
hash as a strong ETag and cached forever; the index is revalidated on every
use (``no-cache``) and carries an ETag of its own bytes. Single byte ranges
are honoured (206, or 416 when unsatisfiable), which is what resuming
clients send. Only plain files under the root whose path parts all start
with a letter, digit or underscore are served: no traversal, no hidden files
(temp files and publisher state), no directory listings.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lc0weights.distribution.index import INDEX_NAME

log = logging.getLogger(__name__)
CHUNK = 1 << 16
OBJECT_CACHE = "public, max-age=31536000, immutable"
INDEX_CACHE = "no-cache"
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
_HEX_NAME = re.compile(r"([0-9a-f]{64})\.")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


class RepositoryHandler(BaseHTTPRequestHandler):
    server_version = "lc0weights"
    protocol_version = "HTTP/1.1"
    timeout = 60                       # a silent client does not hold a thread forever
    root: Path = Path(".")

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- helpers --------------------------------------------------------------
    def _resolve(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)
        parts = path.lstrip("/").split("/")
        if not path.startswith("/") or not all(_SEGMENT.match(p) for p in parts):
            return None
        full = self.root.joinpath(*parts)
        return full if full.is_file() else None

    def _error(self, status: HTTPStatus, send_body: bool):
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _serve(self, send_body: bool):
        file = self._resolve()
        if file is None:
            return self._error(HTTPStatus.NOT_FOUND, send_body)
        try:
            f = open(file, "rb")       # an open file survives a concurrent rename of the index
        except OSError:
            return self._error(HTTPStatus.NOT_FOUND, send_body)
        with f:
            size = os.fstat(f.fileno()).st_size
            is_index = file.name == INDEX_NAME and file.parent == self.root
            if is_index:
                data = f.read()
                size = len(data)
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
            else:
                m = _HEX_NAME.match(file.name)
                etag = f'"{m.group(1)}"' if m else f'"{size:x}-{os.fstat(f.fileno()).st_mtime_ns:x}"'
            if etag in _etags(self.headers.get("If-None-Match")):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self._common_headers(etag, is_index)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = 0, size - 1
            status = HTTPStatus.OK
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if wanted and (if_range is None or if_range.strip() == etag):
                parsed = _parse_range(wanted, size)
                if parsed == "unsatisfiable":
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self._common_headers(etag, is_index)
                    self.end_headers()
                    return
                if parsed is not None:
                    start, end = parsed
                    status = HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self._common_headers(etag, is_index)
            self.send_header("Content-Type", "application/json" if is_index else "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not send_body:
                return
            if is_index:
                self.wfile.write(data[start:end + 1])
                return
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _common_headers(self, etag: str, is_index: bool):
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", INDEX_CACHE if is_index else OBJECT_CACHE)
        self.send_header("Date", formatdate(usegmt=True))


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {t.strip().removeprefix("W/") for t in header.split(",")}


def _parse_range(header: str, size: int):
    """(start, end) for one satisfiable range, "unsatisfiable", or None to send everything."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None                    # several ranges or a unit we do not know: whole file
    if not m.group(1):                 # suffix range: the last N bytes
        n = int(m.group(2))
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class RepositoryServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0):
        handler = type("Handler", (RepositoryHandler,), {"root": Path(root).resolve()})
        super().__init__((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def serve(root, host: str = "127.0.0.1", port: int = 8000) -> None:
    with RepositoryServer(root, host, port) as server:
        log.info("serving %s at %s", root, server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass

"""``serve``: a small static HTTP server for a repository (GET and HEAD).

Only the repository's own documents and objects are served, by exact name:
``root.json``, ``timestamp.json`` and ``index.json`` at the top, and
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
(docs/SECURITY.md), but it bounds what any client can take from it: a cap on
concurrent connections overall and per client address, with a small waiting
room for the connections beyond it (they wait for a slot holding only their
socket, then get a 503; beyond the room, a 503 at once), all sized to fit the
descriptor limit; a request head of at most ``max_head_bytes`` with a
bounded request line, header count and header line (414/431); one deadline
for the whole request head and body (a client trickling a byte at a time is
cut when it expires); request bodies drained when small and refused (413)
otherwise; and a minimum average rate for responses.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import re
import resource
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)
CHUNK = 1 << 16
OBJECT_CACHE = "public, max-age=31536000, immutable"
INDEX_CACHE = "no-cache"
DOCUMENTS = ("root.json", "timestamp.json", "index.json")
OBJECT_SUFFIXES = {"records": ".json", "nets": ".pb.gz", "patches": ".lc0patch"}
_OBJECT_PATH = re.compile(r"/(records|nets|patches)/([0-9a-f]{64})(\.json|\.pb\.gz|\.lc0patch)\Z")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)\Z")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}\Z")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_POSITION_DIGITS = 19          # more digits than this is beyond any file we hold
_DESCRIPTORS_PER_CONNECTION = 4
_RESERVED_DESCRIPTORS = 32
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
         b"Retry-After: 5\r\nConnection: close\r\n\r\n")


@dataclass(frozen=True)
class ServerLimits:
    """What one client, and all of them together, can take from the server."""

    max_connections: int = 64            # concurrent connections, each one thread
    max_per_client: int = 32             # from one address; set to max_connections behind a proxy
    max_waiting: int = 128               # accepted connections waiting for a slot (no thread yet)
    queue_timeout: float = 10.0          # how long one waits before it gets a 503
    request_timeout: float = 20.0        # whole request head and body, from the first wait
    keepalive_timeout: float = 5.0       # an idle kept-alive connection waits this long for a request
    send_timeout: float = 30.0           # one write to a client that reads nothing
    min_send_rate: int = 32 * 1024       # bytes/s a response may average, after request_timeout
    max_request_line: int = 2048
    max_header_line: int = 8192
    max_headers: int = 64
    max_head_bytes: int = 16 * 1024
    max_body: int = 64 * 1024            # larger request bodies are refused, never read
    max_requests_per_connection: int = 100


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


class _Refusal(Exception):
    """A request answered with an error status, after which the connection is closed."""

    def __init__(self, status: HTTPStatus):
        super().__init__(status.phrase)
        self.status = status


class RepositoryHandler(BaseHTTPRequestHandler):
    server_version = "lc0weights"
    protocol_version = "HTTP/1.1"
    timeout = None                      # every wait gets its own deadline below
    root: Path = Path(".")

    # -- connection ---------------------------------------------------------
    def setup(self):
        super().setup()
        self._pending = bytearray()     # bytes received after the current request head
        self._linger = False

    def handle(self):
        limits = self.server.limits
        for left in range(limits.max_requests_per_connection, 0, -1):
            self._last_request = left == 1
            self._first_request = left == limits.max_requests_per_connection
            self.handle_one_request()
            if self.close_connection:
                break
        if self._linger:
            self._lingering_close()

    def handle_one_request(self):
        self.close_connection = True
        self.command, self.path, self.requestline, self.request_version = None, "", "", "HTTP/1.1"
        self.headers = http.client.HTTPMessage()
        limits = self.server.limits
        now = time.monotonic()
        deadline = now + limits.request_timeout
        idle_deadline = deadline if self._first_request else now + limits.keepalive_timeout
        try:
            head = self._read_head(deadline, min(deadline, idle_deadline))
            if head is None:
                return
            self._parse_head(head)
            had_body = self._drain_body(deadline)
        except _Refusal as refusal:
            self._linger = True
            self._error(refusal.status, send_body=True)
            return
        except (TimeoutError, ConnectionError):
            return                      # too slow or gone: close without a word
        self.close_connection = had_body or self._last_request or not self._keep_alive()
        self.connection.settimeout(self.server.limits.send_timeout)
        if self.command == "GET":
            self.do_GET()
        elif self.command == "HEAD":
            self.do_HEAD()
        else:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, send_body=True, allow="GET, HEAD")

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- reading a request, within limits -----------------------------------
    def _receive(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.connection.settimeout(remaining)
        return self.connection.recv(CHUNK)

    def _read_head(self, deadline: float, idle_deadline: float) -> bytes | None:
        """The request head (request line and headers), or None when the client left first.

        ``idle_deadline`` bounds the wait for the first byte, ``deadline`` the whole head.
        """
        limits = self.server.limits
        buf = self._pending
        while True:
            del buf[:len(buf) - len(buf.lstrip(b"\r\n"))]    # blank lines before a request
            end = _HEAD_END.search(buf)
            if end:
                break
            line_end = buf.find(b"\n")
            if (line_end < 0 and len(buf) > limits.max_request_line) or line_end > limits.max_request_line:
                raise _Refusal(HTTPStatus.REQUEST_URI_TOO_LONG)
            if len(buf) > limits.max_head_bytes:
                raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            chunk = self._receive(deadline if buf else idle_deadline)
            if not chunk:
                return None
            buf += chunk
        if end.start() > limits.max_head_bytes:
            raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        head = bytes(buf[:end.start()])
        del buf[:end.end()]
        return head

    def _parse_head(self, head: bytes) -> None:
        limits = self.server.limits
        lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
        if len(lines[0]) > limits.max_request_line:
            raise _Refusal(HTTPStatus.REQUEST_URI_TOO_LONG)
        self.requestline = lines[0].decode("latin-1")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            raise _Refusal(HTTPStatus.BAD_REQUEST)
        if words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            raise _Refusal(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
        self.command, self.path, self.request_version = words
        fields = lines[1:]
        if len(fields) > limits.max_headers or any(len(f) > limits.max_header_line for f in fields):
            raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        if any(f[:1] in (b" ", b"\t") or b":" not in f for f in fields):
            raise _Refusal(HTTPStatus.BAD_REQUEST)    # folded or nameless header lines
        self.headers = http.client.parse_headers(io.BytesIO(b"\r\n".join(fields + [b"", b""])))

    def _drain_body(self, deadline: float) -> bool:
        """Read and drop a small request body; True when there was one."""
        if self.headers.get_all("Transfer-Encoding"):
            raise _Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)   # length unknown: never read
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return False
        if len(lengths) > 1 or not _CONTENT_LENGTH.match(lengths[0].strip()):
            raise _Refusal(HTTPStatus.BAD_REQUEST)
        left = int(lengths[0])
        if left > self.server.limits.max_body:
            raise _Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        while len(self._pending) < left:
            chunk = self._receive(deadline)
            if not chunk:
                raise ConnectionError("the client left mid-body")
            self._pending += chunk
        del self._pending[:left]
        return left > 0

    def _keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in ",".join(self.headers.get_all("Connection") or []).split(",")}
        return self.request_version == "HTTP/1.1" and "close" not in tokens

    def _lingering_close(self):
        """Stop sending, then read what the client still sends for a moment, so it gets our answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            for _ in range(16):
                if not self._receive(deadline):
                    break
        except OSError:
            pass

    # -- answering ----------------------------------------------------------
    def _begin(self, status: HTTPStatus):
        self.send_response(status)
        if self.close_connection:
            self.send_header("Connection", "close")

    def _error(self, status: HTTPStatus, send_body: bool, allow: str | None = None):
        if status.value >= 400:
            self.close_connection = self.close_connection or status.value not in (404, 416)
        body = f"{status.value} {status.phrase}\n".encode()
        self._begin(status)
        if allow:
            self.send_header("Allow", allow)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

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
            return self._error(HTTPStatus.NOT_FOUND, send_body)
        try:
            self._send_file(target, fd, send_body)
        finally:
            os.close(fd)

    def _send_file(self, target: Target, fd: int, send_body: bool):
        st = os.fstat(fd)
        size = st.st_size
        etag = target.etag or self.server.document_tags.etag(target.name, fd, st)
        if _matches(self.headers.get("If-None-Match"), etag):
            self._begin(HTTPStatus.NOT_MODIFIED)
            self._validators(etag, target)
            self.end_headers()
            return
        start, end, status = 0, size - 1, HTTPStatus.OK
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range.strip() == etag):
            parsed = parse_range(wanted, size)
            if parsed == "unsatisfiable":
                self._begin(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self._validators(etag, target)
                self.end_headers()
                return
            if parsed is not None:
                (start, end), status = parsed, HTTPStatus.PARTIAL_CONTENT
        self._begin(status)
        self._validators(etag, target)
        self.send_header("Content-Type", target.content_type)
        self.send_header("Content-Length", str(end - start + 1))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if send_body:
            self._send_range(fd, start, end - start + 1)

    def _send_range(self, fd: int, offset: int, length: int):
        """Send bytes from the file, cutting a client that reads slower than the minimum rate."""
        limits = self.server.limits
        deadline = time.monotonic() + limits.request_timeout + length / limits.min_send_rate
        while length > 0:
            chunk = os.pread(fd, min(CHUNK, length), offset)
            if not chunk:                   # the file shrank under us: the promise cannot be kept
                self.close_connection = True
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("client reads too slowly")
            self.connection.settimeout(min(limits.send_timeout, remaining))
            self.wfile.write(chunk)
            offset += len(chunk)
            length -= len(chunk)

    def _validators(self, etag: str, target: Target):
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", INDEX_CACHE if target.is_document else OBJECT_CACHE)


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


def _position(digits: str) -> int | None:
    """A byte position, or None when it has more digits than any file size."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _POSITION_DIGITS else None


def parse_range(header: str, size: int):
    """(start, end) for one satisfiable range, "unsatisfiable", or None to send everything."""
    m = _RANGE.match(header.strip())
    if not m or not (m.group(1) or m.group(2)):
        return None                     # several ranges or a unit we do not know: whole file
    first, last = m.groups()
    if not first:                       # suffix range: the last N bytes
        n = _position(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return (0 if n is None else max(0, size - n)), size - 1
    start = _position(first)
    if start is None or start >= size:
        return "unsatisfiable"
    end = _position(last) if last else None
    if end is None:
        return start, size - 1
    if end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def within_descriptor_limit(limits: ServerLimits) -> ServerLimits:
    """Limits shrunk, if need be, so that a full server never runs out of descriptors.

    A served connection holds its socket and a file (plus two folders while opening
    it); a waiting one only its socket; a few more go to the listener and logging.
    """
    available = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if available == resource.RLIM_INFINITY:
        return limits
    spare = available - _RESERVED_DESCRIPTORS
    connections = max(1, min(limits.max_connections, spare // _DESCRIPTORS_PER_CONNECTION))
    waiting = max(0, min(limits.max_waiting, spare - connections * _DESCRIPTORS_PER_CONNECTION))
    if (connections, waiting) != (limits.max_connections, limits.max_waiting):
        log.warning("%d descriptors allowed: serving at most %d connections with %d waiting",
                    available, connections, waiting)
        limits = replace(limits, max_connections=connections, max_waiting=waiting,
                         max_per_client=min(limits.max_per_client, connections))
    return limits


class RepositoryServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits | None = None):
        self.limits = within_descriptor_limit(limits or ServerLimits())
        self.document_tags = _DocumentTags()
        self._slots_lock = threading.Lock()
        self._active = 0
        self._per_client: dict[str, int] = {}
        self._waiting: list[tuple] = []          # (socket, address, give-up time), oldest first
        handler = type("Handler", (RepositoryHandler,), {"root": Path(root).resolve()})
        super().__init__((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    # -- connection slots ---------------------------------------------------
    # A connection gets a slot (and a thread) when both caps allow; otherwise it waits,
    # holding only its descriptor, until a slot frees or queue_timeout passes (then 503).
    # The waiting room is bounded too, overall and per address: beyond it, a 503 at once.
    def process_request(self, request, client_address):
        client = client_address[0]
        with self._slots_lock:
            start = self._may_start(client)
            if start:
                self._take(client)
            elif (len(self._waiting) < self.limits.max_waiting and
                  sum(c[1][0] == client for c in self._waiting) < self.limits.max_per_client):
                self._waiting.append((request, client_address, time.monotonic() + self.limits.queue_timeout))
                return
        if start:
            self._start(request, client_address)
        else:
            self._refuse(request)

    def _may_start(self, client: str) -> bool:
        return (self._active < self.limits.max_connections
                and self._per_client.get(client, 0) < self.limits.max_per_client)

    def _take(self, client: str):
        self._active += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1

    def _start(self, request, client_address):
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(client_address[0])
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address[0])

    def _release(self, client: str):
        with self._slots_lock:
            self._active -= 1
            left = self._per_client.get(client, 1) - 1
            if left:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)
            admitted = next((w for w in self._waiting if self._may_start(w[1][0])), None)
            if admitted:
                self._waiting.remove(admitted)
                self._take(admitted[1][0])
        if admitted:
            self._start(admitted[0], admitted[1])

    def service_actions(self):
        """Between accepts: waiting connections whose time is up get their 503."""
        now = time.monotonic()
        with self._slots_lock:
            expired = [w for w in self._waiting if w[2] <= now]
            for w in expired:
                self._waiting.remove(w)
        for request, _address, _deadline in expired:
            self._refuse(request)

    def _refuse(self, request):
        """Answer 503 without waiting for anything (this runs in the accept loop) and close."""
        try:
            request.setblocking(False)
            request.send(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def server_close(self):
        super().server_close()
        with self._slots_lock:
            waiting, self._waiting = self._waiting, []
        for request, _address, _deadline in waiting:
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):      # timeouts, resets, broken pipes: the client's doing
            log.debug("%s: connection dropped (%s)", client_address[0], error)
        else:
            log.exception("%s: request failed", client_address[0])


def serve(root, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits | None = None) -> None:
    with RepositoryServer(root, host, port, limits) as server:
        log.info("serving %s at %s", root, server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass

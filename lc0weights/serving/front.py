"""The one HTTP front every lc0weights server stands behind: bounded in time, slots and bytes.

``serve`` (the repository) and ``mirror`` (for lczero-client) answer GET and
HEAD through it; it bounds what any client can take:

- slots: a cap on connections overall and per client address, with a small
  waiting room for connections beyond it (they wait holding only their
  socket, then get a 503; beyond the room, a 503 at once), sized to fit the
  descriptor limit;
- time: one deadline for the whole request head and body (a client trickling
  a header line at a time is cut when it expires), a shorter wait for the next
  request on a kept-alive connection, a bound on every write and a minimum
  average rate for responses;
- bytes: a request head of at most ``max_head_bytes`` with a bounded request
  line, header count and header line (414/431); request bodies drained when
  small and refused (413) otherwise.

A client that resets or times out is the client's doing: it is logged at
debug level, never as a traceback. :func:`run_until_signalled` is the one
start/stop convention of the server commands.
"""
from __future__ import annotations

import http.client
import io
import logging
import os
import re
import resource
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)
CHUNK = 1 << 16
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}\Z")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)\Z")
_POSITION_DIGITS = 19          # more digits than this is beyond any file we hold
_DESCRIPTORS_PER_CONNECTION = 4
_RESERVED_DESCRIPTORS = 32
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
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


class _Refusal(Exception):
    """A request answered with an error status, after which the connection is closed."""

    def __init__(self, status: HTTPStatus):
        super().__init__(status.phrase)
        self.status = status


class BoundedHandler(BaseHTTPRequestHandler):
    """Reads each request within the server's limits, then calls ``do_GET`` or ``do_HEAD``.

    Subclasses answer with :meth:`begin`, :meth:`error` and :meth:`send_range`;
    ``self.close_connection`` is already decided when ``do_*`` runs.
    """

    protocol_version = "HTTP/1.1"
    timeout = None                      # every wait gets its own deadline below

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
            self.error(refusal.status, send_body=True)
            return
        except (TimeoutError, ConnectionError):
            return                      # too slow or gone: close without a word
        self.close_connection = had_body or self._last_request or not self._keep_alive()
        self.connection.settimeout(limits.send_timeout)
        if self.command == "GET":
            self.do_GET()
        elif self.command == "HEAD":
            self.do_HEAD()
        else:
            self.error(HTTPStatus.METHOD_NOT_ALLOWED, send_body=True, allow="GET, HEAD")

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def client_gone(self) -> bool:
        """True once the client closed or reset its connection (checked without blocking).

        Used while a request waits for slow work: a client that left frees its slot.
        """
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

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
    def begin(self, status: HTTPStatus):
        self.send_response(status)
        if self.close_connection:
            self.send_header("Connection", "close")

    def error(self, status: HTTPStatus, send_body: bool, allow: str | None = None,
              why: str = "", retry_after: int | None = None):
        """A short text answer; after most errors the connection is closed."""
        if status.value >= 400:
            self.close_connection = self.close_connection or status.value not in (404, 416)
        body = f"{status.value} {status.phrase}{': ' + why if why else ''}\n".encode()
        self.begin(status)
        if allow:
            self.send_header("Allow", allow)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def send_range(self, fd: int, offset: int, length: int) -> int:
        """Send bytes of a file, cutting a client that reads slower than the minimum rate; bytes sent."""
        limits = self.server.limits
        deadline = time.monotonic() + limits.request_timeout + length / limits.min_send_rate
        sent = 0
        while length > 0:
            chunk = os.pread(fd, min(CHUNK, length), offset)
            if not chunk:                   # the file shrank under us: the promise cannot be kept
                self.close_connection = True
                return sent
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("client reads too slowly")
            self.connection.settimeout(min(limits.send_timeout, remaining))
            self.wfile.write(chunk)
            offset += len(chunk)
            length -= len(chunk)
            sent += len(chunk)
        return sent


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


class BoundedServer(ThreadingHTTPServer):
    """A threading server whose connections take slots, overall and per client address.

    A connection gets a slot (and a thread) when both caps allow; otherwise it
    waits, holding only its descriptor, until a slot frees or ``queue_timeout``
    passes (then a 503). The waiting room is bounded too, overall and per
    address: beyond it, a 503 at once.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler_class, limits: ServerLimits | None = None):
        self.limits = within_descriptor_limit(limits or ServerLimits())
        self._slots_lock = threading.Lock()
        self._active = 0
        self._per_client: dict[str, int] = {}
        self._waiting: list[tuple] = []          # (socket, address, give-up time), oldest first
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler_class)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def active_connections(self) -> int:
        with self._slots_lock:
            return self._active

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
            request.send(BUSY)
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


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def run_until_signalled(server: BoundedServer, name: str, lines=()) -> int:
    """Serve until SIGTERM or SIGINT; print ``lines`` first and a last line when stopped; exit 0.

    Every line goes to stderr prefixed by ``name``; per-request logs go through ``logging``.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(name)s: %(message)s")
    for line in lines:
        print(f"{name}: {line}", file=sys.stderr, flush=True)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
    print(f"{name}: stopped", file=sys.stderr, flush=True)
    return 0

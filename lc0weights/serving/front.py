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

The parts live in small modules and are re-exported here: the limits, their
fit to the descriptor limit and the connection slots in :mod:`.limits`, the
``Range`` header in :mod:`.ranges`; this module reads and answers requests.
"""
from __future__ import annotations

import http.client
import io
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from .limits import BoundedServer, ServerLimits, within_descriptor_limit
from .ranges import parse_range

__all__ = ["BoundedHandler", "BoundedServer", "ServerLimits", "is_loopback", "parse_range",
           "run_until_signalled", "within_descriptor_limit"]

log = logging.getLogger(__name__)
CHUNK = 1 << 16
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}\Z")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


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
    # A response goes out as two writes (head, then body). With Nagle's algorithm the body waits
    # for the client to acknowledge the head, which a client delays by 40 ms or more: that would
    # be the cost of every small document on a kept-alive connection.
    disable_nagle_algorithm = True

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

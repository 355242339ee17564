"""What a server admits: its limits, fitted to the descriptors it may hold, and connection slots.

:class:`ServerLimits` says what one client, and all of them together, can take;
:func:`within_descriptor_limit` shrinks it so that a full server never runs out
of descriptors; :class:`BoundedServer` gives each connection a slot (and a
thread) within the caps, keeps a bounded waiting room, and answers 503 beyond
it. How each request is read and answered within these limits is
:mod:`.front`'s concern.
"""
from __future__ import annotations

import logging
import resource
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from http.server import ThreadingHTTPServer

log = logging.getLogger(__name__)
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

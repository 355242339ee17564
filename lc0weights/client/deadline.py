"""Whole-transfer deadlines for HTTP: a watchdog that cuts a connection when its time is up.

The per-read timeout of requests bounds each socket read, so a server that
sends one byte a second never trips it, neither in the headers nor in the
body. While a :class:`Deadline` is active on a thread, every connection that
thread opens or reuses is registered with it; when the deadline passes, a
watchdog thread shuts those sockets down, which makes the blocked read return
at once. The watchdog holds a duplicate descriptor of each socket, so the
shutdown reaches the connection even after TLS wrapping replaced the Python
socket object, and never touches a descriptor number that was since reused.

Sessions get this through :class:`DeadlineAdapter` (mount it for http:// and
https://); without an active deadline the adapter behaves like the default one.
"""
from __future__ import annotations

import os
import socket
import threading
import time

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_active = threading.local()


class DeadlineExceeded(Exception):
    """The transfer ran past its deadline (internal: the caller turns it into a DownloadError)."""


class Deadline:
    """A point in time after which the current thread's connections are shut down."""

    def __init__(self, seconds: float):
        self.started = time.monotonic()
        self.seconds = seconds
        self.expired = False
        self._sockets: dict[int, socket.socket] = {}
        self._cond = threading.Condition()
        self._done = False
        self._thread: threading.Thread | None = None
        self._previous = None

    @property
    def end(self) -> float:
        return self.started + self.seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self) -> None:
        if self.expired or self.remaining() <= 0:
            self.expired = True
            raise DeadlineExceeded()

    def shorten(self, seconds: float) -> None:
        """Bring the deadline forward to ``seconds`` after the start (never later than it was)."""
        with self._cond:
            if seconds < self.seconds:
                self.seconds = seconds
                self._cond.notify_all()

    def watch(self, sock) -> None:
        """Register a connection's socket; shut it down now if the deadline already passed."""
        try:
            fd = sock.fileno()
            if fd < 0:
                return
            key = os.fstat(fd).st_ino
            with self._cond:
                if key in self._sockets or self._done:
                    return
                dup = socket.socket(fileno=os.dup(fd))
                self._sockets[key] = dup
                if self.expired:
                    _shut(dup)
        except OSError:
            pass                         # a socket already closed needs no watching

    def __enter__(self) -> Deadline:
        self._previous = getattr(_active, "deadline", None)
        _active.deadline = self
        self._thread = threading.Thread(target=self._watchdog, name="lc0weights-deadline", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        _active.deadline = self._previous
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._thread.join()
        for dup in self._sockets.values():
            dup.close()              # only our duplicate: a pooled connection stays usable
        self._sockets.clear()

    def _watchdog(self) -> None:
        with self._cond:
            while not self._done:
                left = self.end - time.monotonic()
                if left <= 0:
                    self.expired = True
                    for dup in self._sockets.values():
                        _shut(dup)
                    return
                self._cond.wait(left)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _watch_current(sock) -> None:
    deadline = getattr(_active, "deadline", None)
    if deadline is not None and sock is not None:
        deadline.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self):
        sock = super()._new_conn()
        _watch_current(sock)
        return sock

    def request(self, *args, **kwargs):
        _watch_current(self.sock)          # a reused keep-alive connection
        return super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self):
        sock = super()._new_conn()
        _watch_current(sock)           # before the TLS handshake, which can trickle too
        return sock

    def request(self, *args, **kwargs):
        _watch_current(self.sock)
        return super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """A requests adapter whose connections obey the thread's active :class:`Deadline`."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager

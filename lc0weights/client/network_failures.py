"""Naming a failed network request: which failure it was, and what to try.

requests reports a refused connection, a host name that does not resolve and
a TLS handshake with a plain-HTTP server all as ``ConnectionError``; the cause
is found by walking the chain of wrapped exceptions.
"""
from __future__ import annotations

import socket
from typing import NamedTuple
from urllib.parse import urlsplit

import requests
import urllib3

_NAME_ERRORS = tuple(e for e in (socket.gaierror, getattr(urllib3.exceptions, "NameResolutionError", None))
                     if e is not None)


class Failure(NamedTuple):
    what: str                    # what happened, e.g. "connection refused by example.org:80"
    hint: str                    # what to try
    retry: bool = True


def _causes(e: BaseException):
    """``e`` and every exception it wraps (cause, context, urllib3's ``reason``, arguments)."""
    seen, todo = set(), [e]
    while todo and len(seen) < 32:
        x = todo.pop()
        if not isinstance(x, BaseException) or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [x.__cause__, x.__context__, getattr(x, "reason", None), *x.args]


def classify(e: BaseException, url: str, timeout: float) -> Failure:
    """Say which network failure ``e`` is, and what to try."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    where = f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    causes = list(_causes(e))
    if isinstance(e, requests.exceptions.SSLError) or any(isinstance(c, urllib3.exceptions.SSLError)
                                                          for c in causes):
        return Failure(f"TLS failed with {where}", "if the server speaks plain HTTP use an http:// URL, "
                        "otherwise check its certificate", retry=False)
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return Failure(f"timed out: no connection to {where} within {timeout:g} s",
                        "check the address and your network, or raise the timeout")
    if isinstance(e, requests.Timeout) or any(isinstance(c, (TimeoutError, socket.timeout)) for c in causes):
        return Failure(f"timed out: no data from {where} for {timeout:g} s",
                        "try again later or raise the timeout")
    if any(isinstance(c, _NAME_ERRORS) for c in causes):
        return Failure(f"cannot resolve the host name {host!r}", "check the URL and your network's DNS")
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return Failure(f"connection refused by {where}",
                        "is the server running, and is the port in the URL right?")
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return Failure(f"connection reset by {where}", "try again later")
    if any(isinstance(c, (urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError))
           for c in causes):
        return Failure(f"connection to {where} closed mid-reply", "try again later")
    return Failure(f"connection to {where} failed ({type(e).__name__})", "check the URL and your network")

"""``mirror``: a local HTTP server lczero-client uses as its ``--network-mirror``.

lczero-client downloads a net it lacks with ``GET <prefix><sha>`` and checks
what it gets by gunzipping and hashing. The mirror answers ``GET /<sha>`` and
``GET /get_network?sha=<sha>`` with that gzip net, obtained by ``fetch``
through the cheapest route from anything it or the client already holds (so a
new net usually costs a patch, not a full download), and verified before a
byte is sent (:mod:`.net_store`). A net the repository does not list is a
404, or with a fallback prefix it is passed through from there once it verifies.

It stands behind the same bounded front as ``serve`` (:mod:`.front`): slots
overall and per client, one deadline for the request head, bounded heads,
quiet handling of resets. A request waiting for a fetch waits at most
``wait_timeout`` seconds (then a 503 with Retry-After: the fetch goes on) and
gives its slot back as soon as its client disconnects.

The client's cache folder is only read (its bare-sha gzip files are candidate
bases, verified by content before use); the mirror's own cache is bounded by
count and bytes, oldest first out.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import replace
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from ..errors import Lc0WeightsError
from ..client.client_cache import client_cache_dir
from ..client.transfer_policy import TransferPolicy
from ..repository.keys import read_trust
from ..settings import config_path, setting
from .front import BoundedHandler, BoundedServer, ServerLimits, is_loopback, parse_range, run_until_signalled
from .mirror_options import DEFAULT_LISTEN, DEFAULT_WAIT
from .net_store import ClientGone, Mirror, NotListed, Served, StillFetching, TooBusy

__all__ = ["Mirror", "MirrorServer", "NotListed", "Served", "run_mirror"]
log = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-fA-F]{64}\Z")
RETRY_AFTER = 10
_parse_range = parse_range


def mirror_limits(max_connections: int = 32, **changes) -> ServerLimits:
    """The front's limits for the mirror: lczero-client runs a few connections from one address."""
    n = max(1, max_connections)
    return replace(ServerLimits(max_connections=n, max_per_client=n, max_waiting=n, queue_timeout=5.0),
                   **changes)


class MirrorHandler(BoundedHandler):
    server_version = "lc0weights-mirror"
    mirror: Mirror

    def do_GET(self):
        self._answer(send_body=True)

    def do_HEAD(self):
        self._answer(send_body=False)

    def _answer(self, send_body: bool):
        started = time.monotonic()
        try:
            sha = _requested_sha(self.path)
        except ValueError:                      # e.g. a query with too many fields
            sha = ""
        if sha is None:
            return self._status(HTTPStatus.NOT_FOUND, send_body, "-")
        if not _SHA.match(sha):
            return self._status(HTTPStatus.BAD_REQUEST, send_body, "-", "a net is named by 64 hex digits")
        sha = sha.lower()
        try:
            served = self.mirror.serve(sha, self.server.wait_timeout, self.client_gone)
        except ClientGone:
            self.close_connection = True
            log.info("%s %s client gone while the net was fetched", self.command, sha[:16])
            return
        except NotListed as e:
            return self._status(HTTPStatus.NOT_FOUND, send_body, sha, str(e))
        except (StillFetching, TooBusy) as e:
            return self._status(HTTPStatus.SERVICE_UNAVAILABLE, send_body, sha, str(e), RETRY_AFTER)
        except (Lc0WeightsError, OSError) as e:
            log.warning("%s: %s", sha[:16], e)
            return self._status(HTTPStatus.BAD_GATEWAY, send_body, sha, "could not obtain a verified net")
        try:
            with served.file as f:
                sent = self._send_file(f, served, send_body)
        except OSError as e:                    # the client went away or reads too slowly
            self.close_connection = True
            log.info("%s %s client gone after the headers (%s)", self.command, sha[:16],
                     type(e).__name__)
            return
        log.info("%s %s %d route=%s upstream=%d saved=%d sent=%d %.2fs", self.command, sha[:16],
                 self._code, served.route, served.upstream_bytes, served.saved_bytes, sent,
                 time.monotonic() - started)

    def _send_file(self, f, served: Served, send_body: bool) -> int:
        start, end, status = 0, served.size - 1, HTTPStatus.OK
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and (if_range is None or if_range.strip() == served.etag):
            parsed = parse_range(wanted, served.size)
            if parsed == "unsatisfiable":
                self._code = 416
                self.begin(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{served.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 0
            if parsed is not None:
                (start, end), status = parsed, HTTPStatus.PARTIAL_CONTENT
        self._code = status.value
        self.begin(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", served.etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{served.size}")
        self.end_headers()
        if not send_body:
            return 0
        return self.send_range(f.fileno(), start, end - start + 1)

    def _status(self, status: HTTPStatus, send_body: bool, sha: str, why: str = "",
                retry_after: int | None = None):
        self.error(status, send_body, why=why, retry_after=retry_after)
        log.info("%s %s %d %s", self.command, sha[:16], status.value, why or status.phrase)


def _requested_sha(target: str) -> str | None:
    """The sha a request names (not yet validated), or None for a path the mirror does not serve."""
    parts = urlsplit(target)
    if parts.path == "/get_network":
        values = parse_qs(parts.query, max_num_fields=8).get("sha", [])
        return values[0] if len(values) == 1 else ""
    segments = parts.path.split("/")
    if len(segments) == 2 and segments[1] and not parts.query:
        return segments[1]
    return None


class MirrorServer(BoundedServer):
    """The mirror behind the bounded front; a connection over the caps waits briefly, then gets a 503."""

    def __init__(self, mirror: Mirror, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = 32, limits: ServerLimits | None = None,
                 wait_timeout: float | None = DEFAULT_WAIT):
        self.wait_timeout = wait_timeout
        handler = type("Handler", (MirrorHandler,), {"mirror": mirror})
        super().__init__((host, port), handler, limits or mirror_limits(max_connections))


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


# -- the command ------------------------------------------------------------------------

def mirror_settings(args):
    """Upstream and trust from the command line, else the environment, else the config file.

    The key is read now, so a malformed one is one line at startup rather than a 502 per request.
    """
    args.upstream = setting("url", args.upstream)
    if not args.upstream:
        raise Lc0WeightsError("no repository given: pass UPSTREAM, or set LC0WEIGHTS_URL or 'url' in "
                              f"{config_path()}")
    trust = setting("trust", args.trust)
    try:
        args.trust = None if trust is None else read_trust(trust)
    except Lc0WeightsError as e:
        shown = trust if len(trust) <= 40 else trust[:37] + "..."
        raise Lc0WeightsError(f"the trusted key {shown!r} (--trust, LC0WEIGHTS_TRUST or 'trust' in "
                              f"{config_path()}): {e}") from None
    return args


def run_mirror(args) -> int:
    host, port = parse_listen(args.listen)
    mirror_settings(args)
    if not args.wait > 0:
        raise ValueError(f"--wait must be a positive number of seconds, not {args.wait}")
    client_cache = args.client_cache or client_cache_dir()
    mirror = Mirror(args.upstream, cache_dir=args.cache or os.environ.get("LC0WEIGHTS_CACHE"),
                    client_cache=client_cache, trust=args.trust, fallback=args.fallback,
                    max_nets=args.max_nets, max_bytes=args.max_bytes,
                    policy=TransferPolicy(timeout=args.timeout, retries=max(0, args.retries),
                                          progress=False), prefer=args.prefer)
    server = MirrorServer(mirror, host, port, max(1, args.max_connections), wait_timeout=args.wait)
    logging.getLogger("lc0weights.serving").setLevel(logging.INFO)
    scope = ("loopback only: other machines cannot reach it" if is_loopback(host)
             else "REACHABLE FROM OTHER MACHINES")
    return run_until_signalled(server, "lc0weights mirror", [
        f"{args.upstream} at {server.url} ({scope}); run lczero-client with --network-mirror {server.url}",
        f"own cache {mirror.cache_dir}, client cache {client_cache} (read only)"])

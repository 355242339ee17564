"""``mirror``: a local HTTP server lczero-client uses as its ``--network-mirror``.

lczero-client downloads a net it lacks with ``GET <prefix><sha>`` and checks
what it gets by gunzipping and hashing. The mirror answers ``GET /<sha>`` and
``GET /get_network?sha=<sha>`` with that gzip net, obtained by ``fetch``
through the cheapest route from anything it or the client already holds (so a
new net usually costs a patch, not a full download), and verified before a
byte is sent. Requests for one sha that arrive together share one fetch. A
net the repository does not list is a 404, or with a fallback prefix it is
passed through from there once it verifies.

The client's cache folder is only read (its bare-sha gzip files are candidate
bases, verified by content before use); the mirror's own cache is bounded by
count and bytes, oldest first out.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import Lc0WeightsError
from ..client.cache import default_cache_dir
from ..client.client_cache import client_cache_dir, gzip_stream_id, net_files
from ..client.download import TransferPolicy
from ..repository.errors import DownloadError, IntegrityError, NoRouteError, RepositoryIndexError

log = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-fA-F]{64}\Z")
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})\Z")
CHUNK = 1 << 16
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_MAX_NETS = 4
FALLBACK_MAX_BYTES = 2 << 30        # a gzip net from the fallback; lc0 nets are 150-400 MB
FALLBACK_MAX_RAW_BYTES = 4 << 30
FALLBACK_DEADLINE = 1800.0          # seconds for one whole fallback transfer


class NotListed(Lc0WeightsError):
    """The repository does not list the net (and no fallback has it): a 404."""


@dataclass
class Served:
    """How a request was answered: the verified file, and what it cost upstream."""

    file: object            # open binary file, positioned at 0
    size: int
    etag: str
    route: str              # "held", "shared", "fallback", or fetch's route
    upstream_bytes: int
    saved_bytes: int


class _Flight:
    """One fetch in progress; requests for the same sha wait on it instead of fetching again."""

    def __init__(self):
        self.done = threading.Event()
        self.error: Exception | None = None
        self.route = ""
        self.upstream_bytes = 0
        self.full_size = 0


def _not_listed(e: Exception) -> bool:
    # fetch names a net it cannot find in the repository's metadata this way.
    return isinstance(e, (RepositoryIndexError, NoRouteError)) and "not in the repository" in str(e)


class Mirror:
    """Gets verified gzip nets for the HTTP front, sharing concurrent work per sha."""

    def __init__(self, upstream: str, cache_dir=None, client_cache=None, trust: str | None = None,
                 fallback: str | None = None, max_nets: int = DEFAULT_MAX_NETS,
                 max_bytes: int | None = None, policy: TransferPolicy | None = None,
                 prefer: str = "bytes"):
        self.upstream = upstream
        self.prefer = prefer                # upstream routes: bytes, since the upstream link is shared
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "mirror"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.client_cache = Path(client_cache) if client_cache else None
        self.trust = trust
        self.fallback = fallback
        self.max_nets = max(1, max_nets)
        self.max_bytes = max_bytes
        self.policy = policy or TransferPolicy(progress=False)
        self.upstream_fetches = 0           # fetches started (for logs and tests)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._verified: dict[str, tuple] = {}   # sha -> (dev, ino, size, mtime_ns) checked already

    def file_for(self, sha: str) -> Path:
        return self.cache_dir / f"{sha}.pb.gz"

    # -- the one entry point --------------------------------------------------------
    def serve(self, sha: str) -> Served:
        """A verified open gzip file of net ``sha``; raises NotListed or a transfer error."""
        held = self._open_verified(sha)
        if held is not None:
            return self._served(held, sha, "held", 0, None)
        with self._lock:
            flight = self._flights.get(sha)
            owner = flight is None
            if owner:
                flight = self._flights[sha] = _Flight()
                self.upstream_fetches += 1
        if owner:
            try:
                self._obtain(sha, flight)
            except Exception as e:
                flight.error = e
            finally:
                with self._lock:
                    del self._flights[sha]
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        opened = self._open_verified(sha)
        if opened is None:
            raise IntegrityError(f"{sha[:16]}...: the fetched net does not verify")
        if owner:
            return self._served(opened, sha, flight.route, flight.upstream_bytes, flight.full_size)
        return self._served(opened, sha, "shared", 0, None)

    def _served(self, opened, sha, route, upstream, full_size) -> Served:
        f, st = opened
        saved = (full_size if full_size else st.st_size) - upstream
        return Served(f, st.st_size, f'"{sha[:16]}-{st.st_size:x}-{st.st_mtime_ns:x}"',
                      route, upstream, max(0, saved) if route != "fallback" else 0)

    # -- the own cache -----------------------------------------------------------------
    def _open_verified(self, sha: str):
        """(file, stat) of the held net once its content is known to be ``sha``, else None.

        Checked on the open descriptor, so what is checked is what is sent even if
        the name is replaced meanwhile; a file is hashed once per change.
        """
        path = self.file_for(sha)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        f = os.fdopen(fd, "rb")
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._verified.get(sha) != key:
            if gzip_stream_id(f) != sha:
                f.close()
                log.warning("%s: does not hash to its name; removing it", path)
                try:
                    os.unlink(path)
                except OSError:
                    pass
                return None
            self._verified[sha] = key
        f.seek(0)
        return f, st

    def _evict(self, keep: str) -> None:
        """Drop the least recently stored nets beyond the count and byte bounds."""
        nets = []
        for entry in os.scandir(self.cache_dir):
            m = re.fullmatch(r"([0-9a-f]{64})\.pb\.gz", entry.name)
            if m and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                nets.append((m.group(1) == keep, st.st_mtime_ns, st.st_size, Path(entry.path)))
        nets.sort(reverse=True)                  # the kept net first, then newest first
        total = 0
        for i, (_, _, size, path) in enumerate(nets):
            total += size
            over_count = i >= self.max_nets
            over_bytes = self.max_bytes is not None and total > self.max_bytes and i > 0
            if over_count or over_bytes:
                try:
                    path.unlink()
                    log.info("dropped %s from the mirror cache", path.name[:16])
                except OSError:
                    pass

    # -- getting a net -------------------------------------------------------------------
    def _obtain(self, sha: str, flight: _Flight) -> None:
        from ..client.fetch import fetch
        have = list(net_files(self.client_cache).values()) if self.client_cache else []
        extra = {} if self.trust is None else {"trust": self.trust}
        try:
            result = fetch(self.upstream, net=sha, cache_dir=self.cache_dir, policy=self.policy,
                           have=have, prefer=self.prefer, **extra)
        except Lc0WeightsError as e:
            if not _not_listed(e):
                raise
            if self.fallback is None:
                raise NotListed(f"{sha[:16]}... is not in the repository") from None
            flight.route = "fallback"
            flight.upstream_bytes = self._from_fallback(sha)
        else:
            if result.net_id != sha:
                raise IntegrityError(f"fetch returned {result.net_id[:16]}... for {sha[:16]}...")
            flight.route = result.route
            flight.upstream_bytes = result.bytes_downloaded
            flight.full_size = result.full_size
        self._evict(keep=sha)

    def _from_fallback(self, sha: str) -> int:
        """Pass a net through from the fallback prefix, verified (gunzip + sha256) before it is kept."""
        import requests
        url = f"{self.fallback}{sha}"
        dest = self.file_for(sha)
        tmp = self.cache_dir / f".fallback-{sha}.{os.getpid()}.{threading.get_ident()}.tmp"
        received = 0
        deadline = time.monotonic() + FALLBACK_DEADLINE
        try:
            with requests.get(url, stream=True, timeout=self.policy.timeout) as r:
                if r.status_code == 404:
                    raise NotListed(f"{sha[:16]}... is neither in the repository nor at the fallback")
                if r.status_code != 200:
                    raise DownloadError(f"{url}: HTTP {r.status_code}")
                declared = r.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > FALLBACK_MAX_BYTES:
                    raise DownloadError(f"{url}: {declared} bytes, more than {FALLBACK_MAX_BYTES}")
                with open(tmp, "wb") as out:
                    for chunk in r.iter_content(CHUNK):
                        received += len(chunk)
                        if received > FALLBACK_MAX_BYTES or time.monotonic() > deadline:
                            raise DownloadError(f"{url}: too large or too slow, abandoned")
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            with open(tmp, "rb") as f:
                actual = gzip_stream_id(f, FALLBACK_MAX_RAW_BYTES)
            if actual != sha:
                raise IntegrityError(f"{url}: the bytes served are not net {sha[:16]}... "
                                     f"(gunzip + sha256 gave {actual and actual[:16]})")
            os.replace(tmp, dest)
        except requests.RequestException as e:
            raise DownloadError(f"{url}: {type(e).__name__}") from None
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        return received


# -- HTTP ---------------------------------------------------------------------------------

class MirrorHandler(BaseHTTPRequestHandler):
    server_version = "lc0weights-mirror"
    protocol_version = "HTTP/1.1"
    timeout = 30                        # a silent client does not hold a slot forever
    mirror: Mirror

    def do_GET(self):
        self._answer(send_body=True)

    def do_HEAD(self):
        self._answer(send_body=False)

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _answer(self, send_body: bool):
        started = time.monotonic()
        if self.headers.get("Content-Length", "0") not in ("", "0") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True        # a body is never read: do not parse it as a request
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
            served = self.mirror.serve(sha)
        except NotListed as e:
            return self._status(HTTPStatus.NOT_FOUND, send_body, sha, str(e))
        except (Lc0WeightsError, OSError) as e:
            log.warning("%s: %s", sha[:16], e)
            return self._status(HTTPStatus.BAD_GATEWAY, send_body, sha, "could not obtain a verified net")
        try:
            with served.file as f:
                sent = self._send_file(f, served, send_body)
        except OSError as e:                    # the client went away mid-transfer
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
            parsed = _parse_range(wanted, served.size)
            if parsed == "unsatisfiable":
                self._code = 416
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{served.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 0
            if parsed is not None:
                (start, end), status = parsed, HTTPStatus.PARTIAL_CONTENT
        self._code = status.value
        self.send_response(status)
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
        f.seek(start)
        left, sent = end - start + 1, 0
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            self.wfile.write(chunk)
            left -= len(chunk)
            sent += len(chunk)
        return sent

    def _status(self, status: HTTPStatus, send_body: bool, sha: str, why: str = ""):
        body = f"{status.value} {status.phrase}{': ' + why if why else ''}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
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


def _parse_range(header: str, size: int):
    """(start, end) for one satisfiable range, "unsatisfiable", or None to send everything."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None                      # several ranges, another unit, malformed: whole file
    if not m.group(1):
        n = int(m.group(2))
        return "unsatisfiable" if n == 0 else (max(0, size - n), size - 1)
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class MirrorServer(ThreadingHTTPServer):
    """Threaded, with a cap on connections: one over the cap gets a 503 and is closed."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, mirror: Mirror, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = 32):
        self._slots = threading.BoundedSemaphore(max_connections)
        handler = type("Handler", (MirrorHandler,), {"mirror": mirror})
        if ":" in host:
            import socket
            self.address_family = socket.AF_INET6
        super().__init__((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Retry-After: 5\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


# -- the command ------------------------------------------------------------------------

def add_mirror_command(subparsers) -> None:
    p = subparsers.add_parser(
        "mirror", help="serve nets to lczero-client (--network-mirror), fetched as patches",
        description="A local HTTP mirror for lczero-client: GET /<sha> (or /get_network?sha=) answers "
                    "with the gzip net, rebuilt from patches against a net already held when cheaper, "
                    "verified before it is sent.")
    p.add_argument("upstream", metavar="UPSTREAM", help="repository URL (http://...) or directory")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to serve on (default {DEFAULT_LISTEN}: this machine only)")
    p.add_argument("--client-cache", metavar="DIR",
                   help="lczero-client's cache folder, read for bases (default: its usual place)")
    p.add_argument("--cache", metavar="DIR", help="the mirror's own cache (default: the user cache folder)")
    p.add_argument("--max-nets", type=int, default=DEFAULT_MAX_NETS, metavar="N",
                   help=f"nets kept in the own cache (default {DEFAULT_MAX_NETS})")
    p.add_argument("--max-bytes", type=int, metavar="BYTES", help="bytes kept in the own cache (default: no limit beyond --max-nets)")
    p.add_argument("--fallback", metavar="PREFIX",
                   help="for nets the repository does not list, pass through PREFIX<sha> (verified)")
    p.add_argument("--trust", metavar="KEY", default=os.environ.get("LC0WEIGHTS_TRUST"),
                   help="the repository's root key (ed25519:... or @FILE); env LC0WEIGHTS_TRUST")
    p.add_argument("--max-connections", type=int, default=32, metavar="N",
                   help="client connections served at once")
    p.add_argument("--timeout", type=float, default=30.0, help="upstream network timeout in seconds")
    p.add_argument("--retries", type=int, default=4, help="upstream retries per download")
    p.add_argument("--prefer", choices=("bytes", "time"), default="bytes",
                   help="upstream routes by fewest bytes (default: the upstream link is shared) or by "
                        "least estimated time")
    p.set_defaults(run=run_mirror)


def run_mirror(args) -> int:
    host, port = parse_listen(args.listen)
    client_cache = args.client_cache or client_cache_dir()
    mirror = Mirror(args.upstream, cache_dir=args.cache or os.environ.get("LC0WEIGHTS_CACHE"),
                    client_cache=client_cache, trust=args.trust, fallback=args.fallback,
                    max_nets=args.max_nets, max_bytes=args.max_bytes,
                    policy=TransferPolicy(timeout=args.timeout, retries=max(0, args.retries),
                                          progress=False), prefer=args.prefer)
    server = MirrorServer(mirror, host, port, max(1, args.max_connections))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    scope = ("loopback only: other machines cannot reach it" if is_loopback(host)
             else "REACHABLE FROM OTHER MACHINES")
    print(f"lc0weights mirror: {args.upstream} at {server.url} ({scope}); "
          f"run lczero-client with --network-mirror {server.url}", file=sys.stderr, flush=True)
    print(f"lc0weights mirror: own cache {mirror.cache_dir}, client cache {client_cache} (read only)",
          file=sys.stderr, flush=True)
    stop = threading.Event()
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
    print("lc0weights mirror: stopped", file=sys.stderr)
    return 0

"""The mirror's nets: verified gzip nets by sha, fetched once per sha, kept within bounds.

A request for a net the own cache holds is answered from it once the file
hashes to its name. Otherwise one *flight* fetches it, in a worker thread of
its own: every request for that sha waits on the flight, for at most the wait
it is given and only while its client is still connected, so a slow upstream
never holds a client's slot for longer than that (the flight goes on, bounded
by the transfer's own deadlines, and the net is there for the next request).
At most ``max_fetches`` flights run at once.

A net a request is about to send is *pinned*: eviction (by count and bytes,
oldest first) never removes a pinned net, so a request never finds the net
it waited for gone, and removes nothing while another flight runs, since a
fetch may be rebuilding from any held net; the cache may exceed its bound by
the nets in use until then.

With a fallback prefix, a net the repository does not list is passed through
from there: its bytes are read as sent (no transparent decoding), bounded by
the declared length, ``FALLBACK_MAX_BYTES`` and the free space of the cache's
disk, and kept only when gunzip + sha256 gives the sha.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import Lc0WeightsError
from .mirror_options import DEFAULT_MAX_NETS
from ..client.cache import default_cache_dir
from ..client.client_cache import gzip_stream_id, net_files
from ..client.transfer_policy import TransferPolicy
from ..repository.errors import DownloadError, IntegrityError, NoRouteError, RepositoryIndexError

log = logging.getLogger("lc0weights.serving.mirror")

CHUNK = 1 << 16
DEFAULT_MAX_FETCHES = 4
FALLBACK_MAX_BYTES = 2 << 30        # a gzip net from the fallback; lc0 nets are 150-400 MB
FALLBACK_MAX_RAW_BYTES = 4 << 30
FALLBACK_DEADLINE = 1800.0          # seconds for one whole fallback transfer
FREE_SPACE_RESERVE = 64 << 20       # a fallback download never fills the disk past this
POLL_SECONDS = 0.2                  # how often a waiting request checks its client is still there


class NotListed(Lc0WeightsError):
    """The repository does not list the net (and no fallback has it): a 404."""


class ClientGone(Exception):
    """The client of a waiting request closed its connection: nothing is sent."""


class StillFetching(Lc0WeightsError):
    """The net is still being fetched after the request's wait (a 503 with Retry-After)."""


class TooBusy(Lc0WeightsError):
    """Every fetch slot is taken (a 503 with Retry-After)."""


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
        self.reported = False     # the first request to see the result reports its cost


def _not_listed(e: Exception) -> bool:
    # fetch names a net it cannot find in the repository's metadata this way.
    return isinstance(e, (RepositoryIndexError, NoRouteError)) and "not in the repository" in str(e)


class Mirror:
    """Gets verified gzip nets for the HTTP front, sharing concurrent work per sha."""

    def __init__(self, upstream: str, cache_dir=None, client_cache=None, trust=None,
                 fallback: str | None = None, max_nets: int = DEFAULT_MAX_NETS,
                 max_bytes: int | None = None, policy: TransferPolicy | None = None,
                 max_fetches: int = DEFAULT_MAX_FETCHES, fallback_deadline: float = FALLBACK_DEADLINE,
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
        self.max_fetches = max(1, max_fetches)
        self.fallback_deadline = fallback_deadline
        self.policy = policy or TransferPolicy(progress=False)
        self.upstream_fetches = 0           # fetches started (for logs and tests)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._pins: Counter = Counter()     # sha -> requests about to open it
        self._eviction_deferred = False     # a pinned net was spared by the last eviction
        self._verified: dict[str, tuple] = {}   # sha -> (dev, ino, size, mtime_ns) checked already

    def file_for(self, sha: str) -> Path:
        return self.cache_dir / f"{sha}.pb.gz"

    # -- the one entry point --------------------------------------------------------
    def serve(self, sha: str, wait: float | None = None, gone=lambda: False) -> Served:
        """A verified open gzip file of net ``sha``.

        Waits for a fetch at most ``wait`` seconds (None: until it ends) and only
        while ``gone()`` is false. Raises NotListed, ClientGone, StillFetching,
        TooBusy or a transfer error.
        """
        with self._lock:
            self._pins[sha] += 1
        try:
            return self._serve_pinned(sha, wait, gone)
        finally:
            with self._lock:
                self._pins[sha] -= 1
                if self._pins[sha] <= 0:
                    del self._pins[sha]
                deferred, self._eviction_deferred = self._eviction_deferred, False
            if deferred:                    # a net in use was spared: bring the cache back within bounds
                try:
                    self._evict(keep=None)
                except OSError as e:        # the net is served all the same; the next eviction retries
                    log.warning("could not bring the mirror cache within its bounds: %s", e)

    def _serve_pinned(self, sha: str, wait: float | None, gone) -> Served:
        held = self._open_verified(sha)
        if held is not None:
            return self._served(held, sha, "held", 0, None)
        flight = self._join_or_start(sha)
        deadline = None if wait is None else time.monotonic() + wait
        while not flight.done.wait(POLL_SECONDS):
            if gone():
                raise ClientGone(sha)
            if deadline is not None and time.monotonic() >= deadline:
                raise StillFetching(f"{sha[:16]}... is still being fetched; ask again shortly")
        if flight.error is not None:
            raise flight.error
        opened = self._open_verified(sha)
        if opened is None:
            raise IntegrityError(f"{sha[:16]}...: the fetched net does not verify")
        with self._lock:
            first, flight.reported = not flight.reported, True
        if first:
            return self._served(opened, sha, flight.route, flight.upstream_bytes, flight.full_size)
        return self._served(opened, sha, "shared", 0, None)

    def _join_or_start(self, sha: str) -> _Flight:
        with self._lock:
            flight = self._flights.get(sha)
            if flight is not None:
                return flight
            if len(self._flights) >= self.max_fetches:
                raise TooBusy(f"{len(self._flights)} nets are being fetched already")
            flight = self._flights[sha] = _Flight()
            self.upstream_fetches += 1
        threading.Thread(target=self._fly, args=(sha, flight), name=f"mirror-fetch-{sha[:8]}",
                         daemon=True).start()
        return flight

    def _fly(self, sha: str, flight: _Flight) -> None:
        try:
            self._obtain(sha, flight)
        except Exception as e:
            flight.error = e
            if not isinstance(e, NotListed):
                log.warning("%s: %s", sha[:16], e)
        finally:
            with self._lock:
                del self._flights[sha]
            flight.done.set()

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

    def _evict(self, keep: str | None) -> None:
        """Drop the least recently stored nets beyond the count and byte bounds: never a pinned one,
        and none while a flight other than ``keep``'s runs (its fetch may be reading any held net as
        the base of a patch); what is spared is dropped by a later call (see :meth:`serve`)."""
        nets = []
        for entry in os.scandir(self.cache_dir):
            m = re.fullmatch(r"([0-9a-f]{64})\.pb\.gz", entry.name)
            if m and entry.is_file(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue                     # dropped by a concurrent eviction meanwhile
                nets.append((m.group(1) == keep, st.st_mtime_ns, st.st_size, m.group(1), Path(entry.path)))
        nets.sort(reverse=True)                  # the kept net first, then newest first
        total = 0
        with self._lock:
            other_flights = any(sha != keep for sha in self._flights)
            for i, (_, _, size, sha, path) in enumerate(nets):
                total += size
                over_count = i >= self.max_nets
                over_bytes = self.max_bytes is not None and total > self.max_bytes and i > 0
                if not (over_count or over_bytes):
                    continue
                if other_flights or sha in self._pins or sha in self._flights:
                    self._eviction_deferred = True
                else:
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

    def _fallback_room(self) -> int:
        """Bytes a fallback download may write: its cap, and what the disk can spare."""
        try:
            free = shutil.disk_usage(self.cache_dir).free - FREE_SPACE_RESERVE
        except OSError:
            free = 0
        return max(0, min(FALLBACK_MAX_BYTES, free))

    def _from_fallback(self, sha: str) -> int:
        """Pass a net through from the fallback prefix, verified (gunzip + sha256) before it is kept.

        The body is read as sent: a ``Content-Encoding`` is not undone (a net
        that only verifies after undoing one is refused), so what is written is
        bounded by the bytes on the wire.
        """
        import requests
        url = f"{self.fallback}{sha}"
        dest = self.file_for(sha)
        tmp = self.cache_dir / f".fallback-{sha}.{os.getpid()}.{threading.get_ident()}.tmp"
        received = 0
        deadline = time.monotonic() + self.fallback_deadline
        room = self._fallback_room()
        try:
            with requests.get(url, stream=True, timeout=self.policy.timeout,
                              headers={"Accept-Encoding": "identity"}) as r:
                if r.status_code == 404:
                    raise NotListed(f"{sha[:16]}... is neither in the repository nor at the fallback")
                if r.status_code != 200:
                    raise DownloadError(f"{url}: HTTP {r.status_code}")
                declared = r.headers.get("Content-Length", "").strip()
                limit = room
                if declared.isdigit() and len(declared) <= 18:
                    if int(declared) > room:
                        raise DownloadError(f"{url}: {declared} bytes, more than the {room} allowed "
                                            f"(at most {FALLBACK_MAX_BYTES}, and the disk's free space)")
                    limit = int(declared)
                with open(tmp, "wb") as out:
                    while True:
                        chunk = r.raw.read(CHUNK, decode_content=False)
                        if not chunk:
                            break
                        received += len(chunk)
                        if received > limit:
                            raise DownloadError(f"{url}: more than the {limit} bytes expected; abandoned")
                        if time.monotonic() > deadline:
                            raise DownloadError(f"{url}: slower than {self.fallback_deadline:.0f} s; "
                                                "abandoned")
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            with open(tmp, "rb") as f:
                actual = gzip_stream_id(f, FALLBACK_MAX_RAW_BYTES)
            if actual != sha:
                raise IntegrityError(f"{url}: the bytes served are not net {sha[:16]}... "
                                     f"(gunzip + sha256 gave {actual and actual[:16]})")
            os.replace(tmp, dest)
        except (requests.RequestException, OSError) as e:
            if isinstance(e, Lc0WeightsError):
                raise
            raise DownloadError(f"{url}: {type(e).__name__}") from None
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        return received

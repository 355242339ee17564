"""``fetch --follow``: keep a cache at the latest published net, as it is published.

Every interval the repository's top document is polled with a conditional
GET (a 304 when nothing is new). When it changed, ``fetch`` brings the cache
to the latest net, taking the document's new body from the poll rather than
downloading it again, and only the newest ``keep`` nets stay (two by
default, so the next patch, and a history patch, has its bases).

With the training client's layout the nets go to lczero-client's own
folder, each there, verified, before the client asks for it. That folder is
the client's: after getting a net it deletes every entry older than its keep
time (16 h) but the current net, whoever wrote it. So follow keeps nothing
of its own there: its trust state, partial downloads and patch bases live in
lc0weights' own cache (``<user cache>/lc0weights/follow``, shared with a
one-shot ``fetch --client-layout``), and only finished, verified nets are
copied into the client's folder (whose nets also serve as bases, verified
before use): :func:`.fetch.fetch_for_client` does both, for either mode.

The loop waits on an Event, not in ``sleep``, so SIGTERM/SIGINT stop it
within moments, even in the middle of a transfer; an upstream outage is
logged once and retried with a growing pause. Every file is written under a
temp name and renamed, so no partial file ever carries a final name.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

from ..errors import Lc0WeightsError
from .cache import NetCache
from .client_feed import client_state_dir, prune
from .download import DocumentReply, HttpSource, TransferPolicy, open_source
from ..repository.errors import DownloadError, NotFoundError
from ..repository.metadata import MAX_TOP_BYTES, TIMESTAMP_NAME
from .transfer_policy import TransferStopped

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 3.0
MAX_BACKOFF_SECONDS = 600.0


# A stop asked for while a transfer runs ends it at its next chunk and unwinds fetch's clean-up.
FollowStopped = TransferStopped


class TopDocumentPoller:
    """Says whether the repository's top document changed since the last successful fetch.

    Over HTTP a conditional GET (If-None-Match) through the source's own
    document reader, so its deadline, retries and size limit apply; for a
    directory its stat. ``changed()`` raises DownloadError when the repository
    cannot be reached. The body a poll read is handed to the fetch that follows
    (:meth:`primed`), which then does not download it a second time.
    """

    def __init__(self, location: str, policy: TransferPolicy):
        self.source = open_source(location, policy)
        self.http = isinstance(self.source, HttpSource)
        self.name: str | None = None
        self.seen = None          # validator of the document at the last successful fetch
        self.pending = None       # validator of the document just polled
        self.reply: DocumentReply | None = None   # the body the last poll read, if it read one

    def changed(self) -> bool:
        self.pending = self._poll_http() if self.http else self._poll_dir()
        return self.pending is None or self.pending != self.seen

    def accept(self) -> None:
        """The fetch after the last poll succeeded: its document is now the one seen."""
        self.seen = self.pending

    def forget(self) -> None:
        self.seen = None

    def primed(self, source):
        """``source``, answering its first read of the polled document with the poll's body."""
        return source if self.reply is None else PrimedSource(source, self.name, self.reply)

    def _poll_dir(self):
        root = self.source.root
        try:
            st = (root / TIMESTAMP_NAME).stat()
        except OSError:
            raise DownloadError(f"{root}: no repository document to poll") from None
        self.name = TIMESTAMP_NAME
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _poll_http(self):
        self.reply = None
        try:
            reply = self.source.read_document(TIMESTAMP_NAME, MAX_TOP_BYTES, self.seen)
        except NotFoundError:
            if self.name is None:
                raise DownloadError(f"{self.source}: no repository document to poll (HTTP 404)") from None
            raise
        self.name = TIMESTAMP_NAME
        if reply.not_modified:
            return self.seen
        self.reply = reply
        return reply.etag                # None (no ETag): every poll counts as a change


class PrimedSource:
    """A source whose first read of one document returns a reply already read.

    Everything else goes to the wrapped source; the primed bytes count in
    :attr:`bytes_downloaded`, as if read again. The reply is no more trusted
    than a download: the reader checks it as it checks any document.
    """

    def __init__(self, source, name: str, reply: DocumentReply):
        self._source, self._name, self._reply = source, name, reply
        self._primed_bytes = 0

    def __getattr__(self, attr):
        return getattr(self._source, attr)

    def __str__(self):
        return str(self._source)

    @property
    def bytes_downloaded(self) -> int:
        return self._source.bytes_downloaded + self._primed_bytes

    def _take(self, name: str, max_bytes: int) -> DocumentReply | None:
        reply = self._reply if name == self._name else None
        if reply is None or len(reply.data) > max_bytes:
            return None
        self._reply = None
        self._primed_bytes += reply.transferred
        return reply

    def read_document(self, name: str, max_bytes: int, etag: str | None = None,
                      seconds: float | None = None) -> DocumentReply:
        return (self._take(name, max_bytes)
                or self._source.read_document(name, max_bytes, etag, **({} if seconds is None else
                                                                        {"seconds": seconds})))


def follow(location: str, stop: threading.Event, cache_dir=None, client_layout: bool = False,
           interval: float = 60.0, keep: int = 2, policy: TransferPolicy | None = None,
           trust: str | None = None, have=(), on_net=None, state_dir=None,
           prefer: str = "bytes") -> int:
    """Poll and fetch until ``stop`` is set; return the number of new nets obtained.

    With ``client_layout``, ``cache_dir`` is lczero-client's folder (default:
    its usual place) and receives only verified nets; fetching happens in
    ``state_dir`` (default :func:`.client_feed.client_state_dir`). ``on_net(result)`` is
    called after each new net is in place.
    """
    from .fetch import fetch, fetch_for_client
    policy = dataclasses.replace(policy or TransferPolicy(progress=False), stop=stop)
    poller = TopDocumentPoller(location, policy)
    cache = NetCache(cache_dir, client_layout=client_layout)     # the folder follow keeps up to date
    extra = {"prefer": prefer} if trust is None else {"trust": trust, "prefer": prefer}
    if client_layout:       # fetched in the state folder, placed verified in the client's (client_feed)
        extra.update(client_dir=cache.root, state_dir=state_dir or client_state_dir(), keep=keep)
        get = fetch_for_client
    else:
        extra.update(cache_dir=cache.root)
        get = fetch
    current, obtained, failures = None, 0, 0
    log.info("following %s every %g s into %s (keeping %d nets)", location, interval, cache.root, keep)
    while not stop.is_set():
        pause = interval
        try:
            if poller.changed() or current is None:
                source = poller.primed(open_source(location, policy))
                result = _run_until_stopped(stop, lambda: get(
                    location, net="latest", policy=policy, source=source, have=list(have), **extra))
                if result is None:
                    break
                poller.accept()
                if result.net_id != current:
                    current = result.net_id
                    obtained += 1
                    log.info("new net %s via %s: %d bytes downloaded (full net %d) -> %s",
                                current, result.route, result.bytes_downloaded, result.full_size,
                                result.path)
                    removed = prune(cache, keep, current)
                    if removed:
                        log.info("removed %d older net(s): %s", len(removed),
                                 ", ".join(r[:16] for r in removed))
                    if on_net is not None:
                        on_net(result)
            if failures:
                log.warning("upstream %s reachable again after %d failed poll(s)", location, failures)
                failures = 0
        except FollowStopped:
            break
        except (Lc0WeightsError, OSError) as e:
            failures += 1
            poller.forget()
            pause = min(MAX_BACKOFF_SECONDS, interval * 2 ** min(failures - 1, 16))
            if failures == 1:
                log.warning("cannot follow %s (%s); retrying with backoff", location, e)
            else:
                log.info("still failing (%s); next try in %g s", e, pause)
        stop.wait(pause)
    return obtained


def _run_until_stopped(stop: threading.Event, work):
    """Run ``work`` in a worker thread; its result, or None once ``stop`` is set.

    The transfer notices the stop at its next chunk and cleans up after itself;
    work that is busy elsewhere (decoding a patch) gets a short grace before
    the caller gives up on it.
    """
    box: dict = {}

    def run():
        try:
            box["result"] = work()
        except BaseException as e:          # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="follow-fetch", daemon=True)
    worker.start()
    while worker.is_alive():
        if stop.wait(0.2):
            worker.join(STOP_GRACE_SECONDS)
            return box.get("result")        # a fetch that finished meanwhile still counts
    if "error" in box:
        raise box["error"]
    return box["result"]


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (in the main thread only, as Python requires)."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def run_follow(args, policy: TransferPolicy) -> int:
    """The ``fetch --follow`` command: runs until SIGTERM or SIGINT, then exits 0."""
    stop = threading.Event()
    stop_on_signals(stop)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    started = time.monotonic()
    count = follow(args.url, stop, cache_dir=args.cache, client_layout=args.client_layout,
                   interval=max(0.1, args.interval), keep=max(1, args.keep), policy=policy,
                   trust=args.trust, have=args.have or (), prefer=args.prefer)
    log.warning("stopped after %.0f s; %d new net(s) fetched", time.monotonic() - started, count)
    return 0

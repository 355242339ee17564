"""A repository published over HTTP(S): documents and objects read with resume, retries and bounds.

Every transfer is bounded three ways, whatever the server does:

- **time**: a deadline of ``allowance + size / min_rate`` seconds for the whole
  transfer, retries and pauses included, enforced by a watchdog that cuts the
  connection (a server trickling one byte a second is stopped even though each
  read succeeds), besides the ``timeout`` for connecting and for any one read;
- **bytes**: one :class:`ByteBudget` per source counts everything it reads in a
  fetch (all retries, routes and documents) and refuses to go past its limit;
- **disk**: free space is checked before an object is written.

A :class:`Download` is the small state of one transfer (url, staged file,
expected size, bytes received, attempts, validator). Resuming sends ``Range``
plus ``If-Range`` with the validator of the first reply, so a file that
changed on the server restarts from zero (the server answers 200) instead of
being stitched from two versions; a ``206`` whose ``Content-Range`` does not
start where the staged file ends is refused. Every object is checked against
the size and sha256 from the index before it is renamed into place. With a
``partial_dir`` an interrupted download is kept and resumed by the next run
(see :mod:`.staging`); without one, nothing half-downloaded is left behind.

Failures are one line that says which: connection refused, host name not
resolved, TLS failure, timeout or deadline (with the seconds waited), HTTP
status, or too many bytes, each with what to try.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..console import progress_bar
from .deadline import Deadline, DeadlineAdapter, DeadlineExceeded
from ..repository.errors import DownloadError, IntegrityError, NotFoundError
from .network_failures import Failure, classify
from .source_checks import CHUNK, DocumentReply, checked_path, checked_size
from .staging import StagedFile, check_free_space
from .transfer_policy import ByteBudget, TransferPolicy, TransferStopped

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5


@dataclass
class Download:
    """State of one resumable transfer."""

    url: str
    staged: StagedFile           # where the bytes go until verified
    size: int                    # expected total size (from the index)
    attempts: int = 0
    validator: str | None = None  # ETag (or Last-Modified) of the first reply
    transferred: int = 0          # body bytes read off the wire, over all attempts

    @property
    def received(self) -> int:
        return self.staged.size



class _Retry(Exception):
    """A transient failure inside one attempt; the caller pauses and resumes."""



def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class HttpSource:
    """A repository published over HTTP(S)."""

    def __init__(self, base_url: str, policy: TransferPolicy | None = None,
                 session: requests.Session | None = None):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.policy = policy or TransferPolicy()
        self.session = session or requests.Session()
        adapter = DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.budget = ByteBudget(self.policy.byte_budget)

    def __str__(self):
        return self.base_url

    @property
    def bytes_downloaded(self) -> int:
        """Every body byte read from this source so far (documents, objects, failed attempts)."""
        return self.budget.spent

    def url(self, path: str) -> str:
        return urljoin(self.base_url, checked_path(path))

    # -- the retry loop, shared by documents and objects -----------------------
    def _retrying(self, url: str, what: str, deadline: Deadline, attempt: Callable[[], object]):
        """Run ``attempt`` until it returns, retrying transient failures within the deadline."""
        p = self.policy
        last: Failure | None = None
        attempts = 0
        with deadline:
            while attempts <= p.retries:
                if attempts:
                    pause = min(p.max_backoff, p.backoff * (2 ** (attempts - 1)))
                    log.info("retrying %s in %.1f s (attempt %d): %s", url, pause, attempts + 1, last.what)
                    if deadline.remaining() <= pause:
                        break                    # no time left for another try: report the last failure
                    time.sleep(pause)
                attempts += 1
                try:
                    return attempt()
                except DeadlineExceeded:
                    raise self._deadline_error(url, what, deadline, attempts) from None
                except _Retry as e:
                    last = Failure(str(e), "try again later")
                except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                    if deadline.expired:
                        raise self._deadline_error(url, what, deadline, attempts) from None
                    last = classify(e, url, p.timeout)
                    if not last.retry:
                        break
                if deadline.expired or deadline.remaining() <= 0:
                    raise self._deadline_error(url, what, deadline, attempts)
        raise DownloadError(f"{url}: cannot read {what}: {last.what} (waited {deadline.elapsed():.1f} s "
                            f"over {_plural(attempts, 'attempt')}); {last.hint}")

    def _deadline_error(self, url: str, what: str, deadline: Deadline, attempts: int) -> DownloadError:
        return DownloadError(
            f"{url}: cannot read {what}: timed out at its deadline of {deadline.seconds:.1f} s "
            f"(waited {deadline.elapsed():.1f} s over {_plural(attempts, 'attempt')}; the server sends "
            f"slower than {self.policy.min_rate:,.0f} bytes/s); try again later, another mirror, "
            "or a lower minimum rate")

    def _get(self, url: str, headers: dict, deadline: Deadline):
        """GET with a streamed body; redirects are followed here, closing each without reading its body.

        The request goes straight to the session's adapter: ``Session.send`` reads the
        whole body of any redirect into memory (even with redirects off), whatever its size.
        """
        headers = {"Accept-Encoding": "identity", **headers}   # bytes as published, never decoded
        for _ in range(MAX_REDIRECTS + 1):
            self._check_stop()
            wait = max(0.001, min(self.policy.timeout, deadline.remaining()))
            request = self.session.prepare_request(requests.Request("GET", url, headers=headers))
            env = self.session.merge_environment_settings(request.url, {}, True, None, None)
            reply = self.session.get_adapter(request.url).send(
                request, stream=True, timeout=(wait, self.policy.timeout),
                verify=env["verify"], cert=env["cert"], proxies=env["proxies"])
            location = reply.headers.get("Location")
            if reply.status_code not in _REDIRECT_STATUS or not location:
                return reply
            reply.close()
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise DownloadError(f"{url}: redirected to something that is not http(s); refused")
        raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects; refused")

    def _check_stop(self) -> None:
        stop = self.policy.stop
        if stop is not None and stop.is_set():
            raise TransferStopped()

    def _chunks(self, reply, deadline: Deadline, left=None):
        """The body as it arrives (never waiting to fill a chunk), checking the clock in between.

        ``left()``, when given, is how many bytes the caller still accepts: no read
        asks for more than one byte past it or past the byte budget, so a refusal
        is never a megabyte late.
        """
        raw = reply.raw
        read = raw.read1 if hasattr(raw, "read1") else raw.read      # urllib3 < 2 has no read1
        while True:
            deadline.check()
            self._check_stop()
            room = self.budget.limit - self.budget.spent
            want = max(1, min(CHUNK, room + 1, CHUNK if left is None else left() + 1))
            chunk = read(want, decode_content=False)
            deadline.check()
            if not chunk:
                return
            yield chunk

    # -- top documents ----------------------------------------------------------
    def read_document(self, name: str, max_bytes: int, etag: str | None = None,
                      seconds: float | None = None) -> DocumentReply:
        """Read a small top document, or learn it did not change since ``etag`` (a 304).

        Refuses a body over ``max_bytes`` (reading stops there). Retries like
        objects; the deadline is that of ``max_bytes``, brought forward to that
        of the declared length when the server declares one, and to ``seconds``
        when given.
        """
        url = self.url(name)
        what = name
        checked_size(max_bytes, what)
        headers = {"Cache-Control": "no-cache"}
        if etag:
            headers["If-None-Match"] = etag
        allowed = self.policy.deadline_for(max_bytes)
        deadline = Deadline(allowed if seconds is None else min(allowed, seconds))   # seconds: hint reads
        read = [0]

        def attempt() -> DocumentReply:
            with self._get(url, headers, deadline) as r:
                if r.status_code == 304 and etag:
                    return DocumentReply(None, r.headers.get("ETag") or etag, True, read[0])
                _check_status(r, url, what)
                declared = _content_length(r)
                if declared is not None and declared > max_bytes:
                    raise DownloadError(f"{url}: {what} is {declared:,} bytes, more than the "
                                        f"{max_bytes:,} allowed; refused")
                if declared is not None:
                    deadline.shorten(self.policy.deadline_for(declared))
                data = bytearray()
                for chunk in self._chunks(r, deadline, lambda: max_bytes - len(data)):
                    read[0] += len(chunk)
                    self.budget.spend(len(chunk), url)
                    data += chunk
                    if len(data) > max_bytes:
                        raise DownloadError(f"{url}: {what} is larger than the {max_bytes:,} bytes "
                                            "allowed; refused")
                if declared is not None and len(data) != declared:
                    raise _Retry(f"connection closed at {len(data):,}/{declared:,} bytes")
                return DocumentReply(bytes(data), r.headers.get("ETag"), False, read[0])

        return self._retrying(url, what, deadline, attempt)

    # -- objects --------------------------------------------------------------
    def fetch_object(self, path: str, dest: Path, size: int, sha256: str, desc: str = "",
                     partial_dir=None, tap=None) -> int:
        """Download object ``path`` to ``dest`` (atomically), checking size and sha256.

        With ``partial_dir``, bytes received so far are kept in
        ``partial_dir/<sha256>.part`` when the transfer fails or the process is
        killed, and the next call resumes from there; a partial that turns out
        corrupt is deleted and the object downloaded once more from zero.
        ``tap`` sees the bytes as they are staged (see :class:`.staging.StagedFile`):
        whatever it computes is unverified until this returns.
        Returns the number of bytes read from the network for it.
        """
        dest = Path(dest)
        url = self.url(path)
        checked_size(size, url)
        self.budget.declare(size)
        before = self.budget.spent
        for _ in range(2):
            staged = StagedFile.open(dest, sha256, partial_dir, limit=size, tap=tap)
            resumed = staged.size
            try:
                self._download_into(Download(url, staged, size), dest, sha256, desc or path)
                return self.budget.spent - before
            except IntegrityError:
                staged.discard()
                if not resumed:
                    raise
                log.warning("%s: the partial download from an earlier run was corrupt; starting over", url)
            except BaseException:
                if staged.resumable and staged.size:
                    staged.close()           # keep the bytes: the next run resumes them
                else:
                    staged.discard()
                raise
        raise AssertionError("unreachable")

    def _download_into(self, state: Download, dest: Path, sha256: str, desc: str) -> None:
        check_free_space(state.staged.path.parent, state.size - state.received)
        if os.stat(dest.parent).st_dev != os.stat(state.staged.path.parent).st_dev:
            check_free_space(dest.parent, state.size)    # the partial will be copied across
        if state.received < state.size:
            self.budget.require(state.size - state.received, state.url)
            deadline = Deadline(self.policy.deadline_for(state.size))
            self._retrying(state.url, "the object", deadline, lambda: self._attempt(state, desc, deadline))
        if state.received != state.size:
            raise IntegrityError(f"{state.url}: got {state.received} bytes, the index says {state.size}")
        digest = state.staged.hexdigest()
        if digest != sha256:
            raise IntegrityError(f"{state.url}: sha256 {digest[:16]}... does not match the index "
                                 f"({sha256[:16]}...); the object is corrupt")
        state.staged.commit(dest)

    def _attempt(self, state: Download, desc: str, deadline: Deadline) -> None:
        state.attempts += 1
        headers = {}
        if state.received:
            headers["Range"] = f"bytes={state.received}-"
            if state.validator:
                headers["If-Range"] = state.validator
        with self._get(state.url, headers, deadline) as r:
            if r.status_code == 416:
                if state.received == state.size:
                    return                   # we already hold every byte
                state.staged.reset()
                state.validator = None
                raise _Retry("server refused the resume range; restarting")
            if r.status_code == 206 and state.received:
                _check_content_range(state, r.headers.get("Content-Range", ""))
            elif r.status_code == 200:
                if state.received:
                    log.info("%s: server restarted the transfer from zero", state.url)
                    state.staged.reset()
            else:
                _check_status(r, state.url, "the object")
                raise DownloadError(f"{state.url}: unexpected HTTP {r.status_code}")
            state.validator = state.validator or r.headers.get("ETag") or r.headers.get("Last-Modified")
            declared = _content_length(r)
            if r.status_code == 200 and declared is not None and declared > state.size:
                raise IntegrityError(f"{state.url}: server sends {declared} bytes, "
                                     f"the index says {state.size}")
            chunks = progress_bar(self._chunks(r, deadline, lambda: state.size - state.received),
                                  state.size, state.received, desc, self.policy.progress)
            for chunk in chunks:
                state.transferred += len(chunk)
                if state.received + len(chunk) > state.size:
                    raise IntegrityError(f"{state.url}: more bytes than the {state.size} the index declares")
                state.staged.append(chunk)
                self.budget.spend(len(chunk), state.url)
        if state.received < state.size:
            raise _Retry(f"connection closed at {state.received:,}/{state.size:,} bytes")


def _content_length(reply) -> int | None:
    declared = reply.headers.get("Content-Length", "")
    return int(declared) if declared.isdigit() and len(declared) < 20 else None


def _check_status(reply, url: str, what: str) -> None:
    """Raise for any status but 200: _Retry for transient ones, DownloadError for the rest."""
    code = reply.status_code
    if code == 200:
        return
    status = f"HTTP {code} {reply.reason or ''}".rstrip()
    if code in _RETRY_STATUS:
        raise _Retry(status)
    if code == 404:
        raise NotFoundError(f"{url}: cannot read {what}: {status}; is the URL an lc0weights repository?")
    raise DownloadError(f"{url}: cannot read {what}: {status}; the server refused the request")


def _check_content_range(state: Download, header: str) -> None:
    m = _CONTENT_RANGE.match(header.strip())
    if not m or int(m.group(1)) != state.received:
        raise DownloadError(f"{state.url}: asked to resume at byte {state.received}, "
                            f"server answered Content-Range {header!r}")
    if m.group(3) != "*" and int(m.group(3)) != state.size:
        raise IntegrityError(f"{state.url}: server says the object has {m.group(3)} bytes, "
                             f"the index says {state.size}")

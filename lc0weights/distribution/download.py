"""Getting repository files: over HTTP with resume and retries, or from a local directory.

A :class:`Download` is the small state of one transfer (url, partial file,
expected size, bytes received, attempts, validator). Resuming sends ``Range``
plus ``If-Range`` with the validator of the first reply, so a file that
changed on the server restarts from zero (the server answers 200) instead of
being stitched from two versions; a ``206`` whose ``Content-Range`` does not
start where the partial file ends is refused. Every byte is checked against
the size and sha256 from the index; on any failure the partial file is
deleted, so nothing half-downloaded is ever left behind.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import requests

from .errors import DownloadError, IntegrityError
from .index import INDEX_NAME, MAX_INDEX_BYTES

log = logging.getLogger(__name__)

CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class TransferPolicy:
    timeout: float = 30.0        # seconds to connect, and between two received chunks
    retries: int = 4             # attempts after the first one
    backoff: float = 0.5         # first pause between attempts, doubled each time
    max_backoff: float = 8.0
    progress: bool = True        # show a bar when stderr is a terminal


@dataclass
class Download:
    """State of one resumable transfer."""

    url: str
    path: Path                   # the partial file
    size: int                    # expected total size (from the index)
    received: int = 0
    attempts: int = 0
    validator: str | None = None  # ETag (or Last-Modified) of the first reply
    transferred: int = 0          # body bytes read off the wire, over all attempts


@dataclass
class DocumentReply:
    """A top document as the source answered: its bytes, or 'not modified' since ``etag``."""

    data: bytes | None
    etag: str | None
    not_modified: bool = False
    transferred: int = 0


class _Retry(Exception):
    """A transient failure inside one attempt; the caller pauses and resumes."""


def progress_bar(chunks, total: int, initial: int, desc: str, enabled: bool = True):
    """Wrap a chunk iterator in a tqdm bar; plain iteration when not on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield from chunks
        return
    from tqdm import tqdm
    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=desc,
              leave=False, file=sys.stderr) as bar:
        for chunk in chunks:
            bar.update(len(chunk))
            yield chunk


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class HttpSource:
    """A repository published over HTTP(S)."""

    def __init__(self, base_url: str, policy: TransferPolicy | None = None,
                 session: requests.Session | None = None):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.policy = policy or TransferPolicy()
        self.session = session or requests.Session()
        self.bytes_downloaded = 0

    def __str__(self):
        return self.base_url

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def _pause(self, attempt: int) -> None:
        p = self.policy
        time.sleep(min(p.max_backoff, p.backoff * (2 ** (attempt - 1))))

    # -- top documents --------------------------------------------------------
    def read_document(self, name: str, max_bytes: int, etag: str | None = None) -> DocumentReply | None:
        """GET a small top document (conditionally on ``etag``); None when the server has none (404)."""
        url = self.url(name)
        last = None
        headers = {"Cache-Control": "no-cache"}
        if etag:
            headers["If-None-Match"] = etag
        for attempt in range(self.policy.retries + 1):
            if attempt:
                self._pause(attempt)
            try:
                with self.session.get(url, timeout=self.policy.timeout, stream=True, headers=headers) as r:
                    if r.status_code in _RETRY_STATUS:
                        last = f"HTTP {r.status_code}"
                        continue
                    if r.status_code == 304 and etag:
                        return DocumentReply(None, etag, True, 0)
                    if r.status_code == 404:
                        return None
                    if r.status_code != 200:
                        raise DownloadError(f"{url}: HTTP {r.status_code}; is this an lc0weights repository?")
                    data = bytearray()
                    for chunk in r.iter_content(CHUNK):
                        data += chunk
                        if len(data) > max_bytes:
                            self.bytes_downloaded += len(data)
                            raise DownloadError(f"{url}: larger than {max_bytes} bytes, refused")
                    self.bytes_downloaded += len(data)
                    return DocumentReply(bytes(data), r.headers.get("ETag"), False, len(data))
            except requests.RequestException as e:
                last = _describe(e)
        raise DownloadError(f"{url}: cannot read it after {self.policy.retries + 1} attempts ({last})")

    # -- the index ------------------------------------------------------------
    def read_index(self) -> bytes:
        url = self.url(INDEX_NAME)
        last = None
        for attempt in range(self.policy.retries + 1):
            if attempt:
                self._pause(attempt)
            try:
                with self.session.get(url, timeout=self.policy.timeout, stream=True,
                                      headers={"Cache-Control": "no-cache"}) as r:
                    if r.status_code in _RETRY_STATUS:
                        last = f"HTTP {r.status_code}"
                        continue
                    if r.status_code != 200:
                        raise DownloadError(f"{url}: HTTP {r.status_code}; is this an lc0weights repository?")
                    data = bytearray()
                    for chunk in r.iter_content(CHUNK):
                        data += chunk
                        if len(data) > MAX_INDEX_BYTES:
                            raise DownloadError(f"{url}: index larger than {MAX_INDEX_BYTES} bytes, refused")
                    self.bytes_downloaded += len(data)
                    return bytes(data)
            except requests.RequestException as e:
                last = _describe(e)
        raise DownloadError(f"{url}: cannot read the index after {self.policy.retries + 1} attempts ({last})")

    # -- objects --------------------------------------------------------------
    def fetch_object(self, path: str, dest: Path, size: int, sha256: str, desc: str = "") -> int:
        """Download object ``path`` to ``dest`` (atomically), checking size and sha256.

        Returns the number of bytes read from the network for it.
        """
        dest = Path(dest)
        state = Download(self.url(path), dest.with_name(f".{dest.name}.part"), size)
        _remove(state.path)
        try:
            self._transfer(state, desc or path)
            if state.received != size:
                raise IntegrityError(f"{state.url}: got {state.received} bytes, the index says {size}")
            digest = sha256_file(state.path)
            if digest != sha256:
                raise IntegrityError(f"{state.url}: sha256 {digest[:16]}... does not match the index "
                                     f"({sha256[:16]}...); the object is corrupt")
            os.replace(state.path, dest)
        except BaseException:
            _remove(state.path)
            raise
        finally:
            self.bytes_downloaded += state.transferred
        return state.transferred

    def _transfer(self, state: Download, desc: str) -> None:
        last = None
        while state.attempts <= self.policy.retries:
            state.attempts += 1
            if state.attempts > 1:
                log.info("retrying %s (attempt %d, %d/%d bytes held): %s",
                         state.url, state.attempts, state.received, state.size, last)
                self._pause(state.attempts - 1)
            try:
                self._attempt(state, desc)
                return
            except _Retry as e:
                last = str(e)
            except requests.RequestException as e:
                last = _describe(e)
        raise DownloadError(f"{state.url}: failed after {state.attempts} attempts ({last})")

    def _attempt(self, state: Download, desc: str) -> None:
        headers = {}
        if state.received:
            headers["Range"] = f"bytes={state.received}-"
            if state.validator:
                headers["If-Range"] = state.validator
        with self.session.get(state.url, headers=headers, stream=True,
                              timeout=self.policy.timeout) as r:
            if r.status_code in _RETRY_STATUS:
                raise _Retry(f"HTTP {r.status_code}")
            if r.status_code == 416:
                if state.received == state.size:
                    return                   # we already hold every byte
                state.received, state.validator = 0, None
                raise _Retry("server refused the resume range; restarting")
            if r.status_code == 206 and state.received:
                _check_content_range(state, r.headers.get("Content-Range", ""))
                mode = "ab"
            elif r.status_code == 200:
                if state.received:
                    log.info("%s: server restarted the transfer from zero", state.url)
                state.received = 0
                mode = "wb"
            else:
                raise DownloadError(f"{state.url}: unexpected HTTP {r.status_code}")
            state.validator = state.validator or r.headers.get("ETag") or r.headers.get("Last-Modified")
            declared = r.headers.get("Content-Length")
            if r.status_code == 200 and declared and declared.isdigit() and int(declared) > state.size:
                raise IntegrityError(f"{state.url}: server sends {declared} bytes, the index says {state.size}")
            chunks = progress_bar(r.iter_content(CHUNK), state.size, state.received, desc, self.policy.progress)
            with open(state.path, mode) as f:
                for chunk in chunks:
                    state.transferred += len(chunk)
                    state.received += len(chunk)
                    if state.received > state.size:
                        raise IntegrityError(f"{state.url}: more bytes than the {state.size} the index declares")
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        if state.received < state.size:
            raise _Retry(f"connection closed at {state.received}/{state.size} bytes")


def _check_content_range(state: Download, header: str) -> None:
    m = _CONTENT_RANGE.match(header.strip())
    if not m or int(m.group(1)) != state.received:
        raise DownloadError(f"{state.url}: asked to resume at byte {state.received}, "
                            f"server answered Content-Range {header!r}")
    if m.group(3) != "*" and int(m.group(3)) != state.size:
        raise IntegrityError(f"{state.url}: server says the object has {m.group(3)} bytes, "
                             f"the index says {state.size}")


def _describe(e: Exception) -> str:
    if isinstance(e, requests.Timeout):
        return "timed out"
    if isinstance(e, requests.ConnectionError):
        return "connection failed"
    return type(e).__name__


class LocalSource:
    """A repository directory on this machine (no network, same checks)."""

    def __init__(self, root, policy: TransferPolicy | None = None):
        self.root = Path(root).resolve()
        self.policy = policy or TransferPolicy()
        self.bytes_downloaded = 0

    def __str__(self):
        return str(self.root)

    def _file(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root):
            raise DownloadError(f"{path}: outside the repository {self.root}")
        return full

    def read_document(self, name: str, max_bytes: int, etag: str | None = None) -> DocumentReply | None:
        f = self._file(name)
        try:
            if f.stat().st_size > max_bytes:
                raise DownloadError(f"{f}: larger than {max_bytes} bytes, refused")
            data = f.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DownloadError(f"{f}: cannot read ({e.strerror})") from None
        self.bytes_downloaded += len(data)
        return DocumentReply(data, None, False, len(data))

    def read_index(self) -> bytes:
        f = self._file(INDEX_NAME)
        try:
            if f.stat().st_size > MAX_INDEX_BYTES:
                raise DownloadError(f"{f}: index larger than {MAX_INDEX_BYTES} bytes, refused")
            data = f.read_bytes()
        except OSError as e:
            raise DownloadError(f"{f}: cannot read the index ({e.strerror}); "
                                "is this an lc0weights repository?") from None
        self.bytes_downloaded += len(data)
        return data

    def fetch_object(self, path: str, dest: Path, size: int, sha256: str, desc: str = "") -> int:
        src = self._file(path)
        dest = Path(dest)
        part = dest.with_name(f".{dest.name}.part")
        try:
            try:
                actual = src.stat().st_size
                if actual != size:
                    raise IntegrityError(f"{src}: {actual} bytes, the index says {size}")
                with open(src, "rb") as fin, open(part, "wb") as fout:
                    shutil.copyfileobj(fin, fout, CHUNK)
                    fout.flush()
                    os.fsync(fout.fileno())
            except OSError as e:
                raise DownloadError(f"{src}: cannot read ({e.strerror})") from None
            digest = sha256_file(part)
            if digest != sha256:
                raise IntegrityError(f"{src}: sha256 does not match the index; the object is corrupt")
            os.replace(part, dest)
        except BaseException:
            _remove(part)
            raise
        self.bytes_downloaded += size
        return size


def open_source(location: str, policy: TransferPolicy | None = None):
    """An HTTP source for ``http(s)://`` URLs, a local source for a directory."""
    if re.match(r"https?://", location, re.I):
        return HttpSource(location, policy)
    if location.startswith("file://"):
        location = location[len("file://"):]
    if not Path(location).is_dir():
        raise DownloadError(f"{location}: neither an http(s) URL nor a repository directory")
    return LocalSource(location, policy)

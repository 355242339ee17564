"""A stand-in for lczero-client's net handling, written from its documented behaviour.

What it does, as lczero-client does: a net is a gzip file named by the bare
sha256 of its raw protobuf in the cache folder; a cached file is checked by
gunzipping and hashing and deleted if wrong; otherwise ``GET <prefix><sha>``
is written to ``<sha>_tmp*`` and renamed once it checks out, retrying a
failed download (3 times, 10 s apart by default); an exclusive flock on
``<sha>.lck`` makes a second client wait (up to 60 s); after getting a net,
whether from its cache or downloaded, it deletes every entry of its cache
folder older than the keep time (16 h) except that net: files and folders
alike, whatever their name (what it did not write included).
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import requests

NET_NAME = re.compile(r"[0-9a-f]{64}\Z")


class ClientError(Exception):
    pass


@dataclass
class StandInClient:
    cache: Path
    prefix: str                                  # --network-mirror, e.g. http://127.0.0.1:8080/
    keep_seconds: float = 16 * 3600
    retries: int = 3
    retry_pause: float = 10.0
    lock_wait: float = 60.0
    downloads: list = field(default_factory=list)   # (sha, bytes) of each successful download
    statuses: list = field(default_factory=list)    # HTTP status of every attempt

    def __post_init__(self):
        self.cache = Path(self.cache)
        self.cache.mkdir(parents=True, exist_ok=True)

    def get_network(self, sha: str) -> Path:
        """The path of a verified gzip net ``sha`` in the cache, downloading it when needed."""
        with self._locked(sha):
            path = self.cache / sha
            if path.exists() and not self.check(path, sha):
                path.unlink()                    # the client deletes a wrong cached net
            if not path.exists():
                self._download(sha, path)
        self.clean_up(keep=sha)
        return path

    @staticmethod
    def check(path: Path, sha: str) -> bool:
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error):
            return False
        return hashlib.sha256(raw).hexdigest() == sha

    def _download(self, sha: str, path: Path) -> None:
        last = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.retry_pause)
            fd, tmp = tempfile.mkstemp(prefix=f"{sha}_tmp", dir=self.cache)
            try:
                with os.fdopen(fd, "wb") as f, requests.get(self.prefix + sha, stream=True, timeout=60) as r:
                    self.statuses.append(r.status_code)
                    if r.status_code != 200:
                        last = f"HTTP {r.status_code}"
                        continue
                    size = 0
                    for chunk in r.iter_content(1 << 16):
                        f.write(chunk)
                        size += len(chunk)
                if not self.check(Path(tmp), sha):
                    last = "downloaded net does not hash to its sha"
                    continue
                os.replace(tmp, path)
                self.downloads.append((sha, size))
                return
            except requests.RequestException as e:
                last = type(e).__name__
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        raise ClientError(f"cannot download {sha[:16]}: {last}")

    def clean_up(self, keep: str) -> None:
        """Delete every entry older than the keep time but the current net, as lczero-client does."""
        cutoff = time.time() - self.keep_seconds
        for entry in os.scandir(self.cache):
            if entry.name == keep or entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)

    class _Lock:
        def __init__(self, path: Path, wait: float):
            self.path, self.wait = path, wait

        def __enter__(self):
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            deadline = time.monotonic() + self.wait
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return self
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(self.fd)
                        raise ClientError(f"{self.path}: still locked after {self.wait} s")
                    time.sleep(0.05)

        def __exit__(self, *exc):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)

    def _locked(self, sha: str):
        return self._Lock(self.cache / f"{sha}.lck", self.lock_wait)

    def nets(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self.cache) if NET_NAME.match(e.name))

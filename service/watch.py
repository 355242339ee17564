"""``watch``: publish each net the trainer drops into a folder, exactly once.

A file is taken only when it is complete: hidden and temp names (``.x``,
``*.tmp``, ``*.part``) are ignored, a file must show the same size and
modification time on two polls in a row, and it must then be a whole lc0
net: a gzip file must end in valid trailers (zlib checks each member's CRC32
and length while the stream is read through once, in bounded memory, before
the net is loaded), and the net must carry weights (a raw ``.pb`` cut
between two top-level fields parses, but has none). A file that fails is
skipped until it changes.

The backlog is ordered by training steps read from the first kilobytes of
each file (then by modification time and name), and nets are loaded and
published one at a time, so memory stays that of one net however many are
waiting. What has been published is read from the repository index itself
(nets listed or retired), so a watcher restarted after a crash neither
publishes a net twice nor skips one. Before its first poll the watcher
removes the temp files a killed writer left in the repository (service.sweep).
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from lc0weights.errors import Lc0WeightsError, NetFormatError
from lc0weights.net import GZIP_MAGIC, Net
from lc0weights.wire import iter_fields

from .publish import SKIPS, Published, load_net_file, publish_net
from .repository import Repository
from .sweep import DEFAULT_MIN_AGE, sweep_temp_files

log = logging.getLogger(__name__)
NET_SUFFIXES = (".pb.gz", ".pb")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".temp", ".swp")
MAX_RAW_SIZE = 16 << 30         # no lc0 net comes near; a gzip stream inflating past it is refused
STEPS_PREFIX = 64 << 10         # training_params precedes the weights: a few dozen bytes in
_READ = 1 << 20
_NET_TRAINING_PARAMS, _NET_WEIGHTS, _NET_ONNX = 5, 10, 11


def looks_like_net(name: str) -> bool:
    return (not name.startswith((".", "~")) and name.endswith(NET_SUFFIXES)
            and not name.endswith(TEMP_SUFFIXES))


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int


class Watcher:
    def __init__(self, incoming, repo: Repository, interval: float = 2.0,
                 tolerance: float | None = None, codec: str | None = None, skips=SKIPS,
                 sweep_min_age: float = DEFAULT_MIN_AGE, workers: int | None = None):
        self.incoming = Path(incoming)
        self.repo = repo
        self.interval = interval
        self.tolerance = tolerance
        self.codec = codec
        self.skips = skips
        self.workers = workers                  # processes encoding each net's patches (None: every core)
        self._last: dict[str, _Seen] = {}
        self._done: dict[str, _Seen] = {}      # handled files, as they were when handled
        self.sweep_min_age = sweep_min_age
        self._swept = False

    def _observe(self) -> dict[str, _Seen]:
        seen = {}
        try:
            entries = list(os.scandir(self.incoming))
        except OSError as e:
            log.error("cannot list %s: %s", self.incoming, e.strerror)
            return seen
        for entry in entries:
            if looks_like_net(entry.name):
                try:
                    st = entry.stat()
                except OSError:
                    continue                    # vanished between listing and stat
                if entry.is_file() and st.st_size > 0:
                    seen[entry.name] = _Seen(st.st_size, st.st_mtime_ns)
        return seen

    def poll(self) -> list[Published]:
        """One look at the folder: publish every file that has been stable since the last look."""
        if not self._swept:
            sweep_temp_files(self.repo.root, self.sweep_min_age)
            self._swept = True
        now = self._observe()
        stable = [name for name, s in now.items()
                  if self._last.get(name) == s and self._done.get(name) != s]
        self._last = now
        backlog = sorted((_backlog_key(self.incoming / name, now[name]), name) for name in stable)
        results = []
        for _key, name in backlog:               # one net in memory at a time
            published = self._publish_file(name, now[name])
            if published is not None:
                results.append(published)
        return results

    def _publish_file(self, name: str, seen: _Seen) -> Published | None:
        path = self.incoming / name
        try:
            net, gz = load_complete_net(path)
            if _stat(path) != seen:             # changed while being read: judge it again later
                self._last.pop(name, None)
                return None
        except (Lc0WeightsError, OSError) as e:
            log.error("skipping %s: %s", name, e)
            self._done[name] = seen             # retried only if the file changes
            return None
        published = publish_net(self.repo, net, gz, name, self.tolerance, self.codec, self.skips,
                                workers=self.workers)
        self._done[name] = seen
        return published

    def run_once(self) -> list[Published]:
        """Two looks one interval apart: what a single pass can safely publish."""
        first = self.poll()
        time.sleep(self.interval)
        return first + self.poll()

    def keep_signed(self) -> None:
        """Re-sign the timestamp when half its validity has passed, even if no net arrives."""
        repo = self.repo
        if repo.key is not None and repo.expires_soon(repo.expires / 2):
            with repo.lock():
                ts = repo.resign()
            log.info("re-signed the timestamp: version %d, expires %s", ts.version, ts.expires)

    def run(self, stop=None) -> None:
        log.info("watching %s, publishing into %s", self.incoming, self.repo.root)
        while stop is None or not stop.is_set():
            try:
                self.keep_signed()
                self.poll()
            except Lc0WeightsError as e:
                log.error("publish failed, will retry: %s", e)
                self._last = {}                 # judge stability again before retrying
            if stop is not None:
                stop.wait(self.interval)
            else:
                time.sleep(self.interval)


def _stat(path: Path) -> _Seen:
    st = os.stat(path)
    return _Seen(st.st_size, st.st_mtime_ns)


def load_complete_net(path: Path) -> tuple[Net, bytes]:
    """The net in ``path`` and its gzip bytes, only when the file is a whole net with weights."""
    with open(path, "rb") as f:
        if f.read(2) == GZIP_MAGIC:
            check_gzip_complete(f, str(path))
    net, gz = load_net_file(path)
    require_weights(net)
    return net, gz


def check_gzip_complete(f, source: str, max_raw_size: int = MAX_RAW_SIZE) -> int:
    """Read a gzip file through in bounded memory; its raw size when every member is whole.

    zlib checks each member's trailer (CRC32 and length of the data) as it reaches
    it; a stream that stops before a trailer, a wrong trailer, or data other than
    zero padding after the last member is refused.
    """
    f.seek(0)
    total = 0
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        while True:
            chunk = d.unconsumed_tail or f.read(_READ)
            if not chunk:
                break
            total += len(d.decompress(chunk, _READ))
            if total > max_raw_size:
                raise NetFormatError(f"{source}: gzip stream inflates past {max_raw_size:,} bytes")
            if d.eof:
                rest = d.unused_data + f.read(_READ)
                while rest and not rest.strip(b"\0"):     # zero padding may end a file
                    rest = f.read(_READ)
                if not rest:
                    break
                if rest[:2] != GZIP_MAGIC:
                    raise NetFormatError(f"{source}: data after the gzip stream")
                f.seek(-len(rest), os.SEEK_CUR)
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    except zlib.error as e:
        raise NetFormatError(f"{source}: corrupt gzip stream ({e})") from None
    if not d.eof:
        raise NetFormatError(f"{source}: gzip stream ends before its trailer (still being written?)")
    return total


def require_weights(net: Net) -> None:
    """Refuse a net that parses but carries no weights (a file cut between top-level fields)."""
    if any(layer.has_params and layer.nbytes for layer in net.layers):
        return
    try:
        if any(n == _NET_ONNX and end > start for n, _w, start, end, _v in iter_fields(net.raw, 0, len(net.raw))):
            return
    except NetFormatError:
        pass
    raise NetFormatError(f"{net.source}: no weights in the net (incomplete file?)")


def _backlog_key(path: Path, seen: _Seen) -> tuple:
    steps = read_training_steps(path)
    return (-1 if steps is None else steps, seen.mtime_ns)


def read_training_steps(path: Path) -> int | None:
    """``training_params.training_steps`` from the first kilobytes of a net file, if there."""
    try:
        with open(path, "rb") as f:
            head = f.read(STEPS_PREFIX)
            if head[:2] == GZIP_MAGIC:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                head = d.decompress(head, STEPS_PREFIX)
    except (OSError, zlib.error):
        return None
    try:
        for number, wire, start, end, _ in iter_fields(head, 0, len(head)):
            if number == _NET_TRAINING_PARAMS and wire == 2:
                for n, w, _s, _e, value in iter_fields(head, start, end):
                    if n == 1 and w == 0:
                        return value
                return None
            if number == _NET_WEIGHTS:
                return None
    except NetFormatError:              # the prefix ends inside a field
        pass
    return None

"""``watch``: publish each net the trainer drops into a folder, exactly once.

A file is taken only when it is complete: hidden and temp names (``.x``,
``*.tmp``, ``*.part``) are ignored, a file must show the same size and
modification time on two polls in a row, and it must then be a whole lc0
net: a gzip file must end in valid trailers (the inflater checks each member's CRC32
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

What cannot succeed is not retried: a net older (by training steps) than the
latest published one is skipped with one log line and the rest of the folder
is published; when the signing key may not sign under root.json (no longer
certified, root expired) the watcher says why once and publishes nothing,
encoding nothing, until that changes. A gzip stream is refused as soon as it
inflates past the net size limit (``max_size``), while it is streamed, and so
is a file holding two nets (a second gzip member that starts a net: protobuf
would merge the two).
"""
from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from lc0weights import gzipio
from lc0weights.errors import Lc0WeightsError, NetFormatError
from lc0weights.net import DEFAULT_MAX_SIZE, GZIP_MAGIC, Net, starts_like_a_net
from lc0weights.wire import iter_fields

from .publish import SKIPS, OutOfOrderError, Published, load_net_file, publish_net
from .repository import Repository, SigningError
from .sweep import DEFAULT_MIN_AGE, sweep_temp_files

log = logging.getLogger(__name__)
NET_SUFFIXES = (".pb.gz", ".pb")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".temp", ".swp")
MAX_RAW_SIZE = DEFAULT_MAX_SIZE  # the net size limit: a gzip stream inflating past it is refused mid-stream
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
                 sweep_min_age: float = DEFAULT_MIN_AGE, max_size: int = MAX_RAW_SIZE,
                 workers: int | None = None):
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
        self.max_size = max_size
        self._blocked: str | None = None       # why signing cannot succeed, already logged once

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
        if stable and not self._can_sign():
            return []
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
            net, gz = load_complete_net(path, self.max_size)
            if _stat(path) != seen:             # changed while being read: judge it again later
                self._last.pop(name, None)
                return None
        except (Lc0WeightsError, OSError) as e:
            log.error("skipping %s: %s", name, e)
            self._done[name] = seen             # retried only if the file changes
            return None
        try:
            published = publish_net(self.repo, net, gz, name, self.tolerance, self.codec, self.skips,
                                    workers=self.workers)
        except OutOfOrderError as e:
            log.warning("skipping %s: %s", name, e)
            published = None
        except SigningError:
            self._last.pop(name, None)          # publish it once signing works again
            raise
        self._done[name] = seen
        return published

    def _can_sign(self) -> bool:
        """Whether the key may sign now; the reason it may not is logged once, not every poll."""
        problem = self.repo.signing_problem()
        if problem != self._blocked:
            if problem is not None:
                log.error("not publishing: %s (waiting until that is fixed; nothing is retried meanwhile)",
                          problem)
            else:
                log.info("signing works again: publishing")
            self._blocked = problem
        return problem is None

    def run_once(self) -> list[Published]:
        """Two looks one interval apart: what a single pass can safely publish."""
        first = self.poll()
        time.sleep(self.interval)
        return first + self.poll()

    def keep_signed(self) -> None:
        """Re-sign the timestamp when half its validity has passed, even if no net arrives."""
        repo = self.repo
        if repo.key is None or (self._blocked is not None and not self._can_sign()):
            return
        if repo.expires_soon(repo.expires / 2):
            with repo.lock():
                ts = repo.resign()
            log.info("re-signed the timestamp: version %d, expires %s", ts.version, ts.expires)

    def run(self, stop=None) -> None:
        log.info("watching %s, publishing into %s", self.incoming, self.repo.root)
        while stop is None or not stop.is_set():
            try:
                self.keep_signed()
                self.poll()
            except SigningError as e:
                if self._blocked != str(e):
                    log.error("not publishing: %s (waiting until that is fixed)", e)
                    self._blocked = str(e)
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


def load_complete_net(path: Path, max_size: int = MAX_RAW_SIZE) -> tuple[Net, bytes]:
    """The net in ``path`` and its gzip bytes, only when the file is a whole net with weights."""
    check_net_file(path, max_size)
    net, gz = load_net_file(path)
    require_weights(net)
    return net, gz


def check_net_file(path, max_size: int = MAX_RAW_SIZE) -> None:
    """Refuse, in bounded memory and before any net is loaded, a file that cannot be one
    whole net: a gzip stream cut short, inflating past ``max_size`` or holding two nets;
    a raw file larger than ``max_size``; anything but a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO must not block the open
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NetFormatError(f"{path}: not a regular file, not a net")
        if f.read(2) == GZIP_MAGIC:
            check_gzip_complete(f, str(path), max_size)
        elif st.st_size > max_size:
            raise NetFormatError(f"{path}: {st.st_size:,} bytes, larger than the {max_size:,} bytes "
                                 "a net may have")


def check_gzip_complete(f, source: str, max_raw_size: int = MAX_RAW_SIZE) -> int:
    """Read a gzip file through in bounded memory; its raw size when every member is whole.

    the inflater checks each member's trailer (CRC32 and length of the data) as it reaches
    it; a stream that stops before a trailer, a wrong trailer, or data other than
    zero padding after the last member is refused, and so is a member after the
    first that starts a net: two nets concatenated into one file.
    """
    f.seek(0)
    total = 0
    d = gzipio.decompressobj()          # ISA-L where installed: this reads every byte of the net
    member_head = None                  # the first bytes of a member after the first, while short
    try:
        while True:
            chunk = d.unconsumed_tail or f.read(_READ)
            if not chunk:
                break
            piece = d.decompress(chunk, _READ)
            total += len(piece)
            if total > max_raw_size:
                raise NetFormatError(f"{source}: gzip stream inflates past {max_raw_size:,} bytes, "
                                     "the most a net may have (a gzip bomb, or not a net?)")
            if member_head is not None and piece:
                member_head += piece[:8]
                if starts_like_a_net(member_head):
                    raise NetFormatError(f"{source}: holds two nets (a second gzip member starts a new "
                                         "net, as when two files are concatenated); publish each net "
                                         "from its own file")
                if len(member_head) >= 8:
                    member_head = None
            if d.eof:
                rest = d.unused_data + f.read(_READ)
                while rest and not rest.strip(b"\0"):     # zero padding may end a file
                    rest = f.read(_READ)
                if not rest:
                    break
                if rest[:2] != GZIP_MAGIC:
                    raise NetFormatError(f"{source}: data after the gzip stream")
                f.seek(-len(rest), os.SEEK_CUR)
                d = gzipio.decompressobj()
                member_head = b""
    except gzipio.GzipError as e:
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
                head = gzipio.decompressobj().decompress(head, STEPS_PREFIX)
    except (OSError,) + gzipio.GzipError:
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

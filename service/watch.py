"""``watch``: publish each net the trainer drops into a folder, exactly once.

A file is taken only when it is complete: hidden and temp names (``.x``,
``*.tmp``, ``*.part``) are ignored, and a file must show the same size and
modification time on two polls in a row. What has been published is read
from the repository index itself (nets listed or retired), so a watcher
restarted after a crash neither publishes a net twice nor skips one.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lc0weights.errors import Lc0WeightsError

from .publish import SKIPS, Published, load_net_file, publish_net, training_steps
from .repository import Repository

log = logging.getLogger(__name__)
NET_SUFFIXES = (".pb.gz", ".pb")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".temp", ".swp")


def looks_like_net(name: str) -> bool:
    return (not name.startswith((".", "~")) and name.endswith(NET_SUFFIXES)
            and not name.endswith(TEMP_SUFFIXES))


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int


class Watcher:
    def __init__(self, incoming, repo: Repository, interval: float = 2.0,
                 tolerance: float | None = None, codec: str | None = None, skips=SKIPS):
        self.incoming = Path(incoming)
        self.repo = repo
        self.interval = interval
        self.tolerance = tolerance
        self.codec = codec
        self.skips = skips
        self._last: dict[str, _Seen] = {}
        self._done: dict[str, _Seen] = {}      # handled files, as they were when handled

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
        now = self._observe()
        stable = [name for name, s in now.items()
                  if self._last.get(name) == s and self._done.get(name) != s]
        self._last = now
        ready = []
        for name in stable:
            try:
                net, gz = load_net_file(self.incoming / name)
            except (Lc0WeightsError, OSError) as e:
                log.error("skipping %s: %s", name, e)
                self._done[name] = now[name]    # retried only if the file changes
                continue
            ready.append((training_steps(net.raw) or -1, now[name].mtime_ns, name, net, gz))
        results = []
        for _steps, _mtime, name, net, gz in sorted(ready, key=lambda r: r[:3]):
            results.append(publish_net(self.repo, net, gz, name, self.tolerance, self.codec, self.skips))
            self._done[name] = now[name]
        return results

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

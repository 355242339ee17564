"""``prune``: keep the newest N nets and the patches between them, drop the rest.

The horizon (the oldest net still served) moves forward in a newly signed
timestamp first, so clients never look behind it; only then are the files of
nets behind the horizon deleted, with every object no kept record names
(which also sweeps objects a crashed publish left behind). Pruned ids stay in
the publisher's sequence, so a watcher never publishes them again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from lc0weights.repository.index import net_object_path
from lc0weights.repository.metadata import record_path

from .repository import Repository

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    nets_removed: int
    patches_removed: int
    files_deleted: int


def prune(repo: Repository, keep: int) -> PruneReport:
    if keep < 1:
        raise ValueError("keep at least one net")
    with repo.lock():
        ts = repo.read_timestamp()
        if ts is None or ts.latest is None:
            return PruneReport(0, 0, 0)
        horizon = max(ts.horizon, ts.latest.seq + 1 - keep)
        referenced, patches_dropped = set(), 0
        for seq in range(horizon, ts.latest.seq + 1):
            record = repo.read_record(seq)
            referenced |= {record_path(record.net.id), net_object_path(record.net.id)}
            for p in record.patches:
                if p.base_seq >= horizon:
                    referenced.add(p.path)
                elif p.base_seq >= ts.horizon:
                    patches_dropped += 1
        gone = horizon - ts.horizon
        if gone:
            repo.commit(latest=ts.latest, horizon=horizon)
        deleted = 0
        for path in repo.stored_objects():
            if path not in referenced:
                repo.remove_object(path)
                deleted += 1
        log.info("pruned %d nets and %d patches; deleted %d files", gone, patches_dropped, deleted)
        return PruneReport(gone, patches_dropped, deleted)

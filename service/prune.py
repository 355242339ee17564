"""``prune``: keep the newest N nets and the patches between them, drop the rest.

The index is rewritten first, so clients never see a reference to a removed
object; only then are unreferenced object files deleted (which also sweeps
objects a crashed publish left behind). Pruned ids are recorded as retired so
that a watcher never publishes them again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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
        index = repo.read_index()
        gone = index.nets[:-keep]
        kept_ids = {n.id for n in index.nets[-keep:]}
        kept_patches = [p for p in index.patches if p.target in kept_ids and _base_usable(p, index, kept_ids)]
        removed_patches = len(index.patches) - len(kept_patches)
        if gone or removed_patches:
            index.nets = index.nets[-keep:]
            index.patches = kept_patches
            index.retired = list(dict.fromkeys(index.retired + [n.id for n in gone]))
            repo.commit(index)
        referenced = {n.path for n in index.nets} | {p.path for p in index.patches}
        deleted = 0
        for path in repo.stored_objects():
            if path not in referenced:
                repo.remove_object(path)
                deleted += 1
        log.info("pruned %d nets and %d patches; deleted %d files", len(gone), removed_patches, deleted)
        return PruneReport(len(gone), removed_patches, deleted)


def _base_usable(patch, index, kept_ids) -> bool:
    """A patch stays while some client can hold its base: a kept net or a lossy net of one."""
    if patch.base in kept_ids:
        return True
    return any(p.result == patch.base and p.target in kept_ids for p in index.patches)

"""Turn a schema-1 repository (one ``index.json``) into the record layout, once.

Nets keep their order; each becomes a record listing the patches that
rebuild it, linked like records a publish writes. The timestamp is written
last (the commit point), then ``index.json`` is removed so no client reads
a stale list. Retired ids are remembered so that they are never published
again.
"""
from __future__ import annotations

import logging

from lc0weights.repository.metadata import Record, link_distances

from .repository import Repository, atomic_write

log = logging.getLogger(__name__)


def migrate_if_needed(repo: Repository) -> bool:
    """Migrate when the repository has a schema-1 index and no timestamp; call under the lock."""
    if repo.read_timestamp() is not None or not repo.index_path.is_file():
        return False
    index = repo.read_index()
    log.info("migrating %s: %d nets and %d patches from %s to records",
             repo.root, len(index.nets), len(index.patches), repo.index_path.name)
    seq_of = {n.id: i for i, n in enumerate(index.nets)}
    stands_for = {p.result: p.target for p in index.patches if p.lossy}
    link = None
    for seq, net in enumerate(index.nets):
        patches = []
        for p in index.patches:
            base_seq = seq_of.get(p.base, seq_of.get(stands_for.get(p.base)))
            if p.target == net.id and base_seq is not None and base_seq < seq:
                patches.append(p.__class__(**{**p.to_dict(), "base_seq": base_seq}))
        links = [repo.link_to(seq - d) for d in link_distances(seq)]
        record = Record(repository=repo.repository_id(), seq=seq, net=net, patches=patches, links=links)
        link = repo.write_record(record)
        repo.append_sequence(seq, net.id)
    if index.retired:
        atomic_write(repo.state_dir / "retired", "".join(f"{r}\n" for r in index.retired).encode())
    repo.commit(latest=link, horizon=0)
    repo.index_path.unlink()
    return True
